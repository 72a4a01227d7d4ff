"""The hidden-state objective of distillation: the student's layers imitate the teacher's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from polytask.config import HiddenConfig
from polytask.errors import UserError
from polytask.model.encoder import embeddings_module, encoder_layers


def layer_pairs(cfg: HiddenConfig, student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """``[(student_state, teacher_state)]``; state 0 is the embeddings' output, state i the i-th layer's."""
    if cfg.layers == "auto":  # TinyBERT's uniform mapping: student layer j <- teacher layer j * L / M
        return [(0, 0)] + [(j, round(j * teacher_depth / student_depth)) for j in range(1, student_depth + 1)]
    for s, t in cfg.layers:
        if s > student_depth or t > teacher_depth:
            raise UserError(f"config key 'train.distill.hidden.layers': pair [{s}, {t}] is out of range (student "
                            f"states 0-{student_depth}, teacher states 0-{teacher_depth}; 0 is the embeddings)")
    return [tuple(p) for p in cfg.layers]


class HiddenStates(nn.Module):
    """Hidden-state matching (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding";
    Sun et al. 2019, "Patient Knowledge Distillation"): for each pair of a student state and a teacher state, the
    mean squared error over real tokens (padding excluded) and hidden units between ``W h_student`` and
    ``h_teacher``, averaged over the pairs. ``W`` is a learned linear map per pair when the widths differ (trained
    with the student, kept in ``last/`` for ``--resume``, not part of the student's checkpoint), the identity
    otherwise.

    The student's states are read by forward hooks on its embeddings and layers while it trains (a forward with
    gradients in train mode), so the training forward is not changed; the teacher's come from its forward with
    ``output_hidden_states``.

    Example::

        train:
          distill: {teacher: runs/atis, student: {layers: 3}, teacher_outputs: fly, hidden: {weight: 1.0}}
    """

    def __init__(self, cfg: HiddenConfig, student_config: Any, teacher_config: Any):
        super().__init__()
        self.weight = cfg.weight
        self.student_states = student_config.num_hidden_layers + 1
        self.pairs = layer_pairs(cfg, student_config.num_hidden_layers, teacher_config.num_hidden_layers)
        ws, wt = student_config.hidden_size, teacher_config.hidden_size
        self.projections = nn.ModuleList(nn.Linear(ws, wt, bias=False) for _ in self.pairs) if ws != wt else None
        self.captured: list[torch.Tensor] = []  # student states of the current step's forwards, in call order
        self._hooks: list[Any] = []

    def attach(self, student: nn.Module) -> None:
        """Record the student encoder's embeddings and layer outputs during training forwards."""
        for h in self._hooks:
            h.remove()
        encoder = student.encoder

        def record(module, args, output):
            if torch.is_grad_enabled() and module.training:
                self.captured.append(output[0] if isinstance(output, tuple) else output)

        modules = [embeddings_module(encoder), *encoder_layers(encoder)]
        self._hooks = [m.register_forward_hook(record) for m in modules]

    def detach(self) -> None:
        """Remove the hooks (the trained student is handed back without them)."""
        for h in self._hooks:
            h.remove()
        self._hooks, self.captured = [], []

    def take(self, segments: int) -> list[list[torch.Tensor]]:
        """The captured states of the last ``segments`` encoder calls, per call ``[B, T, H]`` each; clears them."""
        n = self.student_states
        got, self.captured = self.captured[-segments * n:], []
        if len(got) != segments * n:
            raise RuntimeError(f"hidden-state matching captured {len(got)} student states, expected {segments * n}")
        return [got[k * n:(k + 1) * n] for k in range(segments)]

    def loss(self, student: list[torch.Tensor], teacher: tuple[torch.Tensor, ...], mask: torch.Tensor
             ) -> torch.Tensor:
        """Mean over pairs of the masked MSE; ``mask`` [B, T] (1: a real token)."""
        m = mask.unsqueeze(-1).float()  # [B, T, 1]
        total = 0.0
        for i, (s, t) in enumerate(self.pairs):
            hs = student[s].float()
            if self.projections is not None:
                hs = self.projections[i](hs)
            ht = teacher[t].float()
            total = total + (((hs - ht) ** 2) * m).sum() / (m.sum() * ht.shape[-1]).clamp(min=1.0)
        return total / len(self.pairs)
