"""A small atlas with planted virtual edges, whose traces are known exactly (tests/test_trace.py, the TUI test).

Three dictionaries, L1.res, L3.res and L5.res, 8 features each. Feature L{l}.res/i promotes the tokens
``p{l}_{i}a``, ``p{l}_{i}b``, ``p{l}_{i}c`` (du +, in that order) and is driven by ``e{l}_{i}a``, ``e{l}_{i}b``
(ee +). The virtual edges (writer -> reader, score, percentile, rank in its dictionary pair):

    L1/0 -> L5/4   +0.8  99.9  0      L1/0 -> L3/2   +0.9  99.5  0      L1/0 -> L3/5  -0.7  99.0  1
    L1/0 -> L3/1   +0.3  60.0  2      L1/0 -> L5/6   +0.2  40.0  1
    L3/2 -> L5/4   +0.6  98.0  0      L3/2 -> L5/7   +0.5  97.0  1      L3/5 -> L5/3  +0.4  95.0  0
    L3/1 -> L5/0   +0.1  30.0  0

``virtual_in`` holds the same pairs ranked by reader (rank among the reader's edges from one writer
dictionary). L1/7 has no edges at all.
"""

from __future__ import annotations

from pathlib import Path

from atlas import create_atlas

LAYERS = (1, 3, 5)
D_SAE = 8

# (src, dst, score, percentile, rank within src's edges into dst's dictionary)
VIRTUAL = [
    ("L1.res/0", "L5.res/4", 0.8, 99.9, 0),
    ("L1.res/0", "L3.res/2", 0.9, 99.5, 0),
    ("L1.res/0", "L3.res/5", -0.7, 99.0, 1),
    ("L1.res/0", "L3.res/1", 0.3, 60.0, 2),
    ("L1.res/0", "L5.res/6", 0.2, 40.0, 1),
    ("L3.res/2", "L5.res/4", 0.6, 98.0, 0),
    ("L3.res/2", "L5.res/7", 0.5, 97.0, 1),
    ("L3.res/5", "L5.res/3", 0.4, 95.0, 0),
    ("L3.res/1", "L5.res/0", 0.1, 30.0, 0),
]


def virtual_in_ranks() -> list[tuple[str, str, float, float, int]]:
    """The same edges ranked within each reader's edges from one writer dictionary, by |score|."""
    groups: dict[tuple[str, str], list] = {}
    for src, dst, score, pct, _ in VIRTUAL:
        groups.setdefault((dst, src.split("/")[0]), []).append((src, dst, score, pct))
    out = []
    for rows in groups.values():
        rows.sort(key=lambda r: -abs(r[2]))
        out += [(*r, rank) for rank, r in enumerate(rows)]
    return out


def promoted(name: str) -> list[str]:
    sae, i = name.split("/")
    layer = sae[1:].split(".")[0]
    return [f"p{layer}_{i}{c}" for c in "abc"]


def driven_by(name: str) -> list[str]:
    sae, i = name.split("/")
    layer = sae[1:].split(".")[0]
    return [f"e{layer}_{i}{c}" for c in "ab"]


def build_trace_atlas(path: Path) -> Path:
    names = [f"L{layer}.res/{i}" for layer in LAYERS for i in range(D_SAE)]
    vocab = [t for n in names for t in promoted(n) + driven_by(n)]
    token_id = {t: i for i, t in enumerate(vocab)}
    atlas = create_atlas(path, overwrite=True)
    with atlas:
        with atlas.transaction():
            model_id = atlas.add_model(
                name="planted", source="planted", source_kind="synthetic", architecture="Synthetic", n_layers=6,
                d_model=16, n_heads=2, n_kv_heads=2, d_head=8, d_vocab=len(vocab), tied_embeddings=True,
                norm_kind="rmsnorm",
            )  # fmt: skip
            atlas.add_vocab(model_id, vocab)
        sae_ids = {}
        for layer in LAYERS:
            sae_ids[layer] = atlas.add_sae(
                model_id=model_id, hook_name=f"blocks.{layer}.hook_resid_post", site="resid_post", layer=layer,
                d_in=16, d_sae=D_SAE, architecture="relu", source="planted",
            )  # fmt: skip
        fid = {
            n: int(r[0])
            for n in names
            for r in [
                atlas.conn.execute(
                    "SELECT feature_id FROM features f JOIN saes s USING (sae_id) WHERE s.name = ? AND f.idx = ?",
                    (n.split("/")[0], int(n.split("/")[1])),
                ).fetchone()
            ]
        }
        with atlas.transaction():
            for n in names:
                for phase, toks in (("du", promoted(n)), ("ee", driven_by(n))):
                    atlas.conn.executemany(
                        "INSERT INTO token_scores (feature_id, phase, sign, rank, token_id, value) "
                        "VALUES (?, ?, 1, ?, ?, ?)",
                        [(fid[n], phase, r, token_id[t], 3.0 - r) for r, t in enumerate(toks)],
                    )
            for kind, rows in (("virtual", VIRTUAL), ("virtual_in", virtual_in_ranks())):
                src, dst, score, pct, rank = zip(*rows, strict=True)
                atlas.add_edges(kind, [fid[s] for s in src], [fid[d] for d in dst], score, rank, percentiles=pct)
            for a, b in ((1, 3), (1, 5), (3, 5)):
                atlas.add_virtual_baseline(
                    sae_ids[a], sae_ids[b], n_samples=1000, mean=0.1, std=0.05, p50=0.1, p90=0.2, p99=0.3,
                    p999=0.4, max=0.5, n_pairs=64, frac_above_p99=0.05, frac_above_p999=0.01,
                )  # fmt: skip
    return Path(path)
