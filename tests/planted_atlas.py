"""Atlases with planted statistics, written through the atlas write API.

Used by tests/test_stats.py and tests/test_report.py: every number the report
computes is planted here, so the tests can check it is recovered exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atlas import create_atlas


@dataclass
class Plant:
    """What was planted, per SAE in layer order."""

    layers: list[int]
    d_sae: int
    predicts: list[np.ndarray] = field(default_factory=list)  # (d_sae,) 0/1 per SAE
    reads: list[np.ndarray] = field(default_factory=list)
    q: list[np.ndarray] = field(default_factory=list)  # (d_sae,) attn_q_mean per SAE
    k: list[np.ndarray] = field(default_factory=list)
    v: list[np.ndarray] = field(default_factory=list)
    semantic: list[np.ndarray] = field(default_factory=list)  # (d_sae,) bool: labelled semantic
    labelled: list[np.ndarray] = field(default_factory=list)  # (d_sae,) bool: has a heuristic label
    shared: list[np.ndarray] = field(default_factory=list)  # (d_sae,) tokens shared by du+ and ee+ lists
    frac_above: dict[tuple[int, str], float] = field(default_factory=dict)  # (layer, role) -> planted value
    k_top: int = 8
    d_vocab: int = 500


PREDICTS_FRACTIONS = (0.10, 0.20, 0.30, 0.25, 0.40, 0.05, 0.15, 0.35)
READS_FRACTIONS = (0.50, 0.10, 0.20, 0.30, 0.05, 0.45, 0.25, 0.15)
SEMANTIC_SHIFT_LAYERS = (4, 5, 6, 7)  # semantic features score higher on q and k only at these layers


def build_planted_atlas(
    path: Path,
    *,
    n_layers: int = 8,
    d_sae: int = 400,
    seed: int = 0,
    passes: tuple[str, ...] = ("du", "ee", "tokens", "attention", "labels", "depth"),
    swap_qk: bool = False,
) -> Plant:
    """One resid_post SAE per layer, with planted fractions, depth profiles and a semantic shift.

    - predicts_tokens: exactly PREDICTS_FRACTIONS[layer] of each SAE; reads_tokens: READS_FRACTIONS.
    - attention: q flat (mean 1), k rising with depth (1 + 0.5 * layer), v an inverted U. With
      ``swap_qk`` the q and k columns are exchanged.
    - labels: every other feature is labelled, half of those semantic; semantic features score x1.6
      and the others x0.8 on q and k at SEMANTIC_SHIFT_LAYERS (layer means unchanged), no shift elsewhere. An older, contrary heuristic label is
      written first for some features so that "latest label wins" is tested too.
    - token lists: feature i shares exactly (i % 4) tokens between its du+ and ee+ top-8 lists.
    """
    rng = np.random.default_rng(seed)
    plant = Plant(layers=list(range(n_layers)), d_sae=d_sae)
    atlas = create_atlas(path, overwrite=True, provenance={"planted": True})
    with atlas:
        with atlas.transaction():
            model_id = atlas.add_model(
                name="planted", source="planted", source_kind="synthetic", architecture="Planted",
                n_layers=n_layers, d_model=32, n_heads=4, n_kv_heads=4, d_head=8, d_vocab=plant.d_vocab,
                tied_embeddings=True, norm_kind="rmsnorm",
            )  # fmt: skip
            atlas.add_heads(model_id, n_layers, 4, 4)
        # Insert SAEs in a scrambled order: the report must sort them by depth itself.
        order = list(rng.permutation(n_layers))
        sae_ids = {}
        for layer in order:
            sae_ids[layer] = atlas.add_sae(
                model_id=model_id, hook_name=f"blocks.{layer}.hook_resid_post", site="resid_post",
                layer=int(layer), d_in=32, d_sae=d_sae, architecture="relu", source="planted",
            )  # fmt: skip
        idx = np.arange(d_sae)
        with atlas.transaction():
            for layer in range(n_layers):
                sid = sae_ids[layer]
                base = atlas.feature_id_base(sid)
                cols: dict[str, np.ndarray] = {}
                pred = _exact_fraction(rng, d_sae, PREDICTS_FRACTIONS[layer % len(PREDICTS_FRACTIONS)])
                reads = _exact_fraction(rng, d_sae, READS_FRACTIONS[layer % len(READS_FRACTIONS)])
                plant.predicts.append(pred)
                plant.reads.append(reads)
                if "du" in passes:
                    cols["predicts_tokens"] = pred
                if "ee" in passes:
                    cols["reads_tokens"] = reads
                semantic = idx % 4 == 0
                labelled = idx % 2 == 0
                # Semantic features x1.6, the rest x0.8: a quarter are semantic, so layer means stay put.
                shift = np.where(semantic, 1.6, 0.8) if layer in SEMANTIC_SHIFT_LAYERS else 1.0
                q = rng.gamma(4.0, 0.25, d_sae) * shift  # mean 1: flat over depth
                k = rng.gamma(4.0, 0.25, d_sae) * (1 + 0.5 * layer) * shift
                x = layer / max(1, n_layers - 1)
                v = rng.gamma(4.0, 0.25, d_sae) * (1 + 2.0 * x * (1 - x) * 4)  # peaks mid-depth
                if swap_qk:
                    q, k = k, q
                plant.q.append(q)
                plant.k.append(k)
                plant.v.append(v)
                plant.semantic.append(semantic)
                plant.labelled.append(labelled)
                if "attention" in passes:
                    cols.update(attn_q_mean=q, attn_k_mean=k, attn_v_mean=v)
                atlas.update_features(sid, idx, cols)
                if "tokens" in passes:
                    plant.shared.append(_write_token_lists(atlas, rng, base + idx, plant.k_top, plant.d_vocab))
                if "labels" in passes:
                    older = [(base + i, "old", "non_semantic" if semantic[i] else "semantic", "heuristic", 0.1, None)
                             for i in idx[labelled][::3]]  # fmt: skip
                    atlas.add_labels(older)
                    latest = [(base + i, "w", "semantic" if semantic[i] else "non_semantic", "heuristic", 0.9, None)
                              for i in idx[labelled]]  # fmt: skip
                    atlas.add_labels(latest)
                    # A user label of the opposite kind must not count: only source='heuristic' does.
                    atlas.add_labels([(base + 1, "user says", "semantic", "user", None, None)])
                if "depth" in passes:
                    for j, role in enumerate(("q", "k", "v")):
                        frac = round(0.1 + 0.01 * layer + 0.3 * j, 4)
                        plant.frac_above[(layer, role)] = frac
                        scores = (q, k, v)[j]
                        # Rows for the layer the SAE's site is read by (layer + 1) and one further (reach 2).
                        for reach, attn_layer in enumerate((layer + 1, layer + 2)):
                            atlas.add_depth_profile(
                                sid, attn_layer, role, n=d_sae * 4, mean=float(scores.mean()),
                                median=float(np.median(scores)), p75=float(np.percentile(scores, 75)),
                                frac_above=frac if reach == 0 else 0.99,
                            )  # fmt: skip
    return plant


def _exact_fraction(rng: np.random.Generator, n: int, frac: float) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    out[rng.choice(n, int(round(frac * n)), replace=False)] = 1
    return out


def _write_token_lists(atlas, rng, fids: np.ndarray, k: int, d_vocab: int) -> np.ndarray:
    """du+ and ee+ top-k lists sharing exactly (i % 4) tokens for feature i; other lists are unrelated."""
    n = len(fids)
    shared = np.arange(n) % 4
    du = np.empty((n, k), dtype=np.int64)
    ee = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        toks = rng.choice(d_vocab, 2 * k, replace=False)
        du[i] = toks[:k]
        ee[i] = np.concatenate([toks[: shared[i]], toks[k : 2 * k - shared[i]]])
        rng.shuffle(ee[i])
    vals = np.sort(rng.gamma(2.0, 1.0, (n, k)), axis=1)[:, ::-1]
    atlas.add_token_scores(fids, "du", 1, du, vals)
    atlas.add_token_scores(fids, "ee", 1, ee, vals)
    # Suppressed lists swap the promoted ones: mixing up signs, or ignoring sign, shows as extra overlap.
    atlas.add_token_scores(fids, "du", -1, ee, -vals)
    atlas.add_token_scores(fids, "ee", -1, du, -vals)
    return shared
