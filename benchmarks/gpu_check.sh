#!/usr/bin/env bash
# The GPU path in one run: the tests marked `gpu`, GPU-vs-CPU agreement on a tiny model
# (fp32 and bf16 weights), and the Gemma-2-2B-shaped benchmark (d_model 2304, vocabulary
# 256,000, 16,384 features, every pass) with features/s, the ratio to a bare matmul and
# peak GPU and host memory. Meant to take under 8 minutes on one H100-class GPU.
#
#   benchmarks/gpu_check.sh              # on the GPU (CUDA must be there)
#   benchmarks/gpu_check.sh --cpu        # the same steps on the CPU with a small preset (CI runs this)
#   SAE_ATLAS_CHECK_CPU=1 benchmarks/gpu_check.sh
#
# PYTHON picks the interpreter (default: python); the figures also go to benchmarks/out/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CPU=${SAE_ATLAS_CHECK_CPU:-0}
[[ "${1:-}" == "--cpu" ]] && CPU=1
mkdir -p benchmarks/out
START=$(date +%s)

if [[ "$CPU" == 1 ]]; then
    DEVICE=cpu
    BENCH=(--preset gpt2-small --d-sae 2048 --features 128)
else
    DEVICE=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --cpu')"
    "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
    BENCH=(--preset gemma2-2b --features 16384)
fi

echo "== 1/3 tests marked gpu (skipped without CUDA)"
rc=0
"$PY" -m pytest -q -m gpu tests/ -p no:cacheprovider || rc=$?
[[ $rc == 0 || $rc == 5 ]] || exit $rc   # 5: none collected

echo "== 2/3 $DEVICE vs CPU agreement, tiny model, fp32 and bf16 weights"
"$PY" benchmarks/gpu_agreement.py --device "$DEVICE"

echo "== 3/3 every pass, ${BENCH[*]} on $DEVICE"
"$PY" benchmarks/bench_passes.py --device "$DEVICE" "${BENCH[@]}" --json benchmarks/out/gpu_check.json
"$PY" - <<'PY'
import json
r = json.load(open("benchmarks/out/gpu_check.json"))
du = r.get("du_vs_matmul", {})
print(f"du ratio to a bare matmul: {du.get('ratio')}   peak host RSS: {r.get('peak_rss_mb')} MB"
      f"   peak GPU memory: {r.get('cuda_peak_alloc_mb', 'n/a (CPU)')} MB")
PY
echo "gpu_check: done in $(( $(date +%s) - START ))s"
