"""The one parser of ``atlas_info.provenance``: build parameters, sha256 of every weight file, criteria.

Provenance is JSON text in a file someone else may have written, so every
reader goes through :func:`parse_provenance`, which returns a dict or raises
:class:`~atlas.errors.BadProvenance` with one line naming what is wrong (not
JSON, not an object, not UTF-8, nested too deep). :func:`verdict_criteria`
does the same for the part the CLI and the TUI interpret: the rule behind the
``predicts_tokens`` / ``reads_tokens`` verdicts.

Stable interface (other modules build on it): ``parse_provenance(raw) -> dict``,
``read_provenance(conn) -> dict``, ``verdict_criteria(provenance) -> dict``,
``describe_criterion(criterion) -> str``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from atlas.errors import DAMAGE_HINT, BadProvenance

WHERE = "atlas_info.provenance"


def parse_provenance(raw: Any, *, where: str = WHERE) -> dict[str, Any]:
    """The provenance document as a dict; raises BadProvenance on anything else.

    ``raw`` is the column's value as SQLite returns it (text, or bytes for a
    BLOB), or an already-decoded dict. A NULL is damage: the column is
    ``NOT NULL DEFAULT '{}'``.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None:
        raise BadProvenance(f"{where} is NULL; {DAMAGE_HINT}")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadProvenance(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); {DAMAGE_HINT}") from None
    if not isinstance(raw, str):
        raise BadProvenance(f"{where} is a {type(raw).__name__}, not JSON text; {DAMAGE_HINT}")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BadProvenance(f"{where} is JSON nested too deeply to read; {DAMAGE_HINT}") from None
    except ValueError as e:
        raise BadProvenance(f"{where} is not valid JSON ({_reason(e)}); {DAMAGE_HINT}") from None
    if not isinstance(value, dict):
        raise BadProvenance(f"{where} is a JSON {_json_type(value)}, not an object; {DAMAGE_HINT}")
    return value


def read_provenance(conn: sqlite3.Connection) -> dict[str, Any]:
    """Provenance of the atlas on ``conn``; {} when atlas_info has no row (nothing recorded)."""
    row = conn.execute("SELECT provenance FROM atlas_info WHERE id = 1").fetchone()
    return {} if row is None else parse_provenance(row[0])


def read_verdict_criteria(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """``verdict_criteria`` of the atlas on ``conn``, reading only that part of the document.

    For the commands that show one feature: SQLite's JSON functions pick the
    criteria out, so the whole provenance (kilobytes) is not parsed each time.
    Damage anywhere in the document still raises BadProvenance.
    """
    # CASE guards every JSON call: SQLite raises on malformed JSON, and the parser below names it better
    row = conn.execute(
        "SELECT ok, CASE WHEN ok THEN json_type(provenance, '$.criteria') END, "
        "CASE WHEN ok THEN json_extract(provenance, '$.criteria') END FROM (SELECT provenance, "
        "CASE WHEN typeof(provenance) = 'text' AND json_valid(provenance) "
        "THEN json_type(provenance) = 'object' ELSE 0 END AS ok FROM atlas_info WHERE id = 1)"
    ).fetchone()
    if row is None:
        return {}
    if not row[0]:  # not JSON object text (damage, or a BLOB): the full parser names it or reads it
        return verdict_criteria(read_provenance(conn))
    if row[1] is None:
        return {}
    value = parse_provenance(row[2], where=f"{WHERE}.criteria") if row[1] == "object" else row[2]
    return verdict_criteria({"criteria": value})


def verdict_criteria(provenance: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``provenance['criteria']``: verdict column -> rule, each rule checked; {} when not recorded.

    A rule is ``{"column": str, "tau": number, ...}`` with optional ``how``
    (str), ``quantile`` (number) and ``n_random`` (int); anything else there
    raises BadProvenance naming the key.
    """
    crit = provenance.get("criteria")
    if crit is None:
        return {}
    if not isinstance(crit, dict):
        raise BadProvenance(f"{WHERE}.criteria is a JSON {_json_type(crit)}, not an object; {DAMAGE_HINT}")
    out: dict[str, dict[str, Any]] = {}
    for col, rule in crit.items():
        at = f"{WHERE}.criteria.{col}"
        if not isinstance(rule, dict):
            raise BadProvenance(f"{at} is a JSON {_json_type(rule)}, not an object; {DAMAGE_HINT}")
        for key, kinds in (
            ("column", (str,)),
            ("tau", (int, float)),
            ("how", (str,)),
            ("sql", (str,)),
            ("quantile", (int, float)),
            ("n_random", (int,)),
        ):
            v = rule.get(key)
            if v is not None and (not isinstance(v, kinds) or isinstance(v, bool)):
                raise BadProvenance(f"{at}.{key} is a JSON {_json_type(v)}, not a {_kind_name(kinds)}; {DAMAGE_HINT}")
        if isinstance(rule.get("tau"), float) and not math.isfinite(rule["tau"]):
            raise BadProvenance(f"{at}.tau is {rule['tau']}, not a finite number; {DAMAGE_HINT}")
        for key, kinds in (("tau_by_sae", (int, float)), ("baseline_by_sae", (str,))):  # SAE name -> value
            by = rule.get(key)
            if by is None:
                continue
            if not isinstance(by, dict):
                raise BadProvenance(f"{at}.{key} is a JSON {_json_type(by)}, not an object; {DAMAGE_HINT}")
            for name, v in by.items():
                bad = not isinstance(v, kinds) or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v))
                if bad and not (v is None and key == "baseline_by_sae"):
                    raise BadProvenance(f"{at}.{key}.{_clip(name)} is not a {_kind_name(kinds)}; {DAMAGE_HINT}")
        out[col] = rule
    return out


def describe_criterion(criterion: Any, sae: str | None = None) -> str:
    """One line for a verdict rule, e.g. ``du_top1_z >= 6.27 (99th percentile over 1024 random directions)``.

    A rule with a tau per SAE (``tau_by_sae``) shows ``sae``'s tau when given, else their range.
    Never raises: a rule that is not the expected shape is shown as its text.
    """
    if isinstance(criterion, str):
        try:
            criterion = json.loads(criterion)
        except (ValueError, RecursionError):
            return criterion
    by = criterion.get("tau_by_sae") if isinstance(criterion, dict) else None
    if isinstance(by, dict) and "column" in criterion and by:
        taus = [v for v in by.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tau = by.get(sae) if sae is not None else None
        if isinstance(tau, (int, float)) and not isinstance(tau, bool):
            text, where = f"{_clip(str(criterion['column']))} >= {tau:.4g}", f"{_clip(sae)}'s"
        elif taus:
            text = f"{_clip(str(criterion['column']))} >= {min(taus):.4g} to {max(taus):.4g} by SAE"
            where = "each SAE's"
        else:
            return _clip(str(criterion))
        q = criterion.get("quantile")
        if isinstance(q, (int, float)) and not isinstance(q, bool):
            text += f" ({100 * q:g}th percentile over {_clip(str(criterion.get('n_random', '?')))} random directions of {where} space)"
        return text
    if not isinstance(criterion, dict) or "column" not in criterion or "tau" not in criterion:
        return _clip(str(criterion))
    tau = criterion["tau"]
    tau_text = f"{tau:.4g}" if isinstance(tau, (int, float)) and not isinstance(tau, bool) else _clip(str(tau))
    text = f"{_clip(str(criterion['column']))} >= {tau_text}"
    q = criterion.get("quantile")
    if criterion.get("how") == "random-quantile" and isinstance(q, (int, float)) and not isinstance(q, bool):
        text += f" ({100 * q:g}th percentile over {_clip(str(criterion.get('n_random', '?')))} random directions)"
    return text


def _reason(e: ValueError) -> str:
    msg = getattr(e, "msg", None)
    pos = getattr(e, "pos", None)
    return f"{msg} at character {pos}" if msg is not None and pos is not None else _clip(str(e))


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _kind_name(kinds: tuple[type, ...]) -> str:
    return "string" if kinds == (str,) else ("integer" if kinds == (int,) else "number")


def _clip(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"
