"""A small TopK sparse-autoencoder trainer and the activation collection behind it.

sae-atlas explains SAEs from weights alone; the one place it needs activations is
here, to train the SAEs behind the shipped example (no published SAE for
SmolLM2-135M-Instruct can be reached from this project). The recipe follows
Gao et al. 2024, "Scaling and evaluating sparse autoencoders":

- TopK activation: ``a = topk_k(relu((x - b_dec) @ W_enc + b_enc))``;
  ``x_hat = a @ W_dec + b_dec``. This is SAELens's ``topk`` architecture.
- decoder rows kept at unit norm (gradient projected, rows renormalised);
  ``W_enc`` initialised to ``W_dec.T``; ``b_dec`` to the data mean;
- Adam, short warm-up, linear decay over the last 20% of steps;
- the AuxK loss: latents silent for ``dead_after_tokens`` training tokens are
  "dead", and the top ``aux_k`` of them learn to reconstruct the residual
  error, which keeps the dead fraction low.

Inputs are scaled by one scalar (so the mean norm is sqrt(d_in)) while
training, for a learning rate that suits every layer; the scale is folded back
into ``b_enc`` and ``b_dec`` before saving, so a saved SAE reads and writes RAW
activations with unit-norm decoder rows (latent values are in raw units).

Folders are written in the SAELens 6.x layout: ``cfg.json`` plus
``sae_weights.safetensors`` with ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``,
``b_enc (d_sae,)``, ``b_dec (d_in,)``.

``python -m builders.train run ...`` is the entry point the GPU run uses (it
needs only torch, numpy, safetensors, transformers and gguf); ``unpack`` turns
its one-file-per-SAE output into SAELens folders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

SAE_CFG_FILENAME = "cfg.json"  # SAELens names
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
ENDOFTEXT_ID = 0  # SmolLM2's <|endoftext|>: its pre-training document separator, put at position 0 of every window

_RESID_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_Z_RE = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


try:
    from atlas.errors import AtlasError as _ErrorBase
except ImportError:  # the GPU machine runs this module without the atlas's dependencies (sqlite-utils)
    _ErrorBase = Exception  # type: ignore[misc,assignment]


class TrainError(_ErrorBase):  # type: ignore[misc,valid-type]
    """Bad input to the trainer: wrong shapes, unknown hook, missing file."""


@dataclass
class TrainConfig:
    """Hyperparameters of one TopK SAE run."""

    d_sae: int = 4096  # latents (the issue asks for >= 4,096)
    k: int = 32  # active latents per token: L0 is exactly k
    lr: float = 4e-4  # Adam; Gao et al.'s 2e-4 at 16k latents, scaled by 1/sqrt(d_sae / 16k)
    batch_size: int = 4096  # tokens per step
    steps: int = 20_000  # optimiser steps
    warmup_steps: int = 200  # linear warm-up of the learning rate
    decay_fraction: float = 0.2  # linear decay to zero over this last fraction of steps
    aux_k: int = 256  # AuxK: dead latents allowed to model the residual error (Gao et al.: d_in / 2 or so)
    aux_coef: float = 1 / 32  # weight of the AuxK loss (Gao et al.)
    dead_after_tokens: int = 1_000_000  # silent on this many training tokens = dead (for AuxK only)
    adam_eps: float = 6.25e-10  # Gao et al.: small eps so that rare latents still move
    grad_clip: float = 1.0  # global gradient-norm clip
    seed: int = 0  # init and batch order
    sparse_encoder_grad: bool = False  # back-propagate through the k selected latents only (see TopKSAE)
    refit_decoder: bool = False  # finish with a least-squares decoder (see refit_decoder): short runs gain most
    init_from_data: bool = True  # decoder rows start at random centred training tokens (faster short runs)
    massive_ratio: float = 20.0  # drop tokens whose resid norm > this x median (attention sinks); 0 = keep all


# ----------------------------------------------------------------------------- hooks


def parse_hook(hook_name: str) -> tuple[str, int]:
    """(site, layer) for the two hook kinds this trainer collects."""
    if m := _RESID_RE.match(hook_name):
        return "resid_post", int(m.group(1))
    if m := _Z_RE.match(hook_name):
        return "attn_z", int(m.group(1))
    raise TrainError(f"unsupported hook {hook_name!r}: expected blocks.L.hook_resid_post or blocks.L.attn.hook_z")


def short_name(hook_name: str) -> str:
    """Folder name for an SAE, e.g. ``layer_14_resid_post`` or ``layer_14_hook_z``."""
    site, layer = parse_hook(hook_name)
    return f"layer_{layer}_{'hook_z' if site == 'attn_z' else site}"


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


def _decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise TrainError(f"{type(model).__name__} has no .model.layers: not a Llama-style decoder")
    return inner.layers


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest hooked layer has run."""


@torch.inference_mode()
def collect_activations(
    model: torch.nn.Module,
    windows: np.ndarray,
    hook_names: Sequence[str],
    *,
    batch_windows: int = 64,
    skip_positions: int = 1,
    out_device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at ``hook_names`` for every token of ``windows``, first ``skip_positions`` dropped.

    ``blocks.L.hook_resid_post`` is decoder layer L's output (hidden_states[L + 1]);
    ``blocks.L.attn.hook_z`` is the input of layer L's o_proj, shape
    (tokens, n_heads * d_head), heads concatenated in head order, which is how
    TransformerLens flattens ``z`` for hook_z SAEs. Position 0 is dropped because
    SmolLM2's first position carries massive-activation outliers.

    Returns {hook_name: (n_windows * (ctx_len - skip_positions), d_in) float32}.
    """
    layers = _decoder_layers(model)
    device = next(model.parameters()).device
    out_device = device if out_device is None else torch.device(out_device)
    n, ctx = windows.shape
    keep = ctx - skip_positions
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in hook_names:
        site, layer = parse_hook(name)
        if layer >= len(layers):
            raise TrainError(f"{name}: the model has only {len(layers)} layers")
        if site == "resid_post":

            def hook(_mod, _inp, out, name=name):
                captured[name] = out[0] if isinstance(out, tuple) else out  # (b, ctx, d_model)

            handles.append(layers[layer].register_forward_hook(hook))
        else:

            def pre_hook(_mod, args, name=name):
                captured[name] = args[0]  # (b, ctx, n_heads * d_head)

            handles.append(layers[layer].self_attn.o_proj.register_forward_pre_hook(pre_hook))
    # nothing after the deepest hooked layer is needed: stop the forward pass there (saves the rest + W_U)
    last = max(parse_hook(name)[1] for name in hook_names)

    def stop(_mod, _inp, _out):
        raise _StopForward

    handles.append(layers[last].register_forward_hook(stop))  # registered last: runs after the capture hooks
    result: dict[str, torch.Tensor] = {}
    try:
        for start in range(0, n, batch_windows):
            ids = torch.from_numpy(windows[start : start + batch_windows].astype(np.int64)).to(device)  # (b, ctx)
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
            for name in hook_names:
                acts = captured[name][:, skip_positions:, :].float()  # (b, keep, d_in)
                if name not in result:
                    result[name] = torch.empty((n * keep, acts.shape[-1]), dtype=torch.float32, device=out_device)
                result[name][start * keep : start * keep + acts.shape[0] * keep] = acts.reshape(-1, acts.shape[-1])
            if progress:
                progress(min(start + batch_windows, n), n)
    finally:
        for h in handles:
            h.remove()
    return result


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
    resid = [name for name in acts if parse_hook(name)[0] == "resid_post"]
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


# ----------------------------------------------------------------------------- the SAE


class TopKSAE(torch.nn.Module):
    """The trainable SAE. :meth:`weights` gives the SAELens tensors.

    The encoder is kept as ``W_enc_T (d_sae, d_in)`` so that its gradient can
    be computed sparsely: the loss depends on only the k selected latents per
    token, so only their pre-activations are recomputed with autograd (a
    gather of k encoder rows) instead of back-propagating through the dense
    (B, d_sae) matrix product. That halves the cost of a step on the CPU.
    """

    def __init__(
        self, d_in: int, d_sae: int, k: int, generator: torch.Generator, init_rows: torch.Tensor | None = None
    ):
        super().__init__()
        w_dec = torch.randn(d_sae, d_in, generator=generator) if init_rows is None else init_rows.float().cpu()
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)  # (d_sae, d_in)
        self.W_dec = torch.nn.Parameter(w_dec.clone())
        self.W_enc_T = torch.nn.Parameter(w_dec.clone())  # (d_sae, d_in): W_enc = W_dec.T at init (Gao et al.)
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.k = k

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc_T.T + self.b_enc  # (B, d_sae)

    def selected_pre_acts(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Pre-activations of latents ``idx`` (B, j) only, differentiable. (B, d_in) -> (B, j)."""
        rows = F.embedding(idx, self.W_enc_T)  # (B, j, d_in)
        return torch.einsum("bd,bjd->bj", x - self.b_dec, rows) + self.b_enc[idx]

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor, bias: bool = True) -> torch.Tensor:
        # sum_j vals[b, j] * W_dec[idx[b, j]]: never builds the dense (B, d_sae) activation matrix
        out = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum")  # (B, d_in)
        return out + self.b_dec if bias else out

    def weights(self) -> dict[str, torch.Tensor]:
        """SAELens-named float32 copies on the CPU (training scale NOT folded: see :func:`train_sae`)."""
        return {
            "W_enc": self.W_enc_T.detach().T.float().cpu().contiguous(),  # (d_in, d_sae)
            "W_dec": self.W_dec.detach().float().cpu().contiguous(),  # (d_sae, d_in)
            "b_enc": self.b_enc.detach().float().cpu().contiguous(),  # (d_sae,)
            "b_dec": self.b_dec.detach().float().cpu().contiguous(),  # (d_in,)
        }

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component along each decoder row (rows stay unit-norm to first order)."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)  # (d_sae, 1)
            self.W_dec.grad -= along * self.W_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if step >= decay_start:
            return max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
        return 1.0

    return f


@torch.no_grad()
def _input_scale(acts: torch.Tensor, chunk: int = 65_536) -> float:
    """Scalar s with mean ||s x|| = sqrt(d_in) (SAELens's 'expected_average_only_in' norm)."""
    total = sum(float(acts[i : i + chunk].norm(dim=-1).sum()) for i in range(0, len(acts), chunk))
    return math.sqrt(acts.shape[1]) / (total / len(acts))


def train_sae(
    acts: torch.Tensor,
    cfg: TrainConfig,
    *,
    log_every: int = 500,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train one TopK SAE on ``acts`` (n_tokens, d_in), on the device ``acts`` lives on.

    Returns (raw-space weights {W_enc, W_dec, b_enc, b_dec} as float32 on the
    CPU, training record with the input scale, loss log and wall time).
    """
    if acts.ndim != 2 or len(acts) < cfg.batch_size:
        raise TrainError(f"need (n_tokens >= batch_size={cfg.batch_size}, d_in) activations, got {tuple(acts.shape)}")
    if not 0 < cfg.k <= cfg.d_sae:
        raise TrainError(f"k={cfg.k} must be in 1..d_sae={cfg.d_sae}")
    device = acts.device
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, d_in = acts.shape
    scale = _input_scale(acts)
    mean = acts.mean(0) * scale  # (d_in,)
    # mean squared distance to the mean: the loss is reported as a fraction of it (1 - FVE)
    var_total = float(sum(((acts[i : i + 65_536] * scale - mean) ** 2).sum() for i in range(0, n, 65_536)) / n)

    init_rows = None
    if cfg.init_from_data:
        # decoder rows start at centred training tokens: a short run starts from directions the data uses
        pick = torch.randint(0, n, (cfg.d_sae,), generator=gen).to(device)
        init_rows = acts[pick] * scale - mean  # (d_sae, d_in)
    sae = TopKSAE(d_in, cfg.d_sae, cfg.k, gen, init_rows=init_rows).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(mean)
        # scale the encoder so that the first reconstructions have the data's size: k latents that all
        # point the data's way would otherwise add up to k times too much (least-squares scalar, one batch)
        xb = acts[torch.randint(0, n, (min(n, cfg.batch_size),), generator=gen).to(device)] * scale - mean
        pre = sae.pre_acts(xb + mean)  # (B, d_sae)
        top = pre.topk(cfg.k, dim=-1)
        recon = sae.decode_sparse(F.relu(top.values), top.indices, bias=False)  # (B, d_in)
        c = float((xb * recon).sum() / (recon * recon).sum().clamp_min(1e-12))
        if c > 0:
            sae.W_enc_T.mul_(c)
    # fused Adam: one kernel per step on CPU and GPU alike (the unfused CPU update costs more than the SAE)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    silent_tokens = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)  # tokens since each latent last fired
    perm = torch.randperm(n, generator=gen).to(device)
    pos = 0
    log: list[dict[str, float]] = []
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen).to(device), 0
        x = acts[perm[pos : pos + cfg.batch_size]] * scale  # (B, d_in)
        pos += cfg.batch_size

        if cfg.sparse_encoder_grad:
            with torch.no_grad():
                pre = sae.pre_acts(x)  # (B, d_sae), no graph: only the selected latents get gradients
                idx = pre.topk(cfg.k, dim=-1, sorted=False).indices  # (B, k)
            vals = F.relu(sae.selected_pre_acts(x, idx))  # (B, k)
        else:
            pre = sae.pre_acts(x)  # (B, d_sae)
            top = pre.topk(cfg.k, dim=-1, sorted=False)
            vals, idx = F.relu(top.values), top.indices  # (B, k)
        err = x - sae.decode_sparse(vals, idx)  # (B, d_in)
        mse = err.pow(2).sum(-1).mean() / var_total
        loss = mse

        with torch.no_grad():
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=device)
            fired[idx[vals > 0]] = True
            silent_tokens += cfg.batch_size
            silent_tokens[fired] = 0
            dead = silent_tokens > cfg.dead_after_tokens  # (d_sae,)
            n_dead = int(dead.sum())
        aux = torch.zeros((), device=device)
        if n_dead > 0:
            # AuxK: the top dead latents reconstruct what the live ones missed
            k_aux = min(cfg.aux_k, n_dead)
            a_top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)  # (B, k_aux)
            a_idx = a_top.indices
            a_vals = F.relu(sae.selected_pre_acts(x, a_idx) if cfg.sparse_encoder_grad else a_top.values)
            e = err.detach()
            e_hat = sae.decode_sparse(a_vals, a_idx, bias=False)  # (B, d_in)
            aux = (e - e_hat).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + cfg.aux_coef * torch.nan_to_num(aux)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        sae.normalise_decoder()

        if (step + 1) % log_every == 0 or step == cfg.steps - 1:
            rec = {
                "step": step + 1,
                "fve_train_batch": 1.0 - float(mse.detach()),
                "aux_loss": float(aux.detach()),
                "dead_for_auxk": n_dead / cfg.d_sae,
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - t0,
            }
            log.append(rec)
            if progress:
                progress(step + 1, rec)

    with torch.no_grad():
        # fold the input scale back: pre_raw = pre / s, so latent values come out in raw units
        weights = sae.weights()
        weights["b_enc"] /= scale
        weights["b_dec"] /= scale
    record = {
        "input_scale_while_training": scale,
        "train_tokens": n,
        "token_visits": cfg.steps * cfg.batch_size,
        "epochs": cfg.steps * cfg.batch_size / n,
        "wall_seconds": time.perf_counter() - t0,
        "log": log,
    }
    return weights, record


# ----------------------------------------------------------------------------- encode, decode, evaluate


def encode(weights: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """Dense TopK latent activations (SAELens semantics, apply_b_dec_to_input=True). (B, d_in) -> (B, d_sae)."""
    pre = (x.float() - weights["b_dec"].float()) @ weights["W_enc"].float() + weights["b_enc"].float()  # (B, d_sae)
    vals, idx = pre.topk(k, dim=-1)  # (B, k)
    return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))


def decode(weights: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """(B, d_sae) -> (B, d_in)."""
    return a @ weights["W_dec"].float() + weights["b_dec"].float()


@torch.inference_mode()
def evaluate_sae(
    weights: dict[str, torch.Tensor], acts: torch.Tensor, k: int, *, batch: int = 8192
) -> dict[str, float]:
    """Held-out quality of a raw-space SAE on ``acts`` (n_tokens, d_in).

    fve: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (mean over these tokens);
    l0: mean number of non-zero latents per token; dead_fraction: latents that
    never fire on these tokens.
    """
    device = acts.device
    w = {name: t.to(device).float() for name, t in weights.items()}
    mean = acts.mean(0)  # (d_in,)
    sse = sst = 0.0
    l0_sum = 0.0
    fired = torch.zeros(w["W_enc"].shape[1], dtype=torch.bool, device=device)
    for i in range(0, len(acts), batch):
        x = acts[i : i + batch].float()  # (b, d_in)
        a = encode(w, x, k)  # (b, d_sae)
        x_hat = decode(w, a)  # (b, d_in)
        sse += float((x - x_hat).pow(2).sum())
        sst += float((x - mean).pow(2).sum())
        nz = a > 0  # (b, d_sae)
        l0_sum += float(nz.sum())
        fired |= nz.any(0)
    return {
        "fve": 1.0 - sse / sst,
        "l0": l0_sum / len(acts),
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "eval_tokens": len(acts),
    }


@torch.no_grad()
def refit_decoder(
    weights: dict[str, torch.Tensor], acts: torch.Tensor, k: int, *, ridge: float = 1e-3, chunk: int = 1024
) -> dict[str, torch.Tensor]:
    """Least-squares decoder for the encoder's codes: a cheap finish for a short (CPU) run.

    With the encoder fixed, the best ``W_dec, b_dec`` for reconstructing
    ``acts`` from the TopK codes is a ridge regression, solved exactly from the
    sparse code Gram matrix (d_sae x d_sae) and code-activation products. The
    encoder, and so which latents fire, is unchanged; ``b_dec`` keeps its role
    in the encoder (SAELens subtracts it from the input), so the encoder bias
    is adjusted to match. Decoder rows are no longer unit-norm (their norm is
    the latent's output scale). ``ridge`` is relative to the mean diagonal.
    """
    d_in, d_sae = weights["W_enc"].shape
    device = acts.device
    w = {n: t.to(device).float() for n, t in weights.items()}
    gram = torch.zeros(d_sae * d_sae, device=device)  # sum_n a_n a_n^T, flattened
    cross = torch.zeros(d_sae, d_in, device=device)  # sum_n a_n x_n^T
    a_sum = torch.zeros(d_sae, device=device)
    x_sum = acts.sum(0)  # (d_in,)
    n = len(acts)
    for i in range(0, n, chunk):
        x = acts[i : i + chunk].float()  # (b, d_in)
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # (b, d_sae)
        top = pre.topk(k, dim=-1)
        vals, idx = F.relu(top.values), top.indices  # (b, k)
        pair = (idx[:, :, None] * d_sae + idx[:, None, :]).reshape(-1)  # (b * k * k,)
        gram.index_add_(0, pair, (vals[:, :, None] * vals[:, None, :]).reshape(-1))
        cross.index_add_(0, idx.reshape(-1), (vals[:, :, None] * x[:, None, :]).reshape(-1, d_in))
        a_sum.index_add_(0, idx.reshape(-1), vals.reshape(-1))
    a_mean, x_mean = a_sum / n, x_sum / n
    g = gram.view(d_sae, d_sae) - n * torch.outer(a_mean, a_mean)  # centred Gram
    c = cross - n * torch.outer(a_mean, x_mean)  # centred cross products
    lam = ridge * float(g.diagonal().mean()) + 1e-8
    g.diagonal().add_(lam)
    w_dec = torch.linalg.solve(g.double(), c.double()).float()  # (d_sae, d_in)
    b_out = x_mean - a_mean @ w_dec  # (d_in,) the decoder's output bias
    # SAELens decodes with + b_dec and encodes with - b_dec: shift the encoder bias so codes are unchanged
    b_enc = w["b_enc"] + (b_out - w["b_dec"]) @ w["W_enc"]
    return {"W_enc": w["W_enc"].cpu(), "W_dec": w_dec.cpu(), "b_enc": b_enc.cpu(), "b_dec": b_out.cpu()}


# ----------------------------------------------------------------------------- SAELens files


def saelens_cfg(
    hook_name: str,
    d_in: int,
    d_sae: int,
    k: int,
    *,
    model_name: str,
    context_size: int,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A cfg.json dict in the SAELens 6.x ``topk`` layout, our own record under metadata."""
    site, _layer = parse_hook(hook_name)
    meta = {
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_head_index": None,
        "context_size": context_size,
        "prepend_bos": True,  # <|endoftext|> at position 0, whose activations are not trained on
        "seqpos_slice": [1, None],
        "model_from_pretrained_kwargs": {},
        "training_architecture": "topk",
    }
    meta.update(metadata or {})
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the training scale is folded into b_enc/b_dec
        "reshape_activations": "hook_z" if site == "attn_z" else "none",
        "k": k,
        "rescale_acts_by_decoder_norm": False,
        "architecture": "topk",
        "metadata": meta,
    }


def _check_weights(weights: dict[str, torch.Tensor], d_in: int, d_sae: int) -> None:
    want = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for name, shape in want.items():
        if name not in weights:
            raise TrainError(f"SAE weights lack {name}")
        if tuple(weights[name].shape) != shape:
            raise TrainError(f"{name} has shape {tuple(weights[name].shape)}, expected {shape}")


def save_saelens_folder(
    folder: str | os.PathLike, weights: dict[str, torch.Tensor], cfg: dict[str, Any], *, dtype: torch.dtype
) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` atomically (a temp folder renamed into place)."""
    folder = Path(folder)
    _check_weights(weights, cfg["d_in"], cfg["d_sae"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an SAE folder is meant to be shared
    try:
        tensors = {
            name: weights[name].detach().to(dtype).cpu().contiguous() for name in ("W_enc", "W_dec", "b_enc", "b_dec")
        }
        save_file(tensors, str(tmp / SAE_WEIGHTS_FILENAME))
        (tmp / SAE_CFG_FILENAME).write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_saelens_folder(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(float32 weights, cfg) of a folder written by :func:`save_saelens_folder`."""
    folder = Path(folder)
    cfg_path, w_path = folder / SAE_CFG_FILENAME, folder / SAE_WEIGHTS_FILENAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise TrainError(f"{folder}: not an SAELens folder (needs {SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME})")
    cfg = json.loads(cfg_path.read_text())
    with safe_open(str(w_path), framework="pt") as f:
        weights = {name: f.get_tensor(name).float() for name in f.keys()}  # noqa: SIM118
    _check_weights(weights, cfg["d_in"], cfg["d_sae"])
    return weights, cfg


def save_packed(path: str | os.PathLike, weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """One float16 safetensors file per SAE with its cfg.json in the file's metadata (the GPU run's output)."""
    tensors = {name: weights[name].to(torch.float16).contiguous() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    save_file(tensors, str(path), metadata={"cfg": json.dumps(cfg)})


def unpack(packed: str | os.PathLike, folder: str | os.PathLike, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Turn a :func:`save_packed` file into an SAELens folder (float16 tensors), merging ``extra_metadata``."""
    with safe_open(str(packed), framework="pt") as f:
        meta = f.metadata() or {}
        if "cfg" not in meta:
            raise TrainError(f"{packed}: no cfg in the safetensors metadata; not written by builders.train")
        weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    cfg = json.loads(meta["cfg"])
    cfg["metadata"].update(extra_metadata or {})
    return save_saelens_folder(folder, weights, cfg, dtype=torch.float16)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the whole run


def _check_hooks(model: torch.nn.Module, windows: np.ndarray, hook_names: Sequence[str]) -> dict[str, float]:
    """Oracle check on a few windows: hook_resid_post equals transformers' hidden_states[L + 1]."""
    device = next(model.parameters()).device
    few = windows[:2]
    got = collect_activations(model, few, hook_names, skip_positions=1)
    ids = torch.from_numpy(few.astype(np.int64)).to(device)
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    n_layers = len(_decoder_layers(model))
    diffs = {}
    for name in hook_names:
        site, layer = parse_hook(name)
        if site == "resid_post" and layer < n_layers - 1:  # the last hidden state is after the final norm
            ref = hs[layer + 1][:, 1:, :].reshape(-1, hs[0].shape[-1]).float()  # (2 * (ctx - 1), d_model)
            diffs[name] = float((got[name] - ref).abs().max())
            if diffs[name] > 1e-4 * float(ref.abs().max()):
                raise TrainError(f"{name}: hooked activations differ from hidden_states by {diffs[name]}")
    return diffs


def _stamp(t_start: float) -> Callable[..., None]:
    return lambda *a: print(f"[{time.perf_counter() - t_start:7.1f}s]", *a, flush=True)


def collect(
    gguf: str,
    tokens: str,
    hook_names: Sequence[str],
    *,
    device: str,
    massive_ratio: float = 20.0,
    train_stride: int = 1,
    eval_stride: int = 1,
    say: Callable[..., None] = print,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Load the model and collect held-in and held-out activations at ``hook_names``.

    ``tokens`` is an .npz with ``train`` and ``eval`` (windows, ctx_len) uint16
    arrays (see :func:`tokenize_windows`); every ``train_stride``-th /
    ``eval_stride``-th window is used (a CPU budget keeps the corpus mix).
    Returns (train activations, eval activations, info for the records).
    """
    data = np.load(tokens)
    train_w, eval_w = data["train"][::train_stride], data["eval"][::eval_stride]
    ctx = train_w.shape[1]
    say(f"tokens: train {train_w.shape} eval {eval_w.shape} windows of {ctx}")
    gguf_sha = sha256_file(gguf)
    model = load_gguf_model(gguf, device)
    say(f"model loaded on {device}: {type(model).__name__}, sha256 {gguf_sha[:12]}")
    hook_check = _check_hooks(model, train_w, hook_names)
    say(f"hook check vs hidden_states (max abs diff): {hook_check}")
    t0 = time.perf_counter()

    def bar(done: int, total: int) -> None:
        rate = done * (ctx - 1) / (time.perf_counter() - t0)
        say(f"  collected {done}/{total} windows ({rate:.0f} tokens/s)")

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
        say(f"{name}: {tuple(train_acts[name].shape)} norms {act_stats[name]}")
    info = {
        "gguf_sha256": gguf_sha,
        "context_size": ctx,
        "train_windows": int(len(train_w)),
        "eval_windows": int(len(eval_w)),
        "hook_check_max_abs_diff": hook_check,
        "massive_ratio": massive_ratio,
        "massive_tokens_dropped": {"train": dropped_train, "eval": dropped_eval},
        "activation_norms": act_stats,
        "collect_device": device,
    }
    return train_acts, eval_acts, info


def save_activations(path: str | os.PathLike, train_acts: dict, eval_acts: dict, info: dict[str, Any]) -> None:
    """Activations to one safetensors file (keys ``train/<hook>``, ``eval/<hook>``; info in its metadata)."""
    tensors = {f"train/{n}": t.cpu().contiguous() for n, t in train_acts.items()}
    tensors |= {f"eval/{n}": t.cpu().contiguous() for n, t in eval_acts.items()}
    save_file(tensors, str(path), metadata={"info": json.dumps(info)})


def load_activations(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict, dict[str, Any]]:
    with safe_open(str(path), framework="pt", device=device) as f:
        info = json.loads((f.metadata() or {}).get("info", "{}"))
        train_acts = {k.split("/", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith("train/")}  # noqa: SIM118
        eval_acts = {k.split("/", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith("eval/")}  # noqa: SIM118
    return train_acts, eval_acts, info


def run(
    gguf: str,
    tokens: str,
    out: str,
    hook_names: Sequence[str],
    cfg: TrainConfig,
    *,
    device: str,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load the model, collect activations, train, evaluate and write one SAE per hook (see :func:`train_many`)."""
    t_start = time.perf_counter()
    say = _stamp(t_start)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 params, TF32 matmuls: ample for an SAE
    train_acts, eval_acts, info = collect(
        gguf, tokens, hook_names, device=device, massive_ratio=cfg.massive_ratio, say=say
    )
    return train_many(train_acts, eval_acts, info, out, hook_names, cfg, device=device, t_start=t_start, **kwargs)


def train_many(
    train_acts: dict[str, torch.Tensor],
    eval_acts: dict[str, torch.Tensor],
    info: dict[str, Any],
    out: str,
    hook_names: Sequence[str],
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
    """Train, evaluate and write one SAE per hook.

    Writes ``<short_name>.safetensors`` (packed, float16) or, with ``folders``,
    SAELens folders under ``out``, and ``metrics.json`` (merged with one
    already there, so hooks can be trained in separate runs).
    ``seconds_per_sae`` caps the steps from a timed trial. An SAE whose
    held-out FVE is below ``min_fve`` is trained again with ``k=retry_k`` when
    that fits before ``deadline`` seconds.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    say = _stamp(t_start)
    torch.manual_seed(cfg.seed)
    train_acts = {n: t.to(device) for n, t in train_acts.items()}
    eval_acts = {n: t.to(device) for n, t in eval_acts.items()}
    gguf_sha = info["gguf_sha256"]
    ctx = info["context_size"]
    act_stats = info["activation_norms"]
    dropped_train, dropped_eval = info["massive_tokens_dropped"]["train"], info["massive_tokens_dropped"]["eval"]
    if seconds_per_sae:
        trial = TrainConfig(**{**asdict(cfg), "steps": 10, "warmup_steps": 2, "refit_decoder": False})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_sae(train_acts[hook_names[0]], trial, log_every=10**9)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t) / trial.steps
        steps = max(cfg.warmup_steps * 2, min(cfg.steps, int(seconds_per_sae / per_step)))
        say(f"timed trial: {per_step * 1e3:.2f} ms/step -> {steps} steps per SAE (cap {cfg.steps})")
        cfg = TrainConfig(**{**asdict(cfg), "steps": steps})

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = out_dir / "metrics.json"
    metrics: dict[str, Any] = {
        "model_name": model_name,
        "gguf_sha256": gguf_sha,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "torch": torch.__version__,
        "train_config": asdict(cfg),
        **{k: v for k, v in info.items() if k != "activation_norms"},
        "saes": json.loads(old.read_text()).get("saes", {}) if old.is_file() else {},
    }
    for name in hook_names:
        say(f"training {name} ({cfg.steps} steps of {cfg.batch_size} tokens)")

        def prog(step: int, rec: dict[str, float], name: str = name) -> None:
            say(
                f"  {name} step {step}/{cfg.steps} fve(batch) {rec['fve_train_batch']:.4f} "
                f"aux {rec['aux_loss']:.3f} dead(auxk) {rec['dead_for_auxk']:.4f} lr {rec['lr']:.2e}"
            )

        sae_cfg_train = cfg
        while True:
            weights, record = train_sae(
                train_acts[name], sae_cfg_train, log_every=max(1, cfg.steps // 10), progress=prog
            )
            ev_sgd = None
            if sae_cfg_train.refit_decoder:
                # refit on 95% of the training tokens; keep it only if it does better on the other 5%
                acts_tr = train_acts[name]
                cut = len(acts_tr) - len(acts_tr) // 20
                refit = refit_decoder(weights, acts_tr[:cut], sae_cfg_train.k)
                val_sgd = evaluate_sae(weights, acts_tr[cut:], sae_cfg_train.k)["fve"]
                val_refit = evaluate_sae(refit, acts_tr[cut:], sae_cfg_train.k)["fve"]
                say(f"  {name}: least-squares decoder: validation fve {val_sgd:.4f} -> {val_refit:.4f}")
                if val_refit > val_sgd:
                    ev_sgd = evaluate_sae(weights, eval_acts[name], sae_cfg_train.k)
                    weights = refit
                    record["decoder_refit"] = {"validation_fve_sgd": val_sgd, "validation_fve_refit": val_refit}
                else:
                    record["decoder_refit"] = f"not kept (validation fve {val_refit:.4f} <= {val_sgd:.4f})"
            ev = evaluate_sae(weights, eval_acts[name], sae_cfg_train.k)
            # the committed weights are float16: report what the float16 SAE does
            ev16 = evaluate_sae({n: t.half().float() for n, t in weights.items()}, eval_acts[name], sae_cfg_train.k)
            say(f"  {name} held-out (k={sae_cfg_train.k}): {ev} | float16: {ev16}")
            remaining = len(hook_names) - 1 - hook_names.index(name)
            needed = record["wall_seconds"] * (2 + remaining)
            if (
                ev16["fve"] >= min_fve
                or not retry_k
                or sae_cfg_train.k >= retry_k
                or (deadline and time.perf_counter() - t_start + needed > deadline)
            ):
                break
            say(f"  {name}: fve {ev16['fve']:.3f} < {min_fve}: training again with k={retry_k}")
            sae_cfg_train = TrainConfig(**{**asdict(cfg), "k": retry_k})
        site, layer = parse_hook(name)
        meta = {
            "trained_by": "sae-atlas builders.train (own TopK trainer; not SAELens, no published SAE exists for this model)",
            "eval": {**ev16, "fve_float32": ev["fve"], "split": "held-out windows (every 20th)"}
            | ({"fve_before_decoder_refit": ev_sgd["fve"]} if ev_sgd else {}),
            "train": {k: v for k, v in record.items() if k != "log"} | {"config": asdict(sae_cfg_train)},
            "activation_norms": act_stats[name],
            "tokens_used": (
                f"position 0 (<|endoftext|>) never used; tokens with residual norm > {cfg.massive_ratio}x the median "
                f"at any trained resid_post site dropped (train {dropped_train}, eval {dropped_eval})"
            ),
            "site": site,
            "layer": layer,
            "weights_stored_as": "float16",
            "gguf_sha256": gguf_sha,
            "device": metrics["device"],
            "seed": sae_cfg_train.seed,
        }
        meta.update(extra_metadata or {})
        sae_cfg = saelens_cfg(
            name,
            train_acts[name].shape[1],
            cfg.d_sae,
            sae_cfg_train.k,
            model_name=model_name,
            context_size=ctx,
            metadata=meta,
        )
        short = short_name(name)
        if folders:
            save_saelens_folder(out_dir / short, weights, sae_cfg, dtype=torch.float16)
        else:
            save_packed(out_dir / f"{short}.safetensors", weights, sae_cfg)
        metrics["saes"][short] = {
            "hook_name": name,
            "k": sae_cfg_train.k,
            **{k: ev16[k] for k in ("fve", "l0", "dead_fraction", "eval_tokens")},
            "fve_float32": ev["fve"],
            "fve_before_decoder_refit": ev_sgd["fve"] if ev_sgd else None,
            "train_tokens": record["train_tokens"],
            "wall_seconds": record["wall_seconds"],
            "log": record["log"],
        }
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    metrics["total_wall_seconds"] = time.perf_counter() - t_start
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    say("done")
    return metrics


def _add_train_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--out", required=True, help="folder for the SAEs and metrics.json")
    r.add_argument("--hooks", nargs="+", required=True)
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


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m builders.train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="collect activations, train, evaluate, write SAEs (one process)")
    r.add_argument("--gguf", required=True)
    r.add_argument("--tokens", required=True, help=".npz with train/eval token windows")
    _add_train_args(r)
    c = sub.add_parser("collect", help="collect activations to a safetensors file")
    c.add_argument("--gguf", required=True)
    c.add_argument("--tokens", required=True, help=".npz with train/eval token windows")
    c.add_argument("--acts", required=True, help="output .safetensors")
    c.add_argument("--hooks", nargs="+", required=True)
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--train-stride", type=int, default=1, help="use every n-th train window")
    c.add_argument("--eval-stride", type=int, default=1, help="use every n-th eval window")
    c.add_argument("--massive-ratio", type=float, default=TrainConfig.massive_ratio)
    t = sub.add_parser("train", help="train SAEs from a collected activations file")
    t.add_argument("--acts", required=True)
    _add_train_args(t)
    u = sub.add_parser("unpack", help="packed .safetensors files -> SAELens folders")
    u.add_argument("packed", nargs="+")
    u.add_argument("--dest", required=True)
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        if args.cmd in ("run", "train"):
            cfg = TrainConfig(**{n: getattr(args, n) for n in TrainConfig.__dataclass_fields__})
            if args.cmd == "run":
                run(args.gguf, args.tokens, args.out, args.hooks, cfg, **_train_kwargs(args))
            else:
                train_acts, eval_acts, info = load_activations(args.acts)
                missing = [h for h in args.hooks if h not in train_acts]
                if missing:
                    raise TrainError(f"{args.acts} has no activations for {missing}")
                train_many(train_acts, eval_acts, info, args.out, args.hooks, cfg, **_train_kwargs(args))
        elif args.cmd == "collect":
            say = _stamp(time.perf_counter())
            tr, ev, info = collect(
                args.gguf, args.tokens, args.hooks, device=args.device, massive_ratio=args.massive_ratio,
                train_stride=args.train_stride, eval_stride=args.eval_stride, say=say,
            )  # fmt: skip
            save_activations(args.acts, tr, ev, info)
            say(f"wrote {args.acts}")
        else:
            for path in args.packed:
                folder = unpack(path, Path(args.dest) / Path(path).name.removesuffix(".safetensors"))
                print(folder)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "TrainConfig", "TrainError", "TopKSAE", "collect", "collect_activations", "load_activations", "refit_decoder", "save_activations",
    "train_many", "decode", "encode", "evaluate_sae",
    "kjv_paragraphs", "load_gguf_model", "load_saelens_folder", "parse_hook", "run", "saelens_cfg",
    "save_packed", "save_saelens_folder", "short_name", "split_windows", "tokenize_windows", "train_sae", "unpack",
]  # fmt: skip
