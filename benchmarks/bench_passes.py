"""Speed and memory of the weight passes on random weights of a real model's shape.

    python benchmarks/bench_passes.py                       # GPT-2-small shapes, CPU, 2048 features
    python benchmarks/bench_passes.py --features 24576      # the whole d_sae
    python benchmarks/bench_passes.py --device cuda --preset gemma2-2b --features 16384
    python benchmarks/bench_passes.py --d-sae 131072 --features 512   # memory at another width
    python benchmarks/bench_passes.py --cache-mb 0          # stream every QK/OV/cosine "other side"

The ``du`` pass is timed against a bare fp32 matmul of the same shapes in the
same run: ``(block_rows, d_model) @ (d_model, d_vocab)`` for every block of
features into a reused output buffer, i.e. the same FLOPs without statistics
or top-k. Peak RSS is reported above the RSS once the weights exist (the
issue's budget: weights + 1 GB whatever d_sae is). Passes run on
``--features`` features (QK/OV/cosine still score against all d_sae
columns); features/s extrapolates to the full SAE. The QK keys, OV targets
and cosine columns follow the build's rule (``BuildConfig.cache_bytes``):
kept whole iff they fit half of ``--memory-mb``, else streamed block by
block; each is freed after its pass, as in a build. With few ``--features``
a streamed side costs relatively more than in a build, where it is computed
once per unit of 4096 features.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builders.build import BuildConfig, release_freed_blocks  # noqa: E402
from builders.passes import attention, attribution, du, ee, flow, neighbours, ov, qk, semantic  # noqa: E402
from builders.weights import LayerWeights, ModelWeights, Norm, SAEWeights  # noqa: E402

PRESETS = {
    # name: d_model, n_layers, n_heads, n_kv_heads, d_head, d_vocab, d_sae, norm
    "gpt2-small": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_head=64, d_vocab=50257, d_sae=24576,
                       norm="layernorm"),
    "gemma2-2b": dict(d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, d_head=256, d_vocab=256000, d_sae=16384,
                      norm="gemma_rmsnorm"),
}  # fmt: skip


def rss_mb() -> float:
    """Current resident set size (MB), from /proc."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """High-water RSS (MB) since the last reset_peak_rss(): VmHWM, which ru_maxrss cannot forget."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Forget the high-water mark so far (making the random weights peaks at twice their size)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def random_model(p: dict, device: torch.device, seed: int = 0) -> ModelWeights:
    g = torch.Generator(device="cpu").manual_seed(seed)
    d, H, dh, V = p["d_model"], p["n_heads"], p["d_head"], p["d_vocab"]
    gemma = p["norm"] == "gemma_rmsnorm"

    def rn(*shape):
        return (torch.randn(*shape, generator=g) / shape[-2] ** 0.5).to(device)

    def norm():
        w = (torch.rand(d, generator=g) * 0.5 + (0.0 if gemma else 0.75)).to(device)
        kind = "rmsnorm" if gemma else "layernorm"
        return Norm(kind, w, None if gemma else torch.zeros(d, device=device), 1e-5, one_plus=gemma)

    group = H // p["n_kv_heads"]
    layers = [
        LayerWeights(
            ln1=norm(),
            W_Q=rn(H, d, dh),
            W_K=rn(H // group, d, dh).repeat_interleave(group, 0),
            W_V=rn(H // group, d, dh).repeat_interleave(group, 0),
            W_O=rn(H, dh, d),
            ln2=norm(),
            ln_attn_out=norm() if gemma else None,
        )  # fmt: skip
        for _ in range(p["n_layers"])
    ]
    W_E = torch.randn(V, d, generator=g).to(device)
    return ModelWeights(
        source="random", source_kind="synthetic", architecture="Random", n_layers=p["n_layers"], d_model=d,
        n_heads=H, n_kv_heads=p["n_kv_heads"], d_head=dh, d_vocab=V, W_E=W_E,
        W_U=W_E.T if gemma else rn(d, V), ln_final=norm(), layers=layers,
        tokens=[(" w" if i % 3 else "x") + str(i) for i in range(V)], norm_kind=p["norm"],
        embed_scale=d**0.5 if gemma else 1.0, tied_embeddings=gemma,
    )  # fmt: skip


def random_sae(model: ModelWeights, d_sae: int, site: str, layer: int, seed: int) -> SAEWeights:
    g = torch.Generator(device="cpu").manual_seed(seed)
    d_in = model.n_heads * model.d_head if site == "attn_z" else model.d_model
    dev = model.device
    return SAEWeights(
        W_enc=(torch.randn(d_in, d_sae, generator=g) / d_in**0.5).to(dev),
        W_dec=(torch.randn(d_sae, d_in, generator=g) / d_in**0.5).to(dev),
        b_enc=torch.zeros(d_sae, device=dev), b_dec=torch.zeros(d_in, device=dev), architecture="relu",
        hook_name=f"blocks.{layer}.hook_{site}", site=site, layer=layer, source="random", source_format="saelens",
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpt2-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--features", type=int, default=2048, help="features timed per pass (extrapolated to d_sae)")
    ap.add_argument("--d-sae", type=int, default=None, help="override the preset's d_sae")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--memory-mb", type=int, default=1024, help="BuildConfig.memory_mb (scratch budget)")
    ap.add_argument("--cache-mb", type=float, default=None, help="BuildConfig.cache_mb (0 = always stream)")
    ap.add_argument("--mmap-threshold-mb", type=float, default=None, help="override release_freed_blocks' threshold")
    ap.add_argument("--keep-malloc", action="store_true", help="leave glibc's dynamic mmap threshold (not as a build)")
    ap.add_argument("--passes", default="du,ee,attn,qk,ov,attribution,neighbours,flow,semantic")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = dict(PRESETS[args.preset])
    if args.d_sae:
        p["d_sae"] = args.d_sae
    device = torch.device(args.device)
    cfg = BuildConfig(memory_mb=args.memory_mb, cache_mb=args.cache_mb)
    if not args.keep_malloc:
        release_freed_blocks(int(args.mmap_threshold_mb * 2**20)) if args.mmap_threshold_mb else release_freed_blocks()
    block_rows, tile = cfg.blocks(device)

    def other_side(make, dim):
        """As _Build.columns: cached iff it fits cfg.cache_bytes(), else streamed."""
        block = cfg.key_columns(dim, block_rows)
        cols = make(block, False)
        return make(block, True) if cols.nbytes <= cfg.cache_bytes() else cols

    rss0 = rss_mb()
    model = random_model(p, device)
    layer = p["n_layers"] // 2
    sae = random_sae(model, p["d_sae"], "resid_post", layer - 1, 1)  # read by attention `layer`
    nxt = random_sae(model, p["d_sae"], "resid_post", layer, 2)
    zsae = random_sae(model, p["d_sae"], "attn_z", layer, 3)
    sync(device)
    rss_weights = rss_mb()
    reset_peak_rss()  # the peak is measured from here: what the passes add above the weights
    n = min(args.features, p["d_sae"])
    res: dict = dict(preset=args.preset, device=str(device), threads=torch.get_num_threads(), d_sae=p["d_sae"],
                     features=n, block_rows=block_rows, vocab_tile=tile, shapes=p,
                     rss_before_weights_mb=round(rss0), rss_weights_mb=round(rss_weights))  # fmt: skip
    passes = args.passes.split(",")
    tput = {}

    peaks = {}

    def record(name, seconds):
        peaks[name] = round(peak_rss_mb() - rss_weights)  # high-water mark above the weights, so far
        tput[name] = dict(seconds=round(seconds, 3), features_per_s=round(n / seconds, 1),
                          full_sae_s=round(seconds * p["d_sae"] / n, 1))  # fmt: skip
        print(f"{name:>12}: {n / seconds:10.1f} features/s  ({seconds:.2f}s for {n}; "
              f"~{seconds * p['d_sae'] / n:.0f}s for d_sae={p['d_sae']})", flush=True)  # fmt: skip

    if "du" in passes:
        W_U = model.W_U
        X = du.du_directions(model, sae, 0, n)  # (n, d_model)
        buf = torch.empty(block_rows, p["d_vocab"], device=device)  # (block, d_vocab)

        def bare():
            for r0 in range(0, n, block_rows):
                r1 = min(r0 + block_rows, n)
                torch.mm(X[r0:r1], W_U, out=buf[: r1 - r0])

        bare()  # warm up BLAS
        t_bare, _ = timed(device, bare)
        # the closed-form moments of W_U: one Gram matrix per model, shared by every unit and SAE of a build
        t_mom, mom = timed(device, lambda: du.du_moments(model))
        t_du, _ = timed(
            device, lambda: du.du_pass(model, sae, 0, n, block_rows=block_rows, vocab_tile=tile, moments=mom)
        )
        res["du_vs_matmul"] = dict(
            bare_matmul_s=round(t_bare, 3),
            du_s=round(t_du, 3),
            ratio=round(t_du / t_bare, 3),
            moments_s=round(t_mom, 3),
        )
        print(f"du {t_du:.2f}s vs bare fp32 matmul {t_bare:.2f}s: ratio {t_du / t_bare:.2f} "
              f"(+ {t_mom:.2f}s once per model for the vocabulary moments)", flush=True)  # fmt: skip
        record("du", t_du)
    if "ee" in passes:
        mom_e = ee.ee_moments(model)
        record(
            "ee",
            timed(device, lambda: ee.ee_pass(model, sae, 0, n, block_rows=block_rows, vocab_tile=tile, moments=mom_e))[
                0
            ],
        )
    if "attn" in passes:
        t_base, base = timed(device, lambda: attention.attention_baseline(model, [layer], n_random=cfg.n_random))
        record("attn", t_base + timed(device, lambda: attention.attention_pass(model, sae, 0, n, [layer], base))[0])
    sides = {}
    if "qk" in passes:
        t_keys, keys = timed(
            device,
            lambda: other_side(
                lambda b, c: qk.qk_keys(model, sae, layer, fold_norms=True, block=b, cache=c),
                p["n_heads"] * p["d_head"],
            ),
        )
        t = timed(device, lambda: qk.qk_pass(model, sae, layer, 0, n, keys, block_rows=block_rows))[0]
        res["qk_keys_s"], sides["qk"] = round(t_keys, 3), keys.cached
        del keys
        record("qk", t)
    if "ov" in passes:
        t_tg, targets = timed(
            device,
            lambda: other_side(
                lambda b, c: ov.ov_targets(model, layer, nxt, fold_norms=True, block=b, cache=c),
                p["n_heads"] * p["d_head"],
            ),
        )
        res["ov_targets_s"], sides["ov"] = round(t_tg, 3), targets.cached
        record("ov", timed(device, lambda: ov.ov_pass(model, sae, layer, 0, n, targets, block_rows=block_rows))[0])
        del targets
    if "attribution" in passes:
        record(
            "attribution",
            timed(device, lambda: attribution.attribution_pass(zsae, 0, n, n_heads=model.n_heads, d_head=model.d_head))[
                0
            ],
        )
    if "neighbours" in passes:
        cols = other_side(
            lambda b, c: neighbours.unit_decoders(model, sae, resid=False, block=b, cache=c), p["d_model"]
        )
        sides["neighbours"] = cols.cached
        record("neighbours", timed(device, lambda: neighbours.cosine_pass(model, sae, 0, n, cols))[0])
        del cols
    if "flow" in passes:
        cols = other_side(lambda b, c: neighbours.unit_decoders(model, nxt, resid=True, block=b, cache=c), p["d_model"])
        sides["flow"] = cols.cached
        record("flow", timed(device, lambda: flow.flow_pass(model, sae, 0, n, cols))[0])
        del cols
    res["other_side_cached"] = sides
    if sides:
        print("other side cached (else streamed):", sides, f"cache allowance {cfg.cache_bytes() >> 20} MB", flush=True)
    if "semantic" in passes:
        r = du.du_pass(model, sae, 0, n, block_rows=block_rows, vocab_tile=tile)
        s = semantic.SemanticSettings()
        base = semantic.embed_baseline(model, s)
        record(
            "semantic",
            timed(device, lambda: semantic.semantic_pass(model, {"du+": r.top_ids, "ee+": r.top_ids}, s, base))[0],
        )
    res["throughput"] = tput
    res["peak_above_weights_after_mb"] = peaks
    print("peak RSS above the weights after each pass (MB):", peaks)
    peak = peak_rss_mb()
    res["peak_rss_mb"] = round(peak)
    res["peak_above_weights_mb"] = round(peak - rss_weights)
    if device.type == "cuda":
        res["cuda_peak_alloc_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    res["memory_mb"], res["cache_mb"] = cfg.memory_mb, cfg.cache_mb
    print(f"RSS: {rss0:.0f} MB before weights, {rss_weights:.0f} MB with weights, peak {peak:.0f} MB "
          f"(+{peak - rss_weights:.0f} MB above the weights)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
