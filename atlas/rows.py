"""Rows of an untrusted file into the read API's typed objects, checked on the way.

SQLite stores any value in any column (a TEXT ``d_vocab``, a BLOB where a
name belongs, a NULL the schema forbids, forced in by a damaged or crafted
file), so the read API checks each value against the type its dataclass
declares (:mod:`atlas.types`) before handing it on. A value of the wrong type
raises :class:`~atlas.errors.DamagedAtlas` with one line naming the table,
column and row, instead of a TypeError deep in whatever formats it later.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from atlas.errors import DAMAGE_HINT, DamagedAtlas

T = TypeVar("T")

_NUMBER = (int, float)


def describe(value: Any) -> str:
    """A value as a damage message shows it: its SQL type and a short repr."""
    if value is None:
        return "NULL"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"a BLOB of {len(bytes(value))} bytes"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{'text' if isinstance(value, str) else type(value).__name__} {text}"


def damage(where: str, column: str, value: Any, want: str) -> DamagedAtlas:
    return DamagedAtlas(f"{where}: {column} is {describe(value)}, not {want}; {DAMAGE_HINT}")


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": (_NUMBER, "a number"),  # SQLite hands back a REAL that is whole as an int
    "str": ((str,), "text"),
    "bool": ((int,), "0 or 1"),
}


@functools.cache
def _checks(cls: type) -> tuple[tuple[str, tuple[type, ...] | None, bool, str], ...]:
    """(field, accepted types or None for any, NULL allowed, description) per field of a dataclass of atlas.types."""
    out = []
    for f in dataclasses.fields(cls):
        annotation = str(f.type)
        optional = annotation.endswith("| None")
        kind = _KINDS.get(annotation.removesuffix("| None").strip())
        types, want = kind if kind else (None, "")
        out.append((f.name, types, optional, want + (" or NULL" if optional else "")))
    return tuple(out)


def typed(cls: type[T], values: Mapping[str, Any] | sqlite3.Row | Sequence[Any], where: str) -> T:
    """``cls(...)`` from a row, each value checked against the field's type.

    ``values`` is a mapping or an ``sqlite3.Row`` (taken by column name), or a
    tuple in field order (a SELECT that lists the columns). ``where`` names the
    row in an error, e.g. ``"saes row 2"``.
    """
    checks = _checks(cls)
    if isinstance(values, (Mapping, sqlite3.Row)):
        try:
            vals = [values[name] for name, _, _, _ in checks]
        except (KeyError, IndexError):  # a column a newer schema added, read from an older file: NULL
            defaults = _defaults(cls)  # or a field no column holds (Label.stored_in): its default
            vals = [_get(values, name, defaults.get(name)) for name, _, _, _ in checks]
    else:
        vals = list(values)
        if len(vals) < len(checks):  # trailing fields no column holds (TokenHit.match): their defaults
            defaults = _defaults(cls)
            vals += [defaults.get(name, _MISSING) for name, _, _, _ in checks[len(vals) :]]
            if _MISSING in vals:
                vals = vals[: vals.index(_MISSING)]
    if len(vals) != len(checks) or not _fast_check(cls)(vals):
        _raise_first(cls, vals, where)
    for i in _bool_fields(cls):  # stored as 0/1, read as a bool (tied_embeddings)
        vals[i] = bool(vals[i])
    return cls(*vals)


def _get(values: Mapping[str, Any] | sqlite3.Row, name: str, default: Any = None) -> Any:
    try:
        return values[name]
    except (KeyError, IndexError):
        return default


_MISSING = object()


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@functools.cache
def _fast_check(cls: type) -> Callable[[list[Any]], bool]:
    """One expression testing every field of ``cls`` at once: a card reads ~35 rows, so this runs often.

    ``type(v) is int`` rather than isinstance: SQLite hands back exact ints, floats and strs, and it is
    a third of the cost; a miss only sends the row to the slow path that names the field.
    """
    terms = []
    for i, (_, types, optional, _) in enumerate(_checks(cls)):
        if types is None:
            continue
        term = " or ".join(f"type(v[{i}]) is {t.__name__}" for t in types)
        terms.append(f"(v[{i}] is None or {term})" if optional else f"({term})")
    return eval("lambda v: " + (" and ".join(terms) or "True"), {"int": int, "float": float, "str": str})


def _raise_first(cls: type, vals: list[Any], where: str) -> None:
    checks = _checks(cls)
    if len(vals) != len(checks):
        raise DamagedAtlas(f"{where}: {len(vals)} values for {len(checks)} fields; {DAMAGE_HINT}")
    for (name, types, optional, want), v in zip(checks, vals, strict=True):
        if types is not None and not (isinstance(v, types) and not isinstance(v, bool) or (v is None and optional)):
            raise damage(where, name, v, want)
    raise DamagedAtlas(f"{where}: a value of an unexpected type; {DAMAGE_HINT}")  # (an int or str subclass)


@functools.cache
def _bool_fields(cls: type) -> tuple[int, ...]:
    return tuple(i for i, f in enumerate(dataclasses.fields(cls)) if str(f.type) == "bool")


def number_or_null(value: Any, where: str, column: str) -> Any:
    if value is None or (isinstance(value, _NUMBER) and not isinstance(value, bool)):
        return value
    raise damage(where, column, value, "a number or NULL")


def json_or_null(value: Any, where: str, column: str) -> Any:
    """A JSON column (label evidence): parsed, or DamagedAtlas naming it."""
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise damage(where, column, value, "UTF-8 JSON text") from None
    if not isinstance(value, str):
        raise damage(where, column, value, "JSON text")
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise damage(where, column, value, "valid JSON") from None
