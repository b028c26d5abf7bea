"""Train TopK SAEs and transcoders on a GGUF model's activations: ``python -m examples.smollm2.train``.

Subcommands: ``collect`` (activations to a cache folder, one file per hook),
``train`` (dictionaries from that cache), ``run`` (both), ``unpack`` (a GPU
run's packed files to SAELens folders). A dictionary is named by the hook it
reads (``blocks.14.hook_resid_post``, ``blocks.14.attn.hook_z``) or, for a
transcoder of layer L's MLP, ``transcoder:L``. Training is resumable per
dictionary: a folder already written with the same recipe is kept, not
retrained. See :mod:`examples.smollm2.topk` for the recipe and
:mod:`examples.smollm2.saelens_files` for the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from builders.hashing import sha256_file
from examples.smollm2.activations import (
    activations_info,
    check_hooks,
    collect_activations,
    drop_massive,
    load_activations,
    load_gguf_model,
    save_activations,
)
from examples.smollm2.errors import TrainError
from examples.smollm2.saelens_files import (
    SAE_CFG_FILENAME,
    DictionarySpec,
    saelens_cfg,
    save_packed,
    save_saelens_folder,
    unpack,
)
from examples.smollm2.topk import TrainConfig, dictionary_seed, evaluate, refit_decoder, train_topk

TRAINED_BY = "sae-atlas examples/smollm2/train.py (own TopK trainer; not SAELens, no published dictionary exists for this model)"  # fmt: skip
Loader = Callable[[str], tuple[torch.Tensor, torch.Tensor]]  # hook name -> (train, eval) activations


def tokens_digest(tokens: str | Path) -> str:
    """sha256 of the token windows themselves (an .npz file's bytes change with its zip timestamps)."""
    data = np.load(tokens)
    digest = hashlib.sha256()
    for split in ("train", "eval"):
        digest.update(np.ascontiguousarray(data[split]).tobytes())
    return digest.hexdigest()


def stamp(t_start: float) -> Callable[..., None]:
    """A print that prefixes the seconds since ``t_start``."""
    return lambda *a: print(f"[{time.perf_counter() - t_start:7.1f}s]", *a, flush=True)


# ----------------------------------------------------------------------------- activations


def collect(
    gguf: str, tokens: str, hook_names: Sequence[str], *, device: str, massive_ratio: float = 20.0,
    train_stride: int = 1, eval_stride: int = 1, say: Callable[..., None] = print,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """Load the model and collect held-in and held-out activations at ``hook_names``.

    ``tokens`` is an .npz with ``train`` and ``eval`` (windows, ctx_len) uint16
    arrays; every ``train_stride``-th / ``eval_stride``-th window is used (a CPU
    budget keeps the corpus mix). Returns (train activations, eval activations,
    info for the records).
    """
    data = np.load(tokens)
    train_w, eval_w = data["train"][::train_stride], data["eval"][::eval_stride]
    ctx = train_w.shape[1]
    say(f"tokens: train {train_w.shape} eval {eval_w.shape} windows of {ctx}")
    gguf_sha = sha256_file(gguf)
    model = load_gguf_model(gguf, device)
    say(f"model loaded on {device}: {type(model).__name__}, sha256 {gguf_sha[:12]}")
    hook_check = check_hooks(model, train_w, hook_names)
    say(f"hook check vs the model's own computation (max abs diff): {hook_check}")
    t0 = time.perf_counter()

    def bar(done: int, total: int) -> None:
        say(f"  collected {done}/{total} windows ({done * (ctx - 1) / (time.perf_counter() - t0):.0f} tokens/s)")

    batch = 64 if device.startswith("cuda") else 8
    train_acts = collect_activations(model, train_w, hook_names, batch_windows=batch, progress=bar)
    eval_acts = collect_activations(model, eval_w, hook_names, batch_windows=batch)
    del model
    train_acts, dropped_train = drop_massive(train_acts, massive_ratio)
    eval_acts, dropped_eval = drop_massive(eval_acts, massive_ratio)
    say(f"dropped massive-activation tokens: train {dropped_train}, eval {dropped_eval}")
    act_stats = {}
    for name in hook_names:
        norms = train_acts[name].norm(dim=-1)
        q = torch.quantile(norms[:: max(1, len(norms) // 100_000)], torch.tensor([0.5, 0.99], device=norms.device))
        act_stats[name] = {"norm_median": float(q[0]), "norm_p99": float(q[1]), "norm_max": float(norms.max())}
    info = {
        "gguf_sha256": gguf_sha,
        "tokens_sha256": tokens_digest(tokens),
        "context_size": ctx,
        "train_stride": train_stride,
        "eval_stride": eval_stride,
        "train_windows": int(len(train_w)),
        "eval_windows": int(len(eval_w)),
        "hook_check_max_abs_diff": hook_check,
        "massive_ratio": massive_ratio,
        "massive_tokens_dropped": {"train": dropped_train, "eval": dropped_eval},
        "activation_norms": act_stats,
        "collect_device": device,
    }
    return train_acts, eval_acts, info


def cached_collect(cache: Path, gguf: str, tokens: str, hook_names: Sequence[str], **kw: Any) -> dict[str, Any]:
    """Collect into ``cache`` unless it already holds these hooks from the same model, tokens and settings."""
    info = activations_info(cache)
    same = {"gguf_sha256": sha256_file(gguf), "tokens_sha256": tokens_digest(tokens),
            "train_stride": kw.get("train_stride", 1), "eval_stride": kw.get("eval_stride", 1),
            "massive_ratio": kw.get("massive_ratio", 20.0)}  # fmt: skip
    say = kw.get("say", print)
    if info and all(info.get(k) == v for k, v in same.items()) and set(hook_names) <= set(info["hooks"]):
        say(f"activations: reusing {cache}")
        return info
    train_acts, eval_acts, info = collect(gguf, tokens, hook_names, **kw)
    save_activations(cache, train_acts, eval_acts, info)
    say(f"activations: wrote {cache}")
    return activations_info(cache) or info


# ----------------------------------------------------------------------------- training


def train_key(
    spec: DictionarySpec, cfg: TrainConfig, info: dict[str, Any], dropped: dict[str, int] | None = None
) -> str:
    """What a trained dictionary depends on: a finished one with the same key is never trained again.

    ``dropped`` (a transcoder's massive-target tokens, when there are any) is part of its data.
    """
    data = {k: info.get(k) for k in ("gguf_sha256", "tokens_sha256", "train_stride", "eval_stride", "massive_ratio")}
    if dropped and any(dropped.values()):
        data["massive_targets_dropped"] = dropped
    text = json.dumps({"spec": str(spec), "config": asdict(cfg), "data": data}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_pairs(
    load: Loader, spec: DictionarySpec, ratio: float
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor | None, ...], dict[str, int]]:
    """((x_train, x_eval), (y_train, y_eval), massive targets dropped) for one dictionary.

    A transcoder's target gets the rule the residual sites get: a token whose MLP
    output norm exceeds ``ratio`` x the median (the MLP writing the attention-sink
    dimension: a few dozen tokens at SmolLM2's layer 11, carrying ~40% of that
    output's variance) is dropped from its training and evaluation, so neither the
    loss nor the FVE is about those few tokens.
    """
    x_tr, x_ev = load(spec.hook_name)
    if not spec.hook_name_out:
        return (x_tr, x_ev), (None, None), {}
    y_tr, y_ev = load(spec.hook_name_out)
    if not ratio:
        return (x_tr, x_ev), (y_tr, y_ev), {}
    limit = ratio * float(y_tr.norm(dim=-1).median())  # the training median for both splits
    keep_tr, keep_ev = y_tr.norm(dim=-1) <= limit, y_ev.norm(dim=-1) <= limit
    dropped = {"train": int((~keep_tr).sum()), "eval": int((~keep_ev).sum())}
    return (x_tr[keep_tr], x_ev[keep_ev]), (y_tr[keep_tr], y_ev[keep_ev]), dropped


def _finished(out_dir: Path, spec: DictionarySpec, key: str, folders: bool) -> bool:
    if folders:
        path = out_dir / spec.name / SAE_CFG_FILENAME
        cfg = json.loads(path.read_text()) if path.is_file() else {}
    else:
        path = out_dir / f"{spec.name}.safetensors"
        if not path.is_file():
            return False
        with safe_open(str(path), framework="pt") as f:
            cfg = json.loads((f.metadata() or {}).get("cfg", "{}"))
    return cfg.get("metadata", {}).get("train_key") == key


def _timed_steps(load: Loader, spec: DictionarySpec, cfg: TrainConfig, seconds: float, device: str) -> int:
    """Steps that fit in ``seconds`` per dictionary, from a 10-step trial."""
    x, _ = load(spec.hook_name)
    y = load(spec.hook_name_out)[0].to(device) if spec.hook_name_out else None
    trial = TrainConfig(**{**asdict(cfg), "steps": 10, "warmup_steps": 2, "refit_decoder": False})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    train_topk(x.to(device), trial, targets=y, log_every=10**9)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t) / trial.steps
    return max(cfg.warmup_steps * 2, min(cfg.steps, int(seconds / per_step)))


def train_many(
    load: Loader,
    info: dict[str, Any],
    out: str | Path,
    specs: Sequence[DictionarySpec],
    cfg: TrainConfig,
    *,
    device: str,
    seconds_per_sae: float | None = None,
    model_name: str = "SmolLM2-135M-Instruct",
    extra_metadata: dict[str, Any] | None = None,
    folders: bool = False,
    min_fve: float = 0.72,
    retry_k: int | None = None,
    deadline: float | None = None,
    t_start: float | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write one dictionary per spec; skip those already written with the same recipe.

    ``load(hook)`` gives (train, eval) activations. Writes SAELens folders (with
    ``folders``) or packed float16 files under ``out``, and ``metrics.json``
    there after each dictionary (merged with one already there). A dictionary
    whose held-out float16 FVE is below ``min_fve`` is trained again with
    ``k=retry_k`` when that fits before ``deadline`` seconds.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    say = stamp(t_start)
    if seconds_per_sae:
        steps = _timed_steps(load, specs[0], cfg, seconds_per_sae, device)
        say(f"timed trial -> {steps} steps per dictionary (cap {cfg.steps})")
        cfg = TrainConfig(**{**asdict(cfg), "steps": steps})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    old = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics: dict[str, Any] = {
        "model_name": model_name,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "torch": torch.__version__,
        "train_config": asdict(cfg),
        **{k: v for k, v in info.items() if k not in ("activation_norms", "hooks")},
        "dictionaries": old.get("dictionaries", {}),
    }
    for i, spec in enumerate(specs):
        (x_tr, x_ev), (y_tr, y_ev), dropped = _load_pairs(load, spec, cfg.massive_ratio)
        key = train_key(spec, cfg, info, dropped)
        if _finished(out_dir, spec, key, folders) and spec.name in metrics["dictionaries"]:
            say(f"{spec.name}: already trained with this recipe (key {key}); kept")
            continue
        x_tr, x_ev = x_tr.to(device), x_ev.to(device)
        y_tr, y_ev = (None, None) if y_tr is None else (y_tr.to(device), y_ev.to(device))
        seed = dictionary_seed(cfg.seed, str(spec))
        say(f"training {spec} ({cfg.steps} steps of {cfg.batch_size} tokens, seed {seed})")

        def prog(step: int, rec: dict[str, float], name: str = spec.name) -> None:
            say(f"  {name} step {step}/{cfg.steps} fve(batch) {rec['fve_train_batch']:.4f} "
                f"aux {rec['aux_loss']:.3f} dead(auxk) {rec['dead_for_auxk']:.4f} lr {rec['lr']:.2e}")  # fmt: skip

        run_cfg = cfg
        while True:
            weights, record = train_topk(
                x_tr, run_cfg, targets=y_tr, seed=seed, log_every=max(1, cfg.steps // 10), progress=prog
            )
            ev_sgd = None
            if run_cfg.refit_decoder:
                # refit on 95% of the training tokens; keep it only if it does better on the other 5%
                cut = len(x_tr) - len(x_tr) // 20
                y_fit, y_val = (None, None) if y_tr is None else (y_tr[:cut], y_tr[cut:])
                refit = refit_decoder(weights, x_tr[:cut], run_cfg.k, targets=y_fit)
                val_sgd = evaluate(weights, x_tr[cut:], run_cfg.k, targets=y_val)["fve"]
                val_refit = evaluate(refit, x_tr[cut:], run_cfg.k, targets=y_val)["fve"]
                say(f"  {spec.name}: least-squares decoder: validation fve {val_sgd:.4f} -> {val_refit:.4f}")
                if val_refit > val_sgd:
                    ev_sgd = evaluate(weights, x_ev, run_cfg.k, targets=y_ev)
                    weights = refit
                    record["decoder_refit"] = {"validation_fve_sgd": val_sgd, "validation_fve_refit": val_refit}
                else:
                    record["decoder_refit"] = f"not kept (validation fve {val_refit:.4f} <= {val_sgd:.4f})"
            ev = evaluate(weights, x_ev, run_cfg.k, targets=y_ev)
            # the committed weights are float16: report what the float16 dictionary does
            ev16 = evaluate({n: t.half().float() for n, t in weights.items()}, x_ev, run_cfg.k, targets=y_ev)
            say(f"  {spec.name} held-out (k={run_cfg.k}): {ev} | float16: {ev16}")
            needed = record["wall_seconds"] * (2 + len(specs) - 1 - i)
            if (
                ev16["fve"] >= min_fve
                or not retry_k
                or run_cfg.k >= retry_k
                or (deadline and time.perf_counter() - t_start + needed > deadline)
            ):
                break
            say(f"  {spec.name}: fve {ev16['fve']:.3f} < {min_fve}: training again with k={retry_k}")
            run_cfg = TrainConfig(**{**asdict(cfg), "k": retry_k})
        layer, site = spec.layer, ("transcoder" if spec.is_transcoder else None)
        fve_of = spec.hook_name_out or spec.hook_name
        meta = {
            "trained_by": TRAINED_BY,
            "eval": {**ev16, "fve_float32": ev["fve"], "fve_of": fve_of, "split": "held-out windows (every 20th)"}
            | ({"fve_before_decoder_refit": ev_sgd["fve"]} if ev_sgd else {}),
            "train": {k: v for k, v in record.items() if k != "log"} | {"config": asdict(run_cfg)},
            "activation_norms": {h: info.get("activation_norms", {}).get(h) for h in spec.hooks},
            "tokens_used": (
                f"position 0 (<|endoftext|>) never used; tokens with residual norm > {cfg.massive_ratio}x the median "
                f"at any collected resid_post site dropped (train {info['massive_tokens_dropped']['train']}, "
                f"eval {info['massive_tokens_dropped']['eval']})"
                + (
                    f"; tokens whose target norm > {cfg.massive_ratio}x its median dropped (train "
                    f"{dropped['train']}, eval {dropped['eval']})"
                    if spec.is_transcoder
                    else ""
                )
            ),
            "layer": layer,
            "weights_stored_as": "float16",
            "gguf_sha256": info["gguf_sha256"],
            "device": metrics["device"],
            "seed": seed,
            "train_key": key,
        } | ({"kind": site} if site else {})
        meta.update(extra_metadata or {})
        d_out = None if y_tr is None else y_tr.shape[1]
        sae_cfg = saelens_cfg(spec, x_tr.shape[1], cfg.d_sae, run_cfg.k, d_out=d_out, model_name=model_name,
                              context_size=info["context_size"], metadata=meta)  # fmt: skip
        if folders:
            save_saelens_folder(out_dir / spec.name, weights, sae_cfg, dtype=torch.float16)
        else:
            save_packed(out_dir / f"{spec.name}.safetensors", weights, sae_cfg)
        metrics["dictionaries"][spec.name] = {
            "kind": "transcoder" if spec.is_transcoder else "sae",
            "hook_name": spec.hook_name,
            **({"hook_name_out": spec.hook_name_out} if spec.is_transcoder else {}),
            "d_sae": cfg.d_sae,
            "k": run_cfg.k,
            **{k: ev16[k] for k in ("fve", "l0", "dead_fraction", "eval_tokens")},
            "fve_of": fve_of,
            **({"massive_targets_dropped": dropped} if spec.is_transcoder else {}),
            "fve_float32": ev["fve"],
            "fve_before_decoder_refit": ev_sgd["fve"] if ev_sgd else None,
            "train_tokens": record["train_tokens"],
            "wall_seconds": record["wall_seconds"],
            "seed": seed,
            "log": record["log"],
        }
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        del x_tr, x_ev, y_tr, y_ev
    metrics["wall_seconds_this_run"] = time.perf_counter() - t_start
    metrics["wall_seconds_training"] = sum(d["wall_seconds"] for d in metrics["dictionaries"].values())
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    say("done")
    return metrics


# ----------------------------------------------------------------------------- command line


def _add_train_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--out", required=True, help="folder for the dictionaries and metrics.json")
    r.add_argument("--dictionaries", nargs="+", required=True, help="hook names (SAEs) and transcoder:LAYER")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--seconds-per-sae", type=float, default=None, help="cap steps from a timed trial")
    r.add_argument("--min-fve", type=float, default=0.72, help="retrain below this held-out FVE")
    r.add_argument("--retry-k", type=int, default=None, help="k for the retrain (none: no retrain)")
    r.add_argument("--deadline", type=float, default=None, help="seconds: no retrain that would end after this")
    r.add_argument("--folders", action="store_true", help="write SAELens folders instead of packed files")
    r.add_argument("--extra-metadata", default=None, help="JSON merged into every cfg's metadata")
    for f in TrainConfig.__dataclass_fields__.values():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        r.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)


def _train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        device=args.device, seconds_per_sae=args.seconds_per_sae, folders=args.folders, min_fve=args.min_fve,
        retry_k=args.retry_k, deadline=args.deadline,
        extra_metadata=json.loads(args.extra_metadata) if args.extra_metadata else None,
    )  # fmt: skip


def _hooks(specs: Iterable[DictionarySpec]) -> list[str]:
    return list(dict.fromkeys(h for s in specs for h in s.hooks))


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.smollm2.train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="collect activations into a cache folder")
    r = sub.add_parser("run", help="collect activations (or reuse the cache), train, evaluate, write")
    for q in (c, r):
        q.add_argument("--gguf", required=True)
        q.add_argument("--tokens", required=True, help=".npz with train/eval token windows")
        q.add_argument("--acts", required=True, help="activation cache folder")
        q.add_argument("--train-stride", type=int, default=1, help="use every n-th train window")
        q.add_argument("--eval-stride", type=int, default=1, help="use every n-th eval window")
    c.add_argument("--dictionaries", nargs="+", required=True, help="hook names (SAEs) and transcoder:LAYER")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--massive-ratio", type=float, default=TrainConfig.massive_ratio)
    _add_train_args(r)
    t = sub.add_parser("train", help="train dictionaries from an activation cache folder")
    t.add_argument("--acts", required=True)
    _add_train_args(t)
    u = sub.add_parser("unpack", help="packed .safetensors files -> SAELens folders")
    u.add_argument("packed", nargs="+")
    u.add_argument("--dest", required=True)
    args = p.parse_args(list(argv) if argv is not None else None)
    say = stamp(time.perf_counter())
    try:
        if args.cmd == "unpack":
            for path in args.packed:
                print(unpack(path, Path(args.dest) / Path(path).name.removesuffix(".safetensors")))
            return 0
        specs = [DictionarySpec.parse(d) for d in args.dictionaries]
        if args.cmd in ("collect", "run"):
            cached_collect(Path(args.acts), args.gguf, args.tokens, _hooks(specs), device=args.device,
                           massive_ratio=args.massive_ratio, train_stride=args.train_stride,
                           eval_stride=args.eval_stride, say=say)  # fmt: skip
        if args.cmd in ("train", "run"):
            info = activations_info(args.acts)
            if info is None:
                raise TrainError(f"{args.acts}: no complete activation cache (run the collect subcommand)")
            cfg = TrainConfig(**{n: getattr(args, n) for n in TrainConfig.__dataclass_fields__})
            train_many(lambda h: load_activations(args.acts, h), info, args.out, specs, cfg, **_train_kwargs(args))
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
