"""The MovieLens-100k built-in datasets: leave-last-out split, user texts without leakage, the items view.

Most tests read a tiny fake ``ml-100k`` folder written in RecBole's format (typed headers, columns in another
order than the real files, so that columns are found by name); one reads the real files when recbole is
installed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from polytask.catalog.movielens import HISTORY, MovieLens100k, MovieLens100kItems, _tie_break
from polytask.errors import UserError

# item id -> (raw title, raw year, genres): the real file's traps included
MOVIES = {
    "1": ("Toy Story", "1995", "Animation Children's Comedy"),
    "2": ("GoldenEye", "1995", "Action Adventure Thriller"),
    "3": ("Land Before Time III: The Time of the Great Giving (1995)", "V", "Animation Children's"),
    "4": ("unkonwn", "unkonwn", "unknown"),
    "5": ("Chasing Amy", "1997", "Drama Romance"),
    "6": ("Chasing Amy", "1997", "Drama Romance"),  # the same film under a second id
    **{str(i): (f"Movie {i}", str(1980 + i), "Drama") for i in range(7, 16)},
}
USERS = {"1": ("24", "M", "technician"), "2": ("53", "F", "other"), "3": ("30", "M", "none")}
# (user, item, rating, timestamp), written in this (unsorted) order
RATINGS = [
    # user 1: 13 ratings; items 9 and 10 tie on the last timestamp: the (user, item) hash orders them
    ("1", "10", 5, 900), ("1", "9", 2, 900), ("1", "1", 5, 100), ("1", "2", 3, 110), ("1", "3", 4, 120),
    ("1", "4", 4, 130), ("1", "5", 5, 140), ("1", "7", 4, 150), ("1", "8", 4, 160), ("1", "11", 5, 170),
    ("1", "12", 4, 180), ("1", "13", 4, 190), ("1", "14", 1, 200),
    # user 2: three ratings, none liked before the last
    ("2", "6", 3, 50), ("2", "1", 2, 40), ("2", "15", 4, 60),
    # user 3: two ratings (no training row)
    ("3", "2", 4, 10), ("3", "1", 5, 20),
]


def write_fake(root: Path, ratings=RATINGS, movies=MOVIES) -> Path:
    folder = root / "dataset_example" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\t{t}\t{y}\t{g}\n" for i, (t, y, g) in movies.items()), encoding="utf-8")
    (folder / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + "".join(f"{u}\t{a}\t{g}\t{o}\t00000\n" for u, (a, g, o) in USERS.items()), encoding="utf-8")
    (folder / "ml-100k.inter").write_text(  # columns in another order than the real file
        "timestamp:float\titem_id:token\trating:float\tuser_id:token\n"
        + "".join(f"{t}\t{i}\t{r}\t{u}\n" for u, i, r, t in ratings), encoding="utf-8")
    return root


def fake_dataset(root: Path) -> MovieLens100k:
    ds = MovieLens100k()
    ds.folder = lambda: root  # the package folder, where recbole's would be
    return ds


@pytest.fixture
def fake(tmp_path) -> MovieLens100k:
    return fake_dataset(write_fake(tmp_path))


def by_user(rows):
    out = {}
    for _, rec in rows:
        out.setdefault(rec["user_id"], []).append(rec)
    return out


def chronological(user):
    return sorted(((t, _tie_break(user, i), i, r) for u, i, r, t in RATINGS if u == user))


def test_leave_last_out_split_with_hashed_tie_break(fake):
    splits = fake.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "validation": 3, "test": 3}
    test, val = by_user(splits["test"]), by_user(splits["validation"])
    for user in USERS:
        order = [i for *_, i, _ in chronological(user)]
        assert [r["item_id"] for r in test[user]] == [order[-1]]
        assert [r["item_id"] for r in val[user]] == [order[-2]]
        train = sorted(r["item_id"] for r in by_user(splits["train"]).get(user, []))
        assert train == sorted(order[:-2])
    # the tie at t=900 is broken by the hash, not by id: test gets whichever of 9 and 10 hashes higher
    later = max(("9", "10"), key=lambda i: _tie_break("1", i))
    assert test["1"][0]["item_id"] == later and {val["1"][0]["item_id"], later} == {"9", "10"}
    assert fake_dataset(fake.folder()).splits() == splits  # a second parse gives the same rows
    assert fake.splits() is splits  # parsed once per dataset
    where, rec = splits["train"][0]
    assert where == "ml-100k.inter:4" and rec["item_id"] == "1"  # each split keeps the file's order


def test_seen_is_exactly_the_earlier_items_in_order(fake):
    rows = [rec for split in fake.splits().values() for _, rec in split]
    for user in USERS:
        order = [i for *_, i, _ in chronological(user)]
        for rec in (r for r in rows if r["user_id"] == user):
            pos = order.index(rec["item_id"])
            assert rec["seen"] == order[:pos]
            assert rec["item_id"] not in rec["seen"]


def test_user_text_names_only_movies_liked_strictly_before_most_recent_first(fake):
    movies = fake.movies()
    rows = [rec for split in fake.splits().values() for _, rec in split]
    for rec in rows:
        earlier = set(rec["seen"])
        liked_before = [i for *_, i, r in chronological(rec["user_id"]) if i in earlier and r >= 4]
        expected = [movies[i].snippet for i in reversed(liked_before)][:HISTORY]
        profile = rec["user_text"].split(" Liked recently: ")[0].split(" No liked movies yet.")[0]
        if expected:
            assert rec["user_text"] == f"{profile} Liked recently: {'; '.join(expected)}."
        else:
            assert rec["user_text"] == f"{profile} No liked movies yet."
        if movies[rec["item_id"]].title not in {movies[i].title for i in liked_before}:
            assert movies[rec["item_id"]].title not in rec["user_text"]  # the row's own movie is never there
    test_1 = by_user(fake.splits()["test"])["1"][0]
    # user 1 liked 9 movies before the test row (item 9 was rated 2): the oldest, Toy Story, is cut off
    assert test_1["user_text"].startswith("24-year-old male technician. Liked recently: Movie 13 (1993) [Drama]; ")
    assert "Toy Story" not in test_1["user_text"] and test_1["user_text"].count("; ") == HISTORY - 1
    first = by_user(fake.splits()["train"])["1"][0]
    assert first["item_id"] == "1" and first["user_text"] == "24-year-old male technician. No liked movies yet."
    assert by_user(fake.splits()["test"])["3"][0]["user_text"].startswith("30-year-old male with no occupation.")


def test_record_fields_and_the_liked_threshold(fake):
    rows = [rec for split in fake.splits().values() for _, rec in split]
    assert all(set(rec) == set(fake.fields) for rec in rows)  # every record key is documented
    for rec in rows:
        rating = next(r for u, i, r, _ in RATINGS if u == rec["user_id"] and i == rec["item_id"])
        assert rec["rating"] == float(rating) and isinstance(rec["timestamp"], int)
        assert rec["liked"] == ("yes" if rating >= 4 else "no")
    assert fake.label_vocab("liked") == ["no", "yes"]


def test_titles_years_genres_and_the_corpus(fake):
    corpus = dict((rec["item_id"], (where, rec)) for where, rec in fake.corpus())
    assert len(corpus) == len(MOVIES) and corpus["1"][0] == "ml-100k.item:2"
    assert corpus["1"][1] == {"item_id": "1", "title": "Toy Story (1995)", "year": 1995,
                              "genres": ["Animation", "Children's", "Comedy"],
                              "item_text": "Toy Story (1995). Genres: Animation, Children's, Comedy"}
    # the year left in the title (year column 'V') moves out of the title, not twice into it
    assert corpus["3"][1]["title"] == "Land Before Time III: The Time of the Great Giving (1995)"
    assert corpus["3"][1]["year"] == 1995
    assert corpus["4"][1] == {"item_id": "4", "title": "unknown", "year": None, "genres": ["unknown"],
                              "item_text": "unknown. Genres: unknown"}
    assert corpus["5"][1]["title"] == corpus["6"][1]["title"]  # duplicate titles are kept, told apart by id
    assert "unknown" in fake.label_vocab("genres")


def test_items_view_split_is_seeded_and_complete(fake):
    items = MovieLens100kItems(fake)
    splits = items.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 11, "validation": 2, "test": 2}  # 15 movies
    ids = [rec["item_id"] for rows in splits.values() for _, rec in rows]
    assert sorted(ids, key=int) == sorted(MOVIES, key=int)  # each movie in exactly one split
    assert MovieLens100kItems(fake_dataset(fake.folder())).splits() == splits  # same seed, same split
    assert items.label_vocab("genres") == fake.label_vocab("genres")
    assert all(set(rec) == set(items.fields) for rows in splits.values() for _, rec in rows)


def test_missing_files_and_columns_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="ml-100k.inter is missing.*pip install --no-deps --force-reinstall recbole"):
        ds = fake_dataset(write_fake(tmp_path))
        (tmp_path / "dataset_example" / "ml-100k" / "ml-100k.inter").unlink()
        ds.splits()
    other = tmp_path / "other"
    write_fake(other)
    item = other / "dataset_example" / "ml-100k" / "ml-100k.item"
    item.write_text(item.read_text().replace("class:token_seq", "genre:token_seq"))
    with pytest.raises(UserError, match=r"missing column\(s\) class"):
        fake_dataset(other).corpus()
    twice = tmp_path / "twice"
    write_fake(twice, ratings=RATINGS + [("2", "6", 5, 70)])
    with pytest.raises(UserError, match="user 2 rated a movie twice"):
        fake_dataset(twice).splits()


def test_both_views_are_registered_by_importing_the_datasets_module_alone():
    code = ("from polytask.catalog.datasets import DATASETS; "
            "assert {'movielens_100k', 'movielens_100k_items'} <= set(DATASETS.names())")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole (the data's package) not installed")
def test_real_movielens_split():
    from polytask.catalog.datasets import DATASETS

    ds = DATASETS.get("movielens_100k")
    splits = ds.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 100_000 - 1886, "validation": 943, "test": 943}
    assert len(ds.corpus()) == 1682 and len(DATASETS.get("movielens_100k_items").rows("test")) == 168
    movies = ds.movies()
    assert len(ds.label_vocab("genres")) == 19
    for _, rec in splits["test"]:
        seen = set(rec["seen"])
        assert rec["item_id"] not in seen and len(seen) == len(rec["seen"])
        history = rec["user_text"].partition(" Liked recently: ")[2]
        liked_titles = {movies[i].title for i in seen}
        named = [t.rpartition(" [")[0] for t in history.rstrip(".").split("; ")] if history else []
        assert set(named) <= liked_titles  # every movie in the history is one the user rated before
    # the last rating of each user is the test row: no training row of that user comes after it
    last = {rec["user_id"]: rec for _, rec in splits["test"]}
    def key(rec):
        return rec["timestamp"], _tie_break(rec["user_id"], rec["item_id"])

    assert all(key(rec) < key(last[rec["user_id"]]) for _, rec in splits["train"])


def test_user_record_is_the_user_after_all_their_ratings(fake):
    rec = fake.user_record("1")
    order = [i for *_, i, _ in chronological("1")]
    assert rec["user_id"] == "1" and rec["seen"] == order  # every rated movie, test and validation ones too
    liked = [i for t, _, i, r in chronological("1") if r >= 4]
    movies = fake.movies()
    newest = movies[liked[-1]].snippet
    assert rec["user_text"].startswith("24-year-old male technician. Liked recently: " + newest)
    with pytest.raises(UserError, match="no user '99'"):
        fake.user_record("99")
