"""Whole-atlas operations: describe, validate, export a subset, merge atlases.

The CLI commands ``info``, ``validate``, ``export`` and ``merge`` are thin
over these. Export and merge are :mod:`atlas.merge`'s (the one engine that
copies rows between atlas files, shared with a build's shard merge); they
write to a temporary file next to the output and rename it at the end, so an
interrupted run never leaves a half atlas.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from atlas.db import Atlas, open_atlas
from atlas.files import atomic_output
from atlas.merge import (
    VOLATILE_PROVENANCE_KEYS,
    ProvenanceConflict,
    export_atlas,
    merge_atlases,
    merge_provenance,
)
from atlas.migrations import SCHEMA_VERSION

__all__ = [
    "VOLATILE_PROVENANCE_KEYS",
    "ProvenanceConflict",
    "ValidationReport",
    "atomic_output",
    "describe",
    "export_atlas",
    "merge_atlases",
    "merge_provenance",
    "validate",
]


# ------------------------------------------------------------------ describe
def describe(atlas: Atlas) -> dict[str, Any]:
    """What `sae-atlas info` prints: models, SAEs, row counts, provenance, file size.

    Fast on any size: no full-table scan (see AtlasReader.table_counts).
    """
    info = atlas.info_row()
    counts = atlas.table_counts()
    return {
        "path": str(atlas.path),
        "file_bytes": atlas.path.stat().st_size,
        "schema_version": info["schema_version"],
        "sae_atlas_version": info["sae_atlas_version"],
        "created_at": info["created_at"],
        "models": [m.__dict__ for m in atlas.models()],
        "saes": [s.__dict__ for s in atlas.saes()],
        "counts": {t: {"rows": n, "exact": exact} for t, (n, exact) in counts.items()},
        "provenance": info["provenance"],
    }


# ------------------------------------------------------------------ validate
@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ValidationReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))


def validate(path: str | os.PathLike, *, quick: bool = False) -> ValidationReport:
    """Check an atlas: SQLite integrity, foreign keys, counts against ``saes.d_sae``,
    token ids within the vocabulary, contiguous ranks, schema version.

    Opens the file read-only. Raises NotAnAtlas / SchemaTooNew when it is not
    an atlas this version can read; everything else is a failed check.
    """
    atlas = open_atlas(path, readonly=True)
    rep = ValidationReport(str(path))
    conn = atlas.conn
    try:
        _check_integrity(conn, rep, quick)
        _check_schema(conn, rep)
        fk = conn.execute("PRAGMA foreign_key_check").fetchmany(6)
        rep.add(
            "foreign keys",
            not fk,
            ""
            if not fk
            else "dangling references, e.g. " + "; ".join(f"{r[0]} rowid {r[1]} -> {r[2]}" for r in fk[:5]),
        )
        _check_feature_counts(conn, rep)
        _check_token_ids(conn, rep)
        bad = conn.execute(
            "SELECT feature_id, phase, sign FROM token_scores GROUP BY feature_id, phase, sign "
            "HAVING MIN(rank) != 0 OR MAX(rank) != COUNT(*) - 1 LIMIT 5"
        ).fetchall()
        rep.add(
            "token score ranks contiguous",
            not bad,
            "" if not bad else "ranks not 0..k-1 for " + ", ".join(f"#{r[0]} {r[1]}{r[2]:+d}" for r in bad),
        )
        bad_heads = conn.execute(
            "SELECT COUNT(*) FROM heads h JOIN models m USING (model_id) "
            "WHERE h.layer >= m.n_layers OR h.head >= m.n_heads OR h.kv_group >= m.n_kv_heads"
        ).fetchone()[0]
        rep.add(
            "heads within the model", bad_heads == 0, f"{bad_heads} heads outside n_layers/n_heads" if bad_heads else ""
        )
    finally:
        atlas.close()
    return rep


def _check_integrity(conn: sqlite3.Connection, rep: ValidationReport, quick: bool) -> None:
    pragma = "quick_check" if quick else "integrity_check"
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}").fetchmany(5)]
    except sqlite3.DatabaseError as e:
        rep.add(pragma.replace("_", " "), False, str(e))
        return
    rep.add(pragma.replace("_", " "), rows == ["ok"], "" if rows == ["ok"] else "; ".join(rows))


def _check_schema(conn: sqlite3.Connection, rep: ValidationReport) -> None:
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    info = conn.execute("SELECT schema_version FROM atlas_info WHERE id = 1").fetchone()
    applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    problems = []
    if info is None:
        problems.append("atlas_info has no row")
    elif info[0] != user_version:
        problems.append(f"atlas_info says version {info[0]}, PRAGMA user_version says {user_version}")
    if applied != list(range(1, user_version + 1)):
        problems.append(f"schema_migrations lists {applied}, expected 1..{user_version}")
    note = ""
    if user_version < SCHEMA_VERSION:  # older is not damaged: it opens read-only until migrated
        note = f"older than {SCHEMA_VERSION}: opens read-only; `sae-atlas migrate` upgrades it (or a copy, -o)"
    rep.add(f"schema version {user_version}", not problems, "; ".join(problems) or note)


def _check_feature_counts(conn: sqlite3.Connection, rep: ValidationReport) -> None:
    rows = conn.execute(
        "SELECT s.name, s.d_sae, COUNT(f.feature_id), MIN(f.idx), MAX(f.idx) "
        "FROM saes s LEFT JOIN features f USING (sae_id) GROUP BY s.sae_id ORDER BY s.sae_id"
    ).fetchall()
    bad = [
        f"{name}: d_sae {d_sae} but {n} features (idx {lo}..{hi})"
        for name, d_sae, n, lo, hi in rows
        if not (n == d_sae and (n == 0 or (lo == 0 and hi == d_sae - 1)))
    ]
    rep.add("features match saes.d_sae", not bad, "; ".join(bad[:5]))


def _check_token_ids(conn: sqlite3.Connection, rep: ValidationReport) -> None:
    # The max is one index probe; the per-model join only runs if it could matter.
    max_tok = conn.execute("SELECT MAX(token_id) FROM token_scores").fetchone()[0]
    min_vocab = conn.execute("SELECT MIN(d_vocab) FROM models").fetchone()[0]
    detail, ok = "", True
    if max_tok is not None and min_vocab is not None and max_tok >= min_vocab:
        n = conn.execute(
            "SELECT COUNT(*) FROM token_scores ts JOIN features f USING (feature_id) JOIN saes s USING (sae_id) "
            "JOIN models m USING (model_id) WHERE ts.token_id >= m.d_vocab OR ts.token_id < 0"
        ).fetchone()[0]
        ok, detail = n == 0, f"{n} token scores name a token id outside the model's vocabulary" if n else ""
    vocab = conn.execute(
        "SELECT m.name, m.d_vocab, (SELECT COUNT(*) FROM vocab v WHERE v.model_id = m.model_id) FROM models m"
    ).fetchall()
    wrong = [f"{name}: {n} vocab rows for d_vocab {d}" for name, d, n in vocab if n not in (0, d)]
    if wrong:
        ok, detail = False, "; ".join(filter(None, [detail, *wrong]))
    rep.add("token ids within the vocabulary", ok, detail)
