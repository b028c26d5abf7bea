"""Printing listings: a readable table by default, or JSON, newline-delimited JSON, CSV, TSV.

After sqlite-utils' ``output_options``: every listing command takes the same
four flags and hands its rows to :func:`emit`.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

FORMATS = ("table", "json", "nl", "csv", "tsv")


def output_options(fn: Callable) -> Callable:
    """Add ``--json/--nl/--csv/--tsv`` and pass the chosen format as ``fmt``."""

    @click.option("--json", "fmt", flag_value="json", help="Output a JSON array of objects")
    @click.option("--nl", "fmt", flag_value="nl", help="Output newline-delimited JSON, one object a line")
    @click.option("--csv", "fmt", flag_value="csv", help="Output CSV with a header row")
    @click.option("--tsv", "fmt", flag_value="tsv", help="Output TSV with a header row")
    @functools.wraps(fn)
    def wrapped(*args: Any, fmt: str | None = None, **kwargs: Any) -> Any:
        return fn(*args, fmt=fmt or "table", **kwargs)

    return wrapped


def plain(value: Any) -> Any:
    """A JSON-safe scalar: blobs become hex text, non-finite floats become strings."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "x'" + bytes(value).hex() + "'"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def cell(value: Any) -> str:
    """Text of one table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        # fixed decimals line up in a column; tiny and huge values keep their magnitude
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return plain(value)
    return str(value).replace("\n", "↵").replace("\t", "⇥")


def table(rows: Sequence[Sequence[Any]], columns: Sequence[str], *, max_width: int = 60) -> str:
    """A plain aligned table: numbers right-aligned, text left-aligned, long cells cut with …."""
    texts = [[cell(v) for v in r] for r in rows]
    for r in texts:
        for i, t in enumerate(r):
            if len(t) > max_width:
                r[i] = t[: max_width - 1] + "…"
    numeric = [
        all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
        for i in range(len(columns))
    ]
    widths = [max([len(c)] + [len(r[i]) for r in texts]) for i, c in enumerate(columns)]

    def line(vals: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in texts]
    return "\n".join(out)


def render(rows: Iterable[Sequence[Any]], columns: Sequence[str], fmt: str) -> str:
    """All rows in one format, as text (no trailing newline for the table)."""
    rows = list(rows)
    if fmt == "table":
        return table(rows, columns)
    if fmt in ("json", "nl"):
        dicts = [{c: plain(v) for c, v in zip(columns, r, strict=True)} for r in rows]
        if fmt == "json":
            return json.dumps(dicts, indent=2, ensure_ascii=False)
        return "\n".join(json.dumps(d, ensure_ascii=False) for d in dicts)
    if fmt in ("csv", "tsv"):
        buf = io.StringIO()
        w = csv.writer(buf, dialect="excel-tab" if fmt == "tsv" else "excel", lineterminator="\n")
        w.writerow(columns)
        w.writerows([[plain(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    raise ValueError(f"unknown format {fmt!r}")


def emit(rows: Iterable[Sequence[Any]], columns: Sequence[str], fmt: str, *, empty: str | None = None) -> None:
    """Print rows; in table format an empty listing prints ``empty`` (to stderr) instead."""
    rows = list(rows)
    if not rows and fmt == "table" and empty:
        click.echo(empty, err=True)
        return
    text = render(rows, columns, fmt)
    if text:
        click.echo(text)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=plain)
