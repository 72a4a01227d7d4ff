"""Read data files into ``(where, record)`` rows, where ``where`` is ``"file:line"`` for error messages.

Formats by extension: ``.jsonl`` (one JSON object per line), ``.csv`` / ``.tsv`` (header row),
``.parquet``. Text must be UTF-8. These readers are hand-written rather than built on ``datasets``
because every error about a row must name its file and line, which ``datasets`` does not keep.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from polytask.errors import UserError

Rows = list[tuple[str, dict[str, Any]]]
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def read_rows(path: str | Path, key: str = "") -> Rows:
    """All rows of a data file. ``key`` (e.g. ``tasks.intent.train``) is named when the file is missing."""
    path = require_file(path, key)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    raise UserError(f"{path}: unsupported data format {suffix!r}; allowed: {', '.join(FORMATS)}")


def require_file(path: str | Path, key: str = "") -> Path:
    """``path`` as a Path; a UserError naming it (and its config key) when it is not a file."""
    path = Path(path)
    if not path.is_file():
        named = f" (config key '{key}')" if key else ""
        raise UserError(f"data file not found: {path}{named}")
    return path


def decode_utf8(path: Path, data: bytes, line_no: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if line_no is None:  # whole file: find the line of the bad byte
            line_no = data.count(b"\n", 0, e.start) + 1
            col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        else:
            col = e.start + 1
        raise UserError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col})") from None


def _read_jsonl(path: Path) -> Rows:
    rows: Rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            text = decode_utf8(path, raw, line_no).strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{line_no}: each line must be a JSON object, got {type(record).__name__}")
            rows.append((f"{path}:{line_no}", record))
    return rows


def _read_delimited(path: Path, delimiter: str) -> Rows:
    text = decode_utf8(path, path.read_bytes())
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: Rows = []
    try:
        for record in reader:
            if None in record:  # more cells than header names
                raise UserError(f"{path}:{reader.line_num}: more fields than the header has "
                                f"({len(reader.fieldnames or [])})")
            if all(v in (None, "") for v in record.values()):
                continue
            rows.append((f"{path}:{reader.line_num}", {k: v for k, v in record.items() if v is not None}))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: {e}") from None
    return rows


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: cannot read parquet file ({e})") from None
    return [(f"{path}:row {i + 1}", rec) for i, rec in enumerate(table.to_pylist())]
