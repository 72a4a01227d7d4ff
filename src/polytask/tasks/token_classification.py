"""Token classification (tagging): one tag per word, or one tag per character for text without spaces."""

from __future__ import annotations

import unicodedata
from typing import Any

import torch
import torch.nn.functional as F

from polytask.errors import NotSupportedError, UserError
from polytask.tasks.base import (
    IGNORE_INDEX,
    TASK_TYPES,
    Example,
    TaskType,
    soft_cross_entropy,
    softmax_targets,
    symmetric_kl,
)
from polytask.tasks.spans import detect_scheme, extract_spans, has_span_scheme, scheme_tags, span_scores, spans_to_tags


def is_cjk(char: str) -> bool:
    """Han ideographs, kana, hangul and CJK punctuation: scripts written without spaces between words."""
    cp = ord(char)
    return (0x2E80 <= cp <= 0x9FFF or 0xAC00 <= cp <= 0xD7AF or 0xF900 <= cp <= 0xFAFF
            or 0xFF00 <= cp <= 0xFFEF or 0x20000 <= cp <= 0x3FFFF)


@TASK_TYPES.register("token_classification")
class TokenClassification(TaskType):
    """One tag per word (``units: words``) or per character (``units: chars``).

    Words: ``text`` holds a list of words (or a string, split on whitespace) and ``label`` a list of tags (or
    a whitespace-separated string) of the same length; the head reads each word's first sub-token.

    Characters (Chinese, MSRA style): ``text`` is a string and ``label`` has one tag per character, spaces
    included. The string is tokenised as it is, and the tokenizer's character offsets say which characters
    each token covers; a token that covers several characters of a space-less script (CJK) is split into one
    token per character, so an entity boundary between two characters is always a token boundary. Gold
    entity spans become token spans for training; predicted token spans become character spans again,
    written back in the task's tag scheme. An entity that starts inside a token the tokenizer did not split
    (say the middle of a Latin word) cannot be predicted. Needs a fast tokenizer.

    ``units: auto`` (the default) picks characters when a string has one tag per character rather than one
    per word, and keeps that choice in the checkpoint, so ``predict`` on a plain string splits it the same way.
    Tag schemes BIO, BIOES and BMES are read. Prediction: ``{"tags": [...], "spans": [{"label", "start",
    "end", "text"}]}``, positions in words or characters, ``end`` exclusive. Words or characters past
    ``model.max_length`` are predicted as ``O``.
    Metrics: span precision/recall/F1 (exact type and boundaries), tag accuracy, per-type report. The main
    metric is span F1 when the tags follow a span scheme, and tag accuracy when no tag other than ``O`` has a
    B/I/M/E/S prefix (part-of-speech tags such as ``n``, ``v``): chosen once the labels are fitted, stored
    in the checkpoint.
    """

    type_name = "token_classification"
    level = "token"
    metric_names = ("f1", "precision", "recall", "accuracy")
    main_metric = "f1"

    def __init__(self, name, cfg, labels=None):
        super().__init__(name, cfg, labels)
        self.units = cfg.units  # "auto" until a labelled string row decides

    def default_metric(self) -> tuple[str, str]:
        if self.labels and not has_span_scheme(self.labels):
            return "accuracy", "token accuracy: tags have no span scheme"
        if not self.labels:  # not fitted yet: fit_labels chooses again
            return "f1", "span F1"
        return "f1", f"span F1: tags follow the {detect_scheme(self.labels)[0]} scheme"

    # -- reading ------------------------------------------------------------------------------------------
    def read(self, record: dict[str, Any], where: str, labelled: bool = True) -> Example:
        if self.cfg.text_pair:
            raise UserError(f"config key 'tasks.{self.name}.text_pair': token_classification does not take a "
                            "sentence pair")
        value = self._column(record, self.cfg.text, where)
        label = self.parse_label(self._column(record, self.cfg.label, where), where) if labelled else None
        if isinstance(value, str) and self._units_for(value, label, where) == "chars":
            if not value.strip():
                raise UserError(f"{where}: empty text in column '{self.cfg.text}'")
            return Example(text=value, text_pair=None, label=label, where=where)
        if self.units == "chars":
            raise UserError(f"{where}: column '{self.cfg.text}' must be a string for character-level tagging "
                            f"(tasks.{self.name}.units: chars), got {type(value).__name__}")
        words = self._words(value, self.cfg.text, where)
        if label is not None and len(label) != len(words):
            raise UserError(f"{where}: {len(label)} tags in column '{self.cfg.label}' for {len(words)} "
                            f"words in column '{self.cfg.text}' (task '{self.name}')")
        return Example(text=words, text_pair=None, label=label, where=where)

    def _units_for(self, text: str, label: list[str] | None, where: str) -> str:
        """Words or characters for a string row; under ``auto`` the first labelled row decides for all."""
        if label is None:
            return "chars" if self.units == "chars" else "words"
        n_words = len(text.split())
        if self.units == "chars" or (self.units == "auto" and len(label) == len(text) != n_words):
            if len(label) != len(text):
                raise UserError(f"{where}: {len(label)} tags in column '{self.cfg.label}' for {len(text)} "
                                f"characters in column '{self.cfg.text}' (task '{self.name}' tags characters)")
            self.units = "chars"
            return "chars"
        if self.units == "auto" and len(label) != n_words:
            raise UserError(f"{where}: {len(label)} tags in column '{self.cfg.label}' match neither the "
                            f"{n_words} words nor the {len(text)} characters of column '{self.cfg.text}' "
                            f"(task '{self.name}')")
        if self.units == "auto" and n_words > 1:
            self.units = "words"
        return "words"

    def _words(self, value: Any, column: str, where: str) -> list[str]:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise UserError(f"{where}: column '{column}' must be a list of words or a string, got {value!r}")
        if not value or not all(w.strip() for w in value):
            raise UserError(f"{where}: empty text (or an empty word) in column '{column}'")
        return value

    def parse_label(self, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise UserError(f"{where}: column '{self.cfg.label}' must be a list of tags, got {value!r}")
        return value

    def raw_labels(self, label: list[str]) -> list[str]:
        return label

    def fit_labels(self, examples, known=None) -> None:
        super().fit_labels(examples, known)
        if self.units == "chars":
            # Token spans are written back in the scheme, which may need tags the data never shows (a
            # two-character entity that is one token becomes S-X in BMES): every tag of every seen type.
            scheme, sep = detect_scheme(self.labels)
            types = {extract_spans([t])[0][0] for t in self.labels if t != "O"}
            self.set_labels(sorted(set(self.labels) | set(scheme_tags(types, scheme, sep))))
        if "O" in self.label_to_id:  # 'O' first: index 0 is also the tag given to words past max_length
            self.set_labels(["O"] + [t for t in self.labels if t != "O"])
        self.choose_metric()  # span F1 or token accuracy, from the fitted tag set

    def order_labels(self, first: list[str]) -> None:
        super().order_labels(first)
        self.choose_metric()

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "units": self.units}

    def load_spec(self, spec: dict[str, Any]) -> None:
        super().load_spec(spec)
        self.units = spec.get("units", self.cfg.units)

    # -- features -----------------------------------------------------------------------------------------
    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict[str, Any]]:
        if examples and isinstance(examples[0].text, str):
            return self._encode_chars(examples, tokenizer, max_length)
        enc = tokenizer([ex.text for ex in examples], is_split_into_words=True, truncation=True,
                        max_length=max_length)
        feats = []
        for i, ex in enumerate(examples):
            word_ids = enc.word_ids(i)
            # first_token[w] = position of word w's first sub-token; words cut by truncation are absent.
            first_token: list[int] = []
            for pos, w in enumerate(word_ids):
                if w is not None and w == len(first_token):
                    first_token.append(pos)
            f: dict[str, Any] = {"input_ids": enc["input_ids"][i], "first_token": first_token,
                                 "num_words": len(ex.text)}
            if "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"][i]
            if ex.label is not None:
                tag_ids = [self.label_id(t, ex.where) for t in ex.label]
                labels = [IGNORE_INDEX] * len(word_ids)
                for w, pos in enumerate(first_token):
                    labels[pos] = tag_ids[w]
                f["labels"] = labels
            feats.append(f)
        return feats

    def _encode_chars(self, examples: list[Example], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Tokenise strings with character offsets; one labelled position per token that covers characters."""
        if not getattr(tokenizer, "is_fast", False):
            raise NotSupportedError(f"task '{self.name}': character-level tagging needs a fast tokenizer "
                                    "(character offsets); this encoder's tokenizer is not one")
        enc = tokenizer([ex.text for ex in examples], add_special_tokens=False, return_offsets_mapping=True)
        head, tail = special_tokens_around(tokenizer)
        prefix, budget = len(head), max(max_length - len(head) - len(tail), 1)
        scheme, sep = detect_scheme(self.labels)
        feats = []
        for i, ex in enumerate(examples):
            ids, spans = split_cjk_tokens(ex.text, enc["input_ids"][i], enc["offset_mapping"][i], tokenizer)
            ids, spans = ids[:budget], spans[:budget]
            first_token = [prefix + k for k, (s, e) in enumerate(spans) if e > s]
            char_spans = [(s, e) for s, e in spans if e > s]
            input_ids = head + ids + tail
            f: dict[str, Any] = {"input_ids": input_ids, "first_token": first_token, "num_words": len(ex.text),
                                 "char_spans": char_spans}
            if ex.label is not None:
                for t in ex.label:
                    self.label_id(t, ex.where)  # unknown tags fail here, naming the row
                token_tags = spans_to_tags(char_to_token_spans(extract_spans(ex.label), char_spans),
                                           len(char_spans), scheme, sep)
                labels = [IGNORE_INDEX] * len(input_ids)
                for pos, tag in zip(first_token, token_tags):
                    labels[pos] = self.label_to_id.get(tag, 0)
                f["labels"] = labels
            feats.append(f)
        return feats

    def placeholder_labels(self, feature):
        # distillation's unlabelled rows: tag 0 at each word's (character's) first token marks the positions
        # the soft loss reads; the hard loss never sees these rows
        labels = [IGNORE_INDEX] * len(feature["input_ids"])
        for pos in feature["first_token"]:
            labels[pos] = 0
        return labels

    def collate_labels(self, labels: list[list[int]], seq_len: int) -> torch.Tensor:
        out = torch.full((len(labels), seq_len), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for row, lab in enumerate(labels):
            out[row, : len(lab)] = torch.tensor(lab)
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # logits [B, T, C] -> [B*T, C]; labels [B, T] -> [B*T]; IGNORE_INDEX rows are skipped
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels.flatten() != IGNORE_INDEX  # labelled positions: the first token of each word / char
        return symmetric_kl(a.flatten(0, 1)[keep], b.flatten(0, 1)[keep])

    def soft_targets(self, logits, temperature):
        return softmax_targets(logits, temperature)  # [B, T, C]

    def soft_loss(self, logits, targets, labels, temperature):
        keep = labels.flatten() != IGNORE_INDEX  # per labelled token, like the hard loss: [B*T]
        return soft_cross_entropy(logits.flatten(0, 1)[keep], targets.flatten(0, 1)[keep], temperature)

    def ensemble_logits(self, logits):
        return softmax_targets(logits, 1.0).clamp(min=1e-12).log()

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        pred_ids = logits.argmax(-1).tolist()  # [B, T]
        char_level = batch.get("char_spans")
        scheme, sep = detect_scheme(self.labels) if char_level else ("BIO", "-")
        out = []
        for row, (first, n_units) in enumerate(zip(batch["first_token"], batch["num_words"])):
            tags = [self.labels[pred_ids[row][pos]] for pos in first]
            words = batch["words"][row] if "words" in batch else None
            if char_level:  # token spans -> character spans -> one tag per character
                cs = char_level[row]
                spans = [(typ, cs[s][0], cs[e - 1][1]) for typ, s, e in extract_spans(tags)]
                tags = spans_to_tags(spans, n_units, scheme, sep)
            else:
                tags += [self.labels[0]] * (n_units - len(tags))  # words cut off by max_length
                spans = extract_spans(tags)
            out.append({"tags": tags, "spans": [{"label": typ, "start": s, "end": e, **_span_text(words, s, e)}
                                                for typ, s, e in spans]})
        return out

    def metrics(self, predictions: list[dict[str, Any]], golds: list[list[str]]) -> dict[str, Any]:
        pred = [p["tags"] for p in predictions]
        scores = span_scores(golds, pred)
        n = sum(len(g) for g in golds)
        correct = sum(pt == gt for p, g in zip(pred, golds) for pt, gt in zip(p, g))
        return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
                "accuracy": correct / max(n, 1), "report": scores["per_type"]}


def _span_text(words, start: int, end: int) -> dict[str, str]:
    if words is None:
        return {}
    return {"text": words[start:end] if isinstance(words, str) else " ".join(words[start:end])}


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids put before and after one sequence (``[CLS]``/``[SEP]``, ``<s>``/``</s>``)."""
    with_special = tokenizer("x")["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            return with_special[:k], with_special[k + len(plain):]
    raise NotSupportedError("cannot tell where this tokenizer puts its special tokens")


def split_cjk_tokens(text: str, ids: list[int], offsets, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokens as ``(ids, character spans)``, with every token that covers several characters of a space-less
    script split into one token per character (looked up in the vocabulary, also as a word-initial ``▁`` piece;
    characters in neither become ``unk``).

    Tokens that cover no character (a lone word-start marker) get an empty span and carry no label."""
    out_ids: list[int] = []
    out_spans: list[tuple[int, int]] = []
    for tid, (s, e) in zip(ids, offsets):
        piece = text[s:e]
        if e - s > 1 and any(is_cjk(c) for c in piece):
            for k, c in enumerate(piece):
                if c.isspace() or unicodedata.category(c) == "Mn":
                    continue
                out_ids.append(_char_id(c, tokenizer))
                out_spans.append((s + k, s + k + 1))
        else:
            out_ids.append(tid)
            out_spans.append((s, e))
    # A lone word-start marker ('▁' before 国务院) claims the first character that the next token covers
    # too: clip every span at the next token's start, which leaves the marker covering nothing.
    for k in range(len(out_spans) - 1):
        s, e = out_spans[k]
        nxt = out_spans[k + 1][0]
        if s <= nxt < e:
            out_spans[k] = (s, nxt)
    return out_ids, out_spans


def _char_id(char: str, tokenizer) -> int:
    """Vocabulary id of one character: as a piece, after the tokenizer's own normalisation (fullwidth
    punctuation -> ASCII), or as a word-initial SentencePiece piece; else ``unk``."""
    unk = tokenizer.unk_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    candidates = [char]
    if normalizer is not None:
        candidates.append(normalizer.normalize_str(char))
    for c in candidates:
        for piece in (c, "\u2581" + c):
            tid = tokenizer.convert_tokens_to_ids(piece)
            if tid is not None and tid != unk:
                return tid
    return unk


def char_to_token_spans(spans, char_spans: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    """Character spans ``(type, start, end)`` -> token spans over the tokens that start inside each span."""
    out = []
    for typ, start, end in spans:
        inside = [k for k, (s, _) in enumerate(char_spans) if start <= s < end]
        if inside:
            out.append((typ, inside[0], inside[-1] + 1))
    return out
