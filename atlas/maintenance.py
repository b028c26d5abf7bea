"""Whole-atlas operations: describe, validate, export a subset, merge atlases.

The CLI commands ``info``, ``validate``, ``export`` and ``merge`` are thin
over these. Export and merge write to a temporary file next to the output
and rename it at the end, so an interrupted run never leaves a half atlas.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.db import Atlas, _read_params, connect, create_atlas, file_uri, open_atlas, utc_now
from atlas.errors import AtlasError, QueryInterrupted, QueryTimeout, explain_sqlite_error
from atlas.migrations import SCHEMA_VERSION
from atlas.provenance import read_provenance, verdict_criteria
from atlas.schema_check import FTS5_SHADOW_SUFFIXES, expected


class ProvenanceConflict(AtlasError):
    """Atlases that cannot be merged: different models, build parameters or SAE weights."""


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
    finally:
        atlas.close()
    return rep


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
    rep.add(renamed[0] if renamed else name, ok, _clip(detail))


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
    "models": ("name", "source", "architecture", "norm_kind", "notes"), "saes": ("name", "hook_name", "site", "source"),
    "vocab": ("raw", "display", "key"), "labels": ("text", "kind", "source"),
}  # fmt: skip


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
    if user_version < SCHEMA_VERSION:
        problems.append(f"schema version {user_version} is older than {SCHEMA_VERSION}: run `sae-atlas migrate`")
    return not problems, "; ".join(problems), f"schema version {user_version}"


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


def _check_heads(conn: sqlite3.Connection) -> tuple[bool, str]:
    n = conn.execute(
        "SELECT COUNT(*) FROM heads h JOIN models m USING (model_id) "
        "WHERE h.layer >= m.n_layers OR h.head >= m.n_heads OR h.kv_group >= m.n_kv_heads"
    ).fetchone()[0]
    return n == 0, f"{n:,} heads outside n_layers/n_heads" if n else ""


# ------------------------------------------------------------------ atomic output
@contextmanager
def atomic_output(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it onto ``out`` only on success."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (use --force to replace it)")
    if out.exists() and out.is_dir():
        raise AtlasError(f"{out}: is a directory")
    if not out.parent.exists():
        raise AtlasError(f"{out.parent}: no such directory")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    for p in (tmp, Path(str(tmp) + "-journal")):
        p.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        for p in (tmp, Path(str(tmp) + "-journal")):
            p.unlink(missing_ok=True)


def _columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def _copy(conn: sqlite3.Connection, table: str, where: str = "", params: Sequence[Any] = (), src: str = "src") -> int:
    cols = ", ".join(_columns(conn, table))
    cur = conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM {src}.{table} {where}", params)
    return cur.rowcount


def _attach(conn: sqlite3.Connection, path: Path, alias: str) -> None:
    # read as every read is (atlas.db._read_params): nothing created beside the user's file, even a -shm
    params, exclusive = _read_params(path)
    if exclusive:  # a -wal log without -shm: the wal-index in heap memory, set before the attach reads it
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute(f"ATTACH DATABASE ? AS {alias}", (file_uri(path, **params),))


def _open_for_copy(tmp: Path, provenance: dict) -> sqlite3.Connection:
    """A new empty atlas at ``tmp``, reopened with URI filenames so ATTACH can be read-only."""
    create_atlas(tmp, provenance=provenance).close()
    conn = sqlite3.connect(file_uri(tmp), uri=True, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = OFF")  # rows are copied table by table; checked at the end
    conn.execute("PRAGMA synchronous = OFF")  # the file is renamed into place only after COMMIT
    return conn


def _require_current(atlas: Atlas) -> None:
    if atlas.schema_version != SCHEMA_VERSION:
        raise AtlasError(
            f"{atlas.path}: schema version {atlas.schema_version}, expected {SCHEMA_VERSION}: "
            "run `sae-atlas migrate` on it (or a copy) first"
        )


def _finish(conn: sqlite3.Connection) -> None:
    bad = conn.execute("PRAGMA foreign_key_check").fetchmany(1)
    if bad:
        raise AtlasError(f"internal error: copied rows break a foreign key ({tuple(bad[0])})")
    # labels_fts is kept up to date by the labels triggers as rows are copied
    conn.execute("ANALYZE main")


# ------------------------------------------------------------------ export
def export_atlas(
    src: str | os.PathLike, out: str | os.PathLike, sae_names: Sequence[str], *, overwrite: bool = False
) -> dict[str, int]:
    """Write a self-contained atlas holding only the SAEs named.

    It keeps the models, vocab and heads those SAEs need, their features and
    every row that touches only them (edges to features outside are dropped),
    and the source's provenance with an ``exported`` note. Ids are kept.
    Returns row counts of the new file.
    """
    if not sae_names:
        raise AtlasError("name at least one SAE to export (--sae NAME)")
    with open_atlas(src) as atlas:
        _require_current(atlas)
        sae_ids = sorted({atlas.sae(n).sae_id for n in sae_names})
        names = [s.name for s in atlas.saes() if s.sae_id in sae_ids]
        provenance = atlas.provenance()
        src_path = atlas.path
    provenance["exported"] = {"from": src_path.name, "saes": names, "at": utc_now()}
    with atomic_output(out, overwrite=overwrite) as tmp:
        conn = _open_for_copy(tmp, provenance)
        try:
            _attach(conn, src_path, "src")
            conn.execute("BEGIN")
            conn.execute("CREATE TEMP TABLE keep_saes (sae_id INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO keep_saes VALUES (?)", [(i,) for i in sae_ids])
            models = "model_id IN (SELECT model_id FROM src.saes WHERE sae_id IN (SELECT sae_id FROM keep_saes))"
            feats = "feature_id IN (SELECT feature_id FROM main.features)"
            _copy(conn, "models", f"WHERE {models}")
            _copy(conn, "vocab", f"WHERE {models}")
            conn.execute(
                "INSERT INTO main.vocab_fts (key, model_id, token_id) SELECT key, model_id, token_id FROM main.vocab"
            )
            _copy(conn, "heads", f"WHERE {models}")
            _copy(conn, "saes", "WHERE sae_id IN (SELECT sae_id FROM keep_saes)")
            _copy(conn, "features", "WHERE sae_id IN (SELECT sae_id FROM keep_saes)")
            _copy(conn, "token_scores", f"WHERE {feats}")
            _copy(conn, "head_scores", f"WHERE {feats}")
            _copy(
                conn,
                "edges",
                "WHERE src_feature IN (SELECT feature_id FROM main.features) "
                "AND dst_feature IN (SELECT feature_id FROM main.features)",
            )
            _copy(conn, "labels", f"WHERE {feats}")
            _copy(conn, "depth_profiles", "WHERE sae_id IN (SELECT sae_id FROM keep_saes)")
            _copy(conn, "build_units", "WHERE sae_id IN (SELECT sae_id FROM keep_saes)")
            _finish(conn)
            conn.execute("COMMIT")
            conn.execute("DETACH DATABASE src")
        finally:
            conn.close()
        with open_atlas(tmp) as check:
            counts = check.counts()
    return counts


# ------------------------------------------------------------------ merge
# Provenance keys whose values may differ between builds of one atlas (when, where,
# what each run covered); every other key present in both must agree.
VOLATILE_PROVENANCE_KEYS = frozenset(
    {
        "created_at", "started_at", "finished_at", "elapsed_s", "seconds", "timings", "timing", "host",
        "hostname", "machine", "user", "argv", "command", "exported", "merged", "saes", "sae_files",
        "peak_memory", "load_seconds", "device",
    }
)  # fmt: skip

_MODEL_IDENTITY = (
    "source", "source_kind", "architecture", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_vocab",
    "tied_embeddings", "norm_kind", "embed_scale", "attn_softcap", "final_softcap", "sha256",
)  # fmt: skip


def merge_provenance(a: dict, b: dict, where: str = "", *, strict: bool = True) -> dict:
    """Deep merge of two provenance dicts; a conflicting leaf raises ProvenanceConflict.

    Below a volatile key (timestamps, hosts, per-run notes) nothing conflicts:
    dicts are united and the first atlas's value wins.
    """
    out = dict(a)
    for key, vb in b.items():
        path = f"{where}.{key}" if where else key
        if key not in out:
            out[key] = vb
            continue
        va = out[key]
        key_strict = strict and key not in VOLATILE_PROVENANCE_KEYS
        if isinstance(va, dict) and isinstance(vb, dict):
            out[key] = merge_provenance(va, vb, path, strict=key_strict)
        elif va != vb and key_strict:
            raise ProvenanceConflict(
                f"build parameter {path} differs ({_short(va)} vs {_short(vb)}): these atlases were built differently"
            )
    return out


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 40 else s[:37] + "..."


def _vocab_digest(conn: sqlite3.Connection, model_id: int, schema: str) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for (raw,) in conn.execute(f"SELECT raw FROM {schema}.vocab WHERE model_id = ? ORDER BY token_id", (model_id,)):
        h.update(raw.encode("utf-8", "surrogatepass") + b"\x00")
        n += 1
    return n, h.hexdigest()


def merge_atlases(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Combine atlases of the same model built separately into ``out``.

    The first atlas is copied whole; each further one adds its SAEs with
    feature ids renumbered after the ones already there (edges, scores and
    labels follow). Refused with ProvenanceConflict: different models (source,
    sha256 or shape), different vocabularies, build parameters that disagree,
    or one SAE name carrying different weights (sha256). An SAE present in
    both with the same sha256 is kept once; the later atlas's labels on it
    that the first lacks are added.
    """
    if len(paths) < 2:
        raise AtlasError("merge needs at least two atlases")
    atlases = [open_atlas(p) for p in paths]
    try:
        for a in atlases:
            _require_current(a)
            a.models(), a.saes()  # typed reads: damage in what merge matches on is named before any copy
        provenance = atlases[0].provenance()
        for a in atlases[1:]:
            provenance = merge_provenance(provenance, a.provenance())
        first = atlases[0].path
        rest = [a.path for a in atlases[1:]]
    finally:
        for a in atlases:
            a.close()
    provenance["merged"] = {"inputs": [Path(p).name for p in paths], "at": utc_now()}
    report: dict[str, Any] = {"added_saes": [], "shared_saes": []}
    with atomic_output(out, overwrite=overwrite) as tmp:
        src = connect(first, readonly=True)
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(dst)  # a consistent page copy of the first atlas
        finally:
            src.close()
            dst.close()
        conn = sqlite3.connect(file_uri(tmp), uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("PRAGMA synchronous = OFF")  # the file is renamed into place only at the end
            conn.execute("UPDATE atlas_info SET provenance = ? WHERE id = 1", (json.dumps(provenance, sort_keys=True),))
            for path in rest:
                # ATTACH cannot run inside a transaction: one attach + transaction per input
                _attach(conn, Path(path), "b")
                conn.execute("BEGIN")
                added, shared = _merge_one(conn, "b", Path(path))
                conn.execute("COMMIT")
                conn.execute("DETACH DATABASE b")
                report["added_saes"] += added
                report["shared_saes"] += shared
            conn.execute("BEGIN")
            _finish(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
        with open_atlas(tmp) as check:
            report["counts"] = check.counts()
    return report


def _merge_one(conn: sqlite3.Connection, b: str, path: Path) -> tuple[list[str], list[str]]:
    """Add atlas ``b`` (attached) into main. Returns (added SAE names, shared SAE names)."""
    conn.execute("DROP TABLE IF EXISTS temp.mmap")
    conn.execute("DROP TABLE IF EXISTS temp.smap")
    conn.execute("DROP TABLE IF EXISTS temp.hmap")
    conn.execute("DROP TABLE IF EXISTS temp.fmap")
    conn.execute("CREATE TEMP TABLE mmap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    conn.execute("CREATE TEMP TABLE smap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL, shared INTEGER NOT NULL)")
    conn.execute("CREATE TEMP TABLE hmap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    conn.execute("CREATE TEMP TABLE fmap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL, shared INTEGER NOT NULL)")
    conn.row_factory = sqlite3.Row

    # models: every model of b must be one of main's, identical
    for mb in conn.execute(f"SELECT * FROM {b}.models").fetchall():
        ma = conn.execute("SELECT * FROM main.models WHERE name = ?", (mb["name"],)).fetchone()
        if ma is None:
            raise ProvenanceConflict(
                f"{path.name}: model {mb['name']!r} is not in the first atlas; merge needs one model"
            )
        for col in _MODEL_IDENTITY:
            if ma[col] != mb[col]:
                raise ProvenanceConflict(
                    f"{path.name}: model {mb['name']!r} differs in {col} ({ma[col]!r} vs {mb[col]!r})"
                )
        na, da = _vocab_digest(conn, ma["model_id"], "main")
        nb, db_ = _vocab_digest(conn, mb["model_id"], b)
        if na and nb and da != db_:
            raise ProvenanceConflict(f"{path.name}: model {mb['name']!r} has a different vocabulary")
        conn.execute("INSERT INTO temp.mmap VALUES (?, ?)", (mb["model_id"], ma["model_id"]))
        if nb and not na:
            conn.execute(
                f"INSERT INTO main.vocab SELECT ?, token_id, raw, display, key FROM {b}.vocab WHERE model_id = ?",
                (ma["model_id"], mb["model_id"]),
            )
            conn.execute(
                "INSERT INTO main.vocab_fts (key, model_id, token_id) SELECT key, model_id, token_id "
                "FROM main.vocab WHERE model_id = ?",
                (ma["model_id"],),
            )
    # heads: add missing ones, map by (model, layer, head)
    conn.execute(
        f"INSERT INTO main.heads (model_id, layer, head, kv_group) SELECT m.new, h.layer, h.head, h.kv_group "
        f"FROM {b}.heads h JOIN temp.mmap m ON m.old = h.model_id "
        "WHERE NOT EXISTS (SELECT 1 FROM main.heads x WHERE x.model_id = m.new AND x.layer = h.layer AND x.head = h.head)"
    )
    conn.execute(
        f"INSERT INTO temp.hmap SELECT h.head_pk, x.head_pk FROM {b}.heads h JOIN temp.mmap m ON m.old = h.model_id "
        "JOIN main.heads x ON x.model_id = m.new AND x.layer = h.layer AND x.head = h.head"
    )
    # SAEs: new ones get new ids; one already present must carry the same weights
    added, shared = [], []
    sae_cols = [c for c in _columns(conn, "saes") if c != "sae_id"]
    for sb in conn.execute(f"SELECT * FROM {b}.saes ORDER BY sae_id").fetchall():
        sa = conn.execute("SELECT * FROM main.saes WHERE name = ?", (sb["name"],)).fetchone()
        if sa is None:
            vals = [sb[c] for c in sae_cols]
            vals[sae_cols.index("model_id")] = conn.execute(
                "SELECT new FROM temp.mmap WHERE old = ?", (sb["model_id"],)
            ).fetchone()[0]
            cur = conn.execute(
                f"INSERT INTO main.saes ({', '.join(sae_cols)}) VALUES ({', '.join('?' * len(sae_cols))})", vals
            )
            conn.execute("INSERT INTO temp.smap VALUES (?, ?, 0)", (sb["sae_id"], cur.lastrowid))
            added.append(sb["name"])
        else:
            if sa["sha256"] is None or sb["sha256"] is None or sa["sha256"] != sb["sha256"]:
                raise ProvenanceConflict(
                    f"{path.name}: SAE {sb['name']!r} is in both atlases with different or unknown weights "
                    f"(sha256 {sa['sha256']} vs {sb['sha256']})"
                )
            if (sa["d_sae"], sa["layer"], sa["site"]) != (sb["d_sae"], sb["layer"], sb["site"]):
                raise ProvenanceConflict(f"{path.name}: SAE {sb['name']!r} has the same sha256 but a different shape")
            conn.execute("INSERT INTO temp.smap VALUES (?, ?, 1)", (sb["sae_id"], sa["sae_id"]))
            shared.append(sb["name"])
    # features: shared SAEs map by idx; new SAEs get ids after main's, keeping each SAE contiguous
    conn.execute(
        f"INSERT INTO temp.fmap SELECT fb.feature_id, fa.feature_id, 1 FROM {b}.features fb "
        "JOIN temp.smap s ON s.old = fb.sae_id AND s.shared = 1 "
        "JOIN main.features fa ON fa.sae_id = s.new AND fa.idx = fb.idx"
    )
    base = conn.execute("SELECT COALESCE(MAX(feature_id), -1) + 1 FROM main.features").fetchone()[0]
    conn.execute(
        f"INSERT INTO temp.fmap SELECT fb.feature_id, ? + ROW_NUMBER() OVER (ORDER BY fb.sae_id, fb.idx) - 1, 0 "
        f"FROM {b}.features fb JOIN temp.smap s ON s.old = fb.sae_id AND s.shared = 0",
        (base,),
    )
    fcols = [c for c in _columns(conn, "features") if c not in ("feature_id", "sae_id")]
    conn.execute(
        f"INSERT INTO main.features (feature_id, sae_id, {', '.join(fcols)}) "
        f"SELECT m.new, s.new, {', '.join('f.' + c for c in fcols)} FROM {b}.features f "
        "JOIN temp.fmap m ON m.old = f.feature_id AND m.shared = 0 JOIN temp.smap s ON s.old = f.sae_id "
        "ORDER BY m.new"
    )
    new_f = "JOIN temp.fmap m ON m.old = t.feature_id AND m.shared = 0"
    conn.execute(
        f"INSERT INTO main.token_scores SELECT m.new, t.phase, t.sign, t.rank, t.token_id, t.value "
        f"FROM {b}.token_scores t {new_f} ORDER BY m.new, t.phase, t.sign, t.rank"
    )
    conn.execute(
        f"INSERT INTO main.head_scores SELECT m.new, h.new, t.role, t.score, t.percentile "
        f"FROM {b}.head_scores t {new_f} JOIN temp.hmap h ON h.old = t.head_pk"
    )
    # edges touching at least one new feature; edges among shared SAEs are already in main
    conn.execute(
        "INSERT INTO main.edges (src_feature, dst_feature, head_pk, kind, score, rank) "
        "SELECT ms.new, md.new, h.new, e.kind, e.score, e.rank "
        f"FROM {b}.edges e JOIN temp.fmap ms ON ms.old = e.src_feature JOIN temp.fmap md ON md.old = e.dst_feature "
        "LEFT JOIN temp.hmap h ON h.old = e.head_pk WHERE ms.shared = 0 OR md.shared = 0 ORDER BY e.edge_id"
    )
    # labels: all of a new SAE's; on a shared SAE only those main lacks
    conn.execute(
        "INSERT INTO main.labels (feature_id, text, kind, source, score, evidence, created_at) "
        "SELECT m.new, l.text, l.kind, l.source, l.score, l.evidence, l.created_at "
        f"FROM {b}.labels l JOIN temp.fmap m ON m.old = l.feature_id "
        "WHERE m.shared = 0 OR NOT EXISTS (SELECT 1 FROM main.labels x WHERE x.feature_id = m.new "
        "AND x.text = l.text AND x.kind = l.kind AND x.source = l.source) ORDER BY l.label_id"
    )
    for table in ("depth_profiles", "build_units"):
        cols = [c for c in _columns(conn, table) if c != "sae_id"]
        conn.execute(
            f"INSERT INTO main.{table} (sae_id, {', '.join(cols)}) SELECT s.new, {', '.join('t.' + c for c in cols)} "
            f"FROM {b}.{table} t JOIN temp.smap s ON s.old = t.sae_id AND s.shared = 0"
        )
    conn.row_factory = None
    return added, shared
