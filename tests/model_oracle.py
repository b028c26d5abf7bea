"""Oracle checks of extracted ModelWeights against a transformers model's own modules.

Shared by the tiny-model tests (tests/test_models_oracle.py) and the real-model
test (tests/test_real_model.py). Each function returns ``(got, want)`` tensors
so the caller chooses the tolerance; none of them trusts the extractor's layout:
the "want" side always comes from running the model's own modules.
"""

from __future__ import annotations

import torch
from torch import nn

from builders.models import SUPPORTED_ARCHITECTURES, text_model
from builders.weights import ModelWeights


def family(model: nn.Module) -> str:
    return SUPPORTED_ARCHITECTURES[type(model).__name__]


def blocks(model: nn.Module) -> nn.ModuleList:
    fam = family(model)
    if fam in ("gpt2", "neo"):
        return model.transformer.h
    if fam == "neox":
        return model.gpt_neox.layers
    return text_model(model).layers


def final_norm(model: nn.Module) -> nn.Module:
    fam = family(model)
    if fam in ("gpt2", "neo"):
        return model.transformer.ln_f
    if fam == "neox":
        return model.gpt_neox.final_layer_norm
    return text_model(model).norm


def attention(model: nn.Module, layer: int) -> nn.Module:
    blk, fam = blocks(model)[layer], family(model)
    return {"gpt2": lambda: blk.attn, "neo": lambda: blk.attn.attention, "neox": lambda: blk.attention}.get(
        fam, lambda: blk.self_attn
    )()


def out_proj(model: nn.Module, layer: int) -> nn.Module:
    a, fam = attention(model, layer), family(model)
    return {"gpt2": lambda: a.c_proj, "neo": lambda: a.out_proj, "neox": lambda: a.dense}.get(fam, lambda: a.o_proj)()


@torch.no_grad()
def check_logits(model: nn.Module, w: ModelWeights, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1) The final residual state of a real forward pass, through the extracted final norm,
    W_U, bias and softcap, against the model's output logits (the rows kept as tokens)."""
    seen = {}
    handle = final_norm(model).register_forward_pre_hook(lambda mod, args: seen.update(h=args[0]))
    try:
        want = model(ids).logits.float()  # (batch, seq, rows)
    finally:
        handle.remove()
    return w.logits(seen["h"]), want[..., : w.d_vocab]


@torch.no_grad()
def check_qkv(model: nn.Module, w: ModelWeights, ids: torch.Tensor, layer: int) -> dict[str, tuple]:
    """(2) ln1 + W_Q/W_K/W_V (+ biases) per head against the model's projections, before rotary,
    captured in a real forward pass. K/V: our expanded head h must equal kv head h // group."""
    fam, seen = family(model), {}
    a, blk = attention(model, layer), blocks(model)[layer]

    def grab_resid(mod, args, kwargs):
        seen["resid"] = args[0] if args else kwargs["hidden_states"]

    handles = [blk.register_forward_pre_hook(grab_resid, with_kwargs=True)]
    if fam == "gpt2":
        handles.append(a.c_attn.register_forward_hook(lambda m, i, o: seen.update(qkv=o)))
    elif fam == "neox":
        handles.append(a.query_key_value.register_forward_hook(lambda m, i, o: seen.update(qkv=o)))
    else:
        for name in ("q", "k", "v"):
            proj = getattr(a, f"{name}_proj")
            handles.append(proj.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o})))
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()

    n, dh, d = w.n_heads, w.d_head, w.d_model
    lead = seen["resid"].shape[:-1]
    if fam == "gpt2":
        q, k, v = seen["qkv"].split(d, dim=-1)
    elif fam == "neox":
        q, k, v = seen["qkv"].view(*lead, n, 3, dh).unbind(-2)
    else:
        q, k, v = seen["q"], seen["k"], seen["v"]
    want = {
        "q": q.reshape(*lead, n, dh),
        "k": k.reshape(*lead, -1, dh).repeat_interleave(w.kv_group, dim=-2),  # (..., n, dh)
        "v": v.reshape(*lead, -1, dh).repeat_interleave(w.kv_group, dim=-2),
    }
    lw = w.layers[layer]
    x = lw.ln1(seen["resid"])  # (..., d_model)
    out = {}
    for name, W, b in (("q", lw.W_Q, lw.b_Q), ("k", lw.W_K, lw.b_K), ("v", lw.W_V, lw.b_V)):
        got = torch.einsum("...d,hde->...he", x, W.float())  # (..., n_heads, d_head)
        if b is not None:
            got = got + b.float()
        out[name] = (got, want[name].float())
    return out


@torch.no_grad()
def check_out_proj(model: nn.Module, w: ModelWeights, layer: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3) sum_h z_h @ W_O[h] + b_O against the model's output projection on a random z."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(5, w.n_heads, w.d_head, generator=gen)  # (5, n_heads, d_head)
    proj = out_proj(model, layer)
    want = proj(z.reshape(5, -1).to(proj.weight.dtype)).float()  # (5, d_model)
    lw = w.layers[layer]
    got = torch.einsum("bhe,hed->bd", z, lw.W_O.float())
    if lw.b_O is not None:
        got = got + lw.b_O.float()
    return got, want


@torch.no_grad()
def check_embed(model: nn.Module, w: ModelWeights, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(4) W_E[ids] * embed_scale (+ W_pos for learned positions) against hidden_states[0]."""
    want = model(ids, output_hidden_states=True).hidden_states[0].float()  # (batch, seq, d_model)
    got = w.embed(ids)
    if w.W_pos is not None:
        got = got + w.W_pos[: ids.shape[-1]].float()
    return got, want


@torch.no_grad()
def check_attention(model: nn.Module, w: ModelWeights, layer: int, seq: int = 4, seed: int = 0):
    """(5) A whole attention module on a random normalised input, rotary neutralised (every
    position rotated by angle 0), against extracted weights: checks the q.k scale, the
    attention softcap, GQA and b_O together. Causal mask given explicitly."""
    fam, a = family(model), attention(model, layer)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, seq, w.d_model, generator=gen).to(a_dtype(model))  # (1, seq, d_model)
    mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None].to(x.dtype)  # (1, 1, seq, seq)
    if fam in ("gpt2", "neo"):
        want = a(x, attention_mask=mask)[0]
    else:
        rotary = model.gpt_neox.rotary_emb if fam == "neox" else text_model(model).rotary_emb
        pos = torch.zeros(1, seq, dtype=torch.long)  # angle 0 at every position
        if fam == "gemma3":  # one rotary per layer type (sliding / full attention)
            cos, sin = rotary(x, pos, text_model(model).config.layer_types[layer])
        else:
            cos, sin = rotary(x, pos)
        want = a(x, attention_mask=mask, position_embeddings=(cos, sin))[0]

    lw, xf = w.layers[layer], x.float()
    q = torch.einsum("bsd,hde->bhse", xf, lw.W_Q.float())  # (1, n_heads, seq, d_head)
    k = torch.einsum("bsd,hde->bhse", xf, lw.W_K.float())
    v = torch.einsum("bsd,hde->bhse", xf, lw.W_V.float())
    if lw.b_Q is not None:
        q, k, v = q + lw.b_Q.float()[:, None], k + lw.b_K.float()[:, None], v + lw.b_V.float()[:, None]
    if lw.q_norm is not None:  # per-head norms over d_head (Qwen3, Gemma-3)
        q, k = lw.q_norm(q), lw.k_norm(k)
    scores = q @ k.transpose(-1, -2) * w.layer_qk_scale(layer)  # (1, n_heads, seq, seq)
    if w.attn_softcap:
        scores = torch.tanh(scores / w.attn_softcap) * w.attn_softcap
    z = torch.softmax(scores + mask.float(), dim=-1) @ v  # (1, n_heads, seq, d_head)
    got = torch.einsum("bhse,hed->bsd", z, lw.W_O.float())
    if lw.b_O is not None:
        got = got + lw.b_O.float()
    return got, want.float()


def a_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def check_qk_norm(model: nn.Module, w: ModelWeights, ids: torch.Tensor, layer: int) -> dict[str, tuple]:
    """(6) The extracted q/k norms on what the model's q_norm / k_norm modules received in a real
    forward pass (per head, over d_head), against what they returned. Their place in the
    attention (after W_Q/W_K, before rotary) is checked by check_attention."""
    a, seen = attention(model, layer), {}
    handles = [
        a.q_norm.register_forward_hook(lambda m, i, o: seen.update(q=(i[0], o))),
        a.k_norm.register_forward_hook(lambda m, i, o: seen.update(k=(i[0], o))),
    ]
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()
    lw = w.layers[layer]
    return {
        "q": (lw.q_norm(seen["q"][0]), seen["q"][1].float()),
        "k": (lw.k_norm(seen["k"][0]), seen["k"][1].float()),
    }
