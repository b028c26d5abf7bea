"""`sae-atlas build`: run the weight passes over one model and its SAEs into one atlas file.

The work is a list of independent *units*, one per (SAE, pass, feature chunk
of ``unit_size``), run in a fixed order. Each unit computes its rows with a
pure pass function (``builders/passes/``) and writes them, together with its
``build_units`` row, in one transaction. The atlas is written to
``OUT.partial`` (SQLite with its rollback journal on), so a killed build
leaves at worst a partial file whose finished units are all complete;
``resume=True`` skips them and carries on. At the end the file is ANALYZEd,
VACUUMed and renamed to ``OUT`` atomically, so ``OUT`` is never half written.

Builds are deterministic: seeded random baselines, top-k ties broken by the
smaller index, units in a fixed order (so even autoincrement ids agree), and
no timestamps in provenance (only ``atlas_info.created_at``, the label
``created_at`` and ``build_units.finished_at`` carry the clock).

Everything that decides a number is recorded in provenance: every
BuildConfig field, the model and SAE sources with their sha256, what each pass
folded, the predicts/reads criteria with their fractions per SAE, the
conventions, and the library versions.

Memory: besides the weights, a build holds per-block scratch bounded by
``memory_mb`` (it shrinks ``block_rows`` and ``key_block``) and at most one
QK keys / OV targets / cosine-columns set (the "other side" of an edge pass,
one decoder's worth, d_sae x d_model floats). That set is cached iff it fits
``cache_mb`` (default half of ``memory_mb``), else streamed: recomputed from
the SAE weights one block at a time, once per unit. Both give bit-identical
rows, so extra memory does not grow with d_sae, except for the per-feature
columns and the ``attn_profile`` unit's fp32 scores (exact medians need
them: d_sae x n_heads x (12 x reach + 8) bytes, about 160 MB for 1M features and 8
heads). glibc is told to return freed blocks at once (:func:`release_freed_blocks`),
so RSS follows what is live rather than the allocator's high-water mark.
Measured (``benchmarks/bench_passes.py --features 512 --threads 1``, GPT-2-small
shapes, peak RSS above the weights): d_sae 24,576 -> +217 MB (sides cached),
131,072 -> +555 MB (cached, 402 MB each); with ``--cache-mb 0`` (streamed)
+187 and +172 MB. Before streaming: +480 and +2,092 MB.

Shards: ``shard=(I, N)`` (``--shard I/N``) runs only the units whose
position in the plan is I mod N, into ``OUT.shardI-of-N.partial``; every
shard also writes the shared rows (model, vocab, heads, SAEs, features and
their norms) identically, and records the plan in its provenance. N
processes or machines run the N shards with the same settings (``--resume``
continues a killed shard). :func:`merge_shards` (``--merge-shards OUT``)
then refuses unless all N shard files exist, are complete and share one
fingerprint and plan, and combines them into ``OUT`` via
``OUT.merging.partial`` and an atomic rename: keyed tables are unioned,
feature columns taken from the shard that computed them, and edges and labels
re-inserted unit by unit in plan order, so the result is row-identical to a
one-process build (ids included). The shard files are removed afterwards.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import atlas
from atlas.db import Atlas, create_atlas, file_uri, open_atlas
from atlas.errors import AtlasError
from atlas.names import default_sae_name
from atlas.write import FEATURE_METRIC_COLUMNS
from builders.passes import attention, attribution, du, ee, neighbours, ov, predicts, qk, semantic
from builders.passes.common import (
    RESIDUAL_SITES,
    Columns,
    VocabScores,
    chunks,
    reading_attention_layer,
    site_position,
)
from builders.weights import ModelWeights, SAEWeights

ALL_PASSES = ("du", "ee", "attn", "attribution", "qk", "ov", "neighbours", "flow", "semantic")


class BuildError(AtlasError):
    """A build that cannot start or continue (bad settings, stale partial file, existing output)."""


@dataclass
class BuildConfig:
    """Every setting of a build. All of it goes into the atlas provenance."""

    passes: tuple[str, ...] = ALL_PASSES  # passes to run, any subset of ALL_PASSES
    top_k: int = 20  # tokens kept per feature, phase (du/ee) and sign
    fold_norms: bool = True  # fold norm gains into directions; False = raw W_U/W_E like Neuronpedia
    predicts_z: float | None = None  # fixed du_top1_z threshold; None = random-direction quantile below
    reads_z: float | None = None  # fixed ee_top1_z threshold; None = random-direction quantile below
    predicts_quantile: float = 0.99  # quantile of top1_z over random directions that sets tau
    reach: int = 1  # attention layers scored per SAE: its reading layer and the next reach-1
    percentile: float = 75.0  # head_scores keeps (feature, head) at or above this baseline percentile
    store_percentile: float | None = None  # stricter cut for the stored head_scores rows only; None = percentile
    n_random: int = 1024  # random directions per baseline (attention heads, predicts/reads tau)
    qk_k: int = 10  # key features kept per (query feature, head)
    qk_cap: int | None = None  # at most this many QK edges per query feature across heads; None = all
    qk_exclude_self: bool = False  # drop the (i, i) pair from QK top-k lists
    qk_pairs: tuple[tuple[str, str], ...] | None = None  # (query SAE, key SAE) names; None = each SAE with itself
    ov_k: int = 10  # target features kept per (source feature, head)
    ov_cap: int | None = None  # at most this many OV edges per source feature across heads; None = all
    ov_target: str = "auto"  # auto: nearest later residual SAE, else attn_out/attn_z SAE of the layer; resid; z
    attribution_floor: float = 0.01  # hook_z head shares below this are not stored as head_scores
    neighbour_k: int = 10  # decoder-cosine neighbours per feature (within its SAE)
    flow_k: int = 5  # flow matches per feature into the next SAE
    semantic: semantic.SemanticSettings = field(default_factory=semantic.SemanticSettings)
    unit_size: int = 4096  # features per unit of work: one committed chunk, the resume granularity
    block_rows: int | None = None  # features per matmul block; None = 256 on CPU, 2048 on GPU (memory-capped)
    vocab_tile: int | None = None  # vocab columns per tile; None = 4096 on CPU (cache), 32768 on GPU
    key_block: int = 8192  # feature columns per block when streaming QK/OV/cosine top-k (memory-capped)
    memory_mb: int = 1024  # scratch memory budget: shrinks block_rows/key_block; caps the column cache
    cache_mb: float | None = None  # cache a QK/OV/cosine "other side" iff it fits; None = memory_mb / 2; 0 = stream
    device: str = "auto"  # device the passes run on (the model's tensors decide; recorded)
    seed: int = 0  # seeds every random baseline
    sae_names: tuple[str | None, ...] | None = None  # atlas names per SAE; None = L12.res style, de-duplicated

    def __post_init__(self) -> None:
        if isinstance(self.passes, str):
            self.passes = tuple(p.strip() for p in self.passes.split(",") if p.strip())
        self.passes = tuple(self.passes)
        unknown = [p for p in self.passes if p not in ALL_PASSES]
        if unknown:
            raise BuildError(f"unknown pass(es) {', '.join(unknown)}; choose from {', '.join(ALL_PASSES)}")
        if self.ov_target not in ("auto", "resid", "z"):
            raise BuildError(f"ov_target must be auto, resid or z, not {self.ov_target!r}")
        for name in ("top_k", "reach", "n_random", "qk_k", "ov_k", "neighbour_k", "flow_k", "unit_size"):
            if getattr(self, name) < 1:
                raise BuildError(f"{name} must be at least 1")
        if self.store_percentile is not None and not self.percentile <= self.store_percentile <= 100:
            raise BuildError("store_percentile must be between percentile and 100")
        if not 0 <= self.percentile <= 100:
            raise BuildError("percentile must be between 0 and 100")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passes"] = list(self.passes)
        return d

    def cache_bytes(self) -> int:
        """Largest QK keys / OV targets / cosine columns kept whole; bigger ones are streamed block by block."""
        mb = self.memory_mb / 2 if self.cache_mb is None else self.cache_mb
        return int(mb * 2**20)

    def key_columns(self, dim: int, block_rows: int) -> int:
        """Columns per streamed block: a block (H*d_head or d_in = ``dim`` rows), the folded directions it is
        made from, and two (block_rows, cols) score tiles stay within half of memory_mb."""
        cap = (self.memory_mb << 19) // (4 * (3 * dim + 2 * block_rows))
        return max(1, min(self.key_block, cap))

    def blocks(self, device: torch.device) -> tuple[int, int]:
        """(block_rows, vocab_tile) for this device, capped by memory_mb (3 fp32 scratch buffers)."""
        gpu = device.type != "cpu"
        tile = self.vocab_tile or (32768 if gpu else 4096)
        rows = self.block_rows or (2048 if gpu else 256)
        cap = max(1, (self.memory_mb << 20) // (3 * 4 * tile))
        return max(1, min(rows, cap)), tile


# ------------------------------------------------------------------ planning


def sae_names(saes: list[SAEWeights], given: tuple[str | None, ...] | None = None) -> list[str]:
    """Atlas names: given ones, else ``L12.res``; collisions get the width, then a counter."""
    given = tuple(given or ())
    base = [
        (given[i] if i < len(given) and given[i] else default_sae_name(s.layer, s.site)) for i, s in enumerate(saes)
    ]
    names: list[str] = []
    for i, (name, s) in enumerate(zip(base, saes, strict=True)):
        explicit = i < len(given) and given[i]
        if not explicit and base.count(name) > 1:
            name = f"{name}.{s.d_sae // 1024}k" if s.d_sae % 1024 == 0 else f"{name}.{s.d_sae}"
        candidate, n = name, 2
        while candidate in names:
            candidate, n = f"{name}.{n}", n + 1
        names.append(candidate)
    return names


def ov_target_index(saes: list[SAEWeights], src: int, layer: int, how: str) -> int | None:
    """Which SAE the OV edges of ``saes[src]`` (read by attention ``layer``) point into."""
    after = 4 * layer + 2  # the head output lands in resid_mid of `layer`
    resid = sorted(
        (site_position(s.site, s.layer), i) for i, s in enumerate(saes)
        if s.site in RESIDUAL_SITES and site_position(s.site, s.layer) >= after
    )  # fmt: skip
    same_layer = {s.site: i for i, s in enumerate(saes) if s.layer == layer and s.site in ("attn_out", "attn_z")}
    if how in ("auto", "resid") and resid:
        return resid[0][1]
    if how == "auto" and "attn_out" in same_layer:
        return same_layer["attn_out"]
    if how in ("auto", "z") and "attn_z" in same_layer:
        return same_layer["attn_z"]
    return None


def flow_pairs(saes: list[SAEWeights]) -> list[tuple[int, int]]:
    """(earlier, next) SAE indices along the forward pass."""
    order = sorted(range(len(saes)), key=lambda i: (site_position(saes[i].site, saes[i].layer), i))
    return list(zip(order[:-1], order[1:], strict=True))


@dataclass
class Unit:
    pass_name: str  # the build_units.pass value
    sae: int  # index into the SAE list
    start: int
    end: int


def plan_units(model: ModelWeights, saes: list[SAEWeights], names: list[str], cfg: BuildConfig) -> list[Unit]:
    """Every unit of the build, in the order they run."""
    units: list[Unit] = []

    def add(pass_name: str, i: int, whole: bool = False) -> None:
        if whole:
            units.append(Unit(pass_name, i, 0, saes[i].d_sae))
        else:
            units.extend(Unit(pass_name, i, s, e) for s, e in chunks(0, saes[i].d_sae, cfg.unit_size))

    reads = [reading_attention_layer(s, model.n_layers) for s in saes]
    for p in ("du", "ee"):
        if p in cfg.passes:
            for i in range(len(saes)):
                add(p, i)
    if "attn" in cfg.passes:
        for i in range(len(saes)):
            if reads[i] is not None:
                add("attn", i)
                add("attn_profile", i, whole=True)
    if "attribution" in cfg.passes:
        for i, s in enumerate(saes):
            if s.site == "attn_z":
                add("attribution", i)
    if "qk" in cfg.passes:
        for qi, ki in qk_pair_indices(saes, names, cfg):
            if reads[qi] is not None:
                add("qk" if qi == ki else f"qk:{names[ki]}", qi)
    if "ov" in cfg.passes:
        for i in range(len(saes)):
            if reads[i] is not None and ov_target_index(saes, i, reads[i], cfg.ov_target) is not None:
                add("ov", i)
    if "neighbours" in cfg.passes:
        for i in range(len(saes)):
            add("neighbours", i)
    if "flow" in cfg.passes:
        for a, _ in flow_pairs(saes):
            add("flow", a)
    if "semantic" in cfg.passes:
        for i in range(len(saes)):
            add("semantic", i)
    return units


def qk_pair_indices(saes: list[SAEWeights], names: list[str], cfg: BuildConfig) -> list[tuple[int, int]]:
    if cfg.qk_pairs is None:
        return [(i, i) for i in range(len(saes))]
    index = {n: i for i, n in enumerate(names)}
    out = []
    for q, k in cfg.qk_pairs:
        if q not in index or k not in index:
            missing = q if q not in index else k
            raise BuildError(f"QK pair names an SAE not in this build: {missing} (have {', '.join(names)})")
        out.append((index[q], index[k]))
    return out


# ------------------------------------------------------------------ provenance


def _versions() -> dict[str, str]:
    out = {"sae_atlas": atlas.__version__, "torch": torch.__version__, "numpy": np.__version__}
    out["python"] = platform.python_version()
    for mod in ("transformers", "safetensors", "gguf"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except Exception:
                continue
        out[mod] = getattr(m, "__version__", "?")
    return out


def provenance(model: ModelWeights, saes: list[SAEWeights], names: list[str], cfg: BuildConfig) -> dict[str, Any]:
    """Everything that decides the numbers (no timestamps, so two builds agree)."""
    fold = cfg.fold_norms
    folding = {
        "du": "d_f * ln_final.gain (LayerNorm: centred first)" if fold else "none: raw W_U (as Neuronpedia)",
        "ee": (
            "embed_scale * W_E @ (g * e_f), g = gain of the norm that next reads the SAE's site; "
            "hook_z: g = ln1(L).gain, direction sum_h W_V[h] @ e_f[h]"
        )
        if fold
        else "embed_scale * W_E @ e_f (no gain)",  # fmt: skip
        "attn/qk/ov": "x = ln1(l).gain * d (LayerNorm: centred first)" if fold else "none",
        "hook_z residual direction": "sum_h d_f[h] @ W_O[h]" + (" * ln_attn_out.gain (Gemma-2)" if fold else ""),
        "ov residual target": "W_O[h] @ (ln_attn_out.gain * e_k) for Gemma-2" if fold else "W_O[h] @ e_k",
        "never": "the data-dependent 1/rms scale; b_U; the final logit softcap (monotonic)",
    }
    conventions = {
        "decoder rows": "W_dec[f] / input_scale (model units); encoder columns W_enc[:, f] * input_scale",
        "reading attention layer": "resid_pre L -> L; any other site of layer L -> L + 1",
        "kurtosis": "excess (normal = 0)",
        "entropy": "of softmax(scores), nats",
        "top1_z": "(max - mean) / std over the whole vocabulary",
        "attention score": "||W_X[h] (g * u_f)|| / mean over random unit r of ||W_X[h] (g * r)||, u_f unit",
        "attention percentile": "100 * fraction of the head's random-direction scores <= the feature's",
        "qk score": "x_i W_Q[h] W_K[h]^T x_j * qk_scale; top-k by |score| per (i, h)",
        "ov score": "x_j W_V[h] W_O[h] e_k (W_O dropped for a hook_z target); top-k by |score| per (j, h)",
        "cosine": "signed decoder cosine within an SAE (SAE space), self excluded",
        "flow": "signed cosine of residual-stream decoder directions into the next SAE by site position",
        "ties": "broken by the smaller token / feature / head index",
    }
    model_info = dict(
        source=model.source, source_kind=model.source_kind, architecture=model.architecture,
        sha256=model.sha256, dtype=model.dtype, notes=model.notes, qk_scale=model.qk_scale,
        embed_scale=model.embed_scale, norm_kind=model.norm_kind,
    )  # fmt: skip
    sae_info = [
        dict(
            name=n,
            source=s.source,
            source_format=s.source_format,
            sha256=s.sha256,
            hook_name=s.hook_name,
            site=s.site,
            layer=s.layer,
            d_in=s.d_in,
            d_sae=s.d_sae,
            architecture=s.architecture,
            normalization=s.normalization,
            input_scale=s.input_scale,
            release=s.release,
            sae_ref=s.sae_ref,
        )  # fmt: skip
        for n, s in zip(names, saes, strict=True)
    ]
    config = cfg.as_dict()
    # device and cache_mb change where and how, never what: shards and resumes may differ in them
    fingerprint_src = json.dumps(
        {k: v for k, v in config.items() if k not in ("device", "cache_mb")} | {"model": model_info, "saes": sae_info},
        sort_keys=True, default=str,
    )  # fmt: skip
    return {
        "build": {
            "config": config,
            "fingerprint": hashlib.sha256(fingerprint_src.encode()).hexdigest(),
            "device": str(model.device),
        },
        "model": model_info,
        "saes": sae_info,
        "folding": folding,
        "conventions": conventions,
        "versions": _versions(),
    }


# ------------------------------------------------------------------ running


class _Build:
    """State of one build: the open partial atlas, ids, and lazily computed per-SAE tensors."""

    def __init__(self, db: Atlas, model: ModelWeights, saes: list[SAEWeights], names: list[str], cfg: BuildConfig):
        self.db, self.model, self.saes, self.names, self.cfg = db, model, saes, names, cfg
        model_id = db.conn.execute("SELECT model_id FROM models").fetchone()[0]
        self.head_pk = db.head_pks(model_id)  # (n_layers, n_heads)
        rows = dict(db.conn.execute("SELECT name, sae_id FROM saes").fetchall())
        self.sae_id = [rows[n] for n in names]
        self.fid_base = [db.feature_id_base(i) for i in self.sae_id]
        self.block_rows, self.vocab_tile = cfg.blocks(model.device)
        self.reads = [reading_attention_layer(s, model.n_layers) for s in saes]
        self._cache: dict[Any, Any] = {}  # small things only (criteria, baselines)
        self._cols: tuple[Any, Columns] | None = None  # the one QK/OV/cosine "other side" held now

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def columns(self, key: Any, dim: int, make: Callable[[int, bool], Columns]) -> Columns:
        """The other side of a QK/OV/neighbours/flow unit, ``make(block, cache)``.

        Kept whole iff it fits ``cfg.cache_bytes()``, else streamed block by
        block (bit-identical rows either way). Only one is held at a time:
        units run pass by pass, SAE by SAE, so consecutive units share it.
        """
        if self._cols is not None and self._cols[0] == key:
            return self._cols[1]
        self._cols = None  # free the previous one before making the next
        block = self.cfg.key_columns(dim, self.block_rows)
        cols = make(block, False)  # streamed: nothing computed yet
        if cols.nbytes <= self.cfg.cache_bytes():
            cols = make(block, True)
        self._cols = (key, cols)
        return cols

    # criteria --------------------------------------------------------
    def criterion(self, phase: str) -> predicts.TokenCriterion:
        cfg = self.cfg
        return self.cached(
            ("criterion", phase),
            lambda: predicts.token_criterion(
                self.model, phase, z=cfg.predicts_z if phase == "du" else cfg.reads_z,
                quantile=cfg.predicts_quantile, n_random=cfg.n_random, seed=cfg.seed, fold_norms=cfg.fold_norms,
                block_rows=self.block_rows, vocab_tile=self.vocab_tile,
            ),
        )  # fmt: skip

    def attn_layers(self, i: int) -> list[int]:
        return attention.reading_layers(self.model, self.reads[i], self.cfg.reach)

    def attn_baseline(self) -> attention.AttentionBaseline:
        cfg = self.cfg
        layers = sorted({layer for i in range(len(self.saes)) for layer in self.attn_layers(i)})
        return self.cached(
            "attn_baseline",
            lambda: attention.attention_baseline(
                self.model, layers, n_random=cfg.n_random, seed=cfg.seed, fold_norms=cfg.fold_norms
            ),
        )

    # units -------------------------------------------------------------
    def run(self, u: Unit) -> None:
        """Compute one unit's rows and write them (the caller holds the transaction)."""
        name = u.pass_name.split(":")[0]
        getattr(self, f"_unit_{name}")(u)

    def _fids(self, i: int, local: np.ndarray) -> np.ndarray:
        return np.asarray(local, dtype=np.int64) + self.fid_base[i]

    def _vocab_unit(self, u: Unit, phase: str, r: VocabScores) -> None:
        i, db = u.sae, self.db
        idx = np.arange(u.start, u.end)
        crit = self.criterion(phase)
        cols = {f"{phase}_{k}": v for k, v in r.stats.items()}
        cols["predicts_tokens" if phase == "du" else "reads_tokens"] = crit.apply(r.stats["top1_z"])
        db.update_features(self.sae_id[i], idx, cols)
        db.add_token_score_block(
            self._fids(i, idx), {(phase, 1): (r.top_ids, r.top_vals), (phase, -1): (r.bot_ids, r.bot_vals)}
        )

    def _unit_du(self, u: Unit) -> None:
        cfg = self.cfg
        r = du.du_pass(
            self.model, self.saes[u.sae], u.start, u.end, k=cfg.top_k, fold_norms=cfg.fold_norms,
            block_rows=self.block_rows, vocab_tile=self.vocab_tile,
        )  # fmt: skip
        self._vocab_unit(u, "du", r)

    def _unit_ee(self, u: Unit) -> None:
        cfg = self.cfg
        r = ee.ee_pass(
            self.model, self.saes[u.sae], u.start, u.end, k=cfg.top_k, fold_norms=cfg.fold_norms,
            block_rows=self.block_rows, vocab_tile=self.vocab_tile,
        )  # fmt: skip
        self._vocab_unit(u, "ee", r)

    def _unit_attn(self, u: Unit) -> None:
        i, cfg = u.sae, self.cfg
        layers = self.attn_layers(i)
        r = attention.attention_pass(
            self.model, self.saes[i], u.start, u.end, layers, self.attn_baseline(), fold_norms=cfg.fold_norms
        )
        idx = np.arange(u.start, u.end)
        cols = {}
        for role in attention.ROLES:
            cols[f"attn_{role}_mean"] = r.scores[role][:, 0].mean(1)
            cols[f"attn_{role}_max"] = r.scores[role][:, 0].max(1)
        self.db.update_features(self.sae_id[i], idx, cols)
        fids = self._fids(i, idx)
        for role in attention.ROLES:
            keep = cfg.percentile if cfg.store_percentile is None else cfg.store_percentile
            f, li, h = np.nonzero(r.percentiles[role] >= keep)  # row-major: feature, layer, head
            if len(f):
                layer_arr = np.asarray(layers)[li]
                self.db.add_head_scores(
                    fids[f], self.head_pk[layer_arr, h], role, r.scores[role][f, li, h], r.percentiles[role][f, li, h]
                )

    def _unit_attn_profile(self, u: Unit) -> None:
        """Depth profiles over every (feature, head): the exact median needs every score, so they are kept,
        as fp32 (exact: the scores are fp32), d_sae * H * reach * 12 bytes; percentiles are only counted."""
        i, cfg, sae = u.sae, self.cfg, self.saes[u.sae]
        layers, H = self.attn_layers(i), self.model.n_heads
        scores = {
            (li, role): np.empty((sae.d_sae, H), np.float32) for li in range(len(layers)) for role in attention.ROLES
        }
        above = dict.fromkeys(scores, 0)
        # blocks of attention_pass's own block_rows, so every number is the one a whole-SAE call gives
        for b0, b1 in chunks(0, sae.d_sae, 1024):
            r = attention.attention_pass(
                self.model, sae, b0, b1, layers, self.attn_baseline(), fold_norms=cfg.fold_norms, block_rows=1024
            )
            for li, role in scores:
                scores[li, role][b0:b1] = r.scores[role][:, li]
                above[li, role] += int((r.percentiles[role][:, li] >= cfg.percentile).sum())
        for li, layer in enumerate(layers):
            for role in attention.ROLES:
                s = scores.pop((li, role)).astype(np.float64)  # (d_sae, H)
                prof = attention.depth_profile(s, None, cfg.percentile, n_above=above[li, role], overwrite=True)
                self.db.add_depth_profile(self.sae_id[i], layer, role, **prof)

    def _unit_attribution(self, u: Unit) -> None:
        i, m = u.sae, self.model
        r = attribution.attribution_pass(self.saes[i], u.start, u.end, n_heads=m.n_heads, d_head=m.d_head)
        idx = np.arange(u.start, u.end)
        self.db.update_features(self.sae_id[i], idx, {"top_head": r.top_head, "top_head_share": r.top_head_share})
        f, h = np.nonzero(r.shares >= self.cfg.attribution_floor)
        layer = self.saes[i].layer
        self.db.add_head_scores(self._fids(i, idx)[f], self.head_pk[layer, h], "attribution", r.shares[f, h])

    def _write_edges(self, kind: str, src_sae: int, dst_sae: int, e: qk.EdgeRows) -> None:
        heads = None if e.head is None else self.head_pk[e.layer, e.head]
        self.db.add_edges(kind, self._fids(src_sae, e.src), self._fids(dst_sae, e.dst), e.score, e.rank, heads)

    def _unit_qk(self, u: Unit) -> None:
        cfg, qi = self.cfg, u.sae
        ki = self.names.index(u.pass_name.split(":", 1)[1]) if ":" in u.pass_name else qi
        layer, m = self.reads[qi], self.model
        keys = self.columns(
            ("qk_keys", ki, layer), m.n_heads * m.d_head,
            lambda block, cache: qk.qk_keys(m, self.saes[ki], layer, fold_norms=cfg.fold_norms, block=block, cache=cache),
        )  # fmt: skip
        e = qk.qk_pass(
            m, self.saes[qi], layer, u.start, u.end, keys, k=cfg.qk_k, cap=cfg.qk_cap,
            fold_norms=cfg.fold_norms, exclude_self=cfg.qk_exclude_self and qi == ki, block_rows=self.block_rows,
        )  # fmt: skip
        self._write_edges("qk", qi, ki, e)

    def _unit_ov(self, u: Unit) -> None:
        cfg, i = self.cfg, u.sae
        layer = self.reads[i]
        t, m = ov_target_index(self.saes, i, layer, cfg.ov_target), self.model
        targets = self.columns(
            ("ov_targets", t, layer), m.n_heads * m.d_head,
            lambda block, cache: ov.ov_targets(m, layer, self.saes[t], fold_norms=cfg.fold_norms, block=block, cache=cache),
        )  # fmt: skip
        e = ov.ov_pass(
            m, self.saes[i], layer, u.start, u.end, targets, k=cfg.ov_k, cap=cfg.ov_cap,
            fold_norms=cfg.fold_norms, block_rows=self.block_rows,
        )  # fmt: skip
        self._write_edges("ov", i, t, e)

    def _unit_neighbours(self, u: Unit) -> None:
        i, m = u.sae, self.model
        cols = self.columns(
            ("unit_dec", i, False), self.saes[i].d_in,
            lambda block, cache: neighbours.unit_decoders(m, self.saes[i], resid=False, block=block, cache=cache),
        )  # fmt: skip
        e = neighbours.cosine_pass(m, self.saes[i], u.start, u.end, cols, k=self.cfg.neighbour_k)
        self._write_edges("cosine", i, i, e)

    def _unit_flow(self, u: Unit) -> None:
        cfg, i = self.cfg, u.sae
        j, m = dict(flow_pairs(self.saes))[i], self.model
        cols = self.columns(
            ("unit_dec", j, True), m.d_model,
            lambda block, cache: neighbours.unit_decoders(
                m, self.saes[j], resid=True, fold_norms=cfg.fold_norms, block=block, cache=cache
            ),
        )  # fmt: skip
        e = neighbours.flow_pass(m, self.saes[i], u.start, u.end, cols, k=cfg.flow_k, fold_norms=cfg.fold_norms)
        self._write_edges("flow", i, j, e)

    def _top_ids(self, u: Unit, phase: str) -> np.ndarray | None:
        """Promoted token ids (n, k) of the unit's features from the atlas, or None if the pass did not run."""
        base = self.fid_base[u.sae]
        rows = self.db.conn.execute(
            "SELECT feature_id, rank, token_id FROM token_scores WHERE phase = ? AND sign = 1 "
            "AND feature_id BETWEEN ? AND ? ORDER BY feature_id, rank",
            (phase, base + u.start, base + u.end - 1),
        ).fetchall()
        n = u.end - u.start
        if len(rows) < n:
            return None
        arr = np.array([r[2] for r in rows], dtype=np.int64)
        return arr.reshape(n, -1)

    def _unit_semantic(self, u: Unit) -> None:
        cfg, i = self.cfg, u.sae
        du_ids = self._top_ids(u, "du")
        if du_ids is None:
            du_ids = du.du_pass(
                self.model, self.saes[i], u.start, u.end, k=cfg.top_k, fold_norms=cfg.fold_norms,
                block_rows=self.block_rows, vocab_tile=self.vocab_tile,
            ).top_ids  # fmt: skip
        ee_ids = None
        if "ee" in cfg.passes:
            ee_ids = self._top_ids(u, "ee")
            if ee_ids is None:  # this chunk's ee unit ran in another shard: same numbers, recomputed
                ee_ids = ee.ee_pass(
                    self.model, self.saes[i], u.start, u.end, k=cfg.top_k, fold_norms=cfg.fold_norms,
                    block_rows=self.block_rows, vocab_tile=self.vocab_tile,
                ).top_ids  # fmt: skip
        base = self.cached("embed_baseline", lambda: semantic.embed_baseline(self.model, cfg.semantic))
        labels = semantic.semantic_pass(self.model, du_ids, ee_ids, cfg.semantic, base)
        fids = self._fids(i, np.arange(u.start, u.end))
        self.db.add_labels(
            (int(f), text, kind, "heuristic", score, ev)
            for f, (text, kind, score, ev) in zip(fids, labels, strict=True)
        )


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
    db = create_atlas(path, provenance=prov, overwrite=True)
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


def _criteria_summary(db: Atlas, b: _Build) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase, col in (("du", "predicts_tokens"), ("ee", "reads_tokens")):
        if phase not in b.cfg.passes:
            continue
        crit = b.criterion(phase).as_dict()
        crit["fraction"] = {
            name: db.conn.execute(f"SELECT AVG({col}) FROM features WHERE sae_id = ?", (sid,)).fetchone()[0]
            for name, sid in zip(b.names, b.sae_id, strict=True)
        }
        out[col] = crit
    return out


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


def shard_path(out: str | Path, index: int, count: int) -> Path:
    """The partial atlas shard ``index`` of ``count`` writes: ``OUT.shardI-of-N.partial``."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard{index}-of-{count}.partial")


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    index, count = (int(x) for x in shard)
    if count < 1 or not 0 <= index < count:
        raise BuildError(f"shard {index}/{count}: need 0 <= I < N (shards are numbered from 0)")
    return index, count


def _plan_rows(units: list[Unit], names: list[str]) -> list[list[Any]]:
    """The plan as JSON rows [pass, SAE name, start, end], in run order (kept by shards for the merge)."""
    return [[u.pass_name, names[u.sae], u.start, u.end] for u in units]


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
) -> Path:
    """Run ``config.passes`` over ``saes`` of ``model`` into the atlas file ``out``; returns its path.

    ``resume`` continues ``OUT.partial`` from a killed build with the same
    settings. ``shard=(I, N)`` runs only units whose position in the plan is
    I mod N, into ``OUT.shardI-of-N.partial`` (returned; left unrenamed for
    :func:`merge_shards`). ``after_unit`` is called after each committed unit
    (tests use it to simulate a crash).
    """
    out = Path(out)
    shard = _check_shard(shard)
    partial = shard_path(out, *shard) if shard else out.with_name(out.name + ".partial")
    if not saes:
        raise BuildError("no SAE given: pass at least one --sae")
    if out.exists() and not overwrite:
        raise BuildError(f"{out}: already exists (use --overwrite to replace it)")
    names = sae_names(saes, config.sae_names)
    prov = provenance(model, saes, names, config)
    units = plan_units(model, saes, names, config)
    release_freed_blocks()
    if shard:
        prov["shard"] = {"index": shard[0], "count": shard[1], "plan": _plan_rows(units, names)}

    if resume and partial.exists():
        db = open_atlas(partial, readonly=False)
        old = db.provenance()
        if old.get("build", {}).get("fingerprint") != prov["build"]["fingerprint"] or old.get("shard") != prov.get(
            "shard"
        ):
            db.close()
            raise BuildError(
                f"{partial}: was started with other settings, model or SAEs; "
                "delete it or rerun without --resume to start over"
            )
    else:
        db = _init_atlas(partial, model, saes, names, prov)
    try:
        b = _Build(db, model, saes, names, config)
        mine = [u for pos, u in enumerate(units) if shard is None or pos % shard[1] == shard[0]]
        done = {(r[0], r[1], r[2]) for r in db.conn.execute("SELECT sae_id, pass, chunk_start FROM build_units")}
        bars = _Bars(mine, saes, progress)
        for u in mine:
            if (b.sae_id[u.sae], u.pass_name, u.start) in done:
                bars.skip(u)
                continue
            with db.transaction():
                b.run(u)
                db.mark_unit_done(b.sae_id[u.sae], u.pass_name, u.start, u.end)
            bars.advance(u)
            if after_unit is not None:
                after_unit(u)
        bars.close()
        with db.transaction():
            db.update_provenance(criteria=_criteria_summary(db, b))  # a shard's fractions are redone by the merge
        if shard:
            return partial
        db.analyze()
        db.conn.execute("VACUUM")
    finally:
        db.close()
    os.replace(partial, out)
    return out


# ------------------------------------------------------------------ shards

_EDGE_KINDS = {"qk": "qk", "ov": "ov", "neighbours": "cosine", "flow": "flow"}
# Tables whose rows are keyed by what they describe (no autoincrement id): any insertion order gives the same rows.
_KEYED_TABLES = ("token_scores", "head_scores", "depth_profiles", "build_units")


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
    done = {
        tuple(r)
        for r in db.conn.execute("SELECT s.name, b.pass, b.chunk_start FROM build_units b JOIN saes s USING (sae_id)")
    }
    want = {(n, p, st) for pos, (p, n, st, _) in enumerate(sh["plan"]) if pos % count == i}
    if not want <= done:
        raise BuildError(
            f"{path.name}: incomplete ({len(want - done)} of {len(want)} units to go); "
            f"finish it with --shard {i}/{count} --resume"
        )
    return prov


def merge_shards(
    out: str | Path, count: int | None = None, *, overwrite: bool = False, keep_shards: bool = False
) -> Path:
    """Combine the N complete shards of one build into the atlas ``out``, row-identical to a one-process build.

    Checks that all N ``OUT.shardI-of-N.partial`` exist, are complete and share
    one fingerprint and plan. Shard 0's file is the base (the shared rows:
    model, vocab, heads, SAEs, features, the pass settings); keyed tables are
    unioned, feature columns filled from whichever shard computed them, and
    edges and labels (autoincrement ids) re-inserted unit by unit in plan
    order, so their ids are those of a one-process build. Written to
    ``OUT.merging.partial`` and renamed to ``out`` at the end; the shard files
    are then removed unless ``keep_shards``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BuildError(f"{out}: already exists (use --overwrite to replace it)")
    count = find_shards(out) if count is None else int(count)
    paths = [shard_path(out, i, count) for i in range(count)]
    prov = _check_shards(paths, count)
    plan = prov.pop("shard")["plan"]
    tmp = out.with_name(out.name + ".merging.partial")
    shutil.copyfile(paths[0], tmp)
    db = open_atlas(tmp, readonly=False)
    try:
        _merge_into(db, paths, plan)
        with db.transaction():
            db.set_provenance(prov)
            crit = prov.get("criteria", {})
            sae_ids = dict(db.conn.execute("SELECT name, sae_id FROM saes").fetchall())
            for col, c in crit.items():  # the fractions over every feature, as _criteria_summary gives them
                c["fraction"] = {
                    name: db.conn.execute(f"SELECT AVG({col}) FROM features WHERE sae_id = ?", (sae_ids[name],))
                    .fetchone()[0]
                    for name in c["fraction"]
                }  # fmt: skip
            db.update_provenance(criteria=crit)
        db.analyze()
        db.conn.execute("VACUUM")
    except BaseException:
        db.close()
        tmp.unlink(missing_ok=True)
        raise
    db.close()
    os.replace(tmp, out)
    if not keep_shards:
        for p in paths:
            p.unlink()
    return out


def _merge_into(db: Atlas, paths: list[Path], plan: list[list[Any]]) -> None:
    conn, count = db.conn, len(paths)
    base = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT name, MIN(feature_id), COUNT(*) FROM features "
                                                     "JOIN saes USING (sae_id) GROUP BY name")}  # fmt: skip
    metric = [c for c in FEATURE_METRIC_COLUMNS if c not in ("dec_norm", "enc_norm", "b_enc", "threshold")]
    with db.transaction():
        conn.execute("DELETE FROM edges")
        conn.execute("DELETE FROM labels")
        conn.execute("CREATE TABLE _merge_edges (pos INTEGER, edge_id INTEGER, src_feature, dst_feature, head_pk, "
                     "kind, score, rank)")  # fmt: skip
        conn.execute("CREATE TABLE _merge_labels (pos INTEGER, label_id INTEGER, feature_id, text, kind, source, "
                     "score, evidence, created_at)")  # fmt: skip
    n_edges = n_labels = 0
    for i, path in enumerate(paths):
        conn.execute("ATTACH DATABASE ? AS shard", (file_uri(path, mode="ro"),))
        try:
            with db.transaction():
                if i:  # shard 0's own rows are in the copy already
                    for t in _KEYED_TABLES:
                        conn.execute(f"INSERT INTO main.{t} SELECT * FROM shard.{t}")
                    sets = ", ".join(f"{c} = COALESCE(features.{c}, s.{c})" for c in metric)
                    conn.execute(f"UPDATE features SET {sets} FROM shard.features AS s "
                                 "WHERE s.feature_id = features.feature_id")  # fmt: skip
                for pos, (pass_name, name, start, end) in enumerate(plan):
                    if pos % count != i:
                        continue
                    lo, hi = base[name][0] + start, base[name][0] + end - 1
                    kind = _EDGE_KINDS.get(pass_name.split(":")[0])
                    if kind is not None:
                        sql = ("INSERT INTO _merge_edges SELECT ?, edge_id, src_feature, dst_feature, head_pk, kind, "
                               "score, rank FROM shard.edges WHERE kind = ? AND src_feature BETWEEN ? AND ?")  # fmt: skip
                        args: list[Any] = [pos, kind, lo, hi]
                        if kind == "qk":  # one query SAE may have several key SAEs: pick this unit's
                            key = pass_name.split(":", 1)[1] if ":" in pass_name else name
                            sql += " AND dst_feature BETWEEN ? AND ?"
                            args += [base[key][0], base[key][0] + base[key][1] - 1]
                        conn.execute(sql, args)
                    elif pass_name == "semantic":
                        conn.execute("INSERT INTO _merge_labels SELECT ?, label_id, feature_id, text, kind, source, "
                                     "score, evidence, created_at FROM shard.labels WHERE source = 'heuristic' "
                                     "AND feature_id BETWEEN ? AND ?", (pos, lo, hi))  # fmt: skip
                n_edges += conn.execute("SELECT COUNT(*) FROM shard.edges").fetchone()[0]
                n_labels += conn.execute("SELECT COUNT(*) FROM shard.labels").fetchone()[0]
        finally:
            conn.execute("DETACH DATABASE shard")
    with db.transaction():
        got = conn.execute("SELECT (SELECT COUNT(*) FROM _merge_edges), (SELECT COUNT(*) FROM _merge_labels)")
        if tuple(got.fetchone()) != (n_edges, n_labels):
            raise BuildError("shard rows not accounted for by their units; the shards do not belong to this build")
        conn.execute("INSERT INTO edges (src_feature, dst_feature, head_pk, kind, score, rank) "
                     "SELECT src_feature, dst_feature, head_pk, kind, score, rank FROM _merge_edges "
                     "ORDER BY pos, edge_id")  # fmt: skip
        conn.execute("INSERT INTO labels (feature_id, text, kind, source, score, evidence, created_at) "
                     "SELECT feature_id, text, kind, source, score, evidence, created_at FROM _merge_labels "
                     "ORDER BY pos, label_id")  # fmt: skip
        conn.execute("DROP TABLE _merge_edges")
        conn.execute("DROP TABLE _merge_labels")


class _Bars:
    """One tqdm bar per pass on stderr, in features (features/s is the rate)."""

    def __init__(self, units: list[Unit], saes: list[SAEWeights], enabled: bool):
        self.enabled = enabled
        self.totals: dict[str, int] = {}
        for u in units:
            self.totals[u.pass_name] = self.totals.get(u.pass_name, 0) + (u.end - u.start)
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
        self._switch(u.pass_name)
        if self.bar is not None:
            self.bar.update(u.end - u.start)

    def skip(self, u: Unit) -> None:
        self._switch(u.pass_name)
        if self.bar is not None:
            self.bar.total -= u.end - u.start
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "ALL_PASSES", "BuildConfig", "BuildError", "Unit", "build_atlas", "find_shards", "merge_shards", "plan_units",
    "release_freed_blocks", "sae_names", "shard_path",
]  # fmt: skip
