"""Inference with a trained checkpoint: one encoder pass answers every task that reads the same input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from polytask.data.features import collate, to_device
from polytask.errors import UserError
from polytask.evaluate.runner import autocast_context, embed_features
from polytask.model.io import load_checkpoint


def checkpoint_dir(path: str | Path) -> Path:
    """A run folder means its ``best/`` checkpoint; a checkpoint folder means itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such run or checkpoint: {path}")
    if (path / "polytask.json").exists():
        return path
    for name in ("best", "last"):
        if (path / name / "polytask.json").exists():
            return path / name
    raise UserError(f"{path} is neither a polytask checkpoint nor a run folder with best/ or last/")


class Predictor:
    """A loaded multi-task model that predicts every task (or a subset) for a list of texts.

    Inputs are strings or records (dicts). A record supplies each task's text column(s) by name; when a
    task's column is absent, the record's ``text`` field is used. Tasks whose tokenised input is identical
    share one encoder forward pass.

    Example::

        import polytask
        model = polytask.load("runs/atis/best")
        model.predict(["show me flights from boston to denver"])
        # -> [{"intent": {"labels": ["atis_flight"], ...}, "slots": {"tags": [...], "spans": [...]}}]
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = None):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.path = checkpoint_dir(path)
        self.device = device
        self.backend = "torch"
        if not (self.path / "config.json").is_file() and (self.path / "onnx.json").is_file():
            raise UserError(f"{self.path} is an ONNX export, not a checkpoint: load it with backend onnx "
                            "(polytask.load(path, backend='onnx'), --backend onnx)")
        self.config, self.tasks, self.tokenizer, self.model = load_checkpoint(self.path, device)
        if self.config.train.meta.enabled:
            import sys

            print(f"polytask: warning: {self.path} was meta-learned (train.meta): its task heads were not trained, so "
                  "their predictions mean nothing; learn a task from it with polytask adapt", file=sys.stderr,
                  flush=True)

    @classmethod
    def from_loaded(cls, path: str | Path, config, tasks, tokenizer, model,
                    device: str | torch.device | None = None) -> Predictor:
        """A Predictor over a checkpoint already in memory (``load_checkpoint``'s four parts), read from disk no
        second time; the model is moved to ``device`` (default: where its parameters are) and put in eval mode."""
        self = cls.__new__(cls)
        self.backend = "torch"
        self.path = Path(path)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.config, self.tasks, self.tokenizer, self.model = config, tasks, tokenizer, model.to(self.device).eval()
        return self

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def _select(self, tasks: Sequence[str] | None) -> list[str]:
        if tasks is None:
            return list(self.tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise UserError(f"unknown task(s) {', '.join(unknown)}; this model has: {', '.join(self.tasks)}")
        return list(tasks)

    def predict(self, inputs: Sequence[str | dict[str, Any]], tasks: Sequence[str] | None = None,
                batch_size: int = 32, where: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One dict per input: task name -> prediction. ``where`` names each input in error messages."""
        names = self._select(tasks)
        records = [{"text": x} if isinstance(x, str) else dict(x) for x in inputs]
        where = list(where) if where is not None else [f"input {i + 1}" for i in range(len(records))]
        results: list[dict[str, Any]] = [{} for _ in records]
        for s in range(0, len(records), batch_size):
            for name, preds in self._predict_batch(records[s:s + batch_size], names, where[s:s + batch_size]).items():
                for j, p in enumerate(preds):
                    results[s + j][name] = p
        return results

    @torch.no_grad()
    def _predict_batch(self, records: list[dict[str, Any]], names: list[str], where: list[str]) -> dict[str, list]:
        max_length = self.config.model.max_length
        batches: dict[str, dict[str, Any]] = {}
        groups: dict[tuple, list[str]] = {}  # identical tokenised input -> tasks sharing one forward
        encoded: dict[tuple, tuple[list, list]] = {}  # tasks reading the same columns tokenise once
        for name in names:
            task = self.tasks[name]
            examples = [task.read(self._view(rec, task), w, labelled=False) for rec, w in zip(records, where)]
            # tasks reading the same columns tokenise once (a retrieval task encodes its own: exclusions, corpus)
            reads = (task.level, task.input_column, task.cfg.text_pair, task.shares_inputs or name)
            if reads not in encoded:
                encoded[reads] = (examples, task.encode(examples, self.tokenizer, max_length))
            examples, feats = encoded[reads]
            batch = collate(feats, task, self.tokenizer.pad_token_id or 0)
            if task.level == "token":
                batch["words"] = [ex.text for ex in examples]
            batches[name] = batch
            key = tuple(tuple(f["input_ids"]) + tuple(f.get("token_type_ids", ())) for f in feats)
            groups.setdefault(key, []).append(name)
        for name in names:  # retrieval: the corpus embedded once per loaded model
            task = self.tasks[name]
            task.prepare_predict(lambda feats, task=task: embed_features(
                self.model, task, feats, 64, self.tokenizer.pad_token_id or 0, self.device,
                self.config.train.precision))
        out = {}
        for group in groups.values():
            batch = to_device(batches[group[0]], self.device)
            with autocast_context(self.config.train.precision, self.device):
                logits = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                    tasks=group)
            for name in group:
                out[name] = self.tasks[name].decode(logits[name], batches[name])
        return out

    @staticmethod
    def _view(record: dict[str, Any], task) -> dict[str, Any]:
        """The record as the task reads it: a missing text column falls back to ``text``."""
        if task.input_column not in record and "text" in record:
            return {**record, task.input_column: record["text"]}
        return record


def load(path: str | Path, device: str | torch.device | None = None, backend: str = "torch") -> Predictor:
    """Load a checkpoint (or a run folder's ``best/``) for prediction. ``backend="onnx"``: an ONNX export folder
    (``polytask export RUN --format onnx``; its int8 graph when it has one) run by onnxruntime on the CPU, with the
    same decoding; ``"onnx-fp32"``: its fp32 graph."""
    if backend == "torch":
        return Predictor(path, device)
    if backend in ("onnx", "onnx-fp32"):
        from polytask.export.onnx import load_onnx

        return load_onnx(path, int8=False if backend == "onnx-fp32" else None)
    raise UserError(f"backend {backend!r}: choose torch, onnx or onnx-fp32")
