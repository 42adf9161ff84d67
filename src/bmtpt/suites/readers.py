"""Readers for the official benchmark file formats, and the Hugging Face hub fallback.

Every reader returns `Row`s: the parsed record plus `where` ("path line N" or "hub ... row N"), so a
task's parser can name the exact place of a bad label or a missing field in its error message.
Local files are parsed once per process (`functools.lru_cache` keyed by path, size and mtime): the
big training files (e.g. SST-2's 67k rows) are shared by every split and every call.
Rows come out of a cache, so callers must treat them as read-only.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BmtptError

csv.field_size_limit(1 << 26)  # SQuAD-like contexts in tsv files can exceed csv's 128 KiB default


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from (for error messages)."""

    where: str
    data: Mapping[str, Any]

    def get(self, key: str) -> Any:
        """The field `key`; a missing field raises BmtptError naming the file and line."""
        try:
            return self.data[key]
        except (KeyError, TypeError):
            raise BmtptError(f"{self.where}: missing field {key!r}") from None

    def text(self, key: str) -> str:
        """The field `key` as stripped text."""
        value = self.get(key)
        if not isinstance(value, str):
            raise BmtptError(f"{self.where}: field {key!r} should be text, found {value!r}")
        return value.strip()


def label_word(row: Row, key: str, mapping: Mapping[Any, str], task: str) -> str:
    """Map the raw label in `row[key]` to its verbalizer; an unknown label names label, task and place."""
    raw = row.get(key)
    try:
        return mapping[raw]
    except (KeyError, TypeError):
        words = sorted({str(k) for k in mapping})
        raise BmtptError(f"task {task}: label {raw!r} ({row.where}) is not one of {words}") from None


def make_input(prefix: str, fields: Sequence[tuple[str, str]]) -> str:
    """T5-style text-to-text input: `prefix name1: text1 name2: text2`."""
    return " ".join([prefix, *(f"{name}: {text}" for name, text in fields)])


def long_span(prefix: str, fields: Sequence[tuple[str, str]], name: str) -> tuple[int, int]:
    """(start, end) characters of field `name`'s text in `make_input(prefix, fields)`: the `Example.cut` of
    a task whose long field (premise, passage, first sentence) gives way when the input is too long."""
    pos = len(prefix)
    for field_name, text in fields:
        pos += len(f" {field_name}: ")
        if field_name == name:
            return pos, pos + len(text)
        pos += len(text)
    raise ValueError(f"no field {name!r} among {[n for n, _ in fields]}")


class MissingDataFile(BmtptError):
    """A data file a local loader expects is not there (`bmtpt tasks --data-dir` reports it as 'missing')."""


def require(path: Path) -> Path:
    """`path` if it is a file; otherwise a MissingDataFile (a BmtptError) naming the expected path."""
    if not path.is_file():
        raise MissingDataFile(f"data file not found: {path} (expected by the task's local loader; pass a "
                              "--data-dir holding the official files, or no data dir to use the hub)")
    return path


def _key(path: Path) -> tuple[str, int, int]:
    st = require(path).stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def read_tsv(path: Path, columns: Sequence[str] | None = None) -> tuple[Row, ...]:
    """Rows of a GLUE-style tsv (`csv.QUOTE_NONE`, as the GLUE scripts write it).

    With `columns=None` the first line is the header (a UTF-8 BOM, as in MRPC's, is dropped);
    otherwise the file has no header and `columns` names the fields. Every row must have the same
    number of fields as the header, otherwise BmtptError names the file and line.
    """
    return _read_tsv(*_key(path), tuple(columns) if columns else None)


@lru_cache(maxsize=64)
def _read_tsv(path: str, _size: int, _mtime: int, columns: tuple[str, ...] | None) -> tuple[Row, ...]:
    rows: list[Row] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = columns
        for fields in reader:
            if not fields or fields == [""]:
                continue  # blank line (e.g. at the end of a file)
            if names is None:
                names = tuple(fields)
                continue
            if len(fields) != len(names):
                raise BmtptError(f"{path} line {reader.line_num}: expected {len(names)} tab-separated "
                                 f"fields, found {len(fields)}")
            rows.append(Row(f"{path} line {reader.line_num}", dict(zip(names, fields))))
    return tuple(rows)


def read_csv(path: Path, columns: Sequence[str]) -> tuple[Row, ...]:
    """Rows of a header-less, quoted csv file (Yelp polarity's format)."""
    return _read_csv(*_key(path), tuple(columns))


@lru_cache(maxsize=16)
def _read_csv(path: str, _size: int, _mtime: int, columns: tuple[str, ...]) -> tuple[Row, ...]:
    rows: list[Row] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(columns):
                    raise BmtptError(f"{path} line {reader.line_num}: expected {len(columns)} "
                                     f"comma-separated fields, found {len(fields)}")
                rows.append(Row(f"{path} line {reader.line_num}", dict(zip(columns, fields))))
        except csv.Error as e:
            raise BmtptError(f"{path} line {reader.line_num}: malformed csv ({e})") from None
    return tuple(rows)


def read_jsonl(path: Path, skip_header: bool = False) -> tuple[Row, ...]:
    """Rows of a JSON-lines file (gzip-compressed when the name ends in .gz).

    `skip_header` drops a first line of the form {"header": ...} (the MRQA format).
    """
    return _read_jsonl(*_key(path), skip_header)


@lru_cache(maxsize=64)
def _read_jsonl(path: str, _size: int, _mtime: int, skip_header: bool) -> tuple[Row, ...]:
    rows: list[Row] = []
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BmtptError(f"{path} line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise BmtptError(f"{path} line {n}: expected a JSON object")
                if skip_header and n == 1 and "header" in record:
                    continue
                rows.append(Row(f"{path} line {n}", record))
    except (OSError, EOFError, UnicodeDecodeError) as e:  # e.g. a truncated or non-gzip .gz file
        raise BmtptError(f"{path}: cannot read ({e})") from None
    return tuple(rows)


def read_json(path: Path) -> Any:
    """A whole JSON document (SQuAD's format)."""
    return _read_json(*_key(path))


@lru_cache(maxsize=8)
def _read_json(path: str, _size: int, _mtime: int) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise BmtptError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None


# --- the Hugging Face hub ---------------------------------------------------------------------------

def hub_loader(path: str, name: str | None, split: str) -> Iterable[Mapping[str, Any]]:
    """Rows of one split of a hub dataset, via `datasets.load_dataset` (needs a network or a warm cache).

    Module-level on purpose: tests replace it with a fake (`monkeypatch.setattr(readers, "hub_loader", ...)`).
    """
    try:
        import datasets  # lazy: an optional, heavy dependency
    except ImportError:
        raise BmtptError("no data dir was given and the `datasets` package is not installed "
                         "(pip install 'bmtpt[data]', or pass a data dir with the official files)") from None
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as e:  # network, missing config, ...: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BmtptError(f"could not load {path}" + (f" ({name})" if name else "")
                         + f" split {split!r} from the Hugging Face hub: {first}") from None


def hub_rows(path: str, name: str | None, split: str) -> list[Row]:
    """`hub_loader`'s rows wrapped as `Row`s (looked up at call time so a monkeypatched loader is used)."""
    where = f"hub {path}" + (f"/{name}" if name else "") + f" {split}"
    return [Row(f"{where} row {i}", dict(r)) for i, r in enumerate(hub_loader(path, name, split))]
