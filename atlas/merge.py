"""The one engine that copies rows between atlas files: ``export``, ``merge`` and a build's shard merge.

All three walk :data:`atlas.domain.TABLES` (every table of rows, after the
tables it references) and write a new file under a temporary name that is
renamed into place only when complete (:func:`atlas.files.atomic_output`):

* :func:`export_atlas` keeps the rows whose references all land in what is kept;
* :func:`merge_atlases` adds each further atlas with its ids renumbered through
  one map per referenced table;
* :func:`combine_partials` joins the partial files of one sharded build, whose
  ids already agree: keyed rows are unioned, empty feature columns filled,
  and id-numbered rows re-inserted in the order the build would have written them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.db import Atlas, _read_params, connect, create_atlas, open_atlas
from atlas.domain import TABLE_BY_NAME, TABLES, Table
from atlas.errors import AtlasError
from atlas.files import atomic_output, file_uri
from atlas.migrations import SAME_DATA_TABLES, SCHEMA_VERSION
from atlas.write import utc_now


class ProvenanceConflict(AtlasError):
    """Atlases that cannot be merged: different models, build parameters or SAE weights."""


# ------------------------------------------------------------------ helpers
def columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def shared_columns(conn: sqlite3.Connection, table: str, other: str) -> list[str]:
    """main's columns of ``table`` that schema ``other`` also has: an older file lacks the columns a later
    schema added (schema 4's saes.sae_kind, edges.percentile), which then take their defaults."""
    theirs = set(columns(conn, table, other))
    return [c for c in columns(conn, table) if c in theirs]


def _not_null(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA main.table_info({table})") if r[3]}


def _primary_key(conn: sqlite3.Connection, table: str) -> list[str]:
    rows = sorted((r[5], r[1]) for r in conn.execute(f"PRAGMA main.table_info({table})") if r[5])
    return [name for _, name in rows]


@contextmanager
def attached(conn: sqlite3.Connection, path: Path, alias: str) -> Iterator[None]:
    """``path`` attached read-only as ``alias`` (ATTACH cannot run inside a transaction).

    Attached as every read opens a file (atlas.db._read_params): nothing is created beside
    the user's file, not even a -shm for a WAL file with a -wal log.
    """
    params, exclusive = _read_params(path)
    if exclusive:  # a -wal log without -shm: the wal-index in heap memory, set before the attach reads it
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute(f"ATTACH DATABASE ? AS {alias}", (file_uri(path, **params),))
    try:
        yield
    finally:
        if conn.in_transaction:  # an error left it open: DETACH would fail and hide that error
            conn.execute("ROLLBACK")
        conn.execute(f"DETACH DATABASE {alias}")


def _writer(path: Path) -> sqlite3.Connection:
    """A connection to a file being assembled: keys checked once at the end, no fsync before the rename."""
    conn = sqlite3.connect(file_uri(path), uri=True, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = OFF")  # rows are copied table by table; checked at the end
    conn.execute("PRAGMA synchronous = OFF")  # the file is renamed into place only after COMMIT
    return conn


def new_copy_target(tmp: Path, provenance: dict) -> sqlite3.Connection:
    """A new empty atlas at ``tmp``, open for copying rows into."""
    create_atlas(tmp, provenance=provenance).close()
    return _writer(tmp)


def page_copy(src: Path, tmp: Path) -> sqlite3.Connection:
    """A consistent page-by-page copy of the atlas ``src`` at ``tmp``, open for adding rows."""
    reader = connect(src, readonly=True)
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        reader.backup(dst)
    finally:
        reader.close()
        dst.close()
    return _writer(tmp)


def require_current(atlas: Atlas) -> None:
    if atlas.schema_version not in SAME_DATA_TABLES:  # e.g. the v1 example exports as it is
        raise AtlasError(
            f"{atlas.path}: schema version {atlas.schema_version}, expected {SCHEMA_VERSION}: "
            "run `sae-atlas migrate` on it (or a copy) first"
        )


def finish(conn: sqlite3.Connection) -> None:
    """Check every reference of the copied rows, then refresh the planner's statistics."""
    bad = conn.execute("PRAGMA foreign_key_check").fetchmany(1)
    if bad:
        raise AtlasError(f"internal error: copied rows break a foreign key ({tuple(bad[0])})")
    # labels_fts is kept up to date by the labels triggers as rows are copied
    conn.execute("ANALYZE main")


def _refill_vocab_fts(conn: sqlite3.Connection, model_id: int | None = None) -> None:
    where, args = ("WHERE model_id = ?", (model_id,)) if model_id is not None else ("", ())
    conn.execute(
        f"INSERT INTO main.vocab_fts (key, model_id, token_id) SELECT key, model_id, token_id FROM main.vocab {where}",
        args,
    )


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
        require_current(atlas)
        sae_ids = sorted({atlas.sae(n).sae_id for n in sae_names})
        names = [s.name for s in atlas.saes() if s.sae_id in sae_ids]
        provenance = atlas.provenance()
        src_path = atlas.path
    provenance["exported"] = {"from": src_path.name, "saes": names, "at": utc_now()}
    # the two roots of what is kept; every other table keeps the rows whose references are all kept
    seeds = {
        "models": "model_id IN (SELECT model_id FROM src.saes WHERE sae_id IN (SELECT sae_id FROM temp.keep_saes))",
        "saes": "sae_id IN (SELECT sae_id FROM temp.keep_saes)",
    }
    with atomic_output(out, overwrite=overwrite) as tmp:
        conn = new_copy_target(tmp, provenance)
        try:
            with attached(conn, src_path, "src"):
                conn.execute("BEGIN")
                conn.execute("CREATE TEMP TABLE keep_saes (sae_id INTEGER PRIMARY KEY)")
                conn.executemany("INSERT INTO temp.keep_saes VALUES (?)", [(i,) for i in sae_ids])
                for table in TABLES:
                    if not columns(conn, table.name, "src"):  # a table of a later schema than the source's
                        continue
                    _copy_kept(conn, table, seeds.get(table.name))
                    if table.name == "vocab":
                        _refill_vocab_fts(conn)
                finish(conn)
                conn.execute("COMMIT")
        finally:
            conn.close()
        with open_atlas(tmp) as check:
            counts = check.counts()
    return counts


def _copy_kept(conn: sqlite3.Connection, table: Table, seed: str | None) -> None:
    """Copy ``src.table``'s rows whose references all point at rows already copied (or ``seed``'s)."""
    if seed is not None:
        where = [seed]
    else:
        where = [
            f"({col} IS NULL OR {col} IN (SELECT {TABLE_BY_NAME[ref].id} FROM main.{ref}))"
            for col, ref in table.refs.items()
        ]
    cols = ", ".join(shared_columns(conn, table.name, "src"))
    order = f" ORDER BY {table.id}" if table.id else ""
    conn.execute(
        f"INSERT INTO main.{table.name} ({cols}) SELECT {cols} FROM src.{table.name} "
        f"WHERE {' AND '.join(where) or '1'}{order}"
    )


# ------------------------------------------------------------------ merge
# Provenance keys whose values may differ between builds of one atlas (when, where,
# what each run covered); every other key present in both must agree.
VOLATILE_PROVENANCE_KEYS = frozenset(
    {
        "created_at",
        "started_at",
        "finished_at",
        "elapsed_s",
        "seconds",
        "timings",
        "timing",
        "host",
        "hostname",
        "machine",
        "user",
        "argv",
        "command",
        "exported",
        "merged",
        "saes",
        "sae_files",
        "peak_memory",
        "load_seconds",
        "device",
    }
)

_MODEL_IDENTITY = (
    "source",
    "source_kind",
    "architecture",
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "d_head",
    "d_vocab",
    "tied_embeddings",
    "norm_kind",
    "embed_scale",
    "attn_softcap",
    "final_softcap",
    "sha256",
)

# Rows of a shared feature the merged atlas takes from a later input only when missing: labels (a
# user may have labelled the same SAE in two copies). Columns that make two such rows the same.
_ADD_IF_MISSING = {"labels": ("text", "kind", "source")}


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
            require_current(a)
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
        conn = page_copy(first, tmp)
        try:
            conn.execute("UPDATE atlas_info SET provenance = ? WHERE id = 1", (json.dumps(provenance, sort_keys=True),))
            if "atlas_id" in columns(conn, "atlas_info"):  # a merge is a new atlas: its own label overlay
                conn.execute("UPDATE atlas_info SET atlas_id = lower(hex(randomblob(16))) WHERE id = 1")
            for path in rest:
                with attached(conn, Path(path), "b"):
                    conn.execute("BEGIN")
                    added, shared = _merge_one(conn, "b", Path(path))
                    conn.execute("COMMIT")
                report["added_saes"] += added
                report["shared_saes"] += shared
            conn.execute("BEGIN")
            finish(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
        with open_atlas(tmp) as check:
            report["counts"] = check.counts()
    return report


def _merge_one(conn: sqlite3.Connection, b: str, path: Path) -> tuple[list[str], list[str]]:
    """Add atlas ``b`` (attached) into main. Returns (added SAE names, shared SAE names).

    Models, heads, SAEs and features are matched by what identifies them (and
    checked); each gets a map ``temp.map_<table> (old, new, fresh)``, ``fresh``
    marking a row main did not have. Every other table then follows its
    references through those maps (:func:`_add_mapped`).
    """
    for ref in ("models", "heads", "saes", "features"):
        conn.execute(f"DROP TABLE IF EXISTS temp.map_{ref}")
        conn.execute(
            f"CREATE TEMP TABLE map_{ref} (old INTEGER PRIMARY KEY, new INTEGER NOT NULL, fresh INTEGER NOT NULL)"
        )
    conn.row_factory = sqlite3.Row
    try:
        _map_models(conn, b, path)
        _map_heads(conn, b)
        added, shared = _map_saes(conn, b, path)
        _map_features(conn, b)
        for table in TABLES[TABLES.index(TABLE_BY_NAME["features"]) + 1 :]:
            if columns(conn, table.name, b) and columns(conn, table.name):  # else one holds an older schema
                _add_mapped(conn, b, table)
    finally:
        conn.row_factory = None
    return added, shared


def _map_models(conn: sqlite3.Connection, b: str, path: Path) -> None:
    """Every model of b must be one of main's, identical; main gets its vocabulary if it lacks one."""
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
        conn.execute("INSERT INTO temp.map_models VALUES (?, ?, 0)", (mb["model_id"], ma["model_id"]))
        if nb and not na:
            conn.execute(
                f"INSERT INTO main.vocab SELECT ?, token_id, raw, display, key FROM {b}.vocab WHERE model_id = ?",
                (ma["model_id"], mb["model_id"]),
            )
            _refill_vocab_fts(conn, ma["model_id"])


def _map_heads(conn: sqlite3.Connection, b: str) -> None:
    """Heads main lacks are added; every head maps by (model, layer, head)."""
    conn.execute(
        f"INSERT INTO main.heads (model_id, layer, head, kv_group) SELECT m.new, h.layer, h.head, h.kv_group "
        f"FROM {b}.heads h JOIN temp.map_models m ON m.old = h.model_id "
        "WHERE NOT EXISTS (SELECT 1 FROM main.heads x WHERE x.model_id = m.new AND x.layer = h.layer AND x.head = h.head)"
    )
    conn.execute(
        f"INSERT INTO temp.map_heads SELECT h.head_pk, x.head_pk, 0 FROM {b}.heads h "
        "JOIN temp.map_models m ON m.old = h.model_id "
        "JOIN main.heads x ON x.model_id = m.new AND x.layer = h.layer AND x.head = h.head"
    )


def _map_saes(conn: sqlite3.Connection, b: str, path: Path) -> tuple[list[str], list[str]]:
    """New SAEs get new ids; one already present (by name) must carry the same weights."""
    added, shared = [], []
    sae_cols = [c for c in shared_columns(conn, "saes", b) if c != "sae_id"]
    for sb in conn.execute(f"SELECT * FROM {b}.saes ORDER BY sae_id").fetchall():
        sa = conn.execute("SELECT * FROM main.saes WHERE name = ?", (sb["name"],)).fetchone()
        if sa is None:
            vals = [sb[c] for c in sae_cols]
            vals[sae_cols.index("model_id")] = conn.execute(
                "SELECT new FROM temp.map_models WHERE old = ?", (sb["model_id"],)
            ).fetchone()[0]
            cur = conn.execute(
                f"INSERT INTO main.saes ({', '.join(sae_cols)}) VALUES ({', '.join('?' * len(sae_cols))})", vals
            )
            conn.execute("INSERT INTO temp.map_saes VALUES (?, ?, 1)", (sb["sae_id"], cur.lastrowid))
            added.append(sb["name"])
            continue
        if sa["sha256"] is None or sb["sha256"] is None or sa["sha256"] != sb["sha256"]:
            raise ProvenanceConflict(
                f"{path.name}: SAE {sb['name']!r} is in both atlases with different or unknown weights "
                f"(sha256 {sa['sha256']} vs {sb['sha256']})"
            )
        if (sa["d_sae"], sa["layer"], sa["site"]) != (sb["d_sae"], sb["layer"], sb["site"]):
            raise ProvenanceConflict(f"{path.name}: SAE {sb['name']!r} has the same sha256 but a different shape")
        conn.execute("INSERT INTO temp.map_saes VALUES (?, ?, 0)", (sb["sae_id"], sa["sae_id"]))
        shared.append(sb["name"])
    return added, shared


def _map_features(conn: sqlite3.Connection, b: str) -> None:
    """Shared SAEs' features map by idx; new SAEs' get ids after main's, each SAE kept contiguous."""
    conn.execute(
        f"INSERT INTO temp.map_features SELECT fb.feature_id, fa.feature_id, 0 FROM {b}.features fb "
        "JOIN temp.map_saes s ON s.old = fb.sae_id AND s.fresh = 0 "
        "JOIN main.features fa ON fa.sae_id = s.new AND fa.idx = fb.idx"
    )
    base = conn.execute("SELECT COALESCE(MAX(feature_id), -1) + 1 FROM main.features").fetchone()[0]
    conn.execute(
        f"INSERT INTO temp.map_features SELECT fb.feature_id, ? + ROW_NUMBER() OVER (ORDER BY fb.sae_id, fb.idx) - 1, 1 "
        f"FROM {b}.features fb JOIN temp.map_saes s ON s.old = fb.sae_id AND s.fresh = 1",
        (base,),
    )
    fcols = [c for c in columns(conn, "features") if c not in ("feature_id", "sae_id")]
    conn.execute(
        f"INSERT INTO main.features (feature_id, sae_id, {', '.join(fcols)}) "
        f"SELECT m.new, s.new, {', '.join('f.' + c for c in fcols)} FROM {b}.features f "
        "JOIN temp.map_features m ON m.old = f.feature_id AND m.fresh = 1 JOIN temp.map_saes s ON s.old = f.sae_id "
        "ORDER BY m.new"
    )


def _add_mapped(conn: sqlite3.Connection, b: str, table: Table) -> None:
    """Copy the rows of ``b.table`` that touch a fresh row, their references renumbered through the maps.

    Rows that touch only shared rows are in main already, except those of
    :data:`_ADD_IF_MISSING`, taken when main has no such row.
    """
    not_null = _not_null(conn, table.name)
    cols = [c for c in shared_columns(conn, table.name, b) if c != table.id]
    joins, fresh = [], []
    select = {c: f"t.{c}" for c in cols}
    for col, ref in table.refs.items():
        alias = f"m_{col}"
        kind = "JOIN" if col in not_null else "LEFT JOIN"
        joins.append(f"{kind} temp.map_{ref} {alias} ON {alias}.old = t.{col}")
        select[col] = f"{alias}.new"
        fresh.append(f"{alias}.fresh = 1")
    where = " OR ".join(fresh)
    if table.name in _ADD_IF_MISSING:
        same = " AND ".join(
            [f"x.{col} = {select[col]}" for col in table.refs] + [f"x.{c} = t.{c}" for c in _ADD_IF_MISSING[table.name]]
        )
        where += f" OR NOT EXISTS (SELECT 1 FROM main.{table.name} x WHERE {same})"
    order = [f"t.{table.id}"] if table.id else [select[c] for c in _primary_key(conn, table.name)]
    conn.execute(
        f"INSERT INTO main.{table.name} ({', '.join(cols)}) SELECT {', '.join(select[c] for c in cols)} "
        f"FROM {b}.{table.name} t {' '.join(joins)} WHERE {where} ORDER BY {', '.join(order)}"
    )


# ------------------------------------------------------------------ partial atlases of one build
@dataclass(frozen=True)
class Pick:
    """The rows of one id-numbered table that one unit of a build wrote, told apart by their columns."""

    table: str
    equal: Mapping[str, Any] = field(default_factory=dict)  # column -> value
    between: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # column -> (lo, hi), inclusive


def combine_partials(
    conn: sqlite3.Connection,
    paths: Sequence[Path],
    picks: Sequence[tuple[int, Pick]],
    *,
    union: Sequence[str],
    fill: Mapping[str, Sequence[str]],
) -> None:
    """Join the partial atlases ``paths`` of one build into ``conn``, a :func:`page_copy` of ``paths[0]``.

    Their shared rows (models, SAEs, features ...) are identical, ids
    included. The ``union`` tables (keyed by what their rows describe) get
    every other partial's rows; the ``fill`` columns of a table take the first
    non-NULL value. The tables named by ``picks`` (rows numbered by an
    autoincrement id) are rewritten in the order of ``picks``: ``(i, pick)``
    takes the rows ``pick`` selects from ``paths[i]``, so the ids come out as
    one process writing in that order would give them. Every row of those
    tables must be picked exactly once, or nothing is written.
    """
    ordered = sorted({p.table for _, p in picks}, key=[t.name for t in TABLES].index)
    for name in ordered:
        if TABLE_BY_NAME[name].id is None:
            raise ValueError(f"{name} has no id column to renumber")
    conn.execute("BEGIN")
    for name in ordered:
        conn.execute(f"DROP TABLE IF EXISTS temp._merge_{name}")
        conn.execute(f"CREATE TEMP TABLE _merge_{name} AS SELECT 0 AS pos, * FROM main.{name} WHERE 0")
        conn.execute(f"DELETE FROM main.{name}")
    conn.execute("COMMIT")
    total = dict.fromkeys(ordered, 0)
    for i, path in enumerate(paths):
        with attached(conn, path, "part"):
            conn.execute("BEGIN")
            if i:  # the copy holds paths[0]'s own keyed rows already
                for name in union:
                    conn.execute(f"INSERT INTO main.{name} SELECT * FROM part.{name}")
                for name, cols in fill.items():
                    key = TABLE_BY_NAME[name].id
                    sets = ", ".join(f"{c} = COALESCE({name}.{c}, s.{c})" for c in cols)
                    conn.execute(f"UPDATE main.{name} SET {sets} FROM part.{name} AS s WHERE s.{key} = {name}.{key}")
            for pos, (shard, pick) in enumerate(picks):
                if shard == i:
                    _take(conn, pos, pick)
            for name in ordered:
                total[name] += conn.execute(f"SELECT COUNT(*) FROM part.{name}").fetchone()[0]
            conn.execute("COMMIT")
    conn.execute("BEGIN")
    for name in ordered:
        got = conn.execute(f"SELECT COUNT(*) FROM temp._merge_{name}").fetchone()[0]
        if got != total[name]:
            conn.execute("ROLLBACK")
            raise AtlasError(f"{name}: {total[name] - got} rows of the partial atlases belong to no unit of this build")
        table = TABLE_BY_NAME[name]
        cols = ", ".join(c for c in columns(conn, name) if c != table.id)
        conn.execute(f"INSERT INTO main.{name} ({cols}) SELECT {cols} FROM temp._merge_{name} ORDER BY pos, {table.id}")
        conn.execute(f"DROP TABLE temp._merge_{name}")
    conn.execute("COMMIT")


def _take(conn: sqlite3.Connection, pos: int, pick: Pick) -> None:
    known = set(columns(conn, pick.table))
    if not set(pick.equal) | set(pick.between) <= known:
        raise ValueError(f"{pick}: not columns of {pick.table}")
    where = [f"{c} = ?" for c in pick.equal] + [f"{c} BETWEEN ? AND ?" for c in pick.between]
    args = [*pick.equal.values(), *(v for lo_hi in pick.between.values() for v in lo_hi)]
    conn.execute(
        f"INSERT INTO temp._merge_{pick.table} SELECT ?, * FROM part.{pick.table} WHERE {' AND '.join(where) or '1'}",
        [pos, *args],
    )
