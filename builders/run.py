"""Running a build: the partial file, resuming it, the loop over units, and the atomic rename at the end.

Each unit's rows come from its pass (:mod:`builders.passes`) with indices
local to the SAEs; :class:`Writer` turns them into atlas ids and writes them
through the atlas write API together with the unit's ``build_units`` row, in
one transaction. The atlas is written to ``OUT.partial`` (rollback journal
on), so a killed build leaves at worst a partial file whose finished units
are all complete, and ``resume=True`` skips them. At the end the file is
ANALYZEd, VACUUMed and renamed to ``OUT`` atomically.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas.db import Atlas, create_atlas, open_atlas
from atlas.errors import NotAnAtlas
from atlas.files import require_folder, storage_errors
from builders import plan as planning
from builders.errors import BuildError
from builders.passes import registry
from builders.passes.base import Context, Pass, Rows, Unit
from builders.passes.common import chunks
from builders.provenance import provenance
from builders.settings import BuildConfig
from builders.weights import ModelWeights, SAEWeights


def partial_path(out: str | Path, shard: tuple[int, int] | None = None) -> Path:
    """Where a build writes before the rename: ``OUT.partial``, or ``OUT.shardI-of-N.partial`` for a shard."""
    out = Path(out)
    if shard is not None:
        return out.with_name(f"{out.name}.shard{shard[0]}-of-{shard[1]}.partial")
    return out.with_name(out.name + ".partial")


def check_output(out: str | Path, *, overwrite: bool = False) -> None:
    """Refuse an output that exists (unless ``overwrite``), is a folder or lies in a missing folder.

    Cheap: the CLI calls it before it loads anything.
    """
    out = Path(out)
    if out.is_dir():
        raise BuildError(f"{out}: is a directory; name the atlas file to write")
    if out.exists() and not overwrite:
        raise BuildError(f"{out}: already exists (use --overwrite to replace it)")
    require_folder(out)


def build_atlas(
    model: ModelWeights,
    saes: list[SAEWeights],
    out: str | Path,
    *,
    config: BuildConfig,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    after_unit: Callable[[Unit], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Run ``config.passes`` over ``saes`` of ``model`` into the atlas file ``out``; returns its path.

    ``resume`` continues ``OUT.partial`` from a killed build with the same
    settings; a partial with no finished unit (empty, or killed while it was
    being created) is started over, and ``say`` is told so. ``shard=(I, N)``
    runs only units whose position in the plan is I mod N, into
    ``OUT.shardI-of-N.partial`` (returned; left unrenamed for
    :func:`builders.shards.merge_shards`). ``after_unit`` is called after each
    committed unit (tests use it to simulate a crash).
    """
    out = Path(out)
    shard = planning.check_shard(shard)
    partial = partial_path(out, shard)
    if not saes:
        raise BuildError("no SAE given: pass at least one --sae")
    check_output(out, overwrite=overwrite)
    names = planning.sae_names(saes, config.sae_names)
    prov = provenance(model, saes, names, config)
    plan = planning.units(Context(model, saes, names, config))
    release_freed_blocks()
    if shard:
        prov["shard"] = {"index": shard[0], "count": shard[1], "plan": planning.plan_rows(plan, names)}
    then = f"free some space, then rerun with --resume{f' --shard {shard[0]}/{shard[1]}' if shard else ''}"
    with storage_errors(partial, then=then):
        db = _open_partial(partial, prov, say) if resume else None
        if db is None:
            db = _init_atlas(partial, model, saes, names, prov)
        try:
            _run_units(db, plan, model, saes, names, config, shard, progress, after_unit)
            if shard:
                return partial
            db.create_indexes()
            db.analyze()
            db.vacuum()
        finally:
            db.close()
        os.replace(partial, out)
    return out


def _open_partial(partial: Path, prov: dict[str, Any], say: Callable[[str], None] | None) -> Atlas | None:
    """The partial to resume, or None to start over (none there, or nothing finished in it)."""
    if not partial.exists():
        return None
    db = None
    try:
        db = open_atlas(partial, readonly=False)
        old, done = db.provenance(), len(db.finished_units())
    except (NotAnAtlas, sqlite3.DatabaseError, ValueError) as e:
        # empty, or killed before its tables and provenance were written: nothing in it can be resumed
        if db is not None:
            db.close()
        if say is not None:
            say(f"{partial.name} is not a partial atlas to resume ({e}): starting over")
        return None
    fingerprint = old.get("build", {}).get("fingerprint")
    same = fingerprint == prov["build"]["fingerprint"] and old.get("shard") == prov.get("shard")
    if same and done:
        return db
    db.close()
    if done:
        raise BuildError(
            f"{partial}: was started with other settings, model or SAEs ({done} units done); "
            "delete it or rerun without --resume to start over"
        )
    if say is not None:
        say(f"{partial.name} has no finished unit yet: starting over")
    return None


def _run_units(
    db: Atlas,
    plan: list[Unit],
    model: ModelWeights,
    saes: list[SAEWeights],
    names: list[str],
    cfg: BuildConfig,
    shard: tuple[int, int] | None,
    progress: bool,
    after_unit: Callable[[Unit], None] | None,
) -> None:
    # The partial has no secondary indexes (made once at the end) and no per-row foreign-key lookup: the
    # writer only writes ids it read from the file; `sae-atlas validate` checks them (benchmarks/bench_write.py).
    db.conn.execute("PRAGMA foreign_keys = OFF")
    writer = Writer(db, names)
    ctx = Context(model, saes, names, cfg, stored_top_ids=writer.stored_top_ids)
    passes = registry()
    mine = [u for pos, u in enumerate(plan) if shard is None or pos % shard[1] == shard[0]]
    done = db.finished_units()
    bars = _Bars(mine, progress)
    for u in mine:
        if (writer.sae_id[u.sae], u.key, u.start) in done:
            bars.skip(u)
            continue
        p = passes[u.pass_name]
        rows = p.step(u.step).run(ctx, u)
        with db.transaction():
            writer.write(p, u, rows)
            db.mark_unit_done(writer.sae_id[u.sae], u.key, u.start, u.end)
        bars.advance(u)
        if after_unit is not None:
            after_unit(u)
    bars.close()
    with db.transaction():  # a shard's fractions are redone by the merge
        db.update_provenance(criteria=criteria_summary(db, ctx, writer))


class Writer:
    """Turns a unit's rows (indices local to each SAE) into atlas rows and writes them."""

    def __init__(self, db: Atlas, names: list[str]):
        self.db = db
        self.head_pk = db.head_pks(db.models()[0].model_id)  # (n_layers, n_heads)
        ids = {s.name: s.sae_id for s in db.saes()}
        self.sae_id = [ids[n] for n in names]
        self.fid_base = [db.feature_id_base(i) for i in self.sae_id]

    def stored_top_ids(self, sae: int, start: int, end: int, phase: str, sign: int = 1) -> np.ndarray | None:
        return self.db.top_token_ids(self.fid_base[sae] + start, end - start, phase, sign)

    def write(self, p: Pass, u: Unit, rows: Rows) -> None:
        undeclared = rows.tables() - set(p.writes)
        if undeclared:
            raise RuntimeError(f"pass {p.name} returned rows for {sorted(undeclared)}, which it does not declare")
        db, base = self.db, self.fid_base[u.sae]
        idx = np.arange(u.start, u.end)
        if rows.features:
            db.update_features(self.sae_id[u.sae], idx, rows.features)
        if rows.token_scores:
            db.add_token_score_block(base + idx, rows.token_scores)
        for h in rows.head_scores:
            pct = h.percentile
            db.add_head_scores(base + np.asarray(h.idx, np.int64), self.head_pk[h.layer, h.head], h.role, h.score, pct)
        if rows.edges is not None:
            e = rows.edges
            dst_base = self.fid_base[u.sae if u.other is None else u.other]
            heads = None if e.head is None else self.head_pk[e.layer, e.head]
            src, dst = base + np.asarray(e.src, np.int64), dst_base + np.asarray(e.dst, np.int64)
            if p.edges_reversed:  # the unit's features are the destinations (virtual_in)
                src, dst = dst, src
            db.add_edges(p.edge_kind, src, dst, e.score, e.rank, heads, e.percentile)
        if rows.virtual_baselines:
            db.add_virtual_baseline(self.sae_id[u.sae], self.sae_id[u.other], **rows.virtual_baselines)
        if rows.decoder_spread is not None:
            layers, norms = rows.decoder_spread
            db.add_decoder_spread(base + idx, layers, norms)
        if rows.labels:
            db.add_labels(
                (int(f), text, kind, p.label_source, score, ev)
                for f, (text, kind, score, ev) in zip(base + idx, rows.labels, strict=True)
            )
        for layer, role, stats in rows.depth_profiles:
            db.add_depth_profile(self.sae_id[u.sae], layer, role, **stats)


def criteria_summary(db: Atlas, ctx: Context, writer: Writer) -> dict[str, Any]:
    """provenance["criteria"]: each pass's verdict criteria, with the fraction of every SAE that meets it."""
    out: dict[str, Any] = {}
    for p in registry().values():
        if p.name not in ctx.cfg.passes or p.criteria is None:
            continue
        for column, crit in p.criteria(ctx).items():
            if "column" not in crit:  # a rule that sets no features column (the attention baseline): no fraction
                out[column] = crit
                continue
            crit["fraction"] = {
                name: db.feature_mean(sid, column) for name, sid in zip(ctx.names, writer.sae_id, strict=True)
            }
            out[column] = crit
    return out


def _norms(W: torch.Tensor, dim: int, block: int = 65536) -> np.ndarray:
    """Norms along ``dim`` of an SAE matrix; a bf16/fp16 one is converted a block at a time (a whole fp32
    copy would be twice the decoder)."""
    if W.dtype == torch.float32:
        return W.norm(dim=dim).cpu().numpy()
    n = W.shape[1 - dim]
    parts = [W.narrow(1 - dim, s, e - s).float().norm(dim=dim).cpu().numpy() for s, e in chunks(0, n, block)]
    return np.concatenate(parts)


def _init_atlas(
    path: Path, model: ModelWeights, saes: list[SAEWeights], names: list[str], prov: dict[str, Any]
) -> Atlas:
    """A new partial with the rows every unit shares: model, vocabulary, heads, SAEs, features and their norms."""
    db = create_atlas(path, provenance=prov, overwrite=True)
    db.drop_bulk_indexes()
    with db.transaction():
        model_id = db.add_model(**model.atlas_model_fields())
        db.add_vocab(model_id, model.tokens)
        db.add_heads(model_id, model.n_layers, model.n_heads, model.n_kv_heads)
        for name, s in zip(names, saes, strict=True):
            sae_id = db.add_sae(name=name, **s.atlas_sae_fields(model_id))
            cols = {
                "dec_norm": _norms(s.W_dec, 1),
                "enc_norm": _norms(s.W_enc, 0),
                "b_enc": s.b_enc.float().cpu().numpy(),
            }
            if s.threshold is not None:
                cols["threshold"] = s.threshold.float().expand(s.d_sae).cpu().numpy()
            db.update_features(sae_id, np.arange(s.d_sae), cols)
    return db


def release_freed_blocks(threshold: int = 16 << 20) -> bool:
    """Make glibc hand big freed blocks straight back to the OS (mallopt M_MMAP_THRESHOLD); True if set.

    glibc raises its mmap threshold to 32 MB after the first big free, so the
    passes' 10-30 MB block tensors then come from the heap and their pages stay
    resident once freed: measured +515 MB peak RSS above the weights for the
    GPT-2-size streamed edge passes, against +105 MB with a 1 MB threshold and
    +132 MB with this 16 MB one. 1 MB cost up to 1.8x in QK time (page faults
    on every score tile); 16 MB costs about 10-30% in the benchmark
    (noisy, shared machine). Process-wide; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl)


class _Bars:
    """One tqdm bar per kind of unit on stderr, in features (features/s is the rate)."""

    def __init__(self, units: list[Unit], enabled: bool):
        self.enabled = enabled
        self.totals: dict[str, int] = {}
        for u in units:
            self.totals[u.key] = self.totals.get(u.key, 0) + (u.end - u.start)
        self.bar = None
        self.current: str | None = None

    def _switch(self, name: str) -> None:
        if not self.enabled or name == self.current:
            return
        from tqdm.auto import tqdm

        if self.bar is not None:
            self.bar.close()
        self.current = name
        self.bar = tqdm(total=self.totals[name], desc=f"{name:>12}", unit="feat", file=sys.stderr, leave=True)

    def advance(self, u: Unit) -> None:
        self._switch(u.key)
        if self.bar is not None:
            self.bar.update(u.end - u.start)

    def skip(self, u: Unit) -> None:
        self._switch(u.key)
        if self.bar is not None:
            self.bar.total -= u.end - u.start
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
