"""Virtual weights (``virtual``): each feature's strongest direct-path connections into a later dictionary.

For feature f of a dictionary that writes the residual stream at layers S_f and
feature g of a dictionary that reads it at point t (docs/graph.md)::

    V(f, g) = (sum_{u in S_f, u before t} W_dec[f, u]) . diag(g_t) . W_enc[:, g]

with ``g_t`` the gain of the norm g reads through: layer t's MLP-input norm for
a transcoder or CLT reading ``mlp_in``, none for ``ln2_normalized`` (read before
the gain) and for a residual SAE (LayerNorm models also centre, as every pass
folds a norm, :mod:`builders.passes.common`). Positions are
:func:`atlas.domain.stream_position`: a writer at u reaches a reader at t iff
u < t. A ``hook_z`` SAE writes through ``W_O`` (its decoder row mapped into the
residual stream as :func:`builders.passes.common.z_to_resid` maps it); a skip
transcoder's ``W_skip`` maps its input, not a feature, so only the decoder counts.
Destinations read the residual stream: residual SAEs, transcoders and CLTs;
an ``attn_out``, ``mlp_out`` or ``hook_z`` SAE reads a sublayer's output, which
no residual direction reaches without going through that sublayer, so it is no
destination.

For each source feature the ``virtual_k`` destination features with the largest
|V| are kept (edges of kind ``virtual``, rank within the source feature and the
destination dictionary), streamed over the destination's columns as the QK pass
streams its keys, so memory stays bounded whatever d_sae. Each pair of
dictionaries first gets a random baseline (step ``virtual_baseline``): |V| of
``n_random`` random unit directions of the space the source writes into (the
residual stream; for a hook_z SAE the image of ``W_O``, drawn in z and mapped),
against the destination's features; an edge's percentile places
|V(f, g)| / ||f's summed row|| among those values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from atlas.domain import RESIDUAL_SITES, TRANSCODER_SITES, reaches, stream_position
from builders.errors import BuildError
from builders.passes.base import Context, EdgeRows, Pass, Rows, Step, Target, Unit
from builders.passes.common import (
    COMPUTE_DTYPE,
    Columns,
    chunks,
    encoder_columns,
    random_unit_directions,
    site_reader_norm,
    stream_topk,
    z_to_resid,
)
from builders.weights import ModelWeights, Norm, SAEWeights

if TYPE_CHECKING:
    from builders.settings import BuildConfig

# Percentile levels the baseline keeps (finer towards the top, where the kept edges lie).
PERCENTILE_LEVELS = np.unique(
    np.concatenate(
        [
            np.linspace(0, 90, 91),
            np.linspace(90, 99, 91),
            np.linspace(99, 99.9, 91),
            np.linspace(99.9, 99.99, 91),
            np.linspace(99.99, 100, 11),
        ]
    )
)


# ---------------------------------------------------------------- where dictionaries write and read
def write_points(sae: SAEWeights) -> list[tuple[int, int]]:
    """(stream position, index on decoder_layers' layer axis) of every place it writes the residual stream."""
    if sae.kind == "sae":
        return [(stream_position(sae.site, sae.layer), 0)]
    return [(stream_position(sae.out_site, u), j) for j, u in enumerate(sae.write_layers)]


def read_point(sae: SAEWeights) -> int | None:
    """Stream position it reads the residual stream at, or None when it reads a sublayer's output (no destination)."""
    if sae.site in RESIDUAL_SITES or sae.site in TRANSCODER_SITES:
        return stream_position(sae.site, sae.layer)
    return None


def has_path(src: SAEWeights, dst: SAEWeights) -> bool:
    """Whether some decoder of ``src`` is written before ``dst`` reads (dst reads the residual stream);
    the same rule ``sae-atlas validate`` checks stored edges by (:func:`atlas.domain.reaches`)."""
    out_site = src.site if src.kind == "sae" else src.out_site
    return reaches(out_site, src.write_layers, dst.site, dst.layer)


def why_no_path(src: SAEWeights, dst: SAEWeights, names: tuple[str, str]) -> str:
    """One line: why no virtual weight goes from ``src`` to ``dst``."""
    if read_point(dst) is None:
        return f"{names[1]} reads {dst.hook_name}, a sublayer's output, not the residual stream: no virtual weights into it"
    writes = ", ".join(sae_writes(src))
    return (
        f"no path from {names[0]} (writes {writes}) to {names[1]} (reads {dst.hook_name}): the destination is not later"
    )


def sae_writes(sae: SAEWeights) -> tuple[str, ...]:
    return sae.write_hooks if sae.kind != "sae" else (sae.hook_name,)


def dest_norm(model: ModelWeights, sae: SAEWeights, *, fold_norms: bool) -> Norm | None:
    """The norm between the residual stream and the destination's encoder (None: it reads the stream itself)."""
    if not fold_norms or sae.site not in TRANSCODER_SITES:
        return None
    return site_reader_norm(model, sae.site, sae.layer)


# ---------------------------------------------------------------- the two sides of V
def source_rows(
    model: ModelWeights, sae: SAEWeights, start: int, end: int, before: int, *, fold_norms: bool
) -> torch.Tensor:
    """Sum of the decoders of features [start, end) written before stream position ``before``: (n, d_model)."""
    js = [j for pos, j in write_points(sae) if pos < before]
    if not js:
        raise BuildError(f"{sae.source}: writes nothing before stream position {before}")
    D = sae.decoder_layers(start, end).to(device=model.device, dtype=COMPUTE_DTYPE)  # (n, J, d_out)
    d = D[:, js].sum(1) if len(js) > 1 else D[:, js[0]]  # (n, d_out)
    if sae.input_scale != 1.0:
        d = d / sae.input_scale
    if sae.kind == "sae" and sae.site == "attn_z":
        d = z_to_resid(model, sae.layer, d, fold_norms=fold_norms)  # (n, d_model)
    return d


def dest_rows(model: ModelWeights, sae: SAEWeights, start: int, end: int, *, fold_norms: bool) -> torch.Tensor:
    """Encoder columns of features [start, end) as rows, the norm's gain (and LayerNorm centring) folded: (n, d_model).

    ``source_rows(f) @ dest_rows(g).T`` is V(f, g): centring ``g * e`` is the same as centring the source row.
    """
    e = encoder_columns(model, sae, start, end, COMPUTE_DTYPE)  # (n, d_model)
    norm = dest_norm(model, sae, fold_norms=fold_norms)
    if norm is None:
        return e
    x = e * norm.gain.to(e)
    if norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x


def as_columns(n_cols: int, dim: int, rows: Callable[[int, int], torch.Tensor], *, block: int, cache: bool) -> Columns:
    """(1, dim, n_cols) Columns from a function of rows [c0, c1) -> (c, dim)."""
    return Columns(n_cols, 1, dim, lambda c0, c1: rows(c0, c1).T.contiguous()[None], block=block, cache=cache)


def dest_columns(model: ModelWeights, dst: SAEWeights, *, fold_norms: bool, block: int, cache: bool) -> Columns:
    return as_columns(
        dst.d_sae,
        model.d_model,
        lambda s, e: dest_rows(model, dst, s, e, fold_norms=fold_norms),
        block=block,
        cache=cache,
    )


# ---------------------------------------------------------------- the random baseline
@dataclass
class Baseline:
    """|V| of random unit source directions against the destination's features."""

    levels: np.ndarray  # percentile levels (0..100)
    values: np.ndarray  # |V| at each level, non-decreasing
    stats: dict[str, float | int | None]  # the virtual_baselines row

    def percentile(self, x: np.ndarray) -> np.ndarray:
        """Percentile of each normalised |V| in the baseline (100 beyond its maximum)."""
        x = np.asarray(x, dtype=np.float64)
        p = np.interp(x, self.values, self.levels)
        return np.where(x > self.values[-1], 100.0, p)


def random_source_directions(
    model: ModelWeights, src: SAEWeights, n: int, seed: int, *, fold_norms: bool
) -> torch.Tensor:
    """Unit directions of the space ``src`` writes into, drawn as its rows are made: (n, d_model)."""
    if src.kind == "sae" and src.site == "attn_z":
        r = random_unit_directions(n, model.n_heads * model.d_head, seed, model.device)  # (n, H*d_head)
        r = z_to_resid(model, src.layer, r, fold_norms=fold_norms)  # (n, d_model): the image of W_O
    else:
        r = random_unit_directions(n, model.d_model, seed, model.device)  # (n, d_model)
    return r / r.norm(dim=-1, keepdim=True).clamp_min(1e-30)


@torch.inference_mode()
def virtual_baseline(
    model: ModelWeights,
    src: SAEWeights,
    dst: SAEWeights,
    *,
    n_random: int = 1024,
    max_samples: int = 1 << 22,
    n_real: int = 2048,
    seed: int = 0,
    fold_norms: bool = True,
    block: int = 4096,
) -> Baseline:
    """The pair's random baseline, and how many real (f, g) pairs (an evenly spaced sample of f) lie beyond it.

    Memory: ``max_samples`` baseline values, one (block, d_model) block of columns, and the
    (n_real, d_model) sample of source rows; whatever the destination's width.
    """
    read = read_point(dst)
    r = random_source_directions(model, src, n_random, seed, fold_norms=fold_norms)  # (R, d_model)
    per_col = max(1, min(dst.d_sae, max_samples // n_random))
    pick = np.arange(dst.d_sae)
    if per_col < dst.d_sae:  # a seeded sample of destination features
        pick = np.sort(np.random.default_rng(seed).choice(dst.d_sae, per_col, replace=False))
    vals = []
    for c0, c1 in chunks(0, dst.d_sae, block):
        sel = pick[(pick >= c0) & (pick < c1)]
        if not len(sel):
            continue
        cols = dest_rows(model, dst, c0, c1, fold_norms=fold_norms)[torch.as_tensor(sel - c0, device=model.device)]
        vals.append((r @ cols.T).abs_().flatten().cpu().numpy())  # (R * s,)
    v = np.sort(np.concatenate(vals).astype(np.float64))
    q = np.quantile(v, PERCENTILE_LEVELS / 100)
    stats: dict[str, float | int | None] = {
        "n_samples": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "p50": float(np.quantile(v, 0.5)),
        "p90": float(np.quantile(v, 0.9)),
        "p99": float(np.quantile(v, 0.99)),
        "p999": float(np.quantile(v, 0.999)),
        "max": float(v[-1]),
    }
    # real pairs: an evenly spaced sample of source features against every destination feature
    f_pick = np.unique(np.linspace(0, src.d_sae - 1, min(n_real, src.d_sae)).round().astype(np.int64))
    above = np.zeros(2, dtype=np.int64)
    n_pairs = 0
    for f0, f1 in chunks(0, src.d_sae, block):
        fs = f_pick[(f_pick >= f0) & (f_pick < f1)]
        if not len(fs):
            continue
        d = source_rows(model, src, f0, f1, read, fold_norms=fold_norms)[torch.as_tensor(fs - f0, device=model.device)]
        norm = d.norm(dim=-1, keepdim=True)  # (s, 1)
        live = (norm[:, 0] > 0).nonzero(as_tuple=True)[0]
        d = d[live] / norm[live]  # (s', d_model) unit rows: dead features are left out
        for c0, c1 in chunks(0, dst.d_sae, block):
            s = (d @ dest_rows(model, dst, c0, c1, fold_norms=fold_norms).T).abs_()  # (s', c)
            above += np.array([int((s > stats["p99"]).sum()), int((s > stats["p999"]).sum())])
            n_pairs += s.numel()
    stats["n_pairs"] = n_pairs
    stats["frac_above_p99"] = float(above[0] / n_pairs) if n_pairs else None
    stats["frac_above_p999"] = float(above[1] / n_pairs) if n_pairs else None
    return Baseline(PERCENTILE_LEVELS, q, stats)


# ---------------------------------------------------------------- the pass
def topk_edges(vals: np.ndarray, ids: np.ndarray, start: int, pct: np.ndarray) -> EdgeRows:
    """(n, k) signed scores and ids of rows [start, start + n) -> flat EdgeRows; exact zeros (dead features) dropped."""
    n, k = vals.shape
    src = np.repeat(np.arange(start, start + n), k)
    rank = np.tile(np.arange(k), n)
    keep = vals.reshape(-1) != 0
    return EdgeRows(
        src[keep], ids.reshape(-1)[keep], None, vals.reshape(-1)[keep], rank[keep], percentile=pct.reshape(-1)[keep]
    )


@torch.inference_mode()
def virtual_pass(
    model: ModelWeights,
    src: SAEWeights,
    dst: SAEWeights,
    start: int,
    end: int,
    cols: Columns,
    baseline: Baseline,
    *,
    k: int = 10,
    fold_norms: bool = True,
    block_rows: int = 256,
) -> EdgeRows:
    """Top-k |V(f, g)| over g for source features f in [start, end); ``cols`` from :func:`dest_columns`."""
    read = read_point(dst)
    lefts, norms = [], []
    for b0, b1 in chunks(start, end, block_rows):
        d = source_rows(model, src, b0, b1, read, fold_norms=fold_norms)  # (b, d_model)
        norms.append(d.norm(dim=-1).double().cpu().numpy())
        lefts.append(d[:, None, :])  # (b, 1, d_model)
    v, i = stream_topk(lefts, cols, k)  # (n, 1, k) each
    v, i = v[:, 0], i[:, 0]
    norm = np.concatenate(norms)[:, None]  # (n, 1)
    pct = baseline.percentile(np.abs(v) / np.where(norm > 0, norm, 1.0))
    return topk_edges(v, i, start, pct)


# ---------------------------------------------------------------- in a build
def pair_indices(ctx: Context) -> list[tuple[int, int]]:
    """(source, destination) indices: ``virtual_pairs`` by name (each must have a path), else every pair with one."""
    cfg, saes, names = ctx.cfg, ctx.saes, ctx.names
    if cfg.virtual_pairs is not None:
        index = {n: i for i, n in enumerate(names)}
        out = []
        for a, b in cfg.virtual_pairs:
            i, j = index[a], index[b]  # names were checked by check_pairs
            check_pair(saes[i], saes[j], (a, b))
            out.append((i, j))
        return out
    out = []
    for i, s in enumerate(saes):
        for j, d in enumerate(saes):
            if i == j or not has_path(s, d) or _same_model(s, d) is False:
                continue
            if cfg.virtual_max_layers is not None and d.layer - s.layer > cfg.virtual_max_layers:
                continue
            out.append((i, j))
    return out


def _same_model(a: SAEWeights, b: SAEWeights) -> bool | None:
    """Whether two dictionaries' files name the same model (None: one does not say)."""
    ma, mb = (_model_key(s.meta.get("model_name")) for s in (a, b))
    return None if not ma or not mb else ma == mb


def _model_key(name: object) -> str | None:
    """A model name as files spell it, compared case-blind without its hub owner (HuggingFaceTB/SmolLM2-135M)."""
    return str(name).rsplit("/", 1)[-1].lower() if isinstance(name, str) and name.strip() else None


def check_pair(src: SAEWeights, dst: SAEWeights, names: tuple[str, str]) -> None:
    """Refuse, in one line, a pair with no residual path or whose files name different models."""
    if _same_model(src, dst) is False:
        raise BuildError(
            f"{names[0]} and {names[1]} were trained on different models "
            f"({src.meta['model_name']} vs {dst.meta['model_name']}): no virtual weights between them"
        )
    if not has_path(src, dst):
        raise BuildError(why_no_path(src, dst, names))


def check_pairs(cfg: BuildConfig, names: list[str]) -> None:
    """Refuse a ``virtual_pairs`` entry naming a dictionary not in the build (before any weights load)."""
    for a, b in cfg.virtual_pairs or ():
        for n in (a, b):
            if n not in names:
                raise BuildError(f"virtual pair names a dictionary not in this build: {n} (have {', '.join(names)})")
        if a == b:
            raise BuildError(f"virtual pair {a}:{b}: a dictionary has no virtual weights into itself")


def targets(ctx: Context) -> list[Target]:
    return [Target(i, j) for i, j in pair_indices(ctx)]


def baseline_of(ctx: Context, i: int, j: int) -> Baseline:
    """The (source i, destination j) pair's baseline, made once per build (seeded: every shard gets the same)."""
    cfg, m = ctx.cfg, ctx.model
    return ctx.cached(
        ("virtual_baseline", i, j),
        lambda: virtual_baseline(
            m,
            ctx.saes[i],
            ctx.saes[j],
            n_random=cfg.n_random,
            max_samples=cfg.virtual_baseline_samples,
            n_real=cfg.virtual_sample,
            seed=cfg.seed + 7919 * i + 104729 * j,
            fold_norms=cfg.fold_norms,
            block=min(4096, cfg.key_columns(m.d_model, ctx.block_rows)),
        ),
    )


def _run_baseline(ctx: Context, u: Unit) -> Rows:
    return Rows(virtual_baselines=dict(baseline_of(ctx, u.sae, u.other).stats))


def _run(ctx: Context, u: Unit) -> Rows:
    cfg, m, i, j = ctx.cfg, ctx.model, u.sae, u.other
    cols = ctx.columns(
        ("virtual_dst", j, cfg.fold_norms),
        m.d_model,
        lambda block, cache: dest_columns(m, ctx.saes[j], fold_norms=cfg.fold_norms, block=block, cache=cache),
    )
    e = virtual_pass(
        m,
        ctx.saes[i],
        ctx.saes[j],
        u.start,
        u.end,
        cols,
        baseline_of(ctx, i, j),
        k=cfg.virtual_k,
        fold_norms=cfg.fold_norms,
        block_rows=ctx.block_rows,
    )
    return Rows(edges=e)


CONVENTIONS = {
    "virtual": "V(f, g) = (sum of f's decoders written before g reads) . diag(gain of g's norm) . W_enc[:, g]; "
    "top-k by |V| per (f, destination dictionary); percentile of |V| / ||f's row|| in the pair's random baseline",
}

PASS = Pass(
    name="virtual",
    order=82,
    help="virtual weights: each feature's strongest direct-path connections into every later dictionary",
    reads="pair",
    targets=targets,
    steps=(
        Step("virtual_baseline", _run_baseline, whole=True, writes=("virtual_baselines",)),
        Step("virtual", _run, writes=("edges",)),
    ),
    writes=("edges", "virtual_baselines"),
    edge_kind="virtual",
    key_names_other=True,  # one source pairs with several destinations
    check=check_pairs,
    conventions=CONVENTIONS,
    folding=lambda fold: {
        "virtual": "g's norm gain (mlp_in: the MLP-input norm; LayerNorm: centred) folded into W_enc[:, g]"
        if fold
        else "none: raw decoder . W_enc"
    },
)
