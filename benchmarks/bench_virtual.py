"""Speed and memory of the virtual-weight passes against a bare matmul of the same shapes, in one run.

    python benchmarks/bench_virtual.py                          # d_model 2304, two 16,384-wide transcoders, CPU
    python benchmarks/bench_virtual.py --features 16384         # every source feature (slow on a small CPU)
    python benchmarks/bench_virtual.py --device cuda --features 16384

Two random transcoders of one model (layers 0 and 1, d_model 2304 as Gemma-2-2B), the second reading
layer 1's MLP input through its norm's gain. ``virtual`` scores ``--features`` source features against
all 16,384 destination features (top-k kept, percentiles from the pair's baseline); the bare matmul
is ``(block_rows, d_model) @ (d_model, key_block)`` into a reused buffer for the same row and column
blocks: the same FLOPs without the streamed top-k, the folded columns or the percentiles.
``virtual_in`` is timed the same way over ``--features`` destination features. Peak RSS (VmHWM) is reported
above the RSS once the weights exist (the passes' own memory: bounded by ``memory_mb`` whatever
d_sae); the baseline (step ``virtual_baseline``, once per pair) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_passes import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402

from builders.build import BuildConfig, release_freed_blocks  # noqa: E402
from builders.passes.common import chunks  # noqa: E402
from builders.passes.virtual import dest_columns, dest_rows, source_rows, virtual_baseline, virtual_pass  # noqa: E402
from builders.passes.virtual_in import source_columns, source_norms, virtual_in_pass  # noqa: E402
from builders.weights import LayerWeights, ModelWeights, Norm, SAEWeights  # noqa: E402


def random_model(d: int, device: torch.device, seed: int = 0) -> ModelWeights:
    """Two layers of width d; only the norms matter to the virtual pass (tiny heads and vocabulary)."""
    g = torch.Generator().manual_seed(seed)

    def norm() -> Norm:
        return Norm("rmsnorm", (0.5 + torch.rand(d, generator=g)).to(device), None, 1e-6)

    def rn(*shape):
        return (torch.randn(*shape, generator=g) / shape[-2] ** 0.5).to(device)

    layers = [
        LayerWeights(ln1=norm(), W_Q=rn(1, d, 8), W_K=rn(1, d, 8), W_V=rn(1, d, 8), W_O=rn(1, 8, d), ln2=norm())
        for _ in range(2)
    ]
    return ModelWeights(
        source="random", source_kind="synthetic", architecture="Bench", n_layers=2, d_model=d, n_heads=1,
        n_kv_heads=1, d_head=8, d_vocab=16, W_E=rn(16, d), W_U=rn(d, 16), ln_final=norm(), layers=layers,
        tokens=[str(i) for i in range(16)], norm_kind="rmsnorm",
    )  # fmt: skip


def transcoder(d: int, d_sae: int, layer: int, device: torch.device, seed: int) -> SAEWeights:
    g = torch.Generator().manual_seed(seed)
    return SAEWeights(
        W_enc=(torch.randn(d, d_sae, generator=g) / d**0.5).to(device),
        W_dec=(torch.randn(d_sae, d, generator=g) / d**0.5).to(device),
        b_enc=torch.zeros(d_sae, device=device), b_dec=torch.zeros(d, device=device), architecture="relu",
        hook_name=f"blocks.{layer}.mlp.hook_in", site="mlp_in", layer=layer, source=f"random/{layer}",
        source_format="saelens", kind="transcoder", out_hook_name=f"blocks.{layer}.hook_mlp_out",
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_matmul(left: torch.Tensor, right: torch.Tensor, block_rows: int, key_block: int) -> None:
    """left (n, d) @ right (d, m) in the pass's row and column blocks, into one reused buffer."""
    buf = torch.empty(block_rows * key_block, device=left.device)
    for c0, c1 in chunks(0, right.shape[1], key_block):
        rb = right[:, c0:c1].contiguous()
        for r0, r1 in chunks(0, left.shape[0], block_rows):
            torch.matmul(left[r0:r1], rb, out=buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--features", type=int, default=2048, help="source (and destination) features scored")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each timing")
    args = ap.parse_args()
    device = torch.device(args.device)
    release_freed_blocks()
    torch.manual_seed(0)
    rss0 = rss_mb()
    m = random_model(args.d_model, device)
    src = transcoder(args.d_model, args.d_sae, 0, device, 1)
    dst = transcoder(args.d_model, args.d_sae, 1, device, 2)
    rss_weights = rss_mb()
    cfg = BuildConfig(memory_mb=args.memory_mb)
    block_rows, _ = cfg.blocks(device)
    key_block = cfg.key_columns(args.d_model, block_rows)
    n = min(args.features, args.d_sae)
    read = 8 * 1 + 5  # mlp_in of layer 1
    out: dict = dict(
        device=str(device), d_model=args.d_model, d_sae=args.d_sae, features=n, block_rows=block_rows,
        key_block=key_block, threads=torch.get_num_threads(), rss_weights_mb=round(rss_weights - rss0),
    )  # fmt: skip
    reset_peak_rss()
    t = time.perf_counter()
    base = virtual_baseline(m, src, dst, n_random=cfg.n_random, max_samples=cfg.virtual_baseline_samples,
                            n_real=cfg.virtual_sample, block=min(4096, key_block))  # fmt: skip
    sync(device)
    out["baseline_s"] = round(time.perf_counter() - t, 2)

    def once(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    def best_pair(fn, bare) -> tuple[float, float]:
        """Best of ``repeats`` for each, the pass and its bare matmul alternating (a shared machine's load
        then falls on both alike)."""
        times = [(once(fn), once(bare)) for _ in range(args.repeats)]
        return min(t for t, _ in times), min(b for _, b in times)

    # virtual: n source features against every destination feature
    cache = 4 * args.d_model * args.d_sae <= cfg.cache_bytes()
    cols = dest_columns(m, dst, fold_norms=True, block=key_block, cache=cache)
    out["dest_columns_cached"] = cache
    virtual_pass(m, src, dst, 0, n, cols, base, k=cfg.virtual_k, block_rows=block_rows)  # warm-up, and its memory
    peak = peak_rss_mb()  # the baseline and the pass (not the bare matmul's operands below)
    left = source_rows(m, src, 0, n, read, fold_norms=True)  # (n, d_model)
    right = dest_rows(m, dst, 0, args.d_sae, fold_norms=True).T.contiguous()  # (d_model, d_sae)
    t_pass, t_bare = best_pair(
        lambda: virtual_pass(m, src, dst, 0, n, cols, base, k=cfg.virtual_k, block_rows=block_rows),
        lambda: bare_matmul(left, right, block_rows, key_block),
    )
    del left, right
    out |= {
        "virtual_s": round(t_pass, 3),
        "bare_matmul_s": round(t_bare, 3),
        "virtual_ratio": round(t_pass / t_bare, 3),
    }
    cols = None  # freed before virtual_in (the lambda above is done with it)
    release_freed_blocks()
    reset_peak_rss()
    # virtual_in: n destination features against every source feature
    scols = source_columns(m, src, read, fold_norms=True, block=key_block, cache=cache)
    norms = source_norms(m, src, read, fold_norms=True)
    virtual_in_pass(m, src, dst, 0, n, scols, base, norms, k=cfg.virtual_in_k, block_rows=block_rows)
    peak = max(peak, peak_rss_mb())
    left = dest_rows(m, dst, 0, n, fold_norms=True)
    right = source_rows(m, src, 0, args.d_sae, read, fold_norms=True).T.contiguous()
    t_in, t_bare_in = best_pair(
        lambda: virtual_in_pass(m, src, dst, 0, n, scols, base, norms, k=cfg.virtual_in_k, block_rows=block_rows),
        lambda: bare_matmul(left, right, block_rows, key_block),
    )
    out |= {"virtual_in_s": round(t_in, 3), "bare_matmul_in_s": round(t_bare_in, 3),
            "virtual_in_ratio": round(t_in / t_bare_in, 3)}  # fmt: skip
    out["peak_rss_above_weights_mb"] = round(peak - rss_weights)
    out["features_per_s"] = round(n / t_pass)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
