"""Load time and peak memory of one wide dictionary, read a block at a time.

    python benchmarks/bench_sae_load.py                         # 262,144 x 2304, SAELens layout
    python benchmarks/bench_sae_load.py --format gemma_scope_2  # the same in Gemma Scope 2's layout
    python benchmarks/bench_sae_load.py --d-sae 16384 --keep    # smaller; keep the files in --dir
    python benchmarks/bench_sae_load.py --compare 441c6f1       # also that revision's load_sae (before issue 14)

Writes a random dictionary of ``d_in x d_sae`` (fp32: W_enc and W_dec are 2.4 GB each at
262,144 x 2304) into ``--dir``, then in a fresh process for each loader measures the peak
resident memory (``VmHWM``) above the process's memory after imports, and the wall time.
``load_sae`` keeps exactly W_enc + W_dec + the vectors; a second full-size copy would show as a
peak near 2x that. ``--compare REV`` also runs the ``load_sae`` of git revision ``REV`` in the same
run, for the ratio (``441c6f1``, the last revision before the block-wise loader: ``load_file`` then
cast, ``contiguous`` and ``isfinite`` on whole tensors). The files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _stream_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...], float]]) -> None:
    """A safetensors file of random fp32 tensors written a block of rows at a time, so writing a
    4.8 GB dictionary never holds it in memory: header (8-byte length + JSON), then the data."""
    gen = torch.Generator().manual_seed(0)
    header, offset = {}, 0
    for name, shape, _ in tensors:
        n = 4 * int(torch.tensor(shape).prod())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _, shape, scale in tensors:
            rows, cols = shape[0], (shape[1] if len(shape) > 1 else 1)
            step = max(1, (32 << 20) // (4 * cols))
            for a in range(0, rows, step):
                block = (
                    torch.randn(min(step, rows - a), cols, generator=gen) * scale
                    if scale
                    else torch.full((min(step, rows - a), cols), 0.05)
                )
                f.write(block.numpy().tobytes())


def write(folder: Path, fmt: str, d_in: int, d_sae: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"saelens": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
             "gemma_scope_2": ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")}[fmt]  # fmt: skip
    tensors = [(names[0], (d_in, d_sae), d_in**-0.5), (names[1], (d_sae, d_in), d_sae**-0.5),
               (names[2], (d_sae,), 0.1), (names[3], (d_in,), 0.1), (names[4], (d_sae,), 0.0)]  # fmt: skip
    if fmt == "saelens":
        _stream_safetensors(folder / "sae_weights.safetensors", tensors)
        cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "apply_b_dec_to_input": False,
               "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.12.hook_resid_post"}}  # fmt: skip
        (folder / "cfg.json").write_text(json.dumps(cfg))
    else:
        _stream_safetensors(folder / "params.safetensors", tensors)
        cfg = {"hf_hook_point_in": "model.layers.12.output", "hf_hook_point_out": "model.layers.12.output",
               "width": d_sae, "architecture": "jump_relu", "type": "sae", "affine_connection": False}  # fmt: skip
        (folder / "config.json").write_text(json.dumps(cfg))


def child(folder: str, how: str) -> None:
    """Runs in a fresh process: import, note the memory, load, report."""
    sys.path.insert(0, str(ROOT))
    from builders.saes import load_sae

    if how.startswith("rev:"):  # another revision's loader, from git
        import importlib.util

        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{how[4:]}:builders/saes.py"], capture_output=True, text=True, check=True
        )
        mod_path = Path(folder) / "saes_main.py"  # deleted with the folder
        mod_path.write_text(src.stdout)
        spec = importlib.util.spec_from_file_location("saes_main", mod_path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        load = old.load_sae
    else:
        load = load_sae
    base = vm("VmRSS")
    t0 = time.perf_counter()
    try:
        sae = load(folder)
    except Exception as e:  # main does not read the newer formats
        print(json.dumps({"how": how, "error": " ".join(str(e).split())[:200]}))
        return
    kept = sum(t.numel() * t.element_size() for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec, sae.threshold))
    seconds = time.perf_counter() - t0
    print(json.dumps({"how": how, "seconds": round(seconds, 2), "kept_gb": round(kept / 1e9, 3),
                      "peak_above_imports_gb": round((vm("VmHWM") - base) / 1e9, 3),
                      "baseline_rss_gb": round(base / 1e9, 3)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=262144)
    ap.add_argument("--format", choices=["saelens", "gemma_scope_2"], default="saelens")
    ap.add_argument("--dir", default="/tmp/bench_sae_load")
    ap.add_argument("--compare", metavar="REV", help="also run the load_sae of this git revision (e.g. 441c6f1)")
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "HOW"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = Path(args.dir) / f"{args.format}_{args.d_in}x{args.d_sae}"
    try:
        if not folder.exists():
            t0 = time.perf_counter()
            write(folder, args.format, args.d_in, args.d_sae)
            print(f"wrote {folder} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(
            json.dumps({"d_in": args.d_in, "d_sae": args.d_sae, "format": args.format, "file_gb": round(size / 1e9, 3)})
        )
        for how in ["load_sae"] + ([f"rev:{args.compare}"] if args.compare else []):
            subprocess.run([sys.executable, __file__, "--child", str(folder), how], check=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
