"""The GPU path: tests marked `gpu` run only where CUDA is (benchmarks/gpu_check.sh runs them), and the
CPU preset of gpu_check.sh runs here so that the script keeps working without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import gpu_agreement  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_passes_agree_with_the_cpu():
    assert gpu_agreement.run("cuda") == []


def test_agreement_check_can_fail():
    """The comparison flags a changed value and a swapped id outside a near-tie."""
    base = gpu_agreement.random_model(gpu_agreement.TINY, torch.device("cpu"), seed=0)
    sae = gpu_agreement.random_sae(base, 32, "resid_post", 0, seed=1)
    a = gpu_agreement.du_pass(base, sae, 0, 32, k=5, block_rows=8, vocab_tile=512)
    b = gpu_agreement.du_pass(base, sae, 0, 32, k=5, block_rows=8, vocab_tile=512)
    assert gpu_agreement.compare("du", a, b) == []
    b.top_vals[3, 0] *= 1.01
    b.top_ids[4, [0, 4]] = b.top_ids[4, [4, 0]]
    found = gpu_agreement.compare("du", a, b)
    assert any("top values" in f for f in found) and any("top token ids" in f for f in found)
    assert np.isfinite(a.stats["std"]).all()


def test_gpu_check_cpu_preset_runs():
    env = dict(os.environ, PYTHON=sys.executable, SAE_ATLAS_CHECK_CPU="1")
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert "du  float32 cpu vs cpu: agree" in out and "ee bfloat16 cpu vs cpu: agree" in out
    assert "du ratio to a bare matmul:" in out and "gpu_check: done" in out
