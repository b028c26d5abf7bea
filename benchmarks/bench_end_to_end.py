"""The whole ``sae-atlas build`` (a subprocess: CLI start-up, imports, loading, passes, writes, index, rename)
against a bare matmul of the same shapes, in the same run.

Inputs are written once to a scratch folder (kept with ``--dir``): a random GPT-2
(transformers ``GPT2Config``, ``save_pretrained``) with a word-level tokenizer of
the full vocabulary, and a random SAE in the SAELens layout on
``blocks.{layer}.hook_resid_post``. The bare matmul is what the ``du`` pass
cannot avoid: ``(block, d_model) @ (d_model, d_vocab)`` for every block of
the SAE's decoder rows, fp32, into a reused buffer, with the build's thread count.

    python benchmarks/bench_end_to_end.py                          # GPT-2-small shapes, --passes du
    python benchmarks/bench_end_to_end.py --passes du,ee,attn,qk,ov,neighbours,flow,semantic
    python benchmarks/bench_end_to_end.py --d-model 64 --vocab 1000 --d-sae 512 --layers 2   # seconds

Figures go to stdout and benchmarks/out/end_to_end.json. Goal: du only within 2x the bare matmul on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def write_model(folder: Path, *, d_model: int, vocab: int, layers: int, heads: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = {"<unk>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>", bos_token="<unk>")
    cfg = GPT2Config(
        vocab_size=vocab, n_embd=d_model, n_layer=layers, n_head=heads, n_positions=64,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)


def write_sae(folder: Path, *, d_model: int, d_sae: int, layer: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    W_dec = torch.randn(d_sae, d_model, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": W_dec.T.contiguous() * 0.5,  # (d_in, d_sae)
        "W_dec": W_dec,  # (d_sae, d_in)
        "b_enc": -0.1 * torch.rand(d_sae, generator=gen),
        "b_dec": 0.01 * torch.randn(d_model, generator=gen),
    }
    cfg = {
        "architecture": "standard", "d_in": d_model, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.5.0", "model_name": "bench", "hook_name": f"blocks.{layer}.hook_resid_post",
                     "hook_head_index": None, "neuronpedia_id": None, "context_size": 128},
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


def bare_matmul(d_model: int, vocab: int, d_sae: int, block: int = 256) -> tuple[float, float]:
    """(wall, CPU) seconds of the du pass's unavoidable FLOPs: every block of decoder rows times W_U."""
    gen = torch.Generator().manual_seed(2)
    W_U = torch.randn(d_model, vocab, generator=gen)  # (d_model, d_vocab)
    X = torch.randn(d_sae, d_model, generator=gen)  # (d_sae, d_model)
    out = torch.empty(block, vocab)  # (block, d_vocab)
    t0, c0 = time.perf_counter(), time.process_time()
    for r0 in range(0, d_sae, block):
        r1 = min(r0 + block, d_sae)
        torch.mm(X[r0:r1], W_U, out=out[: r1 - r0])
    return time.perf_counter() - t0, time.process_time() - c0


def run_build(model: Path, sae: Path, out: Path, passes: str, extra: list[str]) -> dict:
    cli = [sys.executable, "-c", "from atlas.cli import cli; cli(prog_name='sae-atlas')"]  # the console script
    cmd = [*cli, "build", "--model", str(model), "--sae", str(sae), "-o", str(out)]
    cmd += ["--passes", passes, "--overwrite", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {
        "seconds": seconds,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss_mb": after.ru_maxrss / 1024,
        "file_mb": out.stat().st_size / 2**20,
        "stderr_tail": proc.stderr[-1500:],
    }


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return float(out.stdout.strip() or "nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--passes", action="append", default=None, help="passes of one build; repeat for several builds")
    ap.add_argument("--dir", default=None, help="keep the inputs here (written once, reused)")
    ap.add_argument("--build-args", default="", help="extra `sae-atlas build` options, e.g. '--unit-size 8192'")
    args = ap.parse_args()
    passes = args.passes or ["du"]
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sae-atlas-e2e-"))
    model, sae = folder / f"gpt2-{args.d_model}-{args.vocab}-{args.layers}", folder / f"sae-{args.d_sae}"
    if not (model / "config.json").exists():
        write_model(model, d_model=args.d_model, vocab=args.vocab, layers=args.layers, heads=args.heads)
    if not (sae / "cfg.json").exists():
        write_sae(sae, d_model=args.d_model, d_sae=args.d_sae, layer=args.layers // 2)
    res: dict = {"shape": vars(args), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "builds": {}}
    res["import_s"] = {m: import_seconds(m) for m in ("atlas.cli", "builders.cli", "torch", "transformers")}
    res["bare_matmul_s"], res["bare_matmul_cpu_s"] = bare_matmul(args.d_model, args.vocab, args.d_sae)
    for p in passes:
        r = run_build(model, sae, folder / "bench.db", p, args.build_args.split())
        r["ratio"] = r["seconds"] / res["bare_matmul_s"]
        r["cpu_ratio"] = r["cpu_seconds"] / res["bare_matmul_cpu_s"]  # steadier than wall time on a shared machine
        res["builds"][p] = r
    res["bare_matmul_s_after"], _ = bare_matmul(args.d_model, args.vocab, args.d_sae)  # the machine may have changed

    print(f"shapes: d_model {args.d_model}, vocab {args.vocab:,}, d_sae {args.d_sae:,}, {args.layers} layers; "
          f"load {res['load']}")  # fmt: skip
    print(f"imports (fresh interpreter): {', '.join(f'{m} {s:.2f}s' for m, s in res['import_s'].items())}")
    print(f"bare matmul: {res['bare_matmul_s']:.2f}s wall, {res['bare_matmul_cpu_s']:.2f}s CPU "
          f"(again after the builds: {res['bare_matmul_s_after']:.2f}s wall)")  # fmt: skip
    for p, r in res["builds"].items():
        print(f"  sae-atlas build --passes {p}: {r['seconds']:.2f}s wall, {r['cpu_seconds']:.2f}s CPU, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, atlas {r['file_mb']:.1f} MB: {r['ratio']:.2f}x the bare matmul "
              f"(CPU time: {r['cpu_ratio']:.2f}x)")  # fmt: skip
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "end_to_end.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
