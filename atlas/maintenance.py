"""Whole-atlas operations: describe, validate, export a subset, merge atlases.

The CLI commands ``info``, ``validate``, ``export`` and ``merge`` are thin
over these. Export and merge are :mod:`atlas.merge`'s (the one engine that
copies rows between atlas files, shared with a build's shard merge); they
write to a temporary file next to the output and rename it at the end, so an
interrupted run never leaves a half atlas.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.db import Atlas, open_atlas
from atlas.errors import AtlasError, QueryInterrupted, QueryTimeout, explain_sqlite_error
from atlas.files import atomic_output
from atlas.merge import (
    VOLATILE_PROVENANCE_KEYS,
    ProvenanceConflict,
    export_atlas,
    merge_atlases,
    merge_provenance,
)
from atlas.migrations import SCHEMA_VERSION
from atlas.provenance import read_provenance, verdict_criteria
from atlas.schema_check import FTS5_SHADOW_SUFFIXES, expected

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
    warn: bool = False  # passed, but something a reader should know (same-index edges far above chance)


@dataclass
class ValidationReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "", warn: bool = False) -> None:
        self.checks.append(Check(name, bool(ok), detail, bool(warn)))


def validate(path: str | os.PathLike, *, quick: bool = False) -> ValidationReport:
    """Check an atlas: SQLite integrity, full-text indexes, schema objects, column types, foreign keys,
    counts against ``saes.d_sae``, token ids within the vocabulary, contiguous ranks, schema version.

    Opens the file read-only, also one whose schema sae-atlas refuses elsewhere
    (that is what it reports). Raises NotAnAtlas / SchemaTooNew when it is not an
    atlas this version can read; everything else is a failed check, its detail
    one line of bounded length however many rows are wrong. ``quick`` runs
    ``PRAGMA quick_check`` and skips the checks that read every row of the big tables.
    """
    atlas = open_atlas(path, readonly=True, foreign_ok=True)
    rep = ValidationReport(str(path))
    try:
        _check(rep, "quick check" if quick else "integrity check", lambda: _check_integrity(atlas.conn, quick))
        _check(rep, "schema objects", lambda: _check_objects(atlas))
        if atlas.schema.refused:
            return rep  # the tables are not sae-atlas's: the checks below would read what they cannot trust
        _check(rep, "full-text indexes", lambda: _check_fts(atlas))
        _check(rep, "column types", lambda: _check_column_types(atlas.conn, quick))
        _check(rep, "provenance and label evidence are JSON", lambda: _check_json(atlas, quick))
        _check(rep, "text is UTF-8", lambda: _check_utf8(atlas.conn, quick))
        _check(rep, "schema version", lambda: _check_schema(atlas.conn))
        _check(rep, "foreign keys", lambda: _check_foreign_keys(atlas.conn))
        _check(rep, "features match saes.d_sae", lambda: _check_feature_counts(atlas.conn))
        _check(rep, "token ids within the vocabulary", lambda: _check_token_ids(atlas.conn))
        _check(rep, "token score ranks contiguous", lambda: _check_ranks(atlas.conn))
        _check(rep, "heads within the model", lambda: _check_heads(atlas.conn))
        if atlas.schema_version >= 4 and not quick:
            _check(rep, "virtual edges run forward", lambda: _check_virtual_paths(atlas))
        if not quick:
            _check(rep, "same-index edges against chance", lambda: _check_same_index(atlas.conn))
    finally:
        atlas.close()
    return rep


WARN = object()  # a check returns (True, detail, WARN) to pass with a warning
MAX_EXAMPLES = 5  # examples named in a failed check's detail
MAX_DETAIL = 400  # characters of one detail line


def _check(rep: ValidationReport, name: str, fn: Any) -> None:
    """Run one check; (ok, detail) or (ok, detail, name). A check that cannot run on this data fails, naming why."""
    try:
        out = fn()
    except (QueryTimeout, QueryInterrupted):
        raise  # the user's ctrl-c, or a deadline: stop the whole validation
    except sqlite3.Error as e:
        out = (False, str(explain_sqlite_error(e)))
    except (AtlasError, TypeError, ValueError, UnicodeDecodeError, OverflowError) as e:
        out = (False, f"could not run on this data: {e}")
    ok, detail, *renamed = out
    warn = bool(renamed and renamed[-1] is WARN)
    renamed = [r for r in renamed if r is not WARN]
    rep.add(renamed[0] if renamed else name, ok, _clip(detail), warn)


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _examples(items: list[str], total: int | None = None) -> str:
    """``a; b; c`` for the first few of ``items``, with how many there are in all when that is more."""
    n = len(items) if total is None else total
    shown = "; ".join(_clip(i)[:120] for i in items[:MAX_EXAMPLES])
    return shown + (f" (and {n - MAX_EXAMPLES:,} more)" if n > MAX_EXAMPLES else "")


def _check_integrity(conn: sqlite3.Connection, quick: bool) -> tuple[bool, str]:
    pragma = "quick_check" if quick else "integrity_check"
    # SQLite stops after N errors; one more than shown says whether there are more
    rows = [line for (r,) in conn.execute(f"PRAGMA {pragma}({MAX_EXAMPLES + 1})") for line in str(r).splitlines()]
    if rows == ["ok"]:
        return True, ""
    more = len(rows) > MAX_EXAMPLES
    return False, _examples(rows[:MAX_EXAMPLES]) + (" (and more)" if more else "")


def _check_objects(atlas: Atlas) -> tuple[bool, str]:
    sch = atlas.schema
    problems = [*sch.refused, *sch.write_refused, *(f"view {v} is not sae-atlas's" for v in sch.changed_views)]
    if problems:
        return False, _examples(problems)
    return True, ("others, read past: " + _examples(sch.other_objects)) if sch.other_objects else ""


def _check_fts(atlas: Atlas) -> tuple[bool, str]:
    """FTS5's own 'integrity-check' of each full-text index, run on a private copy of its tables.

    The command is an INSERT, which a read-only connection may not run even though
    it changes nothing; so the index's shadow tables (and, for labels_fts, the
    label texts it indexes) are copied into a scratch file in the temp folder,
    never next to the atlas, and checked there.
    """
    problems = []
    present = {r[0] for r in atlas.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for name, d in expected().current.items():
        if d.kind != "virtual" or name not in present:
            continue
        with tempfile.TemporaryDirectory(prefix="sae-atlas-fts-") as folder:
            scratch = sqlite3.connect(Path(folder) / "fts.db", isolation_level=None)
            try:
                scratch.execute("PRAGMA journal_mode = OFF")
                scratch.execute("PRAGMA synchronous = OFF")
                problem = _fts_copy_and_check(atlas.conn, scratch, name, d.stored, present)
            finally:
                scratch.close()
        if problem:
            problems.append(f"{name}: {problem}")
    return (not problems), _examples(problems)


def _fts_copy_and_check(
    src: sqlite3.Connection, scratch: sqlite3.Connection, name: str, create: str, present: set[str]
) -> str | None:
    content = re.search(r"content\s*=\s*'(\w+)'", create)
    rowid = re.search(r"content_rowid\s*=\s*'(\w+)'", create)
    if content:
        table, key = content.group(1), rowid.group(1) if rowid else "rowid"
        # the indexed column(s): those named in the CREATE, before the options
        cols = [c.strip().split()[0] for c in create[create.index("(") + 1 :].split(",") if "=" not in c]
        scratch.execute(f"CREATE TABLE {table} ({key} INTEGER PRIMARY KEY, {', '.join(cols)})")
        sel = ", ".join(f"CAST({c} AS BLOB)" for c in cols)  # bytes as stored, UTF-8 or not
        _copy_rows(src, scratch, f"SELECT {key}, {sel} FROM {table}", table, 1 + len(cols))
    scratch.execute(create)
    for sfx in FTS5_SHADOW_SUFFIXES:
        shadow = f"{name}_{sfx}"
        if shadow not in present:
            continue
        n_cols = len(scratch.execute(f"PRAGMA table_info({shadow})").fetchall())
        if not n_cols:
            continue
        scratch.execute(f"DELETE FROM {shadow}")
        _copy_rows(src, scratch, f"SELECT * FROM {shadow}", shadow, n_cols)
    try:
        scratch.execute(f"INSERT INTO {name} ({name}) VALUES ('integrity-check')")
    except sqlite3.Error as e:
        return " ".join(str(e).split())
    return None


def _copy_rows(src: sqlite3.Connection, dst: sqlite3.Connection, select: str, table: str, n_cols: int) -> None:
    cur = src.execute(select)
    insert = f"INSERT INTO {table} VALUES ({', '.join('?' * n_cols)})"
    dst.execute("BEGIN")
    while rows := cur.fetchmany(10_000):
        dst.executemany(insert, [tuple(r)[:n_cols] for r in rows])
    dst.execute("COMMIT")


# (table, column, typeof() values allowed besides NULL) for every column sae-atlas reads as a number or text
_BIG_TABLES = frozenset({"features", "token_scores", "head_scores", "edges", "labels", "vocab"})


def _check_column_types(conn: sqlite3.Connection, quick: bool) -> tuple[bool, str]:
    """Values of the wrong SQL type: text in a number column, a BLOB where text belongs.

    SQLite keeps whatever a file holds; integrity_check reports NULLs in NOT NULL
    columns but not types. One scan per table (the big ones only without --quick).
    """
    bad = []
    ref = expected()
    for name, d in ref.current.items():
        if d.kind != "table" or (quick and name in _BIG_TABLES):
            continue
        cols = [(r[1], str(r[2]).upper()) for r in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))]
        tests = []
        for col, decl in cols:
            allowed = _allowed_types(decl)
            if allowed:
                listed = ", ".join(f"'{t}'" for t in allowed)
                tests.append((col, f"typeof({_ident(col)}) NOT IN ('null', {listed})"))
        if not tests:
            continue
        sums = ", ".join(f"TOTAL({t})" for _, t in tests)
        counts = conn.execute(f"SELECT {sums} FROM {_ident(name)}").fetchone()
        for (col, _), n in zip(tests, counts, strict=True):
            if n:
                bad.append(f"{name}.{col}: {int(n):,} values of another type")
    return (not bad), _examples(bad)


# Text columns sae-atlas shows, checked for UTF-8 (SQLite stores any bytes as TEXT; reading them fails later).
_TEXT_COLUMNS = {
    "models": ("name", "source", "architecture", "norm_kind", "notes"),
    "saes": ("name", "hook_name", "site", "source"),
    "vocab": ("raw", "display", "key"),
    "labels": ("text", "kind", "source"),
}


def _check_utf8(conn: sqlite3.Connection, quick: bool) -> tuple[bool, str]:
    bad = []
    for table, cols in _TEXT_COLUMNS.items():
        if quick and table in _BIG_TABLES:
            continue
        for col in cols:
            cur = conn.execute(f"SELECT CAST({col} AS BLOB) FROM {table} WHERE typeof({col}) = 'text'")
            n = 0
            while rows := cur.fetchmany(10_000):
                for (raw,) in rows:
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        n += 1
            if n:
                bad.append(f"{table}.{col}: {n:,} values are not UTF-8")
    return (not bad), _examples(bad)


def _check_json(atlas: Atlas, quick: bool) -> tuple[bool, str]:
    """The provenance parses (with the verdict rules sae-atlas reads), and every label's evidence is JSON."""
    bad = []
    try:
        verdict_criteria(read_provenance(atlas.conn))
    except AtlasError as e:
        bad.append(str(e).split(";")[0])
    if not quick:
        n = atlas.conn.execute(
            "SELECT COUNT(*) FROM labels WHERE evidence IS NOT NULL AND NOT json_valid(evidence)"
        ).fetchone()[0]
        if n:
            bad.append(f"labels.evidence: {n:,} values are not valid JSON")
    return (not bad), _examples(bad)


def _allowed_types(decl: str) -> tuple[str, ...]:
    if "INT" in decl:
        return ("integer",)
    if "REAL" in decl or "FLOA" in decl or "DOUB" in decl:
        return ("real", "integer")
    if "TEXT" in decl or "CHAR" in decl:
        return ("text",)
    return ()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_schema(conn: sqlite3.Connection) -> tuple[bool, str, str]:
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    info = conn.execute("SELECT schema_version FROM atlas_info WHERE id = 1").fetchone()
    applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    problems = []
    if info is None:
        problems.append("atlas_info has no row")
    elif info[0] != user_version:
        problems.append(f"atlas_info says version {info[0]!r}, PRAGMA user_version says {user_version}")
    if applied != list(range(1, user_version + 1)):
        problems.append(f"schema_migrations lists {_examples([repr(a) for a in applied])}, expected 1..{user_version}")
    note = ""
    if user_version < SCHEMA_VERSION:  # older is not damaged: it opens read-only until migrated
        note = f"older than {SCHEMA_VERSION}: opens read-only; `sae-atlas migrate` upgrades it (or a copy, -o)"
    return not problems, "; ".join(problems) or note, f"schema version {user_version}"


def _check_foreign_keys(conn: sqlite3.Connection) -> tuple[bool, str]:
    """Dangling references, counted per (table -> parent): a WITHOUT ROWID table has no rowid to name."""
    counts: dict[tuple[str, str], int] = {}
    for table, _rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check"):
        counts[(table, parent)] = counts.get((table, parent), 0) + 1
    if not counts:
        return True, ""
    worst = sorted(counts.items(), key=lambda kv: -kv[1])
    return False, "dangling references: " + _examples([f"{t} -> {p} {n:,}" for (t, p), n in worst])


def _check_feature_counts(conn: sqlite3.Connection) -> tuple[bool, str]:
    rows = conn.execute(
        "SELECT s.name, s.d_sae, COUNT(f.feature_id), MIN(f.idx), MAX(f.idx) "
        "FROM saes s LEFT JOIN features f USING (sae_id) GROUP BY s.sae_id ORDER BY s.sae_id"
    ).fetchall()
    bad = [
        f"{name}: d_sae {d_sae!r} but {n} features (idx {lo}..{hi})"
        for name, d_sae, n, lo, hi in rows
        if not (isinstance(d_sae, int) and n == d_sae and (n == 0 or (lo == 0 and hi == d_sae - 1)))
    ]
    return (not bad), _examples(bad)


def _check_token_ids(conn: sqlite3.Connection) -> tuple[bool, str]:
    # The max is one index probe; the per-model join only runs if it could matter.
    max_tok = conn.execute("SELECT MAX(token_id) FROM token_scores").fetchone()[0]
    min_vocab = conn.execute("SELECT MIN(d_vocab) FROM models").fetchone()[0]
    detail, ok = "", True
    if (
        max_tok is not None
        and min_vocab is not None
        and not (isinstance(max_tok, int) and isinstance(min_vocab, int) and max_tok < min_vocab)
    ):
        n = conn.execute(
            "SELECT COUNT(*) FROM token_scores ts JOIN features f USING (feature_id) JOIN saes s USING (sae_id) "
            "JOIN models m USING (model_id) WHERE ts.token_id >= m.d_vocab OR ts.token_id < 0 "
            "OR typeof(m.d_vocab) != 'integer'"
        ).fetchone()[0]
        ok, detail = n == 0, f"{n:,} token scores name a token id outside the model's vocabulary" if n else ""
    vocab = conn.execute(
        "SELECT m.name, m.d_vocab, (SELECT COUNT(*) FROM vocab v WHERE v.model_id = m.model_id) FROM models m"
    ).fetchall()
    wrong = [f"{name}: {n} vocab rows for d_vocab {d!r}" for name, d, n in vocab if n not in (0, d)]
    if wrong:
        ok, detail = False, "; ".join(filter(None, [detail, _examples(wrong)]))
    return ok, detail


def _check_ranks(conn: sqlite3.Connection) -> tuple[bool, str]:
    cur = conn.execute(
        "SELECT feature_id, phase, sign FROM token_scores GROUP BY feature_id, phase, sign "
        "HAVING MIN(rank) != 0 OR MAX(rank) != COUNT(*) - 1"
    )
    bad = cur.fetchmany(MAX_EXAMPLES + 1)
    cur.close()
    shown = [f"#{r[0]} {r[1]}{r[2]:+d}" if isinstance(r[2], int) else f"#{r[0]} {r[1]}{r[2]!r}" for r in bad]
    more = " (and more)" if len(bad) > MAX_EXAMPLES else ""
    return (not bad), ("" if not bad else "ranks not 0..k-1 for " + ", ".join(shown[:MAX_EXAMPLES]) + more)


def _check_virtual_paths(atlas: Any) -> tuple[bool, str]:
    """Every virtual / virtual_in edge goes from a dictionary that writes the residual stream before the other reads it."""
    from atlas.domain import reaches

    pairs = atlas.conn.execute(
        "SELECT DISTINCT fs.sae_id, fd.sae_id FROM edges e JOIN features fs ON fs.feature_id = e.src_feature "
        "JOIN features fd ON fd.feature_id = e.dst_feature WHERE e.kind IN ('virtual', 'virtual_in')"
    ).fetchall()
    saes = {s.sae_id: s for s in atlas.saes()}
    wrong = []
    for a, b in pairs:
        src, dst = saes.get(a), saes.get(b)
        if src is None or dst is None or not reaches(src.out_site or src.site, src.write_layers, dst.site, dst.layer):
            wrong.append(f"{src.name if src else a} -> {dst.name if dst else b}")
    return (not wrong), ("" if not wrong else "no residual path for " + _examples(wrong))


def _check_heads(conn: sqlite3.Connection) -> tuple[bool, str]:
    n = conn.execute(
        "SELECT COUNT(*) FROM heads h JOIN models m USING (model_id) "
        "WHERE h.layer >= m.n_layers OR h.head >= m.n_heads OR h.kv_group >= m.n_kv_heads"
    ).fetchone()[0]
    return n == 0, f"{n:,} heads outside n_layers/n_heads" if n else ""


def _check_same_index(conn: sqlite3.Connection) -> tuple:
    """Warn (never fail) when cross-dictionary edges join same-index features far above chance."""
    from atlas.same_index import same_index_check

    check = same_index_check(conn)
    return (True, check.summary(), WARN) if check.flagged else (True, check.summary())
