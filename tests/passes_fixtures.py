"""Tiny random ModelWeights / SAEWeights built straight from tensors (no transformers), for pass tests."""

from __future__ import annotations

import torch

from atlas.synthetic import synthetic_vocab
from builders.weights import LayerWeights, ModelWeights, Norm, SAEWeights


def _norm(kind: str, d: int, gen: torch.Generator, *, one_plus: bool = False) -> Norm:
    w = 0.5 + torch.rand(d, generator=gen)  # positive, non-trivial gains
    if one_plus:
        w = w - 1.0
    bias = torch.randn(d, generator=gen) * 0.1 if kind == "layernorm" else None
    return Norm(kind=kind, weight=w, bias=bias, eps=1e-5, one_plus=one_plus)


def tiny_model(
    *,
    n_layers: int = 3,
    d_model: int = 16,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_head: int = 4,
    d_vocab: int = 97,
    norm_kind: str = "rmsnorm",
    gemma: bool = False,
    seed: int = 0,
) -> ModelWeights:
    g = torch.Generator().manual_seed(seed)
    one_plus = gemma
    kind = "gemma_rmsnorm" if gemma else norm_kind
    nk = "rmsnorm" if gemma else norm_kind

    def rn(*shape):
        return (
            torch.randn(*shape, generator=g) / shape[-2] ** 0.5 if len(shape) > 1 else torch.randn(*shape, generator=g)
        )

    layers = []
    group = n_heads // n_kv_heads
    for _ in range(n_layers):
        Wk = rn(n_kv_heads, d_model, d_head).repeat_interleave(group, 0)
        Wv = rn(n_kv_heads, d_model, d_head).repeat_interleave(group, 0)
        layers.append(
            LayerWeights(
                ln1=_norm(nk, d_model, g, one_plus=one_plus), W_Q=rn(n_heads, d_model, d_head), W_K=Wk, W_V=Wv,
                W_O=rn(n_heads, d_head, d_model), ln2=_norm(nk, d_model, g, one_plus=one_plus),
                ln_attn_out=_norm(nk, d_model, g, one_plus=True) if gemma else None,
            )
        )  # fmt: skip
    return ModelWeights(
        source="tiny/random", source_kind="synthetic", architecture="TinyForTests", n_layers=n_layers,
        d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_head, d_vocab=d_vocab,
        W_E=torch.randn(d_vocab, d_model, generator=g), W_U=rn(d_model, d_vocab),
        ln_final=_norm(nk, d_model, g, one_plus=one_plus), layers=layers, tokens=synthetic_vocab(d_vocab, seed),
        embed_scale=d_model**0.5 if gemma else 1.0, norm_kind=kind, attn_scale=None,
    )  # fmt: skip


def tiny_sae(
    model: ModelWeights, *, layer: int = 1, site: str = "resid_post", d_sae: int = 37, seed: int = 1
) -> SAEWeights:
    g = torch.Generator().manual_seed(seed)
    d_in = model.n_heads * model.d_head if site == "attn_z" else model.d_model
    hook = {"attn_z": "attn.hook_z", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}.get(site, f"hook_{site}")
    return SAEWeights(
        W_enc=torch.randn(d_in, d_sae, generator=g) / d_in**0.5, W_dec=torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        b_enc=torch.randn(d_sae, generator=g) * 0.1, b_dec=torch.zeros(d_in), architecture="relu",
        hook_name=f"blocks.{layer}.{hook}", site=site, layer=layer, source=f"tiny/{site}/{layer}",
        source_format="saelens",
    )  # fmt: skip


def tiny_transcoder(
    model: ModelWeights, *, layer: int = 1, d_sae: int = 29, seed: int = 5, skip: bool = False, site: str = "mlp_in"
) -> SAEWeights:
    """A transcoder reading layer ``layer``'s MLP input (``mlp_in``: after the norm's gain) and writing its MLP output."""
    g = torch.Generator().manual_seed(seed)
    d = model.d_model
    hook = {"mlp_in": "mlp.hook_in", "ln2_normalized": "ln2.hook_normalized"}[site]
    return SAEWeights(
        W_enc=torch.randn(d, d_sae, generator=g) / d**0.5, W_dec=torch.randn(d_sae, d, generator=g) / d**0.5,
        b_enc=torch.randn(d_sae, generator=g) * 0.1, b_dec=torch.zeros(d), architecture="relu",
        hook_name=f"blocks.{layer}.{hook}", site=site, layer=layer, source=f"tiny/transcoder/{layer}",
        source_format="saelens", kind="transcoder", out_hook_name=f"blocks.{layer}.hook_mlp_out",
        W_skip=torch.randn(d, d, generator=g) / d if skip else None,
    )  # fmt: skip


def tiny_clt(model: ModelWeights, *, layer: int = 1, d_sae: int = 23, seed: int = 6) -> SAEWeights:
    """A cross-layer transcoder reading layer ``layer``'s MLP input and writing the MLP output of it and every later layer."""
    g = torch.Generator().manual_seed(seed)
    d = model.d_model
    out_layers = tuple(range(layer, model.n_layers))
    W_dec_layers = torch.randn(d_sae, len(out_layers), d, generator=g) / d**0.5  # (d_sae, J, d_model)
    W_dec_layers *= torch.rand(d_sae, len(out_layers), 1, generator=g) * 2  # uneven spread over layers
    return SAEWeights(
        W_enc=torch.randn(d, d_sae, generator=g) / d**0.5, W_dec=W_dec_layers.sum(1),
        b_enc=torch.randn(d_sae, generator=g) * 0.1, b_dec=torch.zeros(d), architecture="relu",
        hook_name=f"blocks.{layer}.mlp.hook_in", site="mlp_in", layer=layer, source=f"tiny/clt/{layer}",
        source_format="circuit_tracer", kind="clt", out_hook_name=f"blocks.{layer}.hook_mlp_out",
        out_layers=out_layers, W_dec_layers=W_dec_layers,
    )  # fmt: skip
