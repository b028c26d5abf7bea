"""Synthetic atlases in a realistic shape, for tests, the TUI and benchmarks.

No weights are involved: values are drawn from a seeded RNG, so the same
arguments always give the same rows. The shape matches a real build: every
feature has ``k`` token scores per phase and sign, ``n_head_scores`` head
scores and ``n_edges`` edges, and ``label_every``-th features get a heuristic
label.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atlas.db import Atlas, create_atlas

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
) -> Path:
    """Write a synthetic atlas with ``n_features`` split evenly over one SAE per layer."""
    rng = np.random.default_rng(seed)
    atlas = create_atlas(path, overwrite=overwrite, provenance={"synthetic": {"seed": seed}})
    atlas.conn.execute("PRAGMA synchronous = OFF")
    with atlas:
        with atlas.transaction():
            model_id = atlas.add_model(
                name="synthetic", source="synthetic", source_kind="synthetic", architecture="Synthetic",
                n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                d_head=d_model // n_heads, d_vocab=d_vocab, tied_embeddings=True, norm_kind="rmsnorm",
            )  # fmt: skip
            atlas.add_vocab(model_id, synthetic_vocab(d_vocab, seed))
            atlas.add_heads(model_id, n_layers, n_heads, n_kv_heads)
        head_pk = atlas.head_pks(model_id)
        per_sae = n_features // len(layers)
        sae_ids = [
            atlas.add_sae(
                model_id=model_id, hook_name=f"blocks.{layer}.hook_resid_post", site="resid_post", layer=layer,
                d_in=d_model, d_sae=per_sae, architecture="topk", k=32, source="synthetic",
                source_format="synthetic",
            )  # fmt: skip
            for layer in layers
        ]
        n_total = per_sae * len(sae_ids)
        all_heads = head_pk.reshape(-1)
        for sae_id, layer in zip(sae_ids, layers):
            base = atlas.feature_id_base(sae_id)
            for start in range(0, per_sae, chunk):
                _write_chunk(
                    atlas, rng, sae_id, layer, base, start, min(per_sae, start + chunk), n_total,
                    d_vocab, k, head_pk, all_heads, n_head_scores, n_edges, label_every, n_layers,
                )  # fmt: skip
                if progress:
                    print(f"  L{layer}: {min(per_sae, start + chunk):,}/{per_sae:,} features", flush=True)
        atlas.conn.execute("ANALYZE")
    return Path(path)


def _write_chunk(
    atlas: Atlas, rng, sae_id, layer, base, lo, hi, n_total, d_vocab, k, head_pk, all_heads,
    n_head_scores, n_edges, label_every, n_layers,
) -> None:  # fmt: skip
    n = hi - lo
    idx = np.arange(lo, hi)
    fids = base + idx
    with atlas.transaction():
        z = rng.gamma(2.0, 2.0, n)
        q, kk, v = rng.gamma(2.0, 0.5, (3, n)) * (1 + layer / n_layers)
        atlas.update_features(
            sae_id,
            idx,
            {
                "dec_norm": rng.uniform(0.8, 1.2, n), "enc_norm": rng.uniform(0.5, 2.0, n),
                "du_max": rng.gamma(3.0, 1.0, n), "du_min": -rng.gamma(3.0, 1.0, n),
                "du_mean": rng.normal(0, 0.01, n), "du_std": rng.uniform(0.2, 0.6, n),
                "du_skew": rng.normal(0.3, 0.5, n), "du_kurtosis": rng.gamma(2.0, 2.0, n),
                "du_entropy": rng.uniform(4, np.log(d_vocab), n), "du_top1_z": z,
                "ee_max": rng.gamma(3.0, 1.0, n), "ee_min": -rng.gamma(3.0, 1.0, n),
                "ee_mean": rng.normal(0, 0.01, n), "ee_std": rng.uniform(0.2, 0.6, n),
                "ee_skew": rng.normal(0.3, 0.5, n), "ee_kurtosis": rng.gamma(2.0, 2.0, n),
                "ee_entropy": rng.uniform(4, np.log(d_vocab), n), "ee_top1_z": rng.gamma(2.0, 2.0, n),
                "predicts_tokens": (z > 6).astype(int), "reads_tokens": (rng.random(n) < 0.2).astype(int),
                "attn_q_mean": q, "attn_k_mean": kk, "attn_v_mean": v,
                "attn_q_max": q * 2, "attn_k_max": kk * 2, "attn_v_max": v * 2,
            },
        )  # fmt: skip
        for phase in ("du", "ee"):
            for sign in (1, -1):
                toks = np.argsort(rng.random((n, d_vocab)), axis=1)[:, :k] if d_vocab <= 4096 else (
                    rng.integers(0, d_vocab, (n, k))
                )
                vals = np.sort(rng.gamma(2.0, 1.0, (n, k)), axis=1)[:, ::-1] * sign
                atlas.add_token_scores(fids, phase, sign, toks, vals)
        roles = ("q", "k", "v")
        per_role = max(1, n_head_scores // len(roles))
        for role in roles:
            heads = rng.choice(all_heads, (n, min(per_role, len(all_heads))), replace=True)
            heads = np.sort(heads, axis=1)
            # unique heads per feature: drop duplicates by masking
            keep = np.ones_like(heads, dtype=bool)
            keep[:, 1:] = heads[:, 1:] != heads[:, :-1]
            f_rep = np.repeat(fids, heads.shape[1])[keep.reshape(-1)]
            h_rep = heads.reshape(-1)[keep.reshape(-1)]
            atlas.add_head_scores(f_rep, h_rep, role, rng.gamma(2.0, 1.0, len(f_rep)), rng.uniform(75, 100, len(f_rep)))
        kinds = ("qk", "ov", "cosine", "flow")
        per_kind = max(1, n_edges // len(kinds))
        for kind in kinds:
            dst = rng.integers(0, n_total, (n, per_kind))
            scores = np.sort(rng.gamma(2.0, 1.0, (n, per_kind)), axis=1)[:, ::-1]
            ranks = np.tile(np.arange(per_kind), n)
            hp = None
            if kind in ("qk", "ov"):
                hp = rng.choice(head_pk[min(layer + 1, head_pk.shape[0] - 1)], n * per_kind)
            atlas.add_edges(kind, np.repeat(fids, per_kind), dst.reshape(-1), scores.reshape(-1), ranks, hp)
        if label_every:
            lab = idx[idx % label_every == 0]
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
