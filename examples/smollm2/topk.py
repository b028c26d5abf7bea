"""A small TopK dictionary trainer: SAEs and transcoders, after Gao et al. 2024.

sae-atlas explains dictionaries from weights alone; the one place it needs
activations is here, to train the dictionaries behind the shipped example (no
published SAE or transcoder for SmolLM2-135M-Instruct can be reached from this
project). The recipe ("Scaling and evaluating sparse autoencoders"):

- TopK activation: ``a = topk_k(relu(x_enc @ W_enc + b_enc))``; ``y_hat = a @ W_dec + b_dec``.
  An SAE reconstructs its input (``x_enc = x - b_dec``: SAELens's ``topk``); a transcoder reads
  the normalised MLP input ``x`` and predicts the MLP output ``y`` (``x_enc = x``: SAELens's
  transcoders never subtract ``b_dec``, which lives in the output space);
- decoder rows kept at unit norm (gradient projected, rows renormalised); the
  encoder starts as the decoder's transpose (an SAE) or as the centred inputs
  of the same tokens the decoder rows start from (a transcoder);
- Adam, short warm-up, linear decay over the last 20% of steps;
- the AuxK loss: latents silent for ``dead_after_tokens`` training tokens are
  "dead", and the top ``aux_k`` of them learn to reconstruct the residual
  error, which keeps the dead fraction low.

Every dictionary gets its own random stream (:func:`dictionary_seed`): which
tokens its decoder rows start from and the batch order. With one shared seed,
feature i of every layer started from the same token, and decoder cosines
linked same-index features across layers for that reason alone.

Inputs and targets are each scaled by one scalar (mean norm sqrt(d)) while
training, for a learning rate that suits every site; the scales are folded back
before saving, so a saved dictionary reads and writes RAW activations with
unit-norm decoder rows (latent values are in raw output units).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from examples.smollm2.errors import TrainError


@dataclass
class TrainConfig:
    """Hyperparameters of one TopK dictionary run."""

    d_sae: int = 2048  # latents
    k: int = 32  # active latents per token: L0 is exactly k
    lr: float = 4e-4  # Adam; Gao et al.'s 2e-4 at 16k latents, scaled by 1/sqrt(d_sae / 16k) for 4k
    batch_size: int = 4096  # tokens per step
    steps: int = 20_000  # optimiser steps
    warmup_steps: int = 200  # linear warm-up of the learning rate
    decay_fraction: float = 0.2  # linear decay to zero over this last fraction of steps
    aux_k: int = 256  # AuxK: dead latents allowed to model the residual error (Gao et al.: d_in / 2 or so)
    aux_coef: float = 1 / 32  # weight of the AuxK loss (Gao et al.)
    dead_after_tokens: int = 1_000_000  # silent on this many training tokens = dead (for AuxK only)
    adam_eps: float = 6.25e-10  # Gao et al.: small eps so that rare latents still move
    grad_clip: float = 1.0  # global gradient-norm clip
    seed: int = 0  # base seed; each dictionary's own stream is derived from it and its hooks
    sparse_encoder_grad: bool = False  # back-propagate through the k selected latents only (see TopKDictionary)
    refit_decoder: bool = False  # finish with a least-squares decoder (see refit_decoder): short runs gain most
    init_from_data: bool = True  # decoder rows start at random centred training tokens (faster short runs)
    massive_ratio: float = 20.0  # drop tokens whose resid norm > this x median (attention sinks); 0 = keep all


def dictionary_seed(base_seed: int, name: str) -> int:
    """A dictionary's own seed: a hash of the base seed and its hook names, so no two dictionaries share a stream."""
    digest = hashlib.sha256(f"{base_seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class TopKDictionary(torch.nn.Module):
    """The trainable dictionary. :meth:`weights` gives the SAELens tensors (training scale not folded).

    The encoder is kept as ``W_enc_T (d_sae, d_in)`` so that its gradient can
    be computed sparsely: the loss depends on only the k selected latents per
    token, so only their pre-activations are recomputed with autograd (a
    gather of k encoder rows) instead of back-propagating through the dense
    (B, d_sae) matrix product. That halves the cost of a step on the CPU.
    A transcoder's input is centred by a fixed ``x_mean`` while training, folded
    into ``b_enc`` on export.
    """

    def __init__(self, w_enc_t: torch.Tensor, w_dec: torch.Tensor, k: int, *, x_mean: torch.Tensor | None = None):
        super().__init__()
        self.W_dec = torch.nn.Parameter(w_dec.float().clone())  # (d_sae, d_out)
        self.W_enc_T = torch.nn.Parameter(w_enc_t.float().clone())  # (d_sae, d_in)
        self.b_enc = torch.nn.Parameter(torch.zeros(w_dec.shape[0]))
        self.b_dec = torch.nn.Parameter(torch.zeros(w_dec.shape[1]))
        self.k = k
        self.is_transcoder = x_mean is not None
        self.register_buffer("x_mean", torch.zeros(w_enc_t.shape[1]) if x_mean is None else x_mean.float().clone())

    def _x_enc(self, x: torch.Tensor) -> torch.Tensor:
        return x - (self.x_mean if self.is_transcoder else self.b_dec)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return self._x_enc(x) @ self.W_enc_T.T + self.b_enc  # (B, d_sae)

    def selected_pre_acts(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Pre-activations of latents ``idx`` (B, j) only, differentiable. (B, d_in) -> (B, j)."""
        rows = F.embedding(idx, self.W_enc_T)  # (B, j, d_in)
        return torch.einsum("bd,bjd->bj", self._x_enc(x), rows) + self.b_enc[idx]

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor, bias: bool = True) -> torch.Tensor:
        # sum_j vals[b, j] * W_dec[idx[b, j]]: never builds the dense (B, d_sae) activation matrix
        out = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum")  # (B, d_out)
        return out + self.b_dec if bias else out

    def weights(self) -> dict[str, torch.Tensor]:
        """SAELens-named float32 copies on the CPU; a transcoder's input centring folded into ``b_enc``."""
        w_enc = self.W_enc_T.detach().T.float()  # (d_in, d_sae)
        b_enc = self.b_enc.detach().float()
        if self.is_transcoder:
            b_enc = b_enc - self.x_mean @ w_enc
        return {
            "W_enc": w_enc.cpu().contiguous(),  # (d_in, d_sae)
            "W_dec": self.W_dec.detach().float().cpu().contiguous(),  # (d_sae, d_out)
            "b_enc": b_enc.cpu().contiguous(),  # (d_sae,)
            "b_dec": self.b_dec.detach().float().cpu().contiguous(),  # (d_out,)
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
def input_scale(acts: torch.Tensor, chunk: int = 65_536) -> float:
    """Scalar s with mean ||s x|| = sqrt(d) (SAELens's 'expected_average_only_in' norm)."""
    total = sum(float(acts[i : i + chunk].norm(dim=-1).sum()) for i in range(0, len(acts), chunk))
    return math.sqrt(acts.shape[1]) / (total / len(acts))


@dataclass
class _Scaled:
    """Training-space view of the data: raw * scale, and the means in that space."""

    s_in: float
    s_out: float
    mean_in: torch.Tensor  # (d_in,)
    mean_out: torch.Tensor  # (d_out,)
    var_total: float  # mean squared distance of the scaled targets to their mean: the loss is a fraction of it


@torch.no_grad()
def _scaled(acts: torch.Tensor, targets: torch.Tensor) -> _Scaled:
    s_in = input_scale(acts)
    s_out = s_in if targets is acts else input_scale(targets)
    mean_out = targets.mean(0) * s_out
    n = len(targets)
    var = float(sum(((targets[i : i + 65_536] * s_out - mean_out) ** 2).sum() for i in range(0, n, 65_536)) / n)
    return _Scaled(s_in, s_out, acts.mean(0) * s_in, mean_out, var)


@torch.no_grad()
def init_dictionary(
    acts: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, *, targets: torch.Tensor | None = None
) -> tuple[TopKDictionary, _Scaled]:
    """The dictionary before its first step, drawn from ``gen`` (one stream per dictionary).

    With ``init_from_data`` decoder row i is the centred target of a random
    token p_i (an SAE: that token's activation), so a short run starts from
    directions the data uses; the encoder starts from the centred input of the
    same token. The encoder is then scaled so that the first reconstructions
    have the data's size (k latents that all point the data's way would
    otherwise add up to k times too much).
    """
    transcoder = targets is not None
    targets = acts if targets is None else targets
    device, n = acts.device, len(acts)
    sc = _scaled(acts, targets)
    if cfg.init_from_data:
        pick = torch.randint(0, n, (cfg.d_sae,), generator=gen).to(device)  # (d_sae,) token positions
        w_dec = targets[pick] * sc.s_out - sc.mean_out  # (d_sae, d_out)
        w_enc_t = acts[pick] * sc.s_in - sc.mean_in if transcoder else w_dec  # (d_sae, d_in)
    else:
        w_dec = torch.randn(cfg.d_sae, targets.shape[1], generator=gen).to(device)
        w_enc_t = torch.randn(cfg.d_sae, acts.shape[1], generator=gen).to(device) if transcoder else w_dec
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w_enc_t = w_enc_t / w_enc_t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    model = TopKDictionary(w_enc_t, w_dec, cfg.k, x_mean=sc.mean_in if transcoder else None).to(device)
    model.b_dec.copy_(sc.mean_out)
    rows = torch.randint(0, n, (min(n, cfg.batch_size),), generator=gen).to(device)
    x, y = acts[rows] * sc.s_in, targets[rows] * sc.s_out - sc.mean_out  # (B, d_in), (B, d_out) centred
    top = model.pre_acts(x).topk(cfg.k, dim=-1)
    recon = model.decode_sparse(F.relu(top.values), top.indices, bias=False)  # (B, d_out)
    c = float((y * recon).sum() / (recon * recon).sum().clamp_min(1e-12))  # least-squares scalar
    if c > 0:
        model.W_enc_T.mul_(c)
    return model, sc


def train_topk(
    acts: torch.Tensor,
    cfg: TrainConfig,
    *,
    targets: torch.Tensor | None = None,
    seed: int | None = None,
    log_every: int = 500,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train one TopK SAE on ``acts`` (n_tokens, d_in), or a transcoder from ``acts`` to ``targets`` (n, d_out).

    Runs on the device ``acts`` lives on. ``seed`` (default ``cfg.seed``) drives
    the initial rows and the batch order: give each dictionary its own
    (:func:`dictionary_seed`). Returns (raw-space weights {W_enc, W_dec, b_enc,
    b_dec} as float32 on the CPU, training record with the scales, loss log and
    wall time).
    """
    if acts.ndim != 2 or len(acts) < cfg.batch_size:
        raise TrainError(f"need (n_tokens >= batch_size={cfg.batch_size}, d_in) activations, got {tuple(acts.shape)}")
    if targets is not None and (targets.ndim != 2 or len(targets) != len(acts)):
        raise TrainError(f"targets {tuple(targets.shape)} must be (n_tokens={len(acts)}, d_out)")
    if not 0 < cfg.k <= cfg.d_sae:
        raise TrainError(f"k={cfg.k} must be in 1..d_sae={cfg.d_sae}")
    device = acts.device
    t0 = time.perf_counter()
    seed = cfg.seed if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    model, sc = init_dictionary(acts, cfg, gen, targets=targets)
    y_all = acts if targets is None else targets
    # fused Adam: one kernel per step on CPU and GPU alike (the unfused CPU update costs more than the SAE)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    silent_tokens = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)  # tokens since each latent last fired
    n = len(acts)
    perm = torch.randperm(n, generator=gen).to(device)
    pos = 0
    log: list[dict[str, float]] = []
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen).to(device), 0
        rows = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        x, y = acts[rows] * sc.s_in, y_all[rows] * sc.s_out  # (B, d_in), (B, d_out)

        if cfg.sparse_encoder_grad:
            with torch.no_grad():
                pre = model.pre_acts(x)  # (B, d_sae), no graph: only the selected latents get gradients
                idx = pre.topk(cfg.k, dim=-1, sorted=False).indices  # (B, k)
            vals = F.relu(model.selected_pre_acts(x, idx))  # (B, k)
        else:
            pre = model.pre_acts(x)  # (B, d_sae)
            top = pre.topk(cfg.k, dim=-1, sorted=False)
            vals, idx = F.relu(top.values), top.indices  # (B, k)
        err = y - model.decode_sparse(vals, idx)  # (B, d_out)
        mse = err.pow(2).sum(-1).mean() / sc.var_total
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
            a_vals = F.relu(model.selected_pre_acts(x, a_idx) if cfg.sparse_encoder_grad else a_top.values)
            e = err.detach()
            e_hat = model.decode_sparse(a_vals, a_idx, bias=False)  # (B, d_out)
            aux = (e - e_hat).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + cfg.aux_coef * torch.nan_to_num(aux)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        model.normalise_decoder()

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

    record = {
        "seed": seed,
        "input_scale_while_training": sc.s_in,
        "target_scale_while_training": sc.s_out,
        "train_tokens": n,
        "token_visits": cfg.steps * cfg.batch_size,
        "epochs": cfg.steps * cfg.batch_size / n,
        "wall_seconds": time.perf_counter() - t0,
        "log": log,
    }
    return fold_scales(model.weights(), sc.s_in, sc.s_out), record


def fold_scales(weights: dict[str, torch.Tensor], s_in: float, s_out: float) -> dict[str, torch.Tensor]:
    """Training-space weights -> raw space: latents in raw output units, decoder rows unchanged.

    Trained: ``a = topk(relu(s_in x W + b))``, ``s_out y ~ a W_dec + b_dec``. With
    ``a' = a / s_out``: ``a' = topk(relu(x (W s_in / s_out) + b / s_out))`` and
    ``y ~ a' W_dec + b_dec / s_out``. An SAE has ``s_in == s_out`` and its
    ``b_dec`` inside the encoder scales the same way.
    """
    return {
        "W_enc": weights["W_enc"] * (s_in / s_out),
        "W_dec": weights["W_dec"],
        "b_enc": weights["b_enc"] / s_out,
        "b_dec": weights["b_dec"] / s_out,
    }


# ----------------------------------------------------------------------------- encode, decode, evaluate


def encode(weights: dict[str, torch.Tensor], x: torch.Tensor, k: int, *, transcoder: bool = False) -> torch.Tensor:
    """Dense TopK latent activations, SAELens semantics. (B, d_in) -> (B, d_sae).

    An SAE subtracts ``b_dec`` from its input first (``apply_b_dec_to_input``); a transcoder does not.
    """
    x = x.float() if transcoder else x.float() - weights["b_dec"].float()
    pre = x @ weights["W_enc"].float() + weights["b_enc"].float()  # (B, d_sae)
    vals, idx = pre.topk(k, dim=-1)  # (B, k)
    return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))


def decode(weights: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """(B, d_sae) -> (B, d_out)."""
    return a @ weights["W_dec"].float() + weights["b_dec"].float()


@torch.inference_mode()
def evaluate(
    weights: dict[str, torch.Tensor], acts: torch.Tensor, k: int, *, targets: torch.Tensor | None = None,
    batch: int = 8192,
) -> dict[str, float]:  # fmt: skip
    """Held-out quality of a raw-space dictionary on ``acts`` (n_tokens, d_in).

    fve: 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over these tokens, with
    ``y`` the input (an SAE) or ``targets`` (a transcoder: the MLP output);
    l0: mean number of non-zero latents per token; dead_fraction: latents that
    never fire on these tokens.
    """
    transcoder = targets is not None
    targets = acts if targets is None else targets
    device = acts.device
    w = {name: t.to(device).float() for name, t in weights.items()}
    mean = targets.float().mean(0)  # (d_out,)
    sse = sst = l0_sum = 0.0
    fired = torch.zeros(w["W_enc"].shape[1], dtype=torch.bool, device=device)
    for i in range(0, len(acts), batch):
        a = encode(w, acts[i : i + batch], k, transcoder=transcoder)  # (b, d_sae)
        y = targets[i : i + batch].float()  # (b, d_out)
        sse += float((y - decode(w, a)).pow(2).sum())
        sst += float((y - mean).pow(2).sum())
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
    weights: dict[str, torch.Tensor], acts: torch.Tensor, k: int, *, targets: torch.Tensor | None = None,
    ridge: float = 1e-3, chunk: int = 1024,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Least-squares decoder for the encoder's codes: a cheap finish for a short (CPU) run.

    With the encoder fixed, the best ``W_dec, b_dec`` for reconstructing the
    targets (``acts`` for an SAE) from the TopK codes is a ridge regression,
    solved exactly from the sparse code Gram matrix (d_sae x d_sae) and
    code-target products. The encoder, and so which latents fire, is unchanged;
    an SAE's ``b_dec`` also sits in its encoder (SAELens subtracts it from the
    input), so its encoder bias is adjusted to match. Decoder rows are no longer
    unit-norm (their norm is the latent's output scale). ``ridge`` is relative to
    the mean diagonal.
    """
    transcoder = targets is not None
    targets = acts if targets is None else targets
    d_in, d_sae = weights["W_enc"].shape
    d_out = targets.shape[1]
    device = acts.device
    w = {n: t.to(device).float() for n, t in weights.items()}
    gram = torch.zeros(d_sae * d_sae, device=device)  # sum_n a_n a_n^T, flattened
    cross = torch.zeros(d_sae, d_out, device=device)  # sum_n a_n y_n^T
    a_sum = torch.zeros(d_sae, device=device)
    n = len(acts)
    for i in range(0, n, chunk):
        x = acts[i : i + chunk].float()  # (b, d_in)
        y = targets[i : i + chunk].float()  # (b, d_out)
        pre = (x if transcoder else x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # (b, d_sae)
        top = pre.topk(k, dim=-1)
        vals, idx = F.relu(top.values), top.indices  # (b, k)
        pair = (idx[:, :, None] * d_sae + idx[:, None, :]).reshape(-1)  # (b * k * k,)
        gram.index_add_(0, pair, (vals[:, :, None] * vals[:, None, :]).reshape(-1))
        cross.index_add_(0, idx.reshape(-1), (vals[:, :, None] * y[:, None, :]).reshape(-1, d_out))
        a_sum.index_add_(0, idx.reshape(-1), vals.reshape(-1))
    a_mean, y_mean = a_sum / n, targets.float().sum(0) / n
    g = gram.view(d_sae, d_sae) - n * torch.outer(a_mean, a_mean)  # centred Gram
    c = cross - n * torch.outer(a_mean, y_mean)  # centred cross products
    lam = ridge * float(g.diagonal().mean()) + 1e-8
    g.diagonal().add_(lam)
    w_dec = torch.linalg.solve(g.double(), c.double()).float()  # (d_sae, d_out)
    b_out = y_mean - a_mean @ w_dec  # (d_out,) the decoder's output bias
    b_enc = w["b_enc"]
    if not transcoder:  # SAELens decodes with + b_dec and encodes with - b_dec: keep the codes unchanged
        b_enc = b_enc + (b_out - w["b_dec"]) @ w["W_enc"]
    return {"W_enc": w["W_enc"].cpu(), "W_dec": w_dec.cpu(), "b_enc": b_enc.cpu(), "b_dec": b_out.cpu()}
