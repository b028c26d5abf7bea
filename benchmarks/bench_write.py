"""Rows per second of the atlas write API on its own, as a build uses it.

A build writes each unit of work (``--unit-size`` features, 4096 by default)
in one transaction together with its ``build_units`` row, into a partial file
with its journal on, no secondary index and no per-row foreign-key lookup
(the indexes are made once at the end; see builders/run.py). This replays
that: random top-k token lists (2 phases x 2 signs x top_k rows per feature),
edges and head scores, unit by unit, then times the final CREATE INDEX.

In the same run it writes the same token rows the way the write API did
before (``executemany`` over one tuple per row, secondary index and foreign
keys on), so the speed-up is a ratio measured on one machine at one moment.

    python benchmarks/bench_write.py                      # 24,576 features (~2M token rows)
    python benchmarks/bench_write.py --features 4096      # quick

Figures go to stdout and benchmarks/out/write.json. Goal: >= 1,000,000 token rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atlas import create_atlas  # noqa: E402
from atlas.db import Atlas  # noqa: E402

VOCAB = 50257


def new_partial(path: Path, n_features: int, *, indexes: bool) -> tuple[Atlas, int, int]:
    """A fresh atlas with one model and one SAE of ``n_features``, set up as builders.run sets up a partial."""
    if path.exists():
        path.unlink()
    db = create_atlas(path)
    with db.transaction():
        mid = db.add_model(
            name="m", source="m", source_kind="synthetic", architecture="x", n_layers=1, d_model=8, n_heads=4,
            n_kv_heads=4, d_head=2, d_vocab=VOCAB, tied_embeddings=True, norm_kind="layernorm",
        )  # fmt: skip
        db.add_heads(mid, 1, 4, 4)
    sae_id = db.add_sae(
        model_id=mid,
        hook_name="h",
        site="resid_post",
        layer=0,
        d_in=8,
        d_sae=n_features,
        architecture="relu",
        source="x",
    )
    if not indexes:
        db.drop_bulk_indexes()
        db.conn.execute("PRAGMA foreign_keys = OFF")
    return db, sae_id, db.feature_id_base(sae_id)


def token_blocks(rng: np.random.Generator, n: int, k: int) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    return {
        (phase, sign): (rng.integers(0, VOCAB, (n, k)), rng.standard_normal((n, k)))
        for phase in ("du", "ee")
        for sign in (1, -1)
    }


def rows_per_tuple(db: Atlas, fids: np.ndarray, blocks: dict) -> None:
    """The write API before multi-row statements: executemany over one 6-tuple per row."""
    keys = sorted(blocks)
    n = len(fids)
    toks = np.stack([blocks[key][0] for key in keys], 1)  # (n, B, k)
    vals = np.stack([blocks[key][1] for key in keys], 1)  # (n, B, k)
    _, n_blocks, k = toks.shape
    phase = np.array([p for p, _ in keys], dtype=object)
    sign = np.array([s for _, s in keys], dtype=np.int64)
    db.conn.executemany(
        "INSERT INTO token_scores (feature_id, phase, sign, rank, token_id, value) VALUES (?, ?, ?, ?, ?, ?)",
        zip(
            np.repeat(fids, n_blocks * k).tolist(),
            np.tile(np.repeat(phase, k), n).tolist(),
            np.tile(np.repeat(sign, k), n).tolist(),
            np.tile(np.arange(k), n * n_blocks).tolist(),
            toks.reshape(-1).tolist(),
            vals.reshape(-1).tolist(),
            strict=True,
        ),
    )


def run_units(db: Atlas, sae_id: int, base: int, data: list, unit: int, write) -> float:
    """Seconds spent writing every unit (its rows and build_units row, one transaction each)."""
    spent = 0.0
    for u, blocks in enumerate(data):
        fids = base + np.arange(u * unit, (u + 1) * unit)
        t0 = time.perf_counter()
        with db.transaction():
            write(db, fids, blocks)
            db.mark_unit_done(sae_id, "du", u * unit, (u + 1) * unit)
        spent += time.perf_counter() - t0
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=24576)
    ap.add_argument("--unit-size", type=int, default=4096)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--dir", default=None, help="folder for the scratch atlases (default: a temporary one)")
    args = ap.parse_args()
    unit, k = args.unit_size, args.top_k
    n_units = max(1, args.features // unit)
    rng = np.random.default_rng(0)
    data = [token_blocks(rng, unit, k) for _ in range(n_units)]
    n_rows = n_units * unit * 4 * k
    res: dict = {"features": n_units * unit, "unit_size": unit, "top_k": k, "token_rows": n_rows}
    res["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "w.db"

        db, sae_id, base = new_partial(path, n_units * unit, indexes=False)
        s = run_units(db, sae_id, base, data, unit, lambda d, f, b: d.add_token_score_block(f, b))
        res["token_rows_per_s"] = n_rows / s
        # edges and head scores: 10 per feature, the shape of the qk/ov/neighbour passes' output
        n_e = n_units * unit * 10
        src = base + np.repeat(np.arange(n_units * unit), 10)
        dst = base + rng.integers(0, n_units * unit, n_e)
        t0 = time.perf_counter()
        with db.transaction():
            db.add_edges("cosine", src, dst, rng.standard_normal(n_e), np.tile(np.arange(10), n_units * unit))
        res["edge_rows_per_s"] = n_e / (time.perf_counter() - t0)
        heads = db.head_pks(1).reshape(-1)
        n_h = n_units * unit * len(heads)
        t0 = time.perf_counter()
        with db.transaction():
            db.add_head_scores(
                np.repeat(base + np.arange(n_units * unit), len(heads)),
                np.tile(heads, n_units * unit),
                "q",
                rng.standard_normal(n_h),
                rng.random(n_h) * 100,
            )
        res["head_score_rows_per_s"] = n_h / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        db.create_indexes()
        res["create_indexes_s"] = time.perf_counter() - t0
        res["token_rows_per_s_with_index_build"] = n_rows / (s + res["create_indexes_s"])
        db.close()

        db, sae_id, base = new_partial(path, n_units * unit, indexes=True)
        s = run_units(db, sae_id, base, data, unit, rows_per_tuple)
        res["before_rows_per_s"] = n_rows / s
        db.close()
    res["speedup"] = res["token_rows_per_s"] / res["before_rows_per_s"]

    print(f"token rows written: {n_rows:,} ({res['features']:,} features x 4 lists x top-k {k}), load {res['load']}")
    print(f"  write API, as a build writes (per-unit transactions): {res['token_rows_per_s']:>12,.0f} rows/s")
    print(f"  ... counting the CREATE INDEX at the end ({res['create_indexes_s']:.2f} s): "
          f"{res['token_rows_per_s_with_index_build']:>12,.0f} rows/s")  # fmt: skip
    print(f"  before (executemany of 6-tuples, index and FK on):  {res['before_rows_per_s']:>12,.0f} rows/s")
    print(f"  speed-up: {res['speedup']:.2f}x   goal >= 1,000,000 rows/s: "
          f"{'met' if res['token_rows_per_s'] >= 1e6 else 'NOT met'}")  # fmt: skip
    print(f"  edges: {res['edge_rows_per_s']:,.0f} rows/s   head_scores: {res['head_score_rows_per_s']:,.0f} rows/s")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "write.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
