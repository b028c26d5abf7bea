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


def _check_for(annotation: str) -> tuple[Callable[[Any], bool], str] | None:
    """(test, description) for a field annotation of atlas.types; None for a field taken as it is."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if base == "int":
        test, want = (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"
    elif base == "float":
        test, want = (lambda v: isinstance(v, _NUMBER) and not isinstance(v, bool)), "a number"
    elif base == "str":
        test, want = (lambda v: isinstance(v, str)), "text"
    elif base == "bool":
        test, want = (lambda v: v in (0, 1) and not isinstance(v, float)), "0 or 1"
    else:
        return None
    if optional:
        return (lambda v: v is None or test(v)), want + " or NULL"
    return test, want


@functools.cache
def _checks(cls: type) -> tuple[tuple[str, Callable[[Any], bool] | None, str], ...]:
    out = []
    for f in dataclasses.fields(cls):
        chk = _check_for(str(f.type))
        out.append((f.name, chk[0] if chk else None, chk[1] if chk else ""))
    return tuple(out)


def typed(cls: type[T], values: Mapping[str, Any] | Sequence[Any], where: str) -> T:
    """``cls(...)`` from a row (a mapping by field name, or a sequence in field order), each value checked.

    ``where`` names the row in an error, e.g. ``"saes row 'L2.res'"``.
    """
    checks = _checks(cls)
    if isinstance(values, Mapping):
        kw = {name: values[name] for name, _, _ in checks}
    else:
        kw = {name: v for (name, _, _), v in zip(checks, values, strict=True)}
    for name, test, want in checks:
        if test is not None and not test(kw[name]):
            raise damage(where, name, kw[name], want)
    if "tied_embeddings" in kw:  # stored as 0/1, read as a bool
        kw["tied_embeddings"] = bool(kw["tied_embeddings"])
    return cls(**kw)


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
