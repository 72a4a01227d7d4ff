"""A deterministic noise suite for test examples: typos, casing, punctuation, whitespace, dropped words, and,
for Chinese text, dropped / swapped / duplicated characters.

Every noise works on a sequence of *units* — the words of English text, the characters of Chinese text or
of a character-tagged string — and remembers, for each new unit, which original unit it came from. Tagging
labels follow through that map: a span keeps the new positions of its units (a dropped unit leaves its span
shorter; a span whose units are all dropped disappears), and the tags are rewritten in the data's own
scheme (BIO / BIOES / BMES); plain per-unit tags (no scheme) are copied from each unit's origin.

``rate`` is the probability that one unit is hit (at least one unit of every example is, so no example
passes through clean). The noise drawn for an example depends only on ``(seed, noise, example index)``.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from polytask.tasks.spans import detect_scheme, extract_spans, spans_to_tags, split_tag

ENGLISH = ("typo_swap", "typo_drop", "typo_insert", "typo_keyboard", "casing", "punctuation", "whitespace",
           "word_dropout")
CHINESE = ("char_drop", "char_swap", "char_duplicate")
NOISES = ENGLISH + CHINESE

# QWERTY neighbours of each letter (same row and the rows above and below)
_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
KEYBOARD: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _ch in enumerate(_row):
        near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
        for _other in (_r - 1, _r + 1):
            if 0 <= _other < len(_ROWS):
                near += [_ROWS[_other][j] for j in (_c - 1, _c, _c + 1) if 0 <= j < len(_ROWS[_other])]
        KEYBOARD[_ch] = "".join(near)
PUNCTUATION = ",.;:!?'\"-"


def is_cjk_text(text: str) -> bool:
    """Chinese (CJK) text: at least a third of its non-space characters are CJK ideographs."""
    chars = [c for c in text if not c.isspace()]
    cjk = sum(1 for c in chars if "\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff")
    return bool(chars) and cjk * 3 >= len(chars)


@dataclass
class Units:
    """A text as units, each with the index of the original unit it came from (None: inserted)."""

    items: list[str]
    origin: list[int | None]
    joiners: list[str]  # what follows each unit when joined back into a string (" " for words, "" for chars)

    @classmethod
    def of(cls, items: list[str], joiner: str) -> Units:
        return cls(list(items), list(range(len(items))), [joiner] * len(items))

    def text(self) -> str:
        return "".join(u + j for u, j in zip(self.items, self.joiners)).rstrip(" ") if self.items else ""


def example_rng(seed: int, noise: str, index: int) -> random.Random:
    return random.Random(zlib.crc32(f"{seed}:{noise}:{index}".encode()))


def _hit(n: int, rate: float, rng: random.Random, eligible: list[int]) -> set[int]:
    """Units to perturb: each eligible unit with probability ``rate``, at least one."""
    if not eligible:
        return set()
    chosen = {i for i in eligible if rng.random() < rate}
    return chosen or {rng.choice(eligible)}


def _letters(word: str) -> list[int]:
    return [i for i, c in enumerate(word) if c.isalpha()]


def _typo(kind: str) -> Callable[[str, random.Random], str]:
    def apply(word: str, rng: random.Random) -> str:
        pos = _letters(word)
        if kind == "swap":
            pairs = [i for i in pos if i + 1 < len(word) and word[i + 1].isalpha() and word[i] != word[i + 1]]
            if not pairs:
                return word
            i = rng.choice(pairs)
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        if kind == "drop":
            if len(word) < 2 or not pos:
                return word  # never empty a word
            i = rng.choice(pos)
            return word[:i] + word[i + 1:]
        if kind == "insert":
            i = rng.randrange(len(word) + 1)
            c = rng.choice(string.ascii_lowercase)
            return word[:i] + (c.upper() if word[i - 1:i].isupper() else c) + word[i:]
        # keyboard: a letter becomes one of its QWERTY neighbours
        keyed = [i for i in pos if word[i].lower() in KEYBOARD]
        if not keyed:
            return word
        i = rng.choice(keyed)
        c = rng.choice(KEYBOARD[word[i].lower()])
        return word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1:]

    return apply


def _casing(word: str, rng: random.Random) -> str:
    style = rng.choice(("upper", "lower", "title", "random"))
    if style == "upper":
        return word.upper()
    if style == "lower":
        return word.lower()
    if style == "title":
        return word[:1].upper() + word[1:].lower()
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)


def _punctuation(word: str, rng: random.Random) -> str:
    stripped = word.strip(PUNCTUATION)
    if stripped and stripped != word and rng.random() < 0.5:
        return stripped  # punctuation lost
    mark = rng.choice(PUNCTUATION)
    return word + mark if rng.random() < 0.7 else mark + word


def apply_noise(units: Units, noise: str, rate: float, rng: random.Random, word_units: bool) -> Units:
    """``units`` with ``noise`` applied (a new object; ``units`` is not changed)."""
    items, origin, joiners = list(units.items), list(units.origin), list(units.joiners)
    n = len(items)
    if noise.startswith("typo_") or noise in ("casing", "punctuation"):
        if word_units:
            fn = {"casing": _casing, "punctuation": _punctuation}.get(noise) or _typo(noise[5:])
            eligible = [i for i in range(n) if noise == "punctuation" or _letters(items[i])]
            for i in sorted(_hit(n, rate, rng, eligible)):
                items[i] = fn(items[i], rng)
            return Units(items, origin, joiners)
        # character units (a character-tagged string): typos act on letters, one character at a time
        return _char_level_english(units, noise, rate, rng)
    if noise == "whitespace":  # the space after a word doubled, turned into a tab or newline, or lost
        for i in sorted(_hit(n, rate, rng, list(range(n - 1)))):
            joiners[i] = rng.choice(("  ", "\t", "", " \n "))
        return Units(items, origin, joiners)
    if noise in ("word_dropout", "char_drop"):
        if n < 2:
            return Units(items, origin, joiners)  # never drop the only unit
        drop = _hit(n, rate, rng, list(range(n)))
        if len(drop) == n:
            drop.discard(rng.choice(sorted(drop)))
        keep = [i for i in range(n) if i not in drop]
        return Units([items[i] for i in keep], [origin[i] for i in keep], [joiners[i] for i in keep])
    if noise == "char_swap":  # neighbours swapped; a unit moves one place at most
        done: set[int] = set()
        for i in sorted(_hit(n, rate, rng, list(range(n - 1)))):
            if i - 1 in done:
                continue
            done.add(i)
            items[i], items[i + 1] = items[i + 1], items[i]
            origin[i], origin[i + 1] = origin[i + 1], origin[i]
        return Units(items, origin, joiners)
    if noise == "char_duplicate":
        out = Units([], [], [])
        hit = _hit(n, rate, rng, list(range(n)))
        for i in range(n):
            reps = 2 if i in hit else 1
            out.items += [items[i]] * reps
            out.origin += [origin[i]] * reps
            out.joiners += [joiners[i]] * reps
        return out
    raise ValueError(f"unknown noise {noise!r}")


def _char_level_english(units: Units, noise: str, rate: float, rng: random.Random) -> Units:
    items, origin, joiners = list(units.items), list(units.origin), list(units.joiners)
    letters = [i for i, c in enumerate(items) if c.isalpha()]
    hit = sorted(_hit(len(items), rate, rng, letters))
    if noise == "casing":
        for i in hit:
            if len(items[i].swapcase()) == 1:  # ('ß'.swapcase() is 'SS': it would shift the tags)
                items[i] = items[i].swapcase()
    elif noise == "typo_keyboard":
        for i in hit:
            near = KEYBOARD.get(items[i].lower())
            if near:
                items[i] = rng.choice(near)
    elif noise == "typo_swap":
        done: set[int] = set()
        for i in hit:
            if i + 1 < len(items) and i - 1 not in done:
                done.add(i)
                items[i], items[i + 1] = items[i + 1], items[i]
                origin[i], origin[i + 1] = origin[i + 1], origin[i]
    elif noise == "typo_drop":
        return apply_noise(units, "char_drop", rate, rng, word_units=False)
    elif noise in ("typo_insert", "punctuation"):
        out = Units([], [], [])
        for i in range(len(items)):
            out.items.append(items[i])
            out.origin.append(origin[i])
            out.joiners.append(joiners[i])
            if i in hit:
                extra = rng.choice(string.ascii_lowercase if noise == "typo_insert" else PUNCTUATION)
                out.items.append(extra)
                out.origin.append(None)
                out.joiners.append(joiners[i])
        return out
    return Units(items, origin, joiners)


def realign_tags(tags: list[str], units: Units) -> list[str]:
    """The tags of the noisy units, from the original ``tags`` and the units' origins (see module doc)."""
    n = len(units.items)
    span_like = all(t == "O" or (split_tag(t)[1] and len(t) > len(split_tag(t)[1]) + 1) for t in tags)
    if not span_like:
        fill = "O" if "O" in tags else (tags[0] if tags else "O")
        return [tags[o] if o is not None else fill for o in units.origin]
    scheme, sep = detect_scheme(tags)
    positions: dict[int, list[int]] = {}
    for new, o in enumerate(units.origin):
        if o is not None:
            positions.setdefault(o, []).append(new)
    spans = []
    for typ, start, end in extract_spans(tags):
        new = [p for o in range(start, end) for p in positions.get(o, [])]
        if new:
            spans.append((typ, min(new), max(new) + 1))
    spans.sort(key=lambda s: (s[1], s[2]))
    cleaned, last_end = [], 0  # swaps at span edges can make neighbours overlap: trim the later one
    for typ, s, e in spans:
        s = max(s, last_end)
        if s < e:
            cleaned.append((typ, s, e))
            last_end = e
    return spans_to_tags(cleaned, n, scheme, sep)


def noisy_text(text: str, noise: str, rate: float, rng: random.Random) -> str:
    """A plain string with ``noise``: words for English text, characters for Chinese text."""
    if is_cjk_text(text):
        units = Units.of(list(text), "")
        return apply_noise(units, noise, rate, rng, word_units=False).text()
    units = Units.of(text.split(), " ")
    return apply_noise(units, noise, rate, rng, word_units=True).text() or text


def applies(noise: str, chinese: bool, tagged: str | None) -> bool:
    """Whether a noise is meaningful for a task: the English suite for English text, the Chinese suite for
    Chinese text. ``tagged`` is None for sequence tasks, else "words" or "chars": a word list has no spaces
    to disturb, and character tags leave no room for spaces or whole-word drops."""
    if chinese:
        return noise in CHINESE
    if noise in CHINESE:
        return False
    if tagged == "words":
        return noise != "whitespace"
    if tagged == "chars":
        return noise not in ("whitespace", "word_dropout")
    return True
