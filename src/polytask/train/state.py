"""Resumable training state: optimizer, scheduler, RNG, counters — safetensors and JSON, never pickle.

``last/`` in a run folder is a full model checkpoint (see ``model/io.py``) plus ``training_state/``:

- ``optimizer.safetensors`` — every tensor of the optimizer state, keyed ``<param index>.<name>``
- ``optimizer.json`` — the param groups (hyperparameters) and the non-tensor state
- ``scheduler.json`` — the LR scheduler's state dict
- ``rng.safetensors`` — the torch RNG state of every process; ``rng.json`` — Python's ``random`` state
- ``trainer_state.json`` — epoch, position in the epoch, step, early-stopping state, weighting state
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def optimizer_to_files(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": groups, "scalars": scalars}))


def optimizer_from_files(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(folder / "optimizer.safetensors")).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_states() -> dict[str, Any]:
    """This process's RNG states: torch CPU (and CUDA when present) as tensors, Python's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    return {"tensors": tensors, "python": [version, list(internal), gauss]}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["tensors"]["torch"])
    cuda = [states["tensors"][k] for k in sorted(states["tensors"]) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_rng(folder: Path, per_rank: list[dict[str, Any]]) -> None:
    tensors = {f"rank{r}.{k}": v.contiguous() for r, s in enumerate(per_rank) for k, v in s["tensors"].items()}
    save_file(tensors, str(folder / "rng.safetensors"))
    (folder / "rng.json").write_text(json.dumps([s["python"] for s in per_rank]))


def load_rng(folder: Path, rank: int) -> dict[str, Any]:
    python = json.loads((folder / "rng.json").read_text())
    prefix = f"rank{rank}."
    tensors = {k[len(prefix):]: v for k, v in load_file(str(folder / "rng.safetensors")).items()
               if k.startswith(prefix)}
    return {"tensors": tensors, "python": python[rank]}
