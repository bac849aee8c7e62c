"""File readers shared by the loaders: strict UTF-8, streaming CSV (optionally gzipped), TSV, paths.

Damage is reported, never papered over: every reader raises :class:`records.DataError` naming the
file and the row or line.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from rationale_kit.core.records import DataError
from rationale_kit.core.runtime import ROOT


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_bad_utf8(path: str | Path) -> Optional[int]:
    """Byte offset of the first invalid UTF-8 sequence in ``path`` (decompressed for ``.gz``),
    or None when the file is valid UTF-8."""
    path = Path(path)
    pos, carry = 0, b""
    with _open_bytes(path) as fh:
        while True:
            chunk = fh.read(1 << 20)
            data = carry + chunk
            try:
                data.decode("utf-8")
                pos, carry = pos + len(data), b""
            except UnicodeDecodeError as exc:
                if chunk and exc.reason == "unexpected end of data":
                    pos, carry = pos + exc.start, data[exc.start:]
                else:
                    return pos + exc.start
            if not chunk:
                return None


def _utf8_error(path: Path) -> DataError:
    off = first_bad_utf8(path)
    where = " of the decompressed data" if path.suffix == ".gz" else ""
    return DataError(f"{path}: not valid UTF-8 at byte offset {off}{where}")


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file, decoded strictly (no newline translation: offsets stay exact)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}") from None


def csv_rows(path: Path, required: Iterable[str] = ()):
    """Stream a CSV (optionally gzipped): yields ``(header, data_row, first_line, row)`` per record.

    A UTF-8 byte-order mark is removed; blank lines are not records; a header without a
    ``required`` column, a row with more or fewer fields than the header, an empty file, bytes that
    are not UTF-8 or malformed CSV is a :class:`DataError` naming the file and the data row
    (1-based, header excluded) and its first line.
    """
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # notes longer than the 128 KiB default
    reader = None
    try:
        with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (no header row)")
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing} (found {header})")
            line, n = reader.line_num, 0
            for row in reader:
                first_line, line = line + 1, reader.line_num
                if not row:
                    continue
                n += 1
                if len(row) != len(header):
                    raise DataError(f"{path} data row {n} (line {first_line}): {len(row)} fields, "
                                    f"expected {len(header)} ({', '.join(header)})")
                yield header, n, first_line, row
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    except csv.Error as exc:
        where = f" line {reader.line_num}" if reader is not None else ""
        raise DataError(f"{path}{where}: cannot read as CSV ({exc})") from None
    except (EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """A CSV (optionally gzipped) with every column as a string; "" for empty fields.

    Read with :func:`csv_rows`, so that damage is seen, not papered over; a NUL byte in a field is
    also a :class:`DataError` naming the data row and its first line. The frame's index is the data
    row minus one.
    """
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows: list[list[str]] = []
    header: list[str] = []
    required = list(required)
    for header, n, first_line, row in csv_rows(path, required):
        for h, v in zip(header, row):
            if "\x00" in v:
                raise DataError(f"{path} data row {n} (line {first_line}): NUL byte in column "
                                f"{h!r} (a damaged file: the field would be cut there)")
        rows.append(row)
    if not rows:  # a header and no records: the columns still name the frame
        with io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    return pd.DataFrame(rows, columns=header, dtype=object)


def read_tsv(path: Path, n_fields: int) -> list[tuple[int, list[str]]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out = []
    # a UTF-8 byte-order mark would otherwise become part of the first document id
    for lineno, line in enumerate(read_text_file(path).removeprefix("\ufeff").split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise DataError(f"{path}:{lineno}: expected {n_fields} tab-separated fields, got {len(fields)}")
        out.append((lineno, fields))
    return out


def collapse_ws(s: str) -> str:
    return " ".join(s.split())


def parse_int(value: Any, where: str, what: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} must be an integer, got {value!r}") from None


def resolve_path(path: str | os.PathLike) -> Path:
    """``~`` expanded; relative paths are taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (ROOT / p).resolve()
