"""The adversarial-training axis: perturb the encoder's input word embeddings, train on what that does.

An adversarial method is a small class registered in ``ADVERSARIAL``. For each group of micro-batches the
training loop hands it one :class:`Perturbable` and gets back each task's training objective, which then
goes to the loss-weighting method exactly as plain losses would (so every weighting method composes with
every adversarial method). The loop never asks for the method's name.

Perturbations act on the word embeddings through the model's ``inputs_embeds`` path: the batch's word
embeddings are looked up once with the encoder's own ``get_input_embeddings()`` module (no parameter names
are matched), and the encoder adds positions, token types and its layer norm on top. A perturbation ``r`` is
a tensor shaped like the embeddings of the rows of adversarially trained tasks (``[n, T, H]``), zero on
padding; its size is measured per example (L2 over that example's tokens and hidden units).

What :class:`Perturbable` offers a method:

- ``ascent(rs)``: logits of the adversarial rows with each perturbation in ``rs`` (``None``: clean), in one
  forward of the bare model (no gradient all-reduce, used only to find ``r`` with ``torch.autograd.grad``);
- ``final(rs)``: ONE forward through the training model (DDP-wrapped under several processes) of the clean
  batch plus the adversarial rows under each perturbation; its result is what the objective is built from;
- ``loss(task, logits)``, ``divergence(task, a, b)``, ``normalize(g)``, ``project(r, eps)``, ``zeros()``,
  ``uniform(mag)``, ``normal(std)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from polytask.errors import UserError
from polytask.registry import Registry
from polytask.tasks import TaskType

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[str]], dict[str, torch.Tensor]]


@dataclass
class Perturbable:
    """One group's stacked batch, ready to be run with perturbed word embeddings.

    ``embeds`` [B, T, H]: word embeddings of the whole batch (their graph reaches the embedding matrix);
    ``mask`` / ``token_type_ids`` [B, T]; ``rows``: each task's row positions in the batch (tasks sharing inputs
    under joint batches share rows); ``adversarial``: the tasks trained adversarially (a subset of ``rows``);
    ``labels``: each task's labels (its rows, in order). Perturbed copies are made once per row, whichever
    adversarial tasks read it.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    token_type_ids: torch.Tensor
    rows: dict[str, torch.Tensor]
    adversarial: list[str]
    labels: dict[str, torch.Tensor]
    tasks: dict[str, TaskType]
    bare_forward: Forward  # the unwrapped model: no DDP hooks
    train_forward: Forward  # the prepared (DDP / autocast) model: the forward whose backward updates
    adv_index: dict[str, torch.Tensor] = field(init=False)
    adv_rows: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        # adv_rows [n]: every row some adversarial task reads, once; adv_index[t]: t's rows within adv_rows
        self.adv_rows = torch.unique(torch.cat([self.rows[t] for t in self.adversarial])).to(self.embeds.device)
        self.adv_index = {t: torch.searchsorted(self.adv_rows, self.rows[t].to(self.embeds.device))
                          for t in self.adversarial}
        self._mask = self.mask[self.adv_rows].unsqueeze(-1).to(torch.float32)  # [n, T, 1]

    # -- shapes and norms ---------------------------------------------------------------------------------
    def zeros(self) -> torch.Tensor:
        return torch.zeros(len(self.adv_rows), *self.embeds.shape[1:], device=self.embeds.device)

    def uniform(self, magnitude: float) -> torch.Tensor:
        """FreeLB's start: U(-1, 1) on real tokens, scaled by ``magnitude / sqrt(tokens * hidden)``."""
        r = (torch.rand_like(self.zeros()) * 2 - 1) * self._mask
        dims = self._mask.sum((1, 2), keepdim=True) * r.shape[-1]
        return r * magnitude / dims.clamp(min=1).sqrt()

    def normal(self, std: float) -> torch.Tensor:
        return torch.randn_like(self.zeros()) * std * self._mask

    def norm(self, r: torch.Tensor) -> torch.Tensor:
        """Per-example L2 norm, shaped [n, 1, 1]."""
        return (r.float() * self._mask).flatten(1).norm(dim=1).view(-1, 1, 1)

    def normalize(self, g: torch.Tensor) -> torch.Tensor:
        """``g / ||g||`` per example (0 where an example's gradient is 0), padding zeroed."""
        g = g.float() * self._mask
        return g / self.norm(g).clamp(min=1e-12)

    def project(self, r: torch.Tensor, epsilon: float) -> torch.Tensor:
        """Scale each example's ``r`` back onto the ball of radius ``epsilon`` (0: unbounded)."""
        if epsilon <= 0:
            return r
        n = self.norm(r)
        return r * torch.where(n > epsilon, epsilon / n.clamp(min=1e-12), torch.ones_like(n))

    # -- forwards -----------------------------------------------------------------------------------------
    def ascent(self, perturbations: list[torch.Tensor | None]) -> list[dict[str, torch.Tensor]]:
        """Logits of the adversarial rows under each perturbation, via the bare model (for finding ``r``).
        The clean embeddings are detached here: only the perturbations get gradients."""
        base = self.embeds.detach()[self.adv_rows]
        parts = [base if r is None else base + r.to(base.dtype) for r in perturbations]
        k = len(parts)
        logits = self.bare_forward(torch.cat(parts), self.mask[self.adv_rows].repeat(k, 1),
                                   self.token_type_ids[self.adv_rows].repeat(k, 1), self.adversarial)
        n = len(self.adv_rows)
        return [{t: logits[t][i * n:(i + 1) * n][self.adv_index[t]] for t in self.adversarial} for i in range(k)]

    def final(self, perturbations: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                list[dict[str, torch.Tensor]]]:
        """One training forward of the clean batch and the adversarial rows under each perturbation.
        Returns the clean logits of every task and, per perturbation, the adversarial tasks' logits."""
        n, b = len(self.adv_rows), self.embeds.shape[0]
        adv = self.embeds[self.adv_rows]
        parts = [self.embeds] + [adv + r.detach().to(adv.dtype) for r in perturbations]
        k = len(perturbations)
        mask = torch.cat([self.mask, self.mask[self.adv_rows].repeat(k, 1)])
        types = torch.cat([self.token_type_ids, self.token_type_ids[self.adv_rows].repeat(k, 1)])
        logits = self.train_forward(torch.cat(parts), mask, types, list(self.rows))
        clean = {t: logits[t][:b][pos] for t, pos in self.rows.items()}
        perturbed = [{t: logits[t][b + i * n:b + (i + 1) * n][self.adv_index[t]] for t in self.adversarial}
                     for i in range(k)]
        return clean, perturbed

    # -- losses -------------------------------------------------------------------------------------------
    def loss(self, task: str, logits: torch.Tensor) -> torch.Tensor:
        return self.tasks[task].loss(logits, self.labels[task])

    def divergence(self, task: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.tasks[task].divergence(a, b, self.labels[task])

    def adversarial_sum(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the adversarial tasks' losses (what the perturbation ascends)."""
        return sum(self.loss(t, logits[t]) for t in self.adversarial)


class Adversarial:
    """Base class: options with defaults (numbers >= 0 unless said), checked against the config."""

    options: dict[str, Any] = {}
    integer_options: tuple[str, ...] = ()  # options that must be integers >= 1

    def __init__(self, options: dict[str, Any] | None = None, tasks: list[str] | None = None):
        self.opts = {**self.options, **(options or {})}
        self.tasks = tasks  # the tasks trained adversarially (None: all)

    @classmethod
    def check_options(cls, options: dict[str, Any], path: str) -> None:
        for key, value in options.items():
            if key not in cls.options:
                raise UserError(f"unknown config key '{path}.{key}' for this adversarial method; its options: "
                                f"{', '.join(cls.options) or 'none'}, tasks")
            if key in cls.integer_options:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise UserError(f"config key '{path}.{key}' has bad value {value!r}; expected an integer >= 1")
            elif (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0
                  or not math.isfinite(value)):
                raise UserError(f"config key '{path}.{key}' has bad value {value!r}; expected a number >= 0")

    def objective(self, p: Perturbable) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return ``(objective, clean)``: per task, the loss to train on and its clean loss (for logs)."""
        raise NotImplementedError

    @staticmethod
    def ascend(p: Perturbable, r: torch.Tensor) -> torch.Tensor:
        """Gradient of the adversarial tasks' summed loss with respect to ``r`` (a bare forward)."""
        r = r.detach().requires_grad_(True)
        out = p.ascent([r])[0]
        (g,) = torch.autograd.grad(p.adversarial_sum(out), r)
        return g


ADVERSARIAL: Registry[type[Adversarial]] = Registry("adversarial method")
