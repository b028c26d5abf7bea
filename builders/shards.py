"""Sharded builds: N processes each run every N-th unit, then one merge makes the one-process atlas.

``shard=(I, N)`` (``--shard I/N``) runs only the units whose position in the
plan is I mod N, into ``OUT.shardI-of-N.partial``; every shard also writes the
shared rows (model, vocab, heads, SAEs, features and their norms)
identically, and records the plan in its provenance. :func:`merge_shards`
(``--merge-shards OUT``) refuses unless all N shard files exist, are complete
and share one fingerprint and plan, and combines them into ``OUT`` with
:func:`atlas.merge.combine_partials`: keyed tables are unioned, feature
columns taken from the shard that computed them, and edges and labels
re-inserted unit by unit in plan order, so the result is row-identical to a
one-process build (ids included). The shard files are removed afterwards.
"""

from __future__ import annotations

import glob
import re
import sqlite3
from pathlib import Path
from typing import Any

from atlas.db import Atlas, open_atlas
from atlas.domain import METRIC_COLUMNS, TABLES
from atlas.files import atomic_output
from atlas.merge import Pick, combine_partials, page_copy
from builders.errors import BuildError
from builders.passes.base import ROW_TABLES
from builders.run import partial_path


def shard_path(out: str | Path, index: int, count: int) -> Path:
    """The partial atlas shard ``index`` of ``count`` writes: ``OUT.shardI-of-N.partial``."""
    return partial_path(out, (index, count))


def find_shards(out: str | Path) -> int:
    """N of the ``OUT.shardI-of-N.partial`` files beside ``out`` (refused when none or several N)."""
    out = Path(out)
    pat = re.compile(rf"^{re.escape(out.name)}\.shard(\d+)-of-(\d+)\.partial$")
    counts = {int(m.group(2)) for f in out.parent.glob(glob.escape(out.name) + ".shard*") if (m := pat.match(f.name))}
    if not counts:
        raise BuildError(f"{out}: no shard files {out.name}.shardI-of-N.partial beside it")
    if len(counts) > 1:
        raise BuildError(
            f"{out}: shard files of several counts ({', '.join(map(str, sorted(counts)))}); remove the stale ones"
        )
    return counts.pop()


def _check_shards(paths: list[Path], count: int) -> dict[str, Any]:
    """Every shard present, complete, and started with identical settings; returns shard 0's provenance."""
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise BuildError(f"shard file(s) missing: {', '.join(missing)} (run sae-atlas build --shard I/{count})")
    first: dict[str, Any] = {}
    for i, path in enumerate(paths):
        try:
            with open_atlas(path) as db:
                prov = _check_shard_file(db, path, i, count, first or None)
        except sqlite3.Error as e:  # e.g. a hot journal left by a killed shard
            raise BuildError(f"{path.name}: cannot read ({e}); finish it with --shard {i}/{count} --resume") from None
        first = first or prov
    return first


def _check_shard_file(db: Atlas, path: Path, i: int, count: int, first: dict[str, Any] | None) -> dict[str, Any]:
    """Shard i of count, of the same build as ``first`` (shard 0's provenance), with every unit done."""
    prov = db.provenance()
    sh = prov.get("shard") or {}
    if (sh.get("index"), sh.get("count")) != (i, count):
        raise BuildError(f"{path.name}: not shard {i} of {count} of a build")
    if first is not None and (
        prov["build"]["fingerprint"] != first["build"]["fingerprint"] or sh["plan"] != first["shard"]["plan"]
    ):
        raise BuildError(f"{path.name}: built with other settings, model or SAEs than shard 0; rebuild it")
    names = {s.sae_id: s.name for s in db.saes()}
    done = {(names[sae_id], key, start) for sae_id, key, start in db.finished_units()}
    want = {(u["sae"], u["unit"], u["start"]) for pos, u in enumerate(sh["plan"]) if pos % count == i}
    if not want <= done:
        raise BuildError(
            f"{path.name}: incomplete ({len(want - done)} of {len(want)} units to go); "
            f"finish it with --shard {i}/{count} --resume"
        )
    return prov


def _picks(plan: list[dict[str, Any]], count: int, bases: dict[str, tuple[int, int]]) -> list[tuple[int, Pick]]:
    """For each unit in plan order, the edges or labels it wrote, in the shard that ran it."""
    out = []
    for pos, u in enumerate(plan):
        first, _ = bases[u["sae"]]
        rows = {"src": (first + u["start"], first + u["end"] - 1)}
        if u["edges"] is not None:
            dst_first, dst_n = bases[u["other"] or u["sae"]]
            ends = ("dst_feature", "src_feature") if u.get("reversed") else ("src_feature", "dst_feature")
            between = {ends[0]: rows["src"], ends[1]: (dst_first, dst_first + dst_n - 1)}
            out.append((pos % count, Pick("edges", {"kind": u["edges"]}, between)))
        if u["labels"] is not None:
            out.append((pos % count, Pick("labels", {"source": u["labels"]}, {"feature_id": rows["src"]})))
    return out


def merge_shards(
    out: str | Path, count: int | None = None, *, overwrite: bool = False, keep_shards: bool = False
) -> Path:
    """Combine the N complete shards of one build into the atlas ``out``, row-identical to a one-process build.

    Checks that all N ``OUT.shardI-of-N.partial`` exist, are complete and share
    one fingerprint and plan. Shard 0's file is the base (the shared rows:
    model, vocab, heads, SAEs, features, the pass settings); see
    :func:`atlas.merge.combine_partials` for the rest. Written under a
    temporary name and renamed to ``out`` at the end; the shard files are
    then removed unless ``keep_shards``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BuildError(f"{out}: already exists (use --overwrite to replace it)")
    count = find_shards(out) if count is None else int(count)
    paths = [shard_path(out, i, count) for i in range(count)]
    prov = _check_shards(paths, count)
    plan = prov.pop("shard")["plan"]
    with open_atlas(paths[0]) as db:
        bases = {s.name: (db.feature_id_base(s.sae_id), s.d_sae) for s in db.saes()}
    # rows every unit of a shard writes: keyed ones are unioned, id-numbered ones re-inserted in plan order
    unit_tables = {*ROW_TABLES, "build_units"}
    union = [t.name for t in TABLES if t.name in unit_tables and t.id is None]
    with atomic_output(out, overwrite=True) as tmp:
        conn = page_copy(paths[0], tmp)
        try:
            combine_partials(conn, paths, _picks(plan, count, bases), union=union, fill={"features": METRIC_COLUMNS})
        finally:
            conn.close()
        with open_atlas(tmp, readonly=False) as db:
            db.create_indexes()  # the shards have none (see builders.run)
            with db.transaction():
                db.set_provenance(prov)
                crit = prov.get("criteria", {})
                sae_ids = {s.name: s.sae_id for s in db.saes()}
                for column, c in crit.items():  # the fractions over every feature, as a one-process build has them
                    if "fraction" not in c:  # a rule over no features column (the attention baseline)
                        continue
                    c["fraction"] = {name: db.feature_mean(sae_ids[name], column) for name in c["fraction"]}
                db.update_provenance(criteria=crit)
            db.analyze()
            db.vacuum()
    if not keep_shards:
        for p in paths:
            p.unlink()
    return out
