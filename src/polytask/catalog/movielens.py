"""MovieLens-100k as two built-in datasets: ``movielens_100k`` (one row per rating, for recommendation) and
``movielens_100k_items`` (one row per movie, for genre prediction as an auxiliary task).

Source: package recbole (installed with ``--no-deps``; only its files are read, it is never imported), folder
``recbole/dataset_example/ml-100k``: ``ml-100k.inter``, ``ml-100k.item`` and ``ml-100k.user``, RecBole's atomic
files — tab-separated, UTF-8, a header of typed names (``user_id:token``, ``rating:float``, ...). Columns are
found by name, never by position. GroupLens' terms (research use) forbid copying the data into this repository.

Traps in the source, and what is done about them:

- RecBole moved the year out of the title into ``release_year`` — except for one video release whose year
  column reads ``V`` and whose title still ends in ``(1995)``: a trailing ``(YYYY)`` is taken off the title and
  used as the year when the year column is not a year. The placeholder movie 267 has title and year
  ``unkonwn`` (RecBole's typo of the original ``unknown``): its title becomes ``unknown``, its year ``None``.
- 23 items repeat an earlier title (18 repeat title and year: the same film entered twice under two ids).
  They are kept: items are identified by id, as every rating refers to one id.
- The genre ``unknown`` (2 movies, 267 and 1373, which have no other genre) is kept as a genre: dropping it
  would leave those movies with no label, which the multilabel task refuses.
- Half of all ratings share their timestamp with another rating of the same user (ratings entered in one
  session), so chronological order needs a tie-break. For 415 of the 943 users the last two ratings share a
  second, so the tie-break picks test over validation. Breaking ties by item id would send the higher id to
  test — and higher ids are the less-rated movies (a median of 75 training ratings for such test movies against
  131 for the validation ones), making test systematically harder than validation. Ties are broken by a hash of
  ``(user, item)`` instead (SHA-1, the same on every machine): an order as arbitrary as the true one within the
  second, with no link to popularity.
- Titles keep MovieLens' own form (``Usual Suspects, The``; foreign films with their English title in
  parentheses); the zip code is not used.
"""

from __future__ import annotations

import gc
import hashlib
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, NamedTuple

from polytask.catalog.datasets import DATASETS, BuiltinDataset
from polytask.data.readers import Rows
from polytask.errors import UserError

LIKED_FROM = 4.0  # a rating of 4 or 5 is a positive ("liked") interaction, the usual cut on MovieLens' 1-5 scale
# liked movies named in user_text: with 8, a user_text is ~120 MiniLM tokens (median; max 174), so at
# max_length 128 truncation cuts at most the oldest of them (they come last)
HISTORY = 8
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")
_PLACEHOLDERS = {"unknown", "unkonwn"}  # the placeholder movie's title and year ("unkonwn" is RecBole's typo)
_GENDERS = {"M": "male", "F": "female"}
# occupations that are a field or a state rather than a noun for a person
_OCCUPATIONS = {"none": "with no occupation", "other": "with another occupation",
                "entertainment": "working in entertainment", "healthcare": "working in healthcare",
                "marketing": "working in marketing", "retired": "retiree"}


@dataclass(frozen=True)
class Movie:
    """One line of ``ml-100k.item``, cleaned: ``title`` is ``"Title (Year)"`` (no year when there is none)."""

    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]
    where: str

    @cached_property
    def text(self) -> str:
        """The item as text: ``"Title (Year). Genres: A, B"``."""
        return f"{self.title}. Genres: {', '.join(self.genres)}"

    @cached_property
    def snippet(self) -> str:
        """The item inside a user's history: ``"Title (Year) [A, B]"``."""
        return f"{self.title} [{', '.join(self.genres)}]"

    def record(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "item_text": self.text, "genres": list(self.genres),
                "year": self.year}


class Rating(NamedTuple):
    """One line of ``ml-100k.inter``."""

    where: str
    user: str
    item: str
    rating: float
    timestamp: int


def read_table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """``(line number, [cells of columns])`` of every row of a RecBole atomic file; a column is found by the name
    before the ``:type`` of its header cell. Lines are split on ``\\n`` only (``str.splitlines`` would also split
    inside a title at a stray ``\\x85`` or ``\\u2028``)."""
    lines = path.read_bytes().decode("utf-8").split("\n")
    header = [cell.partition(":")[0].strip() for cell in lines[0].rstrip("\r").split("\t")]
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    at = [header.index(c) for c in columns]
    out = []
    for line_no, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise UserError(f"{path}:{line_no}: {len(cells)} tab-separated fields, the header has {len(header)}")
        out.append((line_no, [cells[i] for i in at]))
    return out


def _tie_break(user: str, item_id: str) -> str:
    """Order of one user's ratings within the same second: a hash of (user, item), unrelated to popularity."""
    return hashlib.sha1(f"{user}|{item_id}".encode()).hexdigest()


def _movie(item_id: str, raw_title: str, raw_year: str, raw_genres: str, where: str) -> Movie:
    name, year = raw_title.strip(), raw_year.strip()
    found = _YEAR_IN_TITLE.search(name)
    if found:
        name = name[:found.start()]
        if not (year.isdigit() and len(year) == 4):
            year = found.group(1)
    if name.lower() in _PLACEHOLDERS:
        name = "unknown"
    number = int(year) if year.isdigit() and len(year) == 4 else None
    genres = tuple(raw_genres.split())  # genre names hold no spaces (Children's, Film-Noir, Sci-Fi)
    if not genres:
        raise UserError(f"{where}: movie {item_id} has no genre")
    return Movie(item_id, f"{name} ({number})" if number else name, number, genres, where)


def describe_user(age: str, gender: str, occupation: str) -> str:
    """``"24-year-old male technician."`` from the columns of ``ml-100k.user``."""
    job = _OCCUPATIONS.get(occupation, occupation)
    return f"{age}-year-old {_GENDERS.get(gender, 'person')} {job}."


def history_text(profile: str, liked: list[Movie]) -> str:
    """A user's text: the profile, then the last ``HISTORY`` liked movies, most recent first (``liked`` is in
    chronological order), so a long history loses its oldest movies."""
    if not liked:
        return f"{profile} No liked movies yet."
    return f"{profile} Liked recently: {'; '.join(m.snippet for m in reversed(liked[-HISTORY:]))}."


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: building ~300k dicts and lists triggers it over and over, which
    doubled the parse time (2.4 s -> 1.1 s without); none of these objects can form a cycle."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class MovieLens100k(BuiltinDataset):
    """MovieLens-100k ratings (943 users, 1,682 movies, 100,000 ratings 1-5, 1997-1998), one row per rating, with
    text views of the user at that moment and of the movie, for recommendation as retrieval or regression.

    Split (leave-last-out, the usual protocol for sequential recommendation): per user, the ratings in
    chronological order by ``(timestamp, item id)``; the last one is ``test``, the one before ``validation``,
    the rest ``train`` (943 / 943 / 98,114 rows). Each split keeps the source file's order. ``user_text`` and
    ``seen`` read only the user's ratings strictly before the row, so no row sees its own or a later rating;
    for a test row they include the user's validation rating (it came first), as it would at serving time.
    Evaluation ranks all movies but the row's ``seen`` ones (full ranking, no sampled negatives).
    ``corpus()`` gives the 1,682 movies as documents. See the module docstring for the traps of the source.
    The parsed rows take ~1 s and ~200 MB, most of it the ``seen`` lists (10 million ids in all, since a row
    lists every earlier rating of its user).

    Example::

        ds = DATASETS.get("movielens_100k")
        where, rec = ds.rows("test")[0]   # ("ml-100k.inter:LINE", {"user_id": ..., "user_text": ..., ...})
        documents = ds.corpus()           # [("ml-100k.item:LINE", {"item_id": ..., "item_text": ...}), ...]
    """

    name = "movielens_100k"
    pip_name = "recbole==1.2.1"
    module = "recbole"
    description = "MovieLens-100k ratings with user/movie texts: recommendation, rating regression (English)"
    fields = {
        "user_id": "the user's id (string)", "item_id": "the movie's id (string)",
        "timestamp": "when the rating was given (int, Unix seconds)", "rating": "the rating (float, 1-5)",
        "liked": "'yes' if the rating is 4 or more, else 'no'",
        "user_text": "the user at that moment: age, gender, occupation and the titles and genres of the last "
                     f"{HISTORY} movies rated 4+ strictly before this row, most recent first",
        "item_text": "'Title (Year). Genres: A, B'", "title": "'Title (Year)'",
        "genres": "list of the movie's genres (19 names, 'unknown' included)",
        "seen": "ids of the movies the user rated before this row, oldest first: excluded when ranking",
    }
    suggested_tasks = {
        "recommend": {"type": "retrieval", "query": "user_text", "document": "item_text", "document_id": "item_id",
                      "exclude": "seen"},
        "rating": {"type": "regression", "text": "user_text", "text_pair": "item_text", "label": "rating"},
        "liked": {"type": "classification", "text": "user_text", "text_pair": "item_text", "label": "liked"},
    }
    has_corpus = True

    def data_folder(self) -> Path:
        return self.folder() / "dataset_example" / "ml-100k"

    def _file(self, suffix: str) -> Path:
        path = self.data_folder() / f"ml-100k.{suffix}"
        if not path.is_file():
            raise self.damaged(f"{path} is missing")
        return path

    @cache  # noqa: B019 - one instance per process; shared by both views and by corpus()
    def movies(self) -> dict[str, Movie]:
        """Every movie by id, in the item file's order."""
        path = self._file("item")
        out: dict[str, Movie] = {}
        for line_no, (item_id, title, year, genres) in read_table(
                path, ("item_id", "movie_title", "release_year", "class")):
            if item_id in out:
                raise UserError(f"{path}:{line_no}: movie id {item_id} repeats line {out[item_id].where}")
            out[item_id] = _movie(item_id, title, year, genres, f"{path.name}:{line_no}")
        return out

    def corpus(self) -> Rows:
        """Every movie as a ``(where, record)`` row: item_id, title, item_text, genres, year (int or None)."""
        return [(m.where, m.record()) for m in self.movies().values()]

    def user_record(self, user_id: str) -> dict[str, Any]:
        """User ``user_id`` now — after all of their ratings, test and validation included: ``user_id``,
        ``user_text`` (their last liked movies) and ``seen`` (every movie they rated, never recommended)."""
        movies, profiles = self.movies(), self._profiles()
        if str(user_id) not in profiles:
            raise UserError(f"built-in dataset '{self.name}' has no user {user_id!r} (ids 1 to {len(profiles)})")
        user = str(user_id)
        mine = sorted((r for r in self._ratings(movies, profiles) if r.user == user),
                      key=lambda r: (r.timestamp, _tie_break(user, r.item)))
        liked = [movies[r.item] for r in mine if r.rating >= LIKED_FROM]
        return {"user_id": user, "user_text": history_text(profiles[user], liked), "seen": [r.item for r in mine]}

    def _profiles(self) -> dict[str, str]:
        path = self._file("user")
        return {user: describe_user(age, gender, job) for _, (user, age, gender, job)
                in read_table(path, ("user_id", "age", "gender", "occupation"))}

    def _ratings(self, movies: dict[str, Movie], users: dict[str, str]) -> list[Rating]:
        path = self._file("inter")
        out = []
        for line_no, (user, item, rating, timestamp) in read_table(path, ("user_id", "item_id", "rating",
                                                                          "timestamp")):
            where = f"{path.name}:{line_no}"
            if user not in users:
                raise UserError(f"{where}: user {user} is not in ml-100k.user")
            if item not in movies:
                raise UserError(f"{where}: movie {item} is not in ml-100k.item")
            try:
                value, seconds = float(rating), int(float(timestamp))
            except ValueError:
                raise UserError(f"{where}: rating {rating!r} or timestamp {timestamp!r} is not a number") from None
            if not 1.0 <= value <= 5.0:
                raise UserError(f"{where}: rating {rating} is outside 1-5")
            out.append(Rating(where, user, item, value, seconds))
        return out

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        with _collector_paused():
            return self._split()

    def _split(self) -> dict[str, Rows]:
        movies, profiles = self.movies(), self._profiles()
        ratings = self._ratings(movies, profiles)
        by_user: dict[str, list[int]] = {}  # user -> indices into ratings
        for k, r in enumerate(ratings):
            by_user.setdefault(r.user, []).append(k)
        records: list[tuple[str, dict[str, Any]]] = [("", {})] * len(ratings)
        split_of = [""] * len(ratings)
        for user, ks in by_user.items():
            ks.sort(key=lambda k: (ratings[k].timestamp, _tie_break(user, ratings[k].item)))
            items = [ratings[k].item for k in ks]  # the user's movies, chronological
            if len(set(items)) != len(items):
                raise UserError(f"ml-100k.inter: user {user} rated a movie twice; the split needs one rating "
                                "per movie")
            liked: list[Movie] = []
            for pos, k in enumerate(ks):
                r, movie = ratings[k], movies[ratings[k].item]
                records[k] = (r.where, {
                    "user_id": user, "item_id": r.item, "timestamp": r.timestamp, "rating": r.rating,
                    "liked": "yes" if r.rating >= LIKED_FROM else "no",
                    "user_text": history_text(profiles[user], liked),
                    "item_text": movie.text, "title": movie.title, "genres": list(movie.genres),
                    "seen": items[:pos]})
                split_of[k] = "test" if pos == len(ks) - 1 else "validation" if pos == len(ks) - 2 else "train"
                if r.rating >= LIKED_FROM:
                    liked.append(movie)  # after the row is built: a row never sees its own rating
        out: dict[str, Rows] = {"train": [], "validation": [], "test": []}
        for row, split in zip(records, split_of):
            out[split].append(row)
        return out

    def label_vocab(self, field: str) -> list[str] | None:
        if field == "liked":
            return ["no", "yes"]
        if field == "genres":
            return sorted({g for m in self.movies().values() for g in m.genres})
        return None


class MovieLens100kItems(BuiltinDataset):
    """The 1,682 MovieLens-100k movies, one row per movie, for an auxiliary task: predict the genres
    (multilabel) from the title alone.

    Reads the same item file as ``movielens_100k`` (its ``ratings`` view, passed in). Split: a shuffle of the
    movies with seed 13, the first 10% test, the next 10% validation, the rest train (1,346 / 168 / 168); each
    split comes in that shuffled order. Note that ``movielens_100k``'s ``item_text`` states every movie's
    genres: a model that also trains on that dataset has seen the genres of this view's test movies.

    Example::

        rows = DATASETS.get("movielens_100k_items").rows("train")  # [("ml-100k.item:LINE", {"title": ...}), ...]
    """

    name = "movielens_100k_items"
    pip_name = MovieLens100k.pip_name
    module = MovieLens100k.module
    description = "MovieLens-100k movies: genres (multilabel, 19) from the title (English)"
    fields = {"item_id": "the movie's id (string)", "title": "'Title (Year)'",
              "item_text": "'Title (Year). Genres: A, B'", "genres": "list of genres (19 names, 'unknown' included)",
              "year": "release year (int, None for the placeholder movie 'unknown')"}
    suggested_tasks = {"genres": {"type": "multilabel_classification", "text": "title", "label": "genres"}}
    has_corpus = True
    SEED = 13

    def __init__(self, ratings: MovieLens100k):
        self.ratings = ratings

    def folder(self) -> Path:
        return self.ratings.folder()

    def corpus(self) -> Rows:
        return self.ratings.corpus()

    @cache  # noqa: B019 - one instance per process
    def splits(self) -> dict[str, Rows]:
        rows = self.corpus()
        order = list(range(len(rows)))
        random.Random(self.SEED).shuffle(order)
        n_test = n_val = round(len(rows) * 0.1)
        return {"train": [rows[i] for i in order[n_test + n_val:]],
                "validation": [rows[i] for i in order[n_test:n_test + n_val]],
                "test": [rows[i] for i in order[:n_test]]}

    def label_vocab(self, field: str) -> list[str] | None:
        return self.ratings.label_vocab(field) if field == "genres" else None


MOVIELENS_100K = DATASETS.register("movielens_100k")(MovieLens100k())
DATASETS.register("movielens_100k_items")(MovieLens100kItems(MOVIELENS_100K))
