"""Entity spans from tag sequences (BIO, BIOES and BMES schemes), and span-level scoring.

Tags are ``O`` or ``<prefix>-<type>`` (``B-PER``; ``_`` is accepted as well as ``-``). Prefixes:
B (begin), I or M (inside), E (end), S (single). Decoding is lenient like conlleval: an inside tag that
does not continue a span of the same type starts a new span.
"""

from __future__ import annotations

from typing import Any


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER" -> ("B", "PER")``; ``"O" -> ("O", "")``; a tag without prefix is treated as inside."""
    if tag == "O" or not tag:
        return "O", ""
    for sep in ("-", "_"):
        head, s, tail = tag.partition(sep)
        if s and head in ("B", "I", "M", "E", "S"):
            return head, tail
    return "I", tag


def extract_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Spans as ``(type, start, end)`` with ``end`` exclusive, in word (or character) positions."""
    spans: list[tuple[str, int, int]] = []
    cur_type, cur_start = "", -1
    for i, tag in enumerate(tags):
        prefix, typ = split_tag(tag)
        if prefix in ("O", "B", "S") or typ != cur_type:
            if cur_start >= 0:
                spans.append((cur_type, cur_start, i))
            cur_type, cur_start = ("", -1) if prefix == "O" else (typ, i)
        if prefix in ("E", "S") and cur_start >= 0:
            spans.append((cur_type, cur_start, i + 1))
            cur_type, cur_start = "", -1
    if cur_start >= 0:
        spans.append((cur_type, cur_start, len(tags)))
    return spans


def span_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """Micro precision/recall/F1 over exact (type, start, end) matches, plus a per-type breakdown."""
    per_type: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
    for g_tags, p_tags in zip(gold, pred):
        g, p = set(extract_spans(g_tags)), set(extract_spans(p_tags))
        for typ, *_ in g:
            per_type.setdefault(typ, [0, 0, 0])[2] += 1
        for span in p:
            counts = per_type.setdefault(span[0], [0, 0, 0])
            counts[1] += 1
            counts[0] += span in g

    def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return {"precision": p, "recall": r, "f1": f, "support": n_gold}

    total = [sum(c[i] for c in per_type.values()) for i in range(3)]
    return {**prf(*total), "per_type": {t: prf(*c) for t, c in sorted(per_type.items())}}


SCHEMES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S"), "BMES": ("B", "M", "E", "S")}


def detect_scheme(tags) -> tuple[str, str]:
    """``(scheme, separator)`` of a tag set: BMES when an ``M`` prefix occurs, BIOES when ``E`` or ``S`` does,
    else BIO; the separator is the one after the prefix (``-`` or ``_``)."""
    prefixes, sep = set(), "-"
    for tag in tags:
        prefix, typ = split_tag(tag)
        if typ and len(tag) > len(typ) + 1:
            prefixes.add(prefix)
            sep = tag[1]
    if "M" in prefixes:
        return "BMES", sep
    if prefixes & {"E", "S"}:
        return "BIOES", sep
    return "BIO", sep


def has_span_scheme(tags) -> bool:
    """Whether any tag other than ``O`` has a B/I/M/E/S prefix (``B-PER``, ``S_LOC``); a tag set without one
    (part-of-speech tags such as ``n``, ``v``, ``NN``) labels words, not spans."""
    return any(tag != "O" and split_tag(tag)[1] != tag for tag in tags)


def scheme_tags(types, scheme: str, sep: str = "-") -> list[str]:
    """Every tag the scheme can write for ``types``, ``O`` first."""
    return ["O"] + [f"{p}{sep}{t}" for t in sorted(types) for p in SCHEMES[scheme]]


def spans_to_tags(spans, length: int, scheme: str, sep: str = "-") -> list[str]:
    """Write ``(type, start, end)`` spans (end exclusive, not overlapping) as a tag sequence of ``length``."""
    tags = ["O"] * length
    inside = "M" if scheme == "BMES" else "I"
    for typ, start, end in spans:
        end = min(end, length)
        if start >= end:
            continue
        if end - start == 1 and scheme != "BIO":
            tags[start] = f"S{sep}{typ}"
            continue
        tags[start] = f"B{sep}{typ}"
        for i in range(start + 1, end):
            tags[i] = f"{inside}{sep}{typ}"
        if scheme != "BIO":
            tags[end - 1] = f"E{sep}{typ}"
    return tags
