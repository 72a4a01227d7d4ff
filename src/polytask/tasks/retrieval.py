"""Retrieval: two towers over the one shared encoder — queries and documents embedded, ranked by similarity."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from polytask.errors import UserError
from polytask.evaluate.ranking import ranking_metrics
from polytask.tasks.base import TASK_TYPES, Example, TaskType, symmetric_kl

RANKING_KS = (1, 5, 10)  # the cut-offs every evaluation reports
INITIAL_TEMPERATURE = 0.05  # a learned temperature starts here (sentence-transformers' MNRL scale 20 = 1/0.05)
MAX_SCALE = math.log(100.0)  # the learned 1/temperature is capped at 100, as in CLIP


class RetrievalHead(nn.Module):
    """The projection head of a retrieval task: pooled vector [N, H] -> unit-length embedding [N, D] times
    ``sqrt(1 / temperature)``, so that the dot product of a query and a document embedding is their cosine
    similarity divided by the temperature — the InfoNCE logit — and the temperature (learned, or fixed when the
    task sets one) lives with the head's other parameters (saved, loaded, trained by the head learning rate)."""

    def __init__(self, hidden: int, dim: int, dropout: float, temperature: float | None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, dim)
        # log(1 / temperature): a parameter when learned, a buffer (saved, not trained) when fixed
        scale = torch.tensor(math.log(1.0 / (temperature or INITIAL_TEMPERATURE)))
        if temperature is None:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.proj(self.dropout(pooled)).float(), dim=-1)  # [N, D], unit length
        return emb * self.log_scale.clamp(max=MAX_SCALE).mul(0.5).exp()  # [N, D] * sqrt(1 / T)


@dataclass
class Corpus:
    """The candidate documents of a retrieval task: their ids, texts and tokenised features (tokenised once)."""

    ids: list[str]
    texts: list[str]
    features: list[dict[str, Any]]
    position: dict[str, int]  # id -> row
    source: str  # for messages
    raw: list[dict[str, Any]]  # {"id", "document", "document_pair"} per row: what a checkpoint keeps


@TASK_TYPES.register("retrieval")
class Retrieval(TaskType):
    """Dense retrieval: rank the documents of a corpus for a query (semantic search, recommendation).

    Query and document are embedded by the same shared encoder, mean-pooled and projected by this task's head
    (``RetrievalHead``); their score is the cosine similarity. Training uses InfoNCE with in-batch negatives
    (van den Oord et al. 2018; Henderson et al. 2017, as sentence-transformers' MultipleNegativesRankingLoss):
    each query's own document is the positive and every other document of the batch — plus each row's hard
    negative when the ``negative`` column is set — a negative. Under several processes (DDP) the negatives are
    the process's own batch: they are not gathered across processes.

    Columns: ``query`` (default ``text``), ``document`` (+ ``document_pair``), optionally ``document_id``,
    ``negative``, ``exclude`` (ids never ranked for that row) and ``relevance`` (graded relevance, a number:
    rows with relevance <= 0 are not positives; absent: 1). ``logq_correction`` corrects the in-batch softmax for
    documents that are positives of many rows (popular items in recommendation; see ``scores``). Evaluation
    embeds the ``corpus`` once and ranks all of it exactly (a matrix product) for every query; metrics recall@k,
    hit rate@k, NDCG@k, MRR@k for k in 1, 5, 10 (main: ndcg@10).
    Prediction: ``{"documents": [{"id", "document", "score"}, ...]}``, the ``top_k`` best.

    Example config::

        tasks:
          search:
            type: retrieval
            train: pairs.jsonl        # {"question": ..., "passage": ..., "passage_id": ...}
            query: question
            document: passage
            document_id: passage_id
            corpus: passages.jsonl    # every candidate {"passage_id": ..., "passage": ...}
    """

    type_name = "retrieval"
    metric_names = tuple(f"{m}@{k}" for k in RANKING_KS for m in ("ndcg", "recall", "mrr", "hit_rate"))
    main_metric = "ndcg@10"
    expands_rows = True  # a training batch holds B queries, then their B documents, then hard negatives
    shares_inputs = False
    has_eval_loss = False

    def __init__(self, name, cfg, labels=None):
        super().__init__(name, cfg, labels)
        self.corpus: Corpus | None = None
        self.index: torch.Tensor | None = None  # unit-length corpus embeddings [C, D] of the current evaluation
        self.log_frequency: dict[str, float] = {}  # logQ correction: document -> log of its share of positives
        self.saved_corpus: Path | None = None  # the corpus a loaded checkpoint keeps

    @property
    def input_column(self) -> str:
        return self.cfg.query or self.cfg.text

    # -- reading ------------------------------------------------------------------------------------------
    @property
    def label_column(self) -> str:
        """A row without a document (its id, when documents have ids) is not this task's."""
        return self.cfg.document_id or self.cfg.document

    def read(self, record: dict[str, Any], where: str, labelled: bool = True) -> Example:
        query = self._text(record, self.input_column, where)
        exclude = self._exclude(record, where)
        label = None
        if labelled:
            doc_id = self._id(record, self.cfg.document_id, where) if self.cfg.document_id else None
            # with ids the corpus holds the document's text: a row needs only the id
            text = (self._text(record, self.cfg.document, where) if doc_id is None or self.cfg.document in record
                    else None)
            label = {
                "document": text,
                "document_pair": (self._text(record, self.cfg.document_pair, where)
                                  if self.cfg.document_pair and doc_id is None else None),
                "id": doc_id,
                "negative": self._text(record, self.cfg.negative, where) if self.cfg.negative else None,
                "relevance": self._relevance(record, where),
                "query": query,  # rows that share a query (and its exclusions) are scored as one query
                "exclude": exclude,
            }
        return Example(text=query, text_pair=None, label=label, where=where, extra={"exclude": exclude})

    def _id(self, record: dict[str, Any], column: str, where: str) -> str:
        value = self._column(record, column, where)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            raise UserError(f"{where}: document id column '{column}' must be a non-empty string or integer, "
                            f"got {value!r}")
        return str(value)

    def _exclude(self, record: dict[str, Any], where: str) -> list[str]:
        """The row's excluded ids; a list of strings is kept as it is, not copied (MovieLens' 98k training rows
        list ~10M ids between them)."""
        if not self.cfg.exclude or record.get(self.cfg.exclude) is None:
            return []
        value = record[self.cfg.exclude]
        if isinstance(value, str):
            value = [v for v in value.split(self.cfg.label_separator) if v.strip()]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (str, int))
                                                       for v in value):
            raise UserError(f"{where}: column '{self.cfg.exclude}' must list document ids, got {value!r}")
        return value if all(isinstance(v, str) for v in value) else [str(v) for v in value]

    def _relevance(self, record: dict[str, Any], where: str) -> float:
        column = self.cfg.relevance
        if column is None:
            return 1.0  # plain (query, relevant document) pairs
        raw = self._column(record, column, where)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(raw, bool) or not math.isfinite(value):
            raise UserError(f"{where}: relevance column '{column}' of retrieval task '{self.name}' must be a "
                            f"number, got {raw!r}")
        return value

    def fit_labels(self, examples, known=None) -> None:
        """No vocabulary; with ``logq_correction``, how often each document is a training positive."""
        self.set_labels([])
        if self.cfg.logq_correction:
            counts: dict[str, int] = {}
            for ex in examples:
                key = self.document_key(ex.label)
                counts[key] = counts.get(key, 0) + 1
            total = sum(counts.values())
            self.log_frequency = {k: math.log(c / total) for k, c in counts.items()}

    # -- corpus -------------------------------------------------------------------------------------------
    def corpus_rows(self) -> tuple[list[tuple[str, str, str | None]], str]:
        """``[(id, text, pair)]`` of the candidate documents and where they come from: the copy a checkpoint
        keeps (``corpus/<task>.jsonl``), else the ``corpus`` file, else the built-in dataset's corpus. Ids: the
        ``document_id`` column, else the document text itself (the same text twice is one candidate)."""
        if self.saved_corpus is not None:
            from polytask.data.readers import read_rows

            return ([(r["id"], r["document"], r.get("document_pair")) for _, r in read_rows(self.saved_corpus)],
                    str(self.saved_corpus))
        if self.cfg.corpus is not None:
            from polytask.data.readers import read_rows

            path = Path(self.cfg.corpus)
            if not path.is_file():
                raise UserError(f"config key 'tasks.{self.name}.corpus': no such file: {path}")
            rows, source = read_rows(path, key=f"tasks.{self.name}.corpus"), str(path)
        else:
            from polytask.catalog.datasets import DATASETS

            rows, source = DATASETS.get(self.cfg.dataset).corpus(), f"built-in dataset '{self.cfg.dataset}'"
            if rows is None:
                raise UserError(f"config key 'tasks.{self.name}.corpus' is missing: {source} has no corpus")
        if not rows:
            raise UserError(f"the corpus of retrieval task '{self.name}' ({source}) has no rows")
        out, seen = [], set()
        for where, rec in rows:
            text = self._text(rec, self.cfg.document, where)
            pair = self._text(rec, self.cfg.document_pair, where) if self.cfg.document_pair else None
            doc_id = self._id(rec, self.cfg.document_id, where) if self.cfg.document_id else text
            if doc_id in seen:
                if self.cfg.document_id:
                    raise UserError(f"{where}: document id {doc_id!r} appears twice in the corpus ({source})")
                continue
            seen.add(doc_id)
            out.append((doc_id, text, pair))
        return out, source

    def load_corpus(self, tokenizer, max_length: int) -> Corpus:
        """The candidate documents read and tokenised (once per task object)."""
        if self.corpus is not None:
            return self.corpus
        rows, source = self.corpus_rows()
        texts, pairs = [t for _, t, _ in rows], [p for _, _, p in rows]
        enc = tokenizer(texts, pairs if self.cfg.document_pair else None, truncation=True, max_length=max_length)
        self.corpus = Corpus(ids=[i for i, _, _ in rows], texts=[t if p is None else f"{t} {p}" for _, t, p in rows],
                             features=[_feature(enc, i) for i in range(len(rows))],
                             position={i: k for k, (i, _, _) in enumerate(rows)}, source=source,
                             raw=[{"id": i, "document": t, "document_pair": p} for i, t, p in rows])
        return self.corpus

    def save_files(self, folder: Path) -> None:
        """Keep the corpus with the checkpoint (or export), so that it predicts the same documents anywhere —
        not whatever the corpus path holds by then, nor only where the built-in dataset is installed."""
        if self.corpus is None and self.saved_corpus is None and self.cfg.corpus is None and self.cfg.dataset is None:
            return
        rows = (self.corpus.raw if self.corpus is not None
                else [{"id": i, "document": t, "document_pair": p} for i, t, p in self.corpus_rows()[0]])
        (folder / "corpus").mkdir(exist_ok=True)
        with open(folder / "corpus" / f"{self.name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def load_files(self, folder: Path) -> None:
        saved = folder / "corpus" / f"{self.name}.jsonl"
        if saved.is_file():
            self.saved_corpus = saved

    def document_key(self, label: dict[str, Any]) -> str:
        """The corpus id of a row's relevant document."""
        return label["id"] if self.cfg.document_id else label["document"]

    def check_in_corpus(self, examples: list[Example], corpus: Corpus) -> None:
        for ex in examples:
            if ex.label is not None and self.document_key(ex.label) not in corpus.position:
                what = "id" if self.cfg.document_id else "text"
                raise UserError(f"{ex.where}: the document {what} {self.document_key(ex.label)!r} is not in the "
                                f"corpus of retrieval task '{self.name}' ({corpus.source})")

    def prepare_predict(self, embed: Callable[[list[dict[str, Any]]], torch.Tensor], refresh: bool = False) -> None:
        """Embed the corpus with the model as it is now (``embed``: features -> head outputs [C, D]); once per
        evaluation (``refresh``), once per loaded model otherwise."""
        if self.corpus is None:
            raise UserError(f"retrieval task '{self.name}': its corpus was not loaded")
        if self.index is None or refresh:
            self.index = F.normalize(embed(self.corpus.features).float(), dim=-1)  # [C, D], unit rows: once

    # -- features -----------------------------------------------------------------------------------------
    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Each feature: the query's input ids (what the encoder reads at prediction), the excluded ids and,
        for labelled rows, the document's tokens (the corpus's own, when documents have ids), the hard
        negative's, and ``labels`` = [relevance, log q of the document, its corpus row]."""
        corpus = self.load_corpus(tokenizer, max_length)
        self.check_in_corpus(examples, corpus)
        q = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length)
        labelled = [ex for ex in examples if ex.label is not None]
        d = n = None
        if labelled and not self.cfg.document_id:
            d = tokenizer([ex.label["document"] for ex in labelled],
                          [ex.label["document_pair"] for ex in labelled] if self.cfg.document_pair else None,
                          truncation=True, max_length=max_length)
        if labelled and self.cfg.negative:
            n = tokenizer([ex.label["negative"] for ex in labelled], truncation=True, max_length=max_length)
        feats, j = [], 0
        for i, ex in enumerate(examples):
            f = {**_feature(q, i), "exclude": (ex.extra or {}).get("exclude", [])}
            if ex.label is not None:
                key = self.document_key(ex.label)
                f["document"] = corpus.features[corpus.position[key]] if d is None else _feature(d, j)
                if n is not None:
                    f["negative"] = _feature(n, j)
                # log q: what the logQ correction subtracts from the document's in-batch score (0 without it);
                # the corpus row tells which in-batch documents are the same one (never each other's negative)
                f["labels"] = [ex.label["relevance"], self.log_frequency.get(key, 0.0),
                               float(corpus.position[key])]
                j += 1
            feats.append(f)
        return feats

    def encoder_rows(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The encoder rows of a training batch: its B queries, then their B documents, then the hard negatives
        (rows without a positive document — relevance <= 0 — were left out when the batch was made)."""
        return ([{k: f[k] for k in ("input_ids", "token_type_ids") if k in f} for f in features]
                + [f["document"] for f in features] + [f["negative"] for f in features if "negative" in f])

    def collate_labels(self, labels: list[list[float]], seq_len: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float64)  # [B, 3]: relevance, log q, corpus row (exact in fp64)

    def placeholder_labels(self, feature):
        raise UserError(f"retrieval task '{self.name}' cannot learn from unlabelled rows")

    def train_examples(self, examples: list[Example]) -> list[Example]:
        """Training rows: those whose document is relevant (relevance > 0); say how many were left out."""
        kept = [ex for ex in examples if ex.label["relevance"] > 0]
        if len(kept) < len(examples):
            print(f"polytask: task '{self.name}': {len(examples) - len(kept)} training rows with relevance <= 0 are "
                  "not positives and are left out", file=sys.stderr, flush=True)
        if not kept:
            raise UserError(f"task '{self.name}' has no training row with a relevance > 0")
        return kept

    # -- head, loss, outputs ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return self.cfg.embedding_dim or 0  # 0: the encoder's hidden size (build_head knows it)

    def build_head(self, hidden: int, dropout: float) -> nn.Module:
        return RetrievalHead(hidden, self.cfg.embedding_dim or hidden, dropout, self.cfg.temperature)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE logits of a training batch's head outputs ``logits`` [N, D] (``n`` queries first, then their
        ``n`` documents, then hard negatives; ``labels`` [n, 2]): query i against every document row -> [n, N - n].

        logQ correction (Yi et al. 2019, "Sampling-bias-corrected neural modeling"): a document's chance of being
        an in-batch negative is its share q of the positives, so plain in-batch softmax learns score ~ log p(d|q)
        - log q(d) and pushes popular documents down; subtracting log q(d) from the in-batch columns (not from the
        hard negatives, which are not drawn by frequency) makes the score estimate log p(d|q)."""
        n = labels.shape[0]
        out = logits[:n].float() @ logits[n:].float().T  # [n, N - n]
        in_batch = out[:, :n]
        if self.cfg.logq_correction:
            in_batch = in_batch - labels[:, 1].float()[None, :]
        # a document that is the positive of two rows of the batch is no negative of either: mask the copy
        rows = labels[:, 2]
        same = (rows[:, None] == rows[None, :]) & ~torch.eye(n, dtype=torch.bool, device=rows.device)  # [n, n]
        in_batch = in_batch.masked_fill(same, -1e4)  # (not -inf: SMART's KL of two such rows stays finite)
        return torch.cat([in_batch, out[:, n:]], dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, relevance = labels.shape[0], labels[:, 0].float()  # labels [B, 3]; logits [2B + negatives, D]
        per_query = F.cross_entropy(self.scores(logits, labels), torch.arange(n, device=logits.device),
                                    reduction="none")
        return (per_query * relevance).sum() / relevance.sum()  # graded relevance weighs its query's term

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return symmetric_kl(self.scores(a, labels), self.scores(b, labels))  # in-batch distributions (SMART)

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The ``top_k`` best corpus documents of each query [B, D] (cosine scores), excluded ids left out; with
        ``ranking``, the ids of the best 10 when ``top_k`` is smaller (what the metrics read)."""
        if self.index is None or self.corpus is None:
            raise UserError(f"retrieval task '{self.name}': the corpus was not embedded before prediction")
        scores = F.normalize(logits.float(), dim=-1) @ self.index.to(logits.device).T  # [B, C] cosine similarity
        for i, ids in enumerate(batch.get("exclude") or []):
            rows = [self.corpus.position[d] for d in ids if d in self.corpus.position]
            if rows:
                scores[i, rows] = float("-inf")
        k = min(max(self.cfg.top_k, max(RANKING_KS)), scores.shape[1])
        top, idx = scores.topk(k, dim=-1)  # [B, k]
        out = []
        for row_scores, row_idx in zip(top.tolist(), idx.tolist()):
            docs = [{"id": self.corpus.ids[j], "document": self.corpus.texts[j], "score": round(s, 6)}
                    for s, j in zip(row_scores, row_idx) if s != float("-inf")]
            pred: dict[str, Any] = {"documents": docs[:self.cfg.top_k]}
            if len(docs) > self.cfg.top_k:  # the deeper ranking the metrics at k = 10 read
                pred["ranking"] = [d["id"] for d in docs]
            out.append(pred)
        return out

    def metrics(self, predictions: list[dict[str, Any]], golds: list[dict[str, Any]]) -> dict[str, Any]:
        """Ranking metrics per distinct query: rows that share a query (and its exclusions) pool their relevant
        documents, so a query with three relevant documents counts once, with all three."""
        queries: dict[Any, tuple[list[str], dict[str, float]]] = {}
        for pred, gold in zip(predictions, golds):
            ranking = pred.get("ranking") or [d["id"] for d in pred["documents"]]
            _, relevant = queries.setdefault((gold["query"], tuple(gold["exclude"])), (ranking, {}))
            doc = self.document_key(gold)
            relevant[doc] = max(relevant.get(doc, 0.0), gold["relevance"])
        pooled = [(r, rel) for r, rel in queries.values() if any(g > 0 for g in rel.values())]
        out = ranking_metrics([r for r, _ in pooled], [rel for _, rel in pooled], RANKING_KS)
        out["queries"] = len(pooled)
        return out

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "embedding_dim": self.cfg.embedding_dim}


def _feature(enc, i: int) -> dict[str, Any]:
    f = {"input_ids": enc["input_ids"][i]}
    if "token_type_ids" in enc:
        f["token_type_ids"] = enc["token_type_ids"][i]
    return f
