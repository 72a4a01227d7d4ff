"""Run a model over tokenised features and score the predictions, per task."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from polytask.data.features import TaskData, collate, to_device
from polytask.model.multitask import MultiTaskModel
from polytask.precision import runtime_precision
from polytask.tasks import TaskType


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast when ``precision`` (auto | fp32 | bf16) resolves to bf16 on ``device``."""
    if runtime_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_task(model: MultiTaskModel, task: TaskType, features: list[dict[str, Any]], batch_size: int,
                 pad_id: int, device: torch.device, precision: str = "fp32", rank: int = 0, world: int = 1,
                 ) -> tuple[dict[int, Any], float, int]:
    """Predictions for this process's share of ``features`` (index -> prediction) and its summed loss.

    Examples are batched by length (less padding); results are keyed by their original index.
    Returns ``(predictions, loss_sum, loss_count)``; loss terms come only from labelled features.
    """
    was_training = model.training
    model.eval()
    # retrieval: the corpus embedded once for this evaluation, by the model as it is now (every process embeds
    # all of it: each ranks its share of the queries against the whole corpus)
    task.prepare_predict(lambda feats: embed_features(model, task, feats, batch_size, pad_id, device, precision),
                         refresh=True)
    mine = list(range(rank, len(features), world))
    mine.sort(key=lambda i: len(features[i]["input_ids"]))
    preds: dict[int, Any] = {}
    loss_sum, loss_n = 0.0, 0
    for s in range(0, len(mine), batch_size):
        idx = mine[s:s + batch_size]
        batch = to_device(collate([features[i] for i in idx], task, pad_id), device)
        with autocast_context(precision, device):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           tasks=[task.name])[task.name]
        if "labels" in batch and not task.expands_rows:  # (a retrieval batch holds queries only here: no loss)
            loss_sum += float(task.loss(logits, batch["labels"])) * len(idx)
            loss_n += len(idx)
        for i, p in zip(idx, task.decode(logits, batch)):
            preds[i] = p
    model.train(was_training)
    return preds, loss_sum, loss_n


@torch.no_grad()
def embed_features(model: MultiTaskModel, task: TaskType, features: list[dict[str, Any]], batch_size: int,
                   pad_id: int, device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """``task``'s head outputs for ``features`` in their order ([N, D]; batched by length for less padding)."""
    from polytask.data.features import pad_inputs

    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[torch.Tensor] = [None] * len(features)  # type: ignore[list-item]
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = to_device(pad_inputs([features[i] for i in idx], pad_id), device)
        with autocast_context(precision, device):
            emb = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        tasks=[task.name])[task.name].float()
        for i, row in zip(idx, emb):
            out[i] = row
    model.train(was_training)
    return torch.stack(out) if out else torch.empty(0)


def score_task(task: TaskType, examples, predictions: list[Any], loss: float | None) -> dict[str, Any]:
    metrics = task.metrics(predictions, [ex.label for ex in examples])
    if loss is not None:
        metrics["loss"] = loss
    return metrics


def mean_score(results: dict[str, dict[str, Any]], tasks: dict[str, TaskType]) -> float:
    """Mean over tasks of each task's main metric (accuracy, span F1, Pearson, ...), so higher is better: a
    lower-is-better main metric (``tasks.<name>.metric: mse``) enters with its sign flipped."""
    vals = [results[t][tasks[t].main_metric] * (1 if tasks[t].higher_is_better else -1) for t in results]
    return sum(vals) / len(vals) if vals else float("nan")


def evaluate_split(model: MultiTaskModel, data: dict[str, TaskData], split: str, batch_size: int, pad_id: int,
                   device: torch.device, precision: str = "fp32", gather=None, rank: int = 0, world: int = 1,
                   ) -> dict[str, Any]:
    """Per-task metrics on ``split`` for every task that has it, plus ``mean`` and ``loss`` (mean of tasks).

    ``gather`` (e.g. ``accelerate``'s ``gather_object``) merges the shards of several processes.
    """
    results: dict[str, Any] = {}
    tasks = {n: d.task for n, d in data.items()}
    for name, d in data.items():
        if split not in d.features:
            continue
        preds, loss_sum, loss_n = predict_task(model, d.task, d.features[split], batch_size, pad_id, device,
                                               precision, rank, world)
        if gather is not None and world > 1:  # merge every process's share
            preds_mine, sum_mine, n_mine = preds, loss_sum, loss_n
            preds, loss_sum, loss_n = {}, 0.0, 0
            for part_preds, part_sum, part_n in gather([(preds_mine, sum_mine, n_mine)]):
                preds.update(part_preds)
                loss_sum += part_sum
                loss_n += part_n
        ordered = [preds[i] for i in range(len(d.features[split]))]
        results[name] = score_task(d.task, d.examples[split], ordered, loss_sum / loss_n if loss_n else None)
    if results:
        losses = [v["loss"] for v in results.values() if "loss" in v]
        results["mean"] = mean_score(results, tasks)
        if losses:
            results["loss"] = sum(losses) / len(losses)
    return results


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"intent.accuracy": ..., "slots.f1": ..., "mean": ...}`` without the per-label reports."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            for m, v in value.items():
                if isinstance(v, (int, float)):
                    flat[f"{key}.{m}"] = float(v)
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat
