"""A small vector of learned per-task values with its own Adam, shared by the methods that learn weights.

It lives outside the model (so the model's optimizer, checkpoint layout and DDP wrapping stay unchanged);
its gradient is averaged over processes before each update, so every process holds the same values, and
its state is plain JSON for ``trainer_state.json``.
"""

from __future__ import annotations

from typing import Any

import torch


class LearnedVector:
    def __init__(self, names: list[str], init: float | list[float] = 0.0, lr: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0):
        self.names = list(names)
        values = [float(init)] * len(names) if isinstance(init, (int, float)) else list(init)
        self.param = torch.tensor(values, dtype=torch.float32, requires_grad=True)
        self.opt = torch.optim.Adam([self.param], lr=lr, betas=betas, weight_decay=weight_decay)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.param[self.names.index(name)]

    def values(self) -> list[float]:
        return self.param.detach().tolist()

    def step(self, all_reduce_mean, grad: torch.Tensor | None = None) -> None:
        """One Adam step from ``grad`` (or the accumulated ``.grad``), averaged over processes first."""
        if grad is None:
            grad = self.param.grad
        if grad is None:
            return
        self.param.grad = all_reduce_mean(grad.detach().float())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        st = self.opt.state.get(self.param, {})
        return {"values": self.values(),
                "adam": {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.param.copy_(torch.tensor(state["values"], dtype=torch.float32))
        adam = state.get("adam") or {}
        if adam:
            self.opt.state[self.param] = {k: torch.tensor(v, dtype=torch.float32) for k, v in adam.items()}
