"""Synthetic atlases in a realistic shape, for tests, the TUI and benchmarks.

No weights are involved: values are drawn from a seeded RNG, so the same
arguments always give the same rows. The shape matches a real build: every
feature has ``k`` token scores per phase and sign, ``n_head_scores`` head
scores and ``n_edges`` edges, and ``label_every``-th features get a heuristic
label.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlas.db import Atlas, create_atlas
from atlas.domain import EDGE_KINDS, VIRTUAL_EDGE_KINDS

_WORDS = (
    "the of and to in is was for on that with as by at from his her they this it be are not or "
    "Paris London France river city king queen walk run ran said says time year day night red blue "
    "green house garden tree dog cat bird sun moon star water fire happy sad big small little old "
    "new good bad man woman child mother father sister brother school friend play game ball book "
    "story love fear dark light"
).split()


def synthetic_vocab(d_vocab: int, seed: int = 0) -> list[str]:
    """Word-like token strings: whole words with and without a leading space, fragments, punctuation."""
    rng = np.random.default_rng(seed)
    base = [" " + w for w in _WORDS] + _WORDS + [",", ".", "\n", " (", ")", "'s", "ing", "ed", " 1", "2", "\t"]
    out = list(dict.fromkeys(base))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    while len(out) < d_vocab:
        n = int(rng.integers(2, 8))
        w = "".join(rng.choice(letters, n))
        out.append((" " if rng.random() < 0.6 else "") + w)
    return out[:d_vocab]


def build_synthetic_atlas(
    path: str | os.PathLike,
    *,
    n_features: int = 2048,
    layers: tuple[int, ...] = (2, 6),
    n_layers: int = 8,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 64,
    d_vocab: int = 1000,
    k: int = 20,
    n_head_scores: int = 32,
    n_edges: int = 16,
    label_every: int = 3,
    seed: int = 0,
    chunk: int = 20_000,
    overwrite: bool = True,
    progress: bool = False,
    unique_heads: bool = False,
    token_skew: float = 0.0,
    throwaway: bool = False,
    n_virtual: int = 0,
    virtual_span: int | None = None,
) -> Path:
    """Write a synthetic atlas with ``n_features`` split evenly over one SAE per layer.

    ``unique_heads=True`` gives every feature exactly ``n_head_scores`` head
    scores on distinct (role, head) pairs (the default draws with replacement
    and drops repeats, so slightly fewer). ``token_skew`` is the fraction of
    token draws that land on the 1,000 lowest ids, as common tokens do in a
    real vocabulary. ``throwaway=True`` builds without journal or fsync
    (benchmarks only: a crash leaves a corrupt file). ``n_virtual > 0`` adds
    virtual edges as the `virtual` pass stores them (schema 4): for every
    ordered pair of SAEs, ``n_virtual`` ``virtual`` edges out of each feature
    of the earlier one and ``n_virtual`` ``virtual_in`` edges into each
    feature of the later one, with percentiles, and a baseline row per pair;
    ``virtual_span`` keeps only pairs at most that many SAEs apart (1: adjacent).
    """
    rng = np.random.default_rng(seed)
    atlas = create_atlas(path, overwrite=overwrite, provenance={"synthetic": {"seed": seed}})
    atlas.conn.execute("PRAGMA synchronous = OFF")
    t0 = time.perf_counter()
    with atlas, atlas.bulk_load(throwaway=throwaway):
        with atlas.transaction():
            model_id = atlas.add_model(
                name="synthetic",
                source="synthetic",
                source_kind="synthetic",
                architecture="Synthetic",
                n_layers=n_layers,
                d_model=d_model,
                n_heads=n_heads,
                n_kv_heads=n_kv_heads,
                d_head=d_model // n_heads,
                d_vocab=d_vocab,
                tied_embeddings=True,
                norm_kind="rmsnorm",
            )
            atlas.add_vocab(model_id, synthetic_vocab(d_vocab, seed))
            atlas.add_heads(model_id, n_layers, n_heads, n_kv_heads)
        head_pk = atlas.head_pks(model_id)
        per_sae = n_features // len(layers)
        sae_ids = [
            atlas.add_sae(
                model_id=model_id,
                hook_name=f"blocks.{layer}.hook_resid_post",
                site="resid_post",
                layer=layer,
                d_in=d_model,
                d_sae=per_sae,
                architecture="topk",
                k=32,
                source="synthetic",
                source_format="synthetic",
            )
            for layer in layers
        ]
        shape = _Shape(
            n_total=per_sae * len(sae_ids),
            d_vocab=d_vocab,
            k=k,
            head_pk=head_pk,
            n_head_scores=n_head_scores,
            n_edges=n_edges,
            label_every=label_every,
            n_layers=n_layers,
            unique_heads=unique_heads,
            token_skew=token_skew,
        )
        done = 0
        for sae_id, layer in zip(sae_ids, layers, strict=True):
            base = atlas.feature_id_base(sae_id)
            for start in range(0, per_sae, chunk):
                end = min(per_sae, start + chunk)
                _write_chunk(atlas, rng, sae_id, layer, base, start, end, shape)
                done += end - start
                if progress:
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    print(
                        f"  L{layer}: {end:,}/{per_sae:,} features "
                        f"({done:,}/{shape.n_total:,} total, {rate:,.0f} features/s)",
                        flush=True,
                    )
        if n_virtual > 0:
            bases = [atlas.feature_id_base(sae_id) for sae_id in sae_ids]
            span = virtual_span or len(sae_ids)
            _write_virtual(atlas, rng, sae_ids, bases, per_sae, n_virtual, span, chunk, progress)
        if progress:
            print("  rebuilding indexes and running ANALYZE ...", flush=True)
    return Path(path)


@dataclass(frozen=True)
class _Shape:
    n_total: int
    d_vocab: int
    k: int
    head_pk: np.ndarray  # (n_layers, n_heads)
    n_head_scores: int
    n_edges: int
    label_every: int
    n_layers: int
    unique_heads: bool
    token_skew: float


def _draw_tokens(rng: np.random.Generator, n: int, shape: _Shape) -> np.ndarray:
    k, d_vocab = shape.k, shape.d_vocab
    if shape.token_skew > 0:
        common = rng.integers(0, min(1000, d_vocab), (n, k))
        anywhere = rng.integers(0, d_vocab, (n, k))
        return np.where(rng.random((n, k)) < shape.token_skew, common, anywhere)  # (n, k)
    if d_vocab <= 4096:
        return np.argsort(rng.random((n, d_vocab)), axis=1)[:, :k]  # (n, k) distinct tokens
    return rng.integers(0, d_vocab, (n, k))  # (n, k)


def _draw_heads(rng: np.random.Generator, fids: np.ndarray, shape: _Shape) -> tuple[np.ndarray, ...]:
    """Flat (feature_ids, head_pks, roles, scores, percentiles) of the head scores of one chunk."""
    n = len(fids)
    all_heads = shape.head_pk.reshape(-1)
    roles = ("q", "k", "v")
    f_all, h_all, r_all, s_all, p_all = [], [], [], [], []
    for i, role in enumerate(roles):
        if shape.unique_heads:
            m = min(len(all_heads), shape.n_head_scores // len(roles) + (i < shape.n_head_scores % len(roles)))
            heads = all_heads[np.argsort(rng.random((n, len(all_heads))), axis=1)[:, :m]]  # (n, m) distinct
            keep = np.ones(heads.size, dtype=bool)
        else:
            per_role = max(1, shape.n_head_scores // len(roles))
            heads = np.sort(rng.choice(all_heads, (n, min(per_role, len(all_heads))), replace=True), axis=1)
            # drop repeated heads within a feature (the primary key is feature, role, head)
            keep2d = np.ones_like(heads, dtype=bool)
            keep2d[:, 1:] = heads[:, 1:] != heads[:, :-1]
            keep = keep2d.reshape(-1)
        f_rep = np.repeat(fids, heads.shape[1])[keep]
        h_rep = heads.reshape(-1)[keep]
        f_all.append(f_rep)
        h_all.append(h_rep)
        r_all.append(np.full(len(f_rep), role))
        s_all.append(rng.gamma(2.0, 1.0, len(f_rep)))
        p_all.append(rng.uniform(75, 100, len(f_rep)))
    f, h, r, s, p = (np.concatenate(a) for a in (f_all, h_all, r_all, s_all, p_all))
    order = np.lexsort((h, r, f))  # primary-key order: feature, role, head
    return f[order], h[order], r[order], s[order], p[order]


def _write_chunk(
    atlas: Atlas, rng: np.random.Generator, sae_id: int, layer: int, base: int, lo: int, hi: int, shape: _Shape
) -> None:
    n = hi - lo
    idx = np.arange(lo, hi)
    fids = base + idx
    d_vocab = shape.d_vocab
    with atlas.transaction():
        z = rng.gamma(2.0, 2.0, n)
        q, kk, v = rng.gamma(2.0, 0.5, (3, n)) * (1 + layer / shape.n_layers)
        atlas.update_features(
            sae_id,
            idx,
            {
                "dec_norm": rng.uniform(0.8, 1.2, n),
                "enc_norm": rng.uniform(0.5, 2.0, n),
                "du_max": rng.gamma(3.0, 1.0, n),
                "du_min": -rng.gamma(3.0, 1.0, n),
                "du_mean": rng.normal(0, 0.01, n),
                "du_std": rng.uniform(0.2, 0.6, n),
                "du_skew": rng.normal(0.3, 0.5, n),
                "du_kurtosis": rng.gamma(2.0, 2.0, n),
                "du_entropy": rng.uniform(4, np.log(d_vocab), n),
                "du_top1_z": z,
                "ee_max": rng.gamma(3.0, 1.0, n),
                "ee_min": -rng.gamma(3.0, 1.0, n),
                "ee_mean": rng.normal(0, 0.01, n),
                "ee_std": rng.uniform(0.2, 0.6, n),
                "ee_skew": rng.normal(0.3, 0.5, n),
                "ee_kurtosis": rng.gamma(2.0, 2.0, n),
                "ee_entropy": rng.uniform(4, np.log(d_vocab), n),
                "ee_top1_z": rng.gamma(2.0, 2.0, n),
                "predicts_tokens": (z > 6).astype(int),
                "reads_tokens": (rng.random(n) < 0.2).astype(int),
                "attn_q_mean": q,
                "attn_k_mean": kk,
                "attn_v_mean": v,
                "attn_q_max": q * 2,
                "attn_k_max": kk * 2,
                "attn_v_max": v * 2,
            },
        )
        blocks = {}
        for phase in ("du", "ee"):
            for sign in (1, -1):
                toks = _draw_tokens(rng, n, shape)
                vals = np.sort(rng.gamma(2.0, 1.0, (n, shape.k)), axis=1)[:, ::-1] * sign  # (n, k) best first
                blocks[(phase, sign)] = (toks, vals)
        atlas.add_token_score_block(fids, blocks)
        f_h, h_h, r_h, s_h, p_h = _draw_heads(rng, fids, shape)
        atlas.add_head_scores(f_h, h_h, r_h, s_h, p_h)
        kinds = tuple(k for k in EDGE_KINDS if k not in VIRTUAL_EDGE_KINDS)  # the kinds of schema 1-3: same draws
        per_kind = max(1, shape.n_edges // len(kinds))
        head_pk = shape.head_pk
        for kind in kinds:
            dst = rng.integers(0, shape.n_total, (n, per_kind))
            scores = np.sort(rng.gamma(2.0, 1.0, (n, per_kind)), axis=1)[:, ::-1]
            ranks = np.tile(np.arange(per_kind), n)
            hp = None
            if kind in ("qk", "ov"):
                hp = rng.choice(head_pk[min(layer + 1, head_pk.shape[0] - 1)], n * per_kind)
            atlas.add_edges(kind, np.repeat(fids, per_kind), dst.reshape(-1), scores.reshape(-1), ranks, hp)
        if shape.label_every:
            lab = idx[idx % shape.label_every == 0]
            atlas.add_labels(
                (
                    int(base + i),
                    f"synthetic feature {i} " + ("words" if i % 2 == 0 else "punctuation"),
                    "semantic" if i % 2 == 0 else "non_semantic",
                    "heuristic",
                    float(rng.random()),
                    {"tokens": ["a", "b"]},
                )
                for i in lab
            )


def _write_virtual(
    atlas: Atlas,
    rng: np.random.Generator,
    sae_ids: list[int],
    bases: list[int],
    per_sae: int,
    n: int,
    span: int,
    chunk: int,
    progress: bool,
) -> None:
    """``virtual`` edges out of each feature of SAE i into SAE j > i, ``virtual_in`` edges into each
    feature of SAE j from SAE i < j: ranks 0..n-1 by |score|, percentiles falling with rank."""
    n = min(n, per_sae)
    for i in range(len(sae_ids)):
        for j in range(i + 1, min(len(sae_ids), i + 1 + span)):
            for kind, own, other in (("virtual", i, j), ("virtual_in", j, i)):
                for start in range(0, per_sae, chunk):
                    m = min(per_sae, start + chunk) - start
                    fids = bases[own] + start + np.arange(m)  # (m,)
                    others = bases[other] + rng.integers(0, per_sae, (m, n))  # (m, n)
                    mags = np.sort(rng.gamma(2.0, 0.05, (m, n)), axis=1)[:, ::-1]  # (m, n) best first
                    scores = mags * rng.choice((-1.0, 1.0), (m, n), p=(0.2, 0.8))  # (m, n)
                    pct = np.sort(rng.uniform(80.0, 100.0, (m, n)), axis=1)[:, ::-1]  # (m, n)
                    mine = np.repeat(fids, n)
                    src, dst = (mine, others.reshape(-1)) if kind == "virtual" else (others.reshape(-1), mine)
                    with atlas.transaction():
                        atlas.add_edges(
                            kind,
                            src,
                            dst,
                            scores.reshape(-1),
                            np.tile(np.arange(n), m),
                            percentiles=np.round(pct.reshape(-1), 3),
                        )
            with atlas.transaction():
                atlas.add_virtual_baseline(
                    sae_ids[i],
                    sae_ids[j],
                    n_samples=4096,
                    mean=0.02,
                    std=0.01,
                    p50=0.02,
                    p90=0.035,
                    p99=0.05,
                    p999=0.065,
                    max=0.08,
                    n_pairs=per_sae * per_sae,
                    frac_above_p99=float(rng.uniform(0.01, 0.1)),
                    frac_above_p999=float(rng.uniform(0.001, 0.02)),
                )
            if progress:
                print(f"  virtual edges SAE {sae_ids[i]} -> {sae_ids[j]}: {2 * per_sae * n:,}", flush=True)
