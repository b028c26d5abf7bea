"""Text to token windows, and the model activations a dictionary is trained on.

The trainer collects four kinds of site from a Llama-style transformers model
(TransformerLens hook names, parsed by the product's ``builders.weights``):

- ``blocks.L.hook_resid_post``: decoder layer L's output (``hidden_states[L + 1]``);
- ``blocks.L.attn.hook_z``: the input of layer L's ``o_proj``, heads concatenated in head order;
- ``blocks.L.mlp.hook_in``: the MLP's input, i.e. the post-attention RMSNorm's output with its gain
  (the name SAELens and circuit-tracer give the hook a transcoder reads);
- ``blocks.L.hook_mlp_out``: what the MLP adds to the residual stream (a transcoder's target).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from builders.weights import HOOK_SUFFIX_OF_SITE, site_of_hook
from examples.smollm2.errors import TrainError

ENDOFTEXT_ID = 0  # SmolLM2's <|endoftext|>: its pre-training document separator, put at position 0 of every window
MLP_IN_SUFFIX = "mlp.hook_in"  # SAELens (HookedSAETransformer) and circuit-tracer: the MLP module's input
TRAINABLE_SITES = ("resid_post", "attn_z", "mlp_in", "mlp_out")


def parse_hook(hook_name: str) -> tuple[int, str]:
    """``(layer, site)`` of a hook this trainer collects; TrainError for any other (the product's own parsing)."""
    try:
        layer, site = site_of_hook(hook_name)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if site not in TRAINABLE_SITES:
        raise TrainError(f"unsupported hook {hook_name!r}: the trainer collects {', '.join(TRAINABLE_SITES)}")
    return layer, site


# ----------------------------------------------------------------------------- text and tokens


def kjv_paragraphs(raw: str) -> str:
    """Turn ``bible -f`` output ("Ge1:1 In the beginning ...") into one paragraph per chapter."""
    chapters: dict[str, list[str]] = {}
    for line in raw.splitlines():
        m = re.match(r"^(\S+?\d+):\d+ (.*)$", line)
        if m:
            chapters.setdefault(m.group(1), []).append(m.group(2).strip())
        elif line.strip() and chapters:  # a wrapped verse continues
            next(reversed(chapters.values())).append(line.strip())
    return "\n\n".join(" ".join(v) for v in chapters.values()) + "\n"


def tokenize_windows(tokenizer: Any, text: str, ctx_len: int, chunk_chars: int = 20_000) -> np.ndarray:
    """Token ids of ``text`` cut into windows of ``ctx_len``: <|endoftext|> then ctx_len - 1 text tokens.

    The text is tokenized in paragraph-aligned chunks (fast, and a chunk edge
    only ever falls on a blank line). The last partial window is dropped.
    """
    ids: list[int] = []
    paras = text.split("\n\n")
    buf: list[str] = []
    size = 0
    for i, p in enumerate(paras):
        buf.append(p)
        size += len(p)
        if size >= chunk_chars or i == len(paras) - 1:
            chunk = "\n\n".join(buf) + ("\n\n" if i < len(paras) - 1 else "")
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
            buf, size = [], 0
    body = ctx_len - 1
    n = len(ids) // body
    arr = np.asarray(ids[: n * body], dtype=np.int64).reshape(n, body)  # (n, ctx_len - 1)
    first = np.full((n, 1), ENDOFTEXT_ID, dtype=np.int64)
    return np.concatenate([first, arr], axis=1).astype(np.uint16)  # (n, ctx_len); vocab 49,152 < 65,536


def split_windows(windows: np.ndarray, eval_every: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Hold out every ``eval_every``-th window (5% for 20): disjoint stretches of text for evaluation."""
    is_eval = (np.arange(len(windows)) % eval_every) == eval_every - 1
    return windows[~is_eval], windows[is_eval]


# ----------------------------------------------------------------------------- model and activations


def load_gguf_model(gguf_path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The GGUF's model as transformers dequantizes it (fp32), in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    path = Path(gguf_path)
    if not path.is_file():
        raise TrainError(f"GGUF file not found: {path}")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.to(device).eval()


def decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise TrainError(f"{type(model).__name__} has no .model.layers: not a Llama-style decoder")
    return inner.layers


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest hooked layer has run."""


def _register(layer: torch.nn.Module, site: str, name: str, captured: dict[str, torch.Tensor]) -> Any:
    """A torch hook that stores ``site``'s activation of this layer under ``name``."""
    if site == "resid_post":

        def out_hook(_mod, _inp, out):
            captured[name] = out[0] if isinstance(out, tuple) else out  # (b, ctx, d_model)

        return layer.register_forward_hook(out_hook)
    if site == "attn_z":

        def z_hook(_mod, args):
            captured[name] = args[0]  # (b, ctx, n_heads * d_head)

        return layer.self_attn.o_proj.register_forward_pre_hook(z_hook)
    if hasattr(layer, "post_feedforward_layernorm"):  # Gemma-2: hook_mlp_out would be after a norm this hook misses
        raise TrainError(f"{name}: MLP sites are supported for Llama-style layers (no post-feedforward norm)")
    if site == "mlp_in":

        def in_hook(_mod, args):
            captured[name] = args[0]  # (b, ctx, d_model): post_attention_layernorm(resid_mid), gain included

        return layer.mlp.register_forward_pre_hook(in_hook)

    def mlp_hook(_mod, _inp, out):
        captured[name] = out  # (b, ctx, d_model)

    return layer.mlp.register_forward_hook(mlp_hook)


@torch.inference_mode()
def collect_activations(
    model: torch.nn.Module,
    windows: np.ndarray,
    hook_names: Sequence[str],
    *,
    batch_windows: int = 64,
    skip_positions: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at ``hook_names`` for every token of ``windows``, first ``skip_positions`` dropped.

    Position 0 is dropped because it is <|endoftext|>, where SmolLM2 writes
    massive-activation outliers. Returns {hook_name: (n_windows * (ctx_len -
    skip_positions), d) float32} on the model's device.
    """
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    n, ctx = windows.shape
    keep = ctx - skip_positions
    captured: dict[str, torch.Tensor] = {}
    parsed = {name: parse_hook(name) for name in hook_names}
    handles = []
    try:
        for name, (layer, site) in parsed.items():
            if layer >= len(layers):
                raise TrainError(f"{name}: the model has only {len(layers)} layers")
            handles.append(_register(layers[layer], site, name, captured))
        # nothing after the deepest hooked layer is needed: stop the forward pass there (saves the rest + W_U)

        def stop(_mod, _inp, _out):
            raise _StopForward

        handles.append(layers[max(layer for layer, _ in parsed.values())].register_forward_hook(stop))
        result: dict[str, torch.Tensor] = {}
        for start in range(0, n, batch_windows):
            ids = torch.from_numpy(windows[start : start + batch_windows].astype(np.int64)).to(device)  # (b, ctx)
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
            for name in hook_names:
                acts = captured[name][:, skip_positions:, :].float()  # (b, keep, d)
                if name not in result:
                    result[name] = torch.empty((n * keep, acts.shape[-1]), dtype=torch.float32, device=device)
                result[name][start * keep : start * keep + acts.shape[0] * keep] = acts.reshape(-1, acts.shape[-1])
            if progress:
                progress(min(start + batch_windows, n), n)
    finally:
        for h in handles:
            h.remove()
    return result


@torch.inference_mode()
def check_hooks(model: torch.nn.Module, windows: np.ndarray, hook_names: Sequence[str]) -> dict[str, float]:
    """Oracle check on a few windows; raises TrainError on a mismatch. Returns {hook: max abs diff}.

    resid_post must equal transformers' ``hidden_states[L + 1]``; an ``mlp.hook_in``
    / ``hook_mlp_out`` pair of layer L must satisfy ``out == mlp(in)`` and
    ``in == post_attention_layernorm(hidden_states[L + 1] - out)``, which pins the
    input to the normalised mid-layer residual and the output to what the MLP adds.
    """
    device = next(model.parameters()).device
    few = windows[:2]
    got = collect_activations(model, few, hook_names, skip_positions=1)
    ids = torch.from_numpy(few.astype(np.int64)).to(device)
    hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    layers = decoder_layers(model)
    d_model = hs[0].shape[-1]
    diffs: dict[str, float] = {}

    def compare(name: str, got_t: torch.Tensor, ref: torch.Tensor) -> None:
        diffs[name] = float((got_t - ref).abs().max())
        if diffs[name] > 1e-4 * max(1.0, float(ref.abs().max())):
            raise TrainError(f"{name}: hooked activations differ from the model's own computation by {diffs[name]}")

    for name in hook_names:
        layer, site = parse_hook(name)
        post = hs[layer + 1][:, 1:, :].reshape(-1, d_model).float()  # (2 * (ctx - 1), d_model)
        if site == "resid_post" and layer < len(layers) - 1:  # the last hidden state is after the final norm
            compare(name, got[name], post)
        out_name = f"blocks.{layer}.{HOOK_SUFFIX_OF_SITE['mlp_out']}"
        if site == "mlp_in" and out_name in got and layer < len(layers) - 1:
            x_in, y_out = got[name], got[out_name]
            compare(out_name, y_out, layers[layer].mlp(x_in))
            compare(name, x_in, layers[layer].post_attention_layernorm(post - y_out))
    return diffs


@torch.no_grad()
def drop_massive(acts: dict[str, torch.Tensor], ratio: float) -> tuple[dict[str, torch.Tensor], int]:
    """Drop attention-sink tokens from every site's activations.

    SmolLM2 writes "massive activations" (one residual dimension, norm 30-150x
    the median) not only at position 0 but at the odd first real token (a
    newline right after <|endoftext|>). A few such tokens would dominate the
    squared error, so a token whose norm exceeds ``ratio`` x the median norm at
    ANY collected ``hook_resid_post`` is dropped from all sites alike.
    Returns (filtered activations, number of tokens dropped).
    """
    resid = [name for name in acts if parse_hook(name)[1] == "resid_post"]
    if not resid or not ratio:
        return acts, 0
    n = len(acts[resid[0]])
    keep = torch.ones(n, dtype=torch.bool, device=acts[resid[0]].device)
    for name in resid:
        norms = acts[name].norm(dim=-1)  # (n,)
        median = norms[:: max(1, n // 1_000_000)].median()
        keep &= norms <= ratio * median
    n_drop = int((~keep).sum())
    if n_drop:
        for name in list(acts):
            acts[name] = acts[name][keep]
    return acts, n_drop


# ----------------------------------------------------------------------------- the activation cache

INFO_FILENAME = "info.json"


def _site_file(folder: Path, hook_name: str) -> Path:
    return folder / f"{hook_name}.safetensors"


def save_activations(folder: str | os.PathLike, train_acts: dict, eval_acts: dict, info: dict[str, Any]) -> Path:
    """One safetensors file per hook (``train`` and ``eval`` tensors) and ``info.json``, written last.

    A training run then holds one site in memory at a time, and a folder
    without ``info.json`` is an interrupted collection (collected again).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO_FILENAME).unlink(missing_ok=True)
    for name in train_acts:
        tmp = _site_file(folder, name).with_suffix(".partial")
        save_file({"train": train_acts[name].cpu().contiguous(), "eval": eval_acts[name].cpu().contiguous()}, str(tmp))
        tmp.replace(_site_file(folder, name))
    (folder / INFO_FILENAME).write_text(json.dumps({**info, "hooks": list(train_acts)}, indent=2) + "\n")
    return folder


def activations_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The cache's info, or None when the folder holds no complete collection."""
    path = Path(folder) / INFO_FILENAME
    return json.loads(path.read_text()) if path.is_file() else None


def load_activations(folder: str | os.PathLike, hook_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) float32 activations of one hook from a :func:`save_activations` folder."""
    path = _site_file(Path(folder), hook_name)
    if not path.is_file():
        raise TrainError(f"{folder} has no activations for {hook_name}")
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("train").float(), f.get_tensor("eval").float()
