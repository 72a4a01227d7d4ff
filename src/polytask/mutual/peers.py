"""Mutual learning: N peer models trained together, each also learning from the others' predictions.

``train.mutual: {peers: N, sharing_weight: w, sync_every: s}``. The run's model becomes a :class:`PeerModel`
holding N multi-task models (same architecture and pretrained start; heads initialised differently, dropout
drawn separately). Every batch goes through every peer; at one fixed point of ``train_step``
:meth:`Mutual.objective` turns the peers' outputs into each task's objective, which then goes to the weighting
method like any loss. Validation scores every peer; ``best/`` keeps the best peer (an ordinary checkpoint),
``peers/`` every peer at the end with ``save_peers``; the peers' averaged ensemble is scored and logged
(``ensemble.*``).

Under ``accelerate launch`` every process holds all N peers and runs its share of each batch through all of
them; the gradients of every peer are averaged across processes as usual, so the peers stay identical on every
process.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from polytask.config import MutualConfig
from polytask.data.features import to_device
from polytask.evaluate.runner import autocast_context
from polytask.model.multitask import MultiTaskModel
from polytask.tasks import TaskType
from polytask.train.early_stopping import lower_is_better


class PeerModel(nn.Module):
    """N :class:`MultiTaskModel` peers as one module (one optimizer, one DDP wrapper).

    ``forward`` takes what ``MultiTaskModel.forward`` takes and returns, per task, the peers' logits stacked
    along the batch dimension: ``[N * B, ...]``, peer 0's rows first. (Code that reads the first ``B`` rows
    reads peer 0.)"""

    def __init__(self, peers: list[MultiTaskModel]):
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        outs = [peer(*args, **kwargs) for peer in self.peers]
        return {t: torch.cat([o[t] for o in outs]) for t in outs[0]}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for peer in self.peers for p in peer.shared_parameters()]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        return [p for peer in self.peers for p in peer.last_layer_parameters()]


class PeerEnsemble(nn.Module):
    """The peers as one predictor: per task, ``ensemble_logits`` of the peers' logits (averaged probabilities)."""

    def __init__(self, peers: PeerModel, tasks: dict[str, TaskType]):
        super().__init__()
        self.members = peers.peers
        self.tasks = tasks

    def forward(self, input_ids, attention_mask, token_type_ids=None, tasks=None):
        outs = [m(input_ids, attention_mask, token_type_ids, tasks=tasks) for m in self.members]
        return {t: self.tasks[t].ensemble_logits([o[t] for o in outs]) for t in outs[0]}


class Mutual:
    """Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning", CVPR), for every head
    type, with codistillation's stale peers (Anil, Pereyra, Passos, Ormandi, Dahl & Hinton 2018, "Large scale
    distributed neural network training through online distillation", ICLR).

    Each peer ``p`` trains on ``L_p + w * mean_{q != p} D(f_p, f_q)`` per task, where ``D`` is the task type's
    ``divergence`` (symmetric KL of the softmax for classification and, per labelled token, for tagging;
    per-label Bernoulli KL for multi-label; squared error for regression) and only ``f_p`` receives its
    gradient — the other peers are targets. ``w`` is ``sharing_weight``. With ``sync_every: 1`` the targets
    are the other peers' outputs on the same batch (the same forward); with ``sync_every: s > 1`` they come
    from copies of the peers refreshed every ``s`` optimizer steps (eval mode, one extra forward of the copies
    per batch). ``sharing_weight: 0`` trains N independent models on the same batches.

    Example::

        train:
          mutual: {peers: 2, sharing_weight: 1.0, sync_every: 1}
    """

    def __init__(self, cfg: MutualConfig, tasks: dict[str, TaskType]):
        self.cfg = cfg
        self.n = cfg.peers
        self.tasks = tasks
        self.copies: PeerModel | None = None  # stale peers (sync_every > 1)
        self.refreshed_at = -1  # optimizer step of the last refresh
        self.best_peer = 0  # by the last validation
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def describe(self) -> list[str]:
        c = self.cfg
        source = ("the other peers on the same batch" if c.sync_every == 1
                  else f"copies of the other peers refreshed every {c.sync_every} steps")
        return [f"mutual learning: {self.n} peers, each on its labels + {c.sharing_weight:g} x the divergence to "
                f"{source}; best/ keeps the best peer"]

    # -- the objective ------------------------------------------------------------------------------------
    def objective(self, logits: dict[str, torch.Tensor], parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  segments: list[tuple[dict[str, torch.Tensor], dict[str, Any]]], model: PeerModel, step: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each task's objective (summed over peers) and its logged loss (the peers' mean label loss).
        ``logits[t]``: ``[N * n_t_segment, ...]`` from :class:`PeerModel`; ``model``: the unwrapped peers."""
        stale = self._stale(segments, model, step) if self.cfg.sync_every > 1 else None
        objective, logged = {}, {}
        for t, (pos, labels) in parts.items():
            task = self.tasks[t]
            rows = [x[pos] for x in logits[t].chunk(self.n)]  # N x [n_t, ...]
            targets = [x[pos] for x in stale[t].chunk(self.n)] if stale is not None else [r.detach() for r in rows]
            hard = [task.loss(r, labels) for r in rows]
            total = sum(hard)
            if self.cfg.sharing_weight > 0:
                for p in range(self.n):
                    div = sum(task.divergence(rows[p], targets[q].detach(), labels)
                              for q in range(self.n) if q != p) / (self.n - 1)
                    total = total + self.cfg.sharing_weight * div
            objective[t] = total
            logged[t] = sum(h.detach() for h in hard) / self.n
        return objective, logged

    @torch.no_grad()
    def _stale(self, segments, model: PeerModel, step: int) -> dict[str, torch.Tensor]:
        if self.copies is None:
            self.copies = copy.deepcopy(model).eval().requires_grad_(False)
            self.refreshed_at = step - step % self.cfg.sync_every
        if step % self.cfg.sync_every == 0 and step != self.refreshed_at:
            self.copies.load_state_dict(model.state_dict())
            self.refreshed_at = step
        out: dict[str, torch.Tensor] = {}
        for inputs, seg_parts in segments:
            inputs = to_device(inputs, self.device)
            with autocast_context(self.precision, self.device):
                out.update(self.copies(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"),
                                       tasks=list(seg_parts)))
        return {t: v.float() for t, v in out.items()}

    def prepare(self, device: torch.device, precision: str) -> None:
        self.device, self.precision = device, precision
        if self.copies is not None:
            self.copies.to(device)

    # -- validation and checkpoints -----------------------------------------------------------------------
    def validate(self, model: PeerModel, evaluate: Callable[[nn.Module], dict[str, Any]], metric: str
                 ) -> dict[str, Any]:
        """Score every peer and the ensemble; the result is the best peer's (by the early-stopping ``metric``)
        plus ``peer<i>`` (its mean and metric) for every peer and ``ensemble`` (the peers' averaged prediction)."""
        per_peer = [evaluate(peer) for peer in model.peers]
        sign = -1.0 if lower_is_better(metric) else 1.0
        scores = [sign * _value(res, metric) for res in per_peer]
        best = max(range(self.n), key=lambda i: scores[i] if not math.isnan(scores[i]) else -math.inf)
        self.best_peer = best
        results = dict(per_peer[best])
        for i, res in enumerate(per_peer):
            results[f"peer{i}"] = {"mean": res.get("mean", float("nan")), metric: _value(res, metric)}
        ens = evaluate(PeerEnsemble(model, self.tasks))
        results["ensemble"] = {"mean": ens.get("mean", float("nan")),
                               **{f"{t}.{k}": v for t, r in ens.items() if isinstance(r, dict)
                                  for k, v in r.items() if isinstance(v, (int, float))}}
        results["best_peer"] = best
        return results

    def export(self, model: PeerModel) -> MultiTaskModel:
        """The model a checkpoint holds: the best peer by the last validation."""
        return model.peers[self.best_peer]

    def save(self, folder: Path, model: PeerModel) -> None:
        """Every peer (and the stale copies) into a ``training_state`` folder, for ``--resume``."""
        save_model(model, str(folder / "peers.safetensors"))
        if self.copies is not None:
            save_file({k: v.contiguous() for k, v in self.copies.state_dict().items()},
                      str(folder / "peer_copies.safetensors"))
        (folder / "mutual.json").write_text(json.dumps({"best_peer": self.best_peer,
                                                        "refreshed_at": self.refreshed_at}))

    def load(self, folder: Path, model: PeerModel) -> None:
        load_model(model, str(folder / "peers.safetensors"))
        meta = json.loads((folder / "mutual.json").read_text())
        self.best_peer, self.refreshed_at = meta["best_peer"], meta["refreshed_at"]
        if (folder / "peer_copies.safetensors").is_file():
            self.copies = copy.deepcopy(model).eval().requires_grad_(False)
            self.copies.load_state_dict(load_file(str(folder / "peer_copies.safetensors")))
            self.copies.to(self.device)

    def parameter_groups(self, model: PeerModel) -> list[list[nn.Parameter]]:
        """Each peer's parameters: gradient clipping is per peer, as if each trained alone."""
        return [list(peer.parameters()) for peer in model.peers]


def _value(results: dict[str, Any], metric: str) -> float:
    if "." in metric:
        task, name = metric.split(".", 1)
        return float(results.get(task, {}).get(name, float("nan")))
    return float(results.get(metric, float("nan")))
