"""Input files for prepare: find them, and read their records as (index, text | skip reason).

A record is one candidate document: a .txt file (or one blank-line separated block of it with
`txt_split='blank-lines'`), one non-blank line of a .jsonl file, one row of a .parquet file.
Records that cannot become documents are skipped with a reason that the manifest reports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from cpt_jax.errors import DataError
from cpt_jax.data.hashing import sha256_file, text_hash64

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_BLANK_LINES = re.compile(rb"\r?\n(?:[ \t]*\r?\n)+")


@dataclass(frozen=True)
class ReadOptions:
    field: str = "text"  # jsonl
    column: str = "text"  # parquet
    txt_split: Literal["file", "blank-lines"] = "file"


@dataclass(frozen=True)
class Record:
    index: int
    text: str | None  # None: skipped
    reason: str = ""


def discover(inputs: list[str]) -> list[tuple[Path, str]]:
    """Input files with their format: given files, and supported files under given folders."""
    found: dict[Path, str] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FORMATS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DataError(f"folder {path} holds no {', '.join(FORMATS)} files")
            for p in files:
                found.setdefault(p.resolve(), FORMATS[p.suffix])
        elif path.is_file():
            if path.suffix not in FORMATS:
                raise DataError(f"{path}: unsupported file type '{path.suffix}'; prepare reads "
                                f"{', '.join(FORMATS)} files")
            found.setdefault(path.resolve(), FORMATS[path.suffix])
        else:
            raise DataError(f"input {path} does not exist")
    if not found:
        raise DataError("no input files given")
    return list(found.items())


def iter_records(path: Path, fmt: str, opts: ReadOptions, start: int = 0, stop: int | None = None,
                 offset: int = 0) -> Iterator[Record]:
    """Records [start, stop) of a file; for jsonl, `offset` is the byte offset of record `start`."""
    if fmt == "txt":
        yield from _txt_records(path, opts, start, stop)
    elif fmt == "jsonl":
        yield from _jsonl_records(path, opts, start, stop, offset)
    elif fmt == "parquet":
        yield from _parquet_records(path, opts, start, stop)
    else:
        raise ValueError(fmt)


def _decode(raw: bytes) -> tuple[str | None, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}"
    return (text, "") if text.strip() else (None, "empty document")


def _txt_records(path, opts, start, stop):
    raw = path.read_bytes()
    if opts.txt_split == "file":
        blocks = [raw]
    else:
        blocks = [b for b in _BLANK_LINES.split(raw) if b.strip()] or [b""]
    for i in range(start, len(blocks) if stop is None else min(stop, len(blocks))):
        text, reason = _decode(blocks[i])
        yield Record(i, text, reason)


def _jsonl_records(path, opts, start, stop, offset):
    key = opts.field
    with open(path, "rb") as f:
        f.seek(offset)
        index = start
        for line in f:
            if not line.strip():
                continue
            if stop is not None and index >= stop:
                return
            text, reason = _decode(line)
            if text is not None:
                text, reason = _json_field(text, key)
            yield Record(index, text, reason)
            index += 1


def _json_field(line: str, key: str) -> tuple[str | None, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    if key not in obj:
        return None, f"missing field '{key}'"
    value = obj[key]
    if value is None:
        return None, f"field '{key}' is null"
    if not isinstance(value, str):
        return None, f"field '{key}' is {type(value).__name__}, not a string"
    return (value, "") if value.strip() else (None, "empty document")


def _parquet_file(path: Path, column: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable parquet file: {e}") from e
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path} has no column '{column}'; its columns are {', '.join(names)}: "
                        "pass `column` NAME")
    kind = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise DataError(f"{path}: column '{column}' has type {kind}, not text; pass `column` NAME")
    return pf


def _parquet_records(path, opts, start, stop):
    pf = _parquet_file(path, opts.column)
    stop = pf.metadata.num_rows if stop is None else min(stop, pf.metadata.num_rows)
    first = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        lo, hi = max(start, first), min(stop, first + rows)
        if lo < hi:
            values = pf.read_row_group(group, columns=[opts.column]).column(0)
            for i, value in enumerate(values.slice(lo - first, hi - lo).to_pylist()):
                if value is None:
                    yield Record(lo + i, None, f"column '{opts.column}' is null")
                elif isinstance(value, bytes):
                    text, reason = _decode(value)
                    yield Record(lo + i, text, reason)
                else:
                    yield Record(lo + i, value if value.strip() else None, "" if value.strip() else "empty document")
        first += rows


@dataclass
class FileScan:
    """First pass over a file: checksum, record count, content hashes and chunk boundaries."""

    path: Path
    fmt: str
    sha256: str
    records: int = 0
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    chunk_offsets: list[int] = field(default_factory=list)  # jsonl byte offset of each chunk's first record


def scan_file(path: Path, fmt: str, opts: ReadOptions, chunk_records: int) -> FileScan:
    scan = FileScan(path, fmt, sha256_file(path))
    hashes, reasons = [], {}
    if fmt == "jsonl":
        records = _jsonl_offsets(path, opts, chunk_records, scan)
    else:
        records = iter_records(path, fmt, opts)
    for rec in records:
        scan.records += 1
        if rec.text is None:
            reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
        else:
            hashes.append(text_hash64(rec.text))
    scan.hashes = np.asarray(hashes, dtype=np.uint64)
    missing = f"missing field '{opts.field}'" if fmt == "jsonl" else None
    if fmt == "jsonl" and scan.records and reasons.get(missing, 0) == scan.records:
        raise DataError(f"{path}: no record has the field '{opts.field}'{_keys_hint(path)}; pass `field` NAME")
    return scan


def _jsonl_offsets(path: Path, opts: ReadOptions, chunk_records: int, scan: FileScan) -> Iterator[Record]:
    """jsonl records, noting where each chunk of `chunk_records` records starts in the file."""
    position, index = 0, 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                if index % chunk_records == 0:
                    scan.chunk_offsets.append(position)
                text, reason = _decode(line)
                if text is not None:
                    text, reason = _json_field(text, opts.field)
                yield Record(index, text, reason)
                index += 1
            position += len(line)


def _keys_hint(path: Path, lines: int = 20) -> str:
    keys: dict[str, None] = {}
    with open(path, "rb") as f:
        for _, line in zip(range(lines), f):
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                keys.update(dict.fromkeys(obj))
    return f" (its records have: {', '.join(keys)})" if keys else ""
