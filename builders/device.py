"""Choose the device and the weight dtype once, for a whole build.

The choice, and why:

* CPU: always float32. bf16 matmuls on CPU are emulated and ~40x slower here,
  and fp32 keeps every pass comparable with the model's own fp32 forward pass.
* GPU: float32 weights by default (exact, and a 2B model's attention and
  embedding weights fit easily). Ask for bf16 (``"cuda+bf16"`` or
  ``dtype="bf16"``) to halve memory; then matmuls read bf16 operands and
  accumulate in fp32 (cuBLAS does this for bf16 GEMMs; we additionally turn
  off PyTorch's reduced-precision split-K reductions so the sum really is
  fp32). TF32 stays off so fp32 on GPU means fp32.

Spec strings: ``None``/``"auto"`` (cuda if available, else cpu), ``"cpu"``,
``"cuda"``, ``"cuda:1"``, ``"mps"``, each optionally followed by ``+fp32`` or
``+bf16``.
"""

from __future__ import annotations

import torch

from builders.errors import LoadError

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def _parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.strip().lower()]
    except KeyError:
        raise LoadError(f"unknown dtype {name!r}; use fp32 or bf16") from None


def resolve_device(
    spec: str | torch.device | None = "auto", *, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """Turn a device spec into ``(device, weight dtype)``; see the module docstring."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    suffix_dtype = None
    if "+" in text:
        text, suffix = text.split("+", 1)
        suffix_dtype = _parse_dtype(suffix)
    want = _parse_dtype(dtype) or suffix_dtype

    if text in ("", "auto"):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(text)
        except RuntimeError:
            raise LoadError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device {spec!r} asked for, but torch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LoadError(f"device {spec!r} asked for, but MPS is not available")

    if device.type == "cpu":
        if want not in (None, torch.float32):
            raise LoadError("the CPU computes in fp32 only (bf16 is emulated and far slower); drop +bf16")
        return device, torch.float32

    out = want or torch.float32
    if device.type == "cuda":
        # fp32 means fp32 (no TF32), and bf16 GEMMs reduce in fp32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    return device, out
