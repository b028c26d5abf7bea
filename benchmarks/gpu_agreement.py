"""The passes on a device against the same passes on the CPU, on one tiny random model, in fp32 and bf16 weights.

    python benchmarks/gpu_agreement.py --device cuda     # what benchmarks/gpu_check.sh runs
    python benchmarks/gpu_agreement.py --device cpu      # the CPU against itself (CI keeps the script working)

Weights are drawn once in fp32 on the CPU, stored at the dtype under test, and moved to
each device; every pass computes in fp32 (builders.passes.common.COMPUTE_DTYPE). Rows
must agree: token ids exactly, except inside a near-tie (neighbouring values closer than
the tolerance, where summation order may swap them); values and statistics within
RTOL = 1e-4 relative (ATOL = 1e-5 of the row's scale). Exit status 1 on any disagreement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_passes import random_model, random_sae  # noqa: E402
from builders.passes.du import du_pass  # noqa: E402
from builders.passes.ee import ee_pass  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
TINY = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_head=16, d_vocab=3000, d_sae=256, norm="gemma_rmsnorm")


def cast(model, sae, dtype: torch.dtype, device: str):
    """Copies of the random weights at ``dtype`` on ``device`` (the passes upcast to fp32 themselves)."""
    import copy

    def conv(obj):
        out = copy.copy(obj)
        for k, v in vars(obj).items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                setattr(out, k, v.to(dtype).to(device))
            elif isinstance(v, list) and v and hasattr(v[0], "__dict__"):
                setattr(out, k, [conv(x) for x in v])
            elif hasattr(v, "__dict__") and any(isinstance(x, torch.Tensor) for x in vars(v).values()):
                setattr(out, k, conv(v))
        return out

    return conv(model), conv(sae)


def ids_agree(a_ids, b_ids, a_vals, scale) -> bool:
    """Same ids, except where neighbouring values are within the tolerance (order inside a near-tie is free)."""
    for r in range(a_ids.shape[0]):
        if np.array_equal(a_ids[r], b_ids[r]):
            continue
        tol = RTOL * scale[r] + ATOL
        gaps = np.abs(np.diff(a_vals[r]))
        for i in np.nonzero(a_ids[r] != b_ids[r])[0]:
            near = (i > 0 and gaps[i - 1] <= tol) or (i < len(gaps) and gaps[i] <= tol)
            if not near:
                return False
    return True


def compare(name: str, a, b) -> list[str]:
    bad = []
    scale = np.maximum(np.abs(a.top_vals[:, 0]), np.abs(a.bot_vals[:, 0]))  # (n,) the row's largest |value|
    for side in ("top", "bot"):
        av, bv = getattr(a, f"{side}_vals"), getattr(b, f"{side}_vals")
        if not np.allclose(av, bv, rtol=RTOL, atol=ATOL * scale.max()):
            bad.append(f"{name} {side} values differ by up to {np.abs(av - bv).max():.3g}")
        if not ids_agree(getattr(a, f"{side}_ids"), getattr(b, f"{side}_ids"), av, scale):
            bad.append(f"{name} {side} token ids differ outside near-ties")
    for stat, av in a.stats.items():
        bv = b.stats[stat]
        if not np.allclose(av, bv, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(av).max()))):
            bad.append(f"{name} {stat} differs by up to {np.abs(av - bv).max():.3g}")
    return bad


def run(device: str) -> list[str]:
    """Disagreements between ``device`` and the CPU (empty: they agree)."""
    base = random_model(TINY, torch.device("cpu"), seed=0)
    sae = random_sae(base, TINY["d_sae"], "resid_post", 0, seed=1)
    bad = []
    for dtype in (torch.float32, torch.bfloat16):
        cpu_m, cpu_s = cast(base, sae, dtype, "cpu")
        dev_m, dev_s = cast(base, sae, dtype, device)
        for name, fn in (("du", du_pass), ("ee", ee_pass)):
            kw = dict(k=20, block_rows=64, vocab_tile=1024)
            a = fn(cpu_m, cpu_s, 0, TINY["d_sae"], **kw)
            b = fn(dev_m, dev_s, 0, TINY["d_sae"], **kw)
            found = compare(f"{name} {str(dtype).removeprefix('torch.')}", a, b)
            print(f"{name:>3} {str(dtype).removeprefix('torch.'):>8} {device} vs cpu: "
                  f"{'agree' if not found else 'DISAGREE'} (rtol {RTOL:g})")  # fmt: skip
            bad += found
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    bad = run(args.device)
    for line in bad:
        print(line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
