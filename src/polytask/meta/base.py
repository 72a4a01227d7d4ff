"""The inner loop of meta-learning: adapt the shared encoder and a fresh head to one episode, then hand the
outer update (``reptile.py``, ``fomaml.py``) what it needs.

The inner loop works on the model's own parameters in place — the episode's starting point is copied first
and restored after — so no second copy of the encoder is kept; only trainable parameters take part (with
``model.peft`` that is the adapter: the inner loop adapts LoRA weights only). The fresh head is a
zero-initialised linear layer over the episode's ``ways`` labels (all tags for a token task); ``polytask adapt``
later gives a new task's head the usual small random initialisation, close to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from polytask.config import MetaConfig
from polytask.data.features import collate, to_device
from polytask.meta.episodes import Episode, check_episodes, draw_episode, episode_rng, label_rows
from polytask.registry import Registry


class OuterUpdate:
    """An outer update rule: ``needs_query`` says whether it reads a query set; ``gradient`` turns one adapted
    episode into the meta-gradient the run's optimizer steps on (one tensor per trainable encoder
    parameter)."""

    needs_query = False

    def gradient(self, start: list[torch.Tensor], adapted: list[torch.Tensor],
                 query_grads: list[torch.Tensor | None] | None) -> list[torch.Tensor]:
        raise NotImplementedError


META: Registry[type[OuterUpdate]] = Registry("meta-learning method")


def fresh_head(hidden: int, width: int, device) -> nn.Linear:
    head = nn.Linear(hidden, width).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def episode_labels(task, labels: torch.Tensor, classes: list[int] | None) -> torch.Tensor:
    """The task's label ids -> episode labels: classification [B] ids -> their position in ``classes``;
    multi-label [B, C] multi-hot -> [B, ways], the ``classes`` columns; token tags [B, T] stay as they are."""
    if classes is None:
        return labels
    if task.type_name == "multilabel_classification":
        return labels[:, classes]
    lookup = torch.full((max(max(classes), int(labels.max())) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    return lookup[labels]


class MetaLearner:
    """Episodic meta-training (``train.meta``): draws episodes, runs the inner loop and averages the outer
    update's meta-gradient over a step's episodes. Reptile (Nichol et al. 2018, "On First-Order Meta-Learning
    Algorithms"), first-order MAML (Finn et al. 2017).

    Inputs at call time: the bare model (``MultiTaskModel``: its ``encoder``, ``encoder_inputs`` and ``pool``
    are used; its task heads are not), an ``autocast`` context factory, the device.

    Example::

        learner = MetaLearner(config.train.meta, tasks, data, seed=42, pad_id=0, batch_size=32)
        grads, losses = learner.step(model, [("intent", [0]), ("topic", [1])], device, autocast)
    """

    def __init__(self, cfg: MetaConfig, tasks: dict[str, Any], data: dict[str, Any], seed: int, pad_id: int,
                 batch_size: int):
        self.cfg, self.tasks, self.data, self.seed = cfg, tasks, data, seed
        self.pad_id, self.batch_size = pad_id, batch_size
        self.update = META.get(cfg.method, where="config key 'train.meta.method'")()
        for name, d in data.items():  # training episodes read a query set only under fomaml
            check_episodes(name, d.task, d.features["train"], cfg, "training", query=self.update.needs_query)
        self.rows = {name: label_rows(d.task, d.features["train"]) for name, d in data.items()}
        # fixed validation episodes (the same at every validation): a task's validation rows, when it has enough
        self.validation: dict[str, list[Episode]] = {}
        for name, d in data.items():
            feats = d.features.get("validation")
            if not feats:
                continue
            rows = label_rows(d.task, feats)
            try:
                check_episodes(name, d.task, feats, cfg, "validation")
            except Exception:  # too few validation rows for an episode: this task is not validated
                continue
            self.validation[name] = [draw_episode(episode_rng(seed, i, "validation-" + name), name, d.task, rows,
                                                  len(feats), cfg, query=True) for i in range(cfg.eval_episodes)]

    def describe(self) -> list[str]:
        c = self.cfg
        return [f"meta-learning: {c.method}, {c.ways}-way {c.shots}-shot episodes ({c.query_shots} query rows per "
                f"label), {c.inner_steps} inner {c.inner_optimizer} steps (encoder lr {c.inner_lr:g}, fresh head lr "
                f"{c.inner_head_lr:g}), {c.tasks_per_episode} episode(s) per outer step; validation: "
                + (", ".join(f"{t} {len(e)} episodes" for t, e in self.validation.items()) or "none")
                + "; the task heads are not trained (polytask adapt gives a new task its head)"]

    def episode(self, task: str, position: int) -> Episode:
        d = self.data[task]
        return draw_episode(episode_rng(self.seed, position), task, d.task, self.rows[task],
                            len(d.features["train"]), self.cfg, query=self.update.needs_query)

    def _batches(self, task, features, rows: list[int], classes, device) -> list[dict[str, Any]]:
        out = []
        for s in range(0, len(rows), self.batch_size):
            b = collate([features[i] for i in rows[s:s + self.batch_size]], task, self.pad_id)
            b["labels"] = episode_labels(task, b["labels"], classes)
            out.append(to_device(b, device))
        return out

    def _logits(self, model, head: nn.Module, task, batch: dict[str, Any]) -> torch.Tensor:
        hidden = model.encoder(**model.encoder_inputs(batch["input_ids"], batch["attention_mask"],
                                                      batch["token_type_ids"])).last_hidden_state  # [B, T, H]
        if task.level == "token":
            return head(hidden)  # [B, T, tags]
        return head(model.pool(hidden, batch["attention_mask"]))  # [B, ways]

    def adapt(self, model, episode: Episode, split: str, device, autocast: Callable[[], Any],
              params: list[nn.Parameter]) -> tuple[nn.Module, float]:
        """Run the inner loop on ``episode``'s support rows (of ``split``) in place: ``inner_steps`` steps of the
        inner optimizer on ``params`` and a fresh head. Returns the head and the last support loss."""
        c = self.cfg
        task = self.tasks[episode.task]
        features = self.data[episode.task].features[split]
        width = len(episode.classes) if episode.classes is not None else task.num_outputs
        head = fresh_head(model.encoder.config.hidden_size, width, device)
        groups = [{"params": params, "lr": c.inner_lr}, {"params": list(head.parameters()), "lr": c.inner_head_lr}]
        opt = torch.optim.Adam(groups) if c.inner_optimizer == "adam" else torch.optim.SGD(groups)
        batches = self._batches(task, features, episode.support, episode.classes, device)
        loss = torch.zeros(())
        for s in range(c.inner_steps):
            batch = batches[s % len(batches)]
            with autocast():
                logits = self._logits(model, head, task, batch)
            loss = task.loss(logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in params:
            p.grad = None
        return head, float(loss.detach())

    def query_loss(self, model, head: nn.Module, episode: Episode, split: str, device,
                   autocast: Callable[[], Any]) -> tuple[torch.Tensor, float]:
        """The adapted model's mean loss on the episode's query rows (a graph for FOMAML's gradient) and its
        accuracy: of the label (classification), of each of the ways labels at 0.5 (multi-label), of each
        tagged word's tag (token)."""
        task = self.tasks[episode.task]
        features = self.data[episode.task].features[split]
        total, correct, count = 0.0, 0.0, 0
        losses = []
        for batch in self._batches(task, features, episode.query, episode.classes, device):
            with autocast():
                logits = self._logits(model, head, task, batch)
            n = batch["labels"].shape[0]
            losses.append(task.loss(logits, batch["labels"]) * n)
            total += n
            labels = batch["labels"]
            if task.type_name == "multilabel_classification":
                hit = (logits.float() > 0) == (labels > 0.5)
                correct, count = correct + float(hit.sum()), count + hit.numel()
            else:
                keep = labels != -100
                hit = logits.float().argmax(-1)[keep] == labels[keep]
                correct, count = correct + float(hit.sum()), count + int(keep.sum())
        return torch.stack(losses).sum() / total, correct / max(count, 1)

    def step(self, model, items: list[tuple[str, list[int]]], device, autocast: Callable[[], Any]
             ) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The meta-gradient of one step's episodes (mean over them, one tensor per trainable encoder parameter)
        and each task's mean support (and query) loss. The model's parameters are as before when it returns."""
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        total = [torch.zeros_like(p) for p in params]
        losses: dict[str, list[float]] = {}
        for task, (position,) in items:
            episode = self.episode(task, position)
            head, support = self.adapt(model, episode, "train", device, autocast, params)
            losses.setdefault(task, []).append(support)
            query_grads = None
            if self.update.needs_query:
                q, _ = self.query_loss(model, head, episode, "train", device, autocast)
                query_grads = torch.autograd.grad(q, params, allow_unused=True)
                losses.setdefault(f"{task}_query", []).append(float(q.detach()))
            adapted = [p.detach().clone() for p in params]
            for t, g in zip(total, self.update.gradient(start, adapted, query_grads)):
                t.add_(g)
            with torch.no_grad():  # back to the step's starting point for the next episode
                for p, s in zip(params, start):
                    p.copy_(s)
        return [t / len(items) for t in total], {k: sum(v) / len(v) for k, v in losses.items()}

    def validate(self, model, device, autocast: Callable[[], Any]) -> dict[str, Any]:
        """Few-shot validation: every fixed validation episode adapted from the current weights (then restored),
        scored on its query rows. ``{task: {"episode_accuracy", "episode_loss"}, "mean", "loss"}``, the shape of
        ``evaluate_split``'s results (``mean``: the tasks' mean episode accuracy)."""
        if not self.validation:
            return {}
        was = model.training
        model.eval()  # no dropout: the same episodes score the same at every validation
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        state = random.getstate(), torch.get_rng_state()
        results: dict[str, Any] = {}
        for task, episodes in self.validation.items():
            accs, qs = [], []
            for episode in episodes:
                with torch.enable_grad():
                    head, _ = self.adapt(model, episode, "validation", device, autocast, params)
                with torch.no_grad():
                    q, acc = self.query_loss(model, head, episode, "validation", device, autocast)
                accs.append(acc)
                qs.append(float(q))
                with torch.no_grad():
                    for p, s in zip(params, start):
                        p.copy_(s)
            results[task] = {"episode_accuracy": sum(accs) / len(accs), "episode_loss": sum(qs) / len(qs)}
        random.setstate(state[0])
        torch.set_rng_state(state[1])
        model.train(was)
        names = list(results)
        results["mean"] = sum(results[t]["episode_accuracy"] for t in names) / len(names)
        results["loss"] = sum(results[t]["episode_loss"] for t in names) / len(names)
        return results
