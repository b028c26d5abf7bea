"""Reading dictionary files without ever holding two copies of a big matrix.

A 262,144-wide dictionary on Gemma-2-2B is 2.4 GB per fp32 matrix. ``load_file`` plus a
transpose, a dtype cast or an ``isfinite`` check each make another full-size tensor; here a
matrix is read from its safetensors file a block of rows at a time (``safe_open`` /
``get_slice``) into the one tensor that is kept, already in its final orientation, dtype and
device, and checked for NaN/inf block by block. A matrix too big to keep (a cross-layer
transcoder's per-layer decoders) stays in its file as a :class:`StoredTensor`.

Every reader raises one line naming the file: LoadError when it is missing, CorruptWeights
when it is truncated, not what its name says, or not a plain state dict (``.pt``/``.pth``
files are only ever opened with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from builders.errors import CorruptWeights, LoadError

BLOCK_BYTES = 16 << 20  # rows per block are chosen so one block is about this size (fp32); isfinite makes
# a float temporary of a block, so this is also the transient memory a read adds


def short_error(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LoadError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptWeights(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptWeights(f"{path}: expected a JSON object")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise LoadError(f"{path}: reading YAML needs pyyaml (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise LoadError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CorruptWeights(f"{path}: not valid YAML ({short_error(e)})") from None
    if not isinstance(data, dict):
        raise CorruptWeights(f"{path}: expected a YAML mapping")
    return data


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise LoadError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            # data[k] is a fresh array: from_numpy shares it, no second copy
            return {k: torch.from_numpy(data[k]) for k in data.files}
    except Exception as e:  # BadZipFile, ValueError, EOFError, zlib.error
        raise CorruptWeights(f"{path}: truncated or corrupt .npz file ({short_error(e)})") from None


def read_pt(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict of tensors from a .pt/.pth file; anything else is refused."""
    if not Path(path).is_file():
        raise LoadError(f"{path}: file not found")
    try:
        # weights_only: never run code from a downloaded pickle. mmap: no copy until a tensor is used.
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:
        raise CorruptWeights(f"{path}: truncated, corrupt or unsafe .pt file ({short_error(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = type(state).__name__ if not isinstance(state, dict) else "a dict holding non-tensors"
        raise CorruptWeights(f"{path}: not a plain state dict of tensors (found {what})")
    return state


def need(tensors: dict[str, Any], key: str, path: Path) -> Any:
    if key not in tensors:
        raise CorruptWeights(f"{path}: missing tensor {key!r} (has {', '.join(sorted(tensors)) or 'none'})")
    return tensors[key]


# ------------------------------------------------------------------------ safetensors

# safetensors dtype -> (torch dtype, bytes per element)
_ST_DTYPES = {
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F64": (torch.float64, 8),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


class Safetensors:
    """A safetensors file read with plain ``pread`` calls, a block of rows at a time.

    Not memory-mapped on purpose: pages of a mapped file count in the process's resident
    memory once touched, so reading a 2.4 GB matrix through a mapping shows as two copies. Here
    the bytes go through the page cache straight into the one tensor that is kept.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LoadError(f"{self.path}: file not found")
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 2 <= n <= min(size - 8, 100 << 20):
                    raise ValueError(f"header length {n} in a {size}-byte file")
                header = json.loads(f.read(n))
            self._base = 8 + n
            self._meta: dict[str, tuple[torch.dtype, int, tuple[int, ...], int, int]] = {}
            for key, v in header.items():
                if key == "__metadata__":
                    continue
                dtype, item = _ST_DTYPES[v["dtype"]]
                shape = tuple(int(x) for x in v["shape"])
                a, b = (int(x) for x in v["data_offsets"])
                if b - a != item * int(np.prod(shape, dtype=np.int64)) or a < 0:
                    raise ValueError(f"{key}: {b - a} bytes for shape {shape}")
                self._meta[key] = (dtype, item, shape, a, b)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CorruptWeights(f"{self.path}: truncated or corrupt safetensors file ({short_error(e)})") from None
        end = self._base + max((m[4] for m in self._meta.values()), default=0)
        if end > size:
            raise CorruptWeights(f"{self.path}: truncated safetensors file ({size} bytes, header says {end})")
        self.shapes = {k: m[2] for k, m in self._meta.items()}

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def shape(self, key: str) -> tuple[int, ...]:
        return need(self.shapes, key, self.path)

    def rows(self, key: str, a: int, b: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``[a, b)`` of a tensor in its stored dtype (into ``out``, a CPU tensor of that
        dtype and shape, when given: no extra buffer)."""
        need(self.shapes, key, self.path)
        dtype, item, shape, start, _ = self._meta[key]
        row = item * int(np.prod(shape[1:], dtype=np.int64))
        if out is None:
            out = torch.empty((b - a, *shape[1:]), dtype=dtype)
        buf = memoryview(out.view(torch.uint8).numpy()).cast("B") if out.numel() else memoryview(b"")
        try:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self._base + start + a * row)
                got = 0
                while got < len(buf):
                    n = f.readinto(buf[got:])
                    if not n:
                        raise EOFError(f"{key}: file ends {len(buf) - got} bytes early")
                    got += n
        except (OSError, EOFError) as e:
            raise CorruptWeights(f"{self.path}: truncated or unreadable ({short_error(e)})") from None
        return out

    def get(self, key: str) -> torch.Tensor:
        """A small tensor, whole, fp32 (integers stay integers)."""
        shape = self.shape(key)
        t = self.rows(key, 0, shape[0]) if shape else self.rows(key, 0, 1).reshape(())
        return t.float() if t.is_floating_point() else t

    def matrix(
        self,
        key: str,
        *,
        transpose: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        name: str | None = None,
    ) -> torch.Tensor:
        """A 2-D tensor read in row blocks into one preallocated tensor (transposed if asked)."""
        shape = self.shape(key)
        if len(shape) != 2:
            raise CorruptWeights(f"{self.path}: {key} is {shape}, expected a matrix")
        rows, cols = shape
        stored = self._meta[key][0]
        out = torch.empty((cols, rows) if transpose else (rows, cols), dtype=dtype, device=device)
        direct = not transpose and stored == dtype and out.device.type == "cpu"
        step = block_rows(cols)
        for a in range(0, rows, step):
            b = min(rows, a + step)
            if direct:  # read straight into the kept tensor
                self.rows(key, a, b, out=out[a:b])
                check_finite(out[a:b], self.path, name or key)
                continue
            block = self.rows(key, a, b).float()  # (b - a, cols)
            check_finite(block, self.path, name or key)
            if transpose:
                out[:, a:b].copy_(block.T)
            else:
                out[a:b].copy_(block)
        return out

    def vector(self, key: str, *, device=None, dtype: torch.dtype = torch.float32, name: str | None = None):
        t = self.get(key).reshape(-1).float()
        check_finite(t, self.path, name or key)
        return t.to(device=device, dtype=dtype)


def block_rows(cols: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(1, cols)))


def check_finite(t: torch.Tensor, path: Path, name: str) -> None:
    # A sum is NaN or inf if any element is (or, rarely, if finite values overflow: then the exact
    # elementwise check decides). One pass, no temporary: isfinite itself is ~5x slower here.
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise CorruptWeights(f"{path}: {name} has NaN or inf values")


def finite_blockwise(t: torch.Tensor, path: Path, name: str) -> None:
    """isfinite on a big tensor without a full-size bool temporary."""
    if t.ndim == 0 or t.numel() <= (BLOCK_BYTES // 4):
        check_finite(t, path, name)
        return
    step = block_rows(t[0].numel())
    for a in range(0, t.shape[0], step):
        check_finite(t[a : a + step], path, name)


@dataclass(frozen=True)
class StoredTensor:
    """A 3-D decoder ``(d_sae, n_out, d_out)`` left in its safetensors file, read a block of
    features at a time. ``start`` drops the leading output layers of a stored
    ``(d_sae, n_layers, d_out)`` (Gemma Scope 2's multi-layer files), as circuit-tracer does."""

    path: Path
    key: str
    shape: tuple[int, int, int]
    start: int = 0

    def read(self, a: int = 0, b: int | None = None) -> torch.Tensor:
        b = self.shape[0] if b is None else b
        block = Safetensors(self.path).rows(self.key, a, b)  # (b - a, n_layers, d_out)
        return block[:, self.start :].float()  # (b - a, n_out, d_out)


# ------------------------------------------------------------------------ hub cache checks

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_and_verify(path: Path) -> str:
    """sha256 of a weight file; for a file in the Hugging Face cache, also checks the bytes
    against the blob's name (the sha256 of an LFS file, the git sha1 of a small one), so a
    corrupt or truncated download is refused instead of trusted."""
    from builders.hashing import sha256_file

    path = Path(path)
    blob = Path(os.path.realpath(path))
    name = blob.name if blob.parent.name == "blobs" else ""
    if _HEX64.match(name):
        digest = sha256_file(blob)
        if digest != name:
            raise CorruptWeights(
                f"{path}: corrupt or truncated download (sha256 {digest[:12]}... is not {name[:12]}...); {_REFETCH}"
            )
        return digest
    digest = sha256_file(path)
    if _HEX40.match(name):
        sha1 = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
        with open(blob, "rb") as f:
            while chunk := f.read(1 << 22):
                sha1.update(chunk)
        if sha1.hexdigest() != name:
            raise CorruptWeights(f"{path}: corrupt or truncated download (git sha1 differs from the hub's); {_REFETCH}")
    return digest


_REFETCH = "delete it from the Hugging Face cache (`hf cache delete`) and run again to fetch it anew"
