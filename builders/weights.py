"""Architecture-neutral weight containers: what every pass reads.

Shapes follow TransformerLens / SAELens conventions so that a vector ``x`` in
the residual stream (after the layer's input norm) gives head ``h``'s query as
``x @ W_Q[h] + b_Q[h]`` and a head output ``z`` goes back to the residual as
``z @ W_O[h]``. Grouped key/value heads are already expanded: ``W_K[h]`` is the
weight of the key/value head that query head ``h`` reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from atlas.domain import READ_SITES, SITES, TRANSCODER_SITES  # noqa: F401 (re-exported to the builders)

# READ_SITES and TRANSCODER_SITES are atlas/domain.py's (one vocabulary), imported from here by the builders
# What a dictionary is: an SAE reads and writes one hook; a transcoder reads one hook and writes
# another; a cross-layer transcoder (CLT) reads one layer and writes that layer and every later one.
DICTIONARY_KINDS = ("sae", "transcoder", "clt")

# The one place that maps a TransformerLens hook name to an atlas site. Per layer L the
# hook is f"blocks.{L}.{suffix}". hook_attn_out / hook_mlp_out are what the sublayer adds
# to the residual stream (for Gemma-2/3: after its post-attention / post-feedforward norm).
HOOK_SUFFIX_OF_SITE = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",  # absent when attention and MLP run in parallel (GPT-NeoX/Pythia)
    "resid_post": "hook_resid_post",
    "attn_z": "attn.hook_z",  # every head's z concatenated: (n_heads * d_head,)
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "mlp.hook_in",
    "ln2_normalized": "ln2.hook_normalized",
}
# Other spellings of the same points. hook_mlp_in is the name SAELens gives Gemma Scope 2's
# pre_feedforward_layernorm.output (and TransformerLens 3's bridge an alias of mlp.hook_in); in the
# old HookedTransformer it was the raw residual, which no published transcoder reads.
# mlp.hook_out is the MLP module's own output: hook_mlp_out wherever the model has no
# post-feedforward norm (every family but Gemma-2/3); check_sae_fits refuses it on Gemma.
HOOK_ALIASES = {"hook_mlp_in": "mlp_in", "mlp.hook_out": "mlp_out"}
_SITE_OF_SUFFIX = {suffix: site for site, suffix in HOOK_SUFFIX_OF_SITE.items()} | HOOK_ALIASES
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def site_of_hook(hook_name: str) -> tuple[int, str]:
    """``"blocks.12.attn.hook_z"`` -> ``(12, "attn_z")``. ValueError for any other hook."""
    m = _HOOK_RE.match(hook_name.strip())
    if not m or m.group(2) not in _SITE_OF_SUFFIX:
        known = ", ".join(f"blocks.L.{s}" for s in HOOK_SUFFIX_OF_SITE.values())
        raise ValueError(f"unknown hook {hook_name!r}; known hooks are {known}")
    return int(m.group(1)), _SITE_OF_SUFFIX[m.group(2)]


def hook_name_of(layer: int, site: str) -> str:
    """``(12, "resid_post")`` -> ``"blocks.12.hook_resid_post"``."""
    if site not in HOOK_SUFFIX_OF_SITE:
        raise ValueError(f"unknown site {site!r}; sites are {', '.join(READ_SITES)}")
    return f"blocks.{int(layer)}.{HOOK_SUFFIX_OF_SITE[site]}"


def model_hook_names(n_layers: int, parallel_attn_mlp: bool = False, post_mlp_norm: bool = False) -> set[str]:
    """Every hook a model of this depth has (no resid_mid when attention and MLP are parallel;
    mlp.hook_out only where it is hook_mlp_out, i.e. without Gemma's post-feedforward norm)."""
    sites = [s for s in READ_SITES if not (parallel_attn_mlp and s == "resid_mid")]
    hooks = {hook_name_of(layer, site) for layer in range(n_layers) for site in sites}
    suffixes = ["hook_mlp_in"] + ([] if post_mlp_norm else ["mlp.hook_out"])
    return hooks | {f"blocks.{layer}.{s}" for layer in range(n_layers) for s in suffixes}


@dataclass
class Norm:
    """A LayerNorm or RMSNorm as the model applies it.

    ``weight`` is stored as the checkpoint has it; for Gemma (``one_plus=True``)
    the effective gain is ``1 + weight``. Use :attr:`gain`, never ``weight``,
    when folding a norm into a direction.
    """

    kind: str  # layernorm | rmsnorm | gemma_rmsnorm
    weight: torch.Tensor  # (d_model,)
    bias: torch.Tensor | None  # (d_model,) LayerNorm only
    eps: float
    one_plus: bool = False  # Gemma's (1 + w) RMSNorm

    @property
    def gain(self) -> torch.Tensor:
        """Effective elementwise gain g, so that norm(x) = g * normalise(x) (+ bias)."""
        return self.weight + 1.0 if self.one_plus else self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the norm exactly as the model does (data-dependent scale included)."""
        xf = x.float()
        if self.kind == "layernorm":
            xf = xf - xf.mean(-1, keepdim=True)
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        else:
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = xf * self.gain.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out


@dataclass
class LayerWeights:
    """One transformer block's attention weights, per head."""

    ln1: Norm  # norm that reads the residual stream into attention
    W_Q: torch.Tensor  # (n_heads, d_model, d_head)
    W_K: torch.Tensor  # (n_heads, d_model, d_head), kv heads expanded to query heads
    W_V: torch.Tensor  # (n_heads, d_model, d_head), kv heads expanded to query heads
    W_O: torch.Tensor  # (n_heads, d_head, d_model)
    b_Q: torch.Tensor | None = None  # (n_heads, d_head)
    b_K: torch.Tensor | None = None  # (n_heads, d_head)
    b_V: torch.Tensor | None = None  # (n_heads, d_head)
    b_O: torch.Tensor | None = None  # (d_model,)
    ln_attn_out: Norm | None = None  # Gemma-2's post-attention norm on the attention output
    ln2: Norm | None = None  # norm that reads the residual stream into the MLP (pre-feedforward)
    ln_mlp_out: Norm | None = None  # Gemma-2's post-feedforward norm on the MLP output
    attn_scale: float | None = (
        None  # this layer's multiplier on q.k when layers differ (GPT-2 scale_attn_by_inverse_layer_idx)
    )
    q_norm: Norm | None = None  # per-head RMSNorm on each query after W_Q, before rotary (Qwen3, Gemma-3); (d_head,)
    k_norm: Norm | None = None  # the same on each key

    def qk_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_Q, W_K)`` with the query/key norms' gains folded in: what a weight-only QK pass uses.

        With q/k norms the query is ``q = g_q * (x W_Q) / rms(x W_Q)`` (per head), which is not
        linear in ``x``. Its Jacobian is ``(1 / rms) * diag(g_q) (I - q_hat q_hat^T)`` (q_hat the unit
        pre-norm query): the gain-folded projection, times a positive factor every feature at that
        position shares, minus the one component along the current query. So the first-order
        (mixed second derivative) effect of a query feature i and a key feature j on the pre-softmax
        score is ``(x_i W_Q g_q) . (x_j W_K g_k) * qk_scale`` up to the shared factor
        ``d_head / (||q|| ||k||)`` and the dropped rank-one projections. Without q/k norms this is
        ``(W_Q, W_K)`` unchanged. Shapes ``(n_heads, d_model, d_head)`` each.
        """
        W_Q, W_K = self.W_Q, self.W_K
        if self.q_norm is not None:
            W_Q = W_Q * self.q_norm.gain.to(W_Q)
        if self.k_norm is not None:
            W_K = W_K * self.k_norm.gain.to(W_K)
        return W_Q, W_K


@dataclass
class ModelWeights:
    """Everything the passes need from a language model, on one device and dtype."""

    source: str  # hub id, local folder or GGUF path
    source_kind: str  # hub | path | gguf
    architecture: str  # transformers class name, e.g. LlamaForCausalLM
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    W_E: torch.Tensor  # (d_vocab, d_model)
    W_U: torch.Tensor  # (d_model, d_vocab)
    ln_final: Norm
    layers: list[LayerWeights]
    tokens: list[str]  # decoded string of every token id, len d_vocab
    b_U: torch.Tensor | None = None  # (d_vocab,)
    embed_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(d_model)
    attn_scale: float | None = None  # multiplier on q.k; None = 1/sqrt(d_head)
    attn_softcap: float | None = None  # Gemma-2 attention logit softcap
    final_softcap: float | None = None  # Gemma-2 final logit softcap
    tied_embeddings: bool = False
    norm_kind: str = "layernorm"
    dtype: str = "float32"
    sha256: str | None = None
    notes: str | None = None
    hook_names: set[str] = field(default_factory=set)  # hook points this model has (TransformerLens names)
    W_pos: torch.Tensor | None = None  # (n_ctx, d_model) learned absolute positions (GPT-2, GPT-Neo); None for rotary
    parallel_attn_mlp: bool = False  # attention and MLP read the same residual (GPT-NeoX use_parallel_residual)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: quant types, load time, peak memory, ...

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    @property
    def kv_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def qk_scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.d_head**-0.5

    def layer_qk_scale(self, layer: int) -> float:
        """Multiplier on q.k in this layer (per-layer override first, then the model's)."""
        own = self.layers[layer].attn_scale
        return own if own is not None else self.qk_scale

    def hook_d_in(self, hook_name: str) -> int:
        """Width of the activation at this hook: n_heads * d_head for hook_z, else d_model."""
        _, site = site_of_hook(hook_name)
        return self.n_heads * self.d_head if site == "attn_z" else self.d_model

    @property
    def has_qk_norm(self) -> bool:
        """Whether attention normalises each head's query and key (Qwen3, Gemma-3)."""
        return any(lw.q_norm is not None or lw.k_norm is not None for lw in self.layers)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ModelWeights:
        """A copy with every tensor moved/cast (norm parameters stay fp32: they are tiny and exact)."""

        def mv(t: torch.Tensor | None, keep_fp32: bool = False) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=None if keep_fp32 or not t.is_floating_point() else dtype)

        def mv_norm(n: Norm | None) -> Norm | None:
            return None if n is None else replace(n, weight=mv(n.weight, True), bias=mv(n.bias, True))

        layers = [
            replace(
                lw,
                ln1=mv_norm(lw.ln1),
                ln2=mv_norm(lw.ln2),
                ln_attn_out=mv_norm(lw.ln_attn_out),
                ln_mlp_out=mv_norm(lw.ln_mlp_out),
                q_norm=mv_norm(lw.q_norm),
                k_norm=mv_norm(lw.k_norm),
                W_Q=mv(lw.W_Q),
                W_K=mv(lw.W_K),
                W_V=mv(lw.W_V),
                W_O=mv(lw.W_O),
                b_Q=mv(lw.b_Q),
                b_K=mv(lw.b_K),
                b_V=mv(lw.b_V),
                b_O=mv(lw.b_O),
            )
            for lw in self.layers
        ]
        tied_W_U = self.tied_embeddings and self.W_U.data_ptr() == self.W_E.data_ptr()
        W_E = mv(self.W_E)
        W_U = W_E.T if tied_W_U else mv(self.W_U)  # keep one copy when the checkpoint ties them
        return replace(
            self,
            W_E=W_E,
            W_U=W_U,
            b_U=mv(self.b_U),
            W_pos=mv(self.W_pos),
            ln_final=mv_norm(self.ln_final),
            layers=layers,
            dtype=str(dtype or self.W_U.dtype).replace("torch.", ""),
        )

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Model logits for a final residual state h: final norm, W_U, bias, softcap."""
        out = self.ln_final(h) @ self.W_U.float()
        if self.b_U is not None:
            out = out + self.b_U.float()
        if self.final_softcap:
            out = torch.tanh(out / self.final_softcap) * self.final_softcap
        return out

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The residual stream's first value for these tokens (embedding scale included)."""
        return self.W_E[token_ids].float() * self.embed_scale

    def atlas_model_fields(self) -> dict[str, Any]:
        """Row for atlas.add_model()."""
        return dict(
            name=self.source.rstrip("/").split("/")[-1],
            source=self.source,
            source_kind=self.source_kind,
            architecture=self.architecture,
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            d_head=self.d_head,
            d_vocab=self.d_vocab,
            tied_embeddings=self.tied_embeddings,
            norm_kind=self.norm_kind,
            embed_scale=self.embed_scale,
            attn_softcap=self.attn_softcap,
            final_softcap=self.final_softcap,
            dtype=self.dtype,
            sha256=self.sha256,
            notes=self.notes,
        )


@dataclass
class SAEWeights:
    """One dictionary (an SAE, a transcoder or one layer of a cross-layer transcoder), in SAELens
    conventions.

    ``encode(x) = act(x' @ W_enc + b_enc)`` with ``x' = x - b_dec`` when
    ``apply_b_dec_to_input``, and ``decode(a) = a @ W_dec + b_dec``. For
    ``hook_z`` SAEs, ``x`` is all heads' z concatenated: ``(n_heads * d_head,)``.

    Where it reads: ``hook_name`` (``layer``, ``site``), always one hook. Where it writes:
    ``write_hooks``: the same hook for an SAE; ``out_hook_name`` for a transcoder (e.g. reads
    ``blocks.3.mlp.hook_in``, writes ``blocks.3.hook_mlp_out``); for a CLT the output site at every
    layer of ``out_layers`` (its own layer and each later one). A CLT's ``W_dec`` is the sum of its
    per-layer decoders (its direct effect on the residual stream, hence on the logits);
    ``W_dec_layers`` holds them apart, ``(d_sae, len(out_layers), d_out)``, possibly left in its file
    (:class:`builders.sae_io.StoredTensor`, read a block of features at a time).
    """

    W_enc: torch.Tensor  # (d_in, d_sae)
    W_dec: torch.Tensor  # (d_sae, d_out); d_out == d_in for an SAE
    b_enc: torch.Tensor  # (d_sae,)
    b_dec: torch.Tensor  # (d_out,)
    architecture: str  # relu | jumprelu | topk | gated: the activation
    hook_name: str  # where it reads, TransformerLens-style, e.g. blocks.12.hook_resid_post
    site: str  # resid_pre | resid_mid | resid_post | attn_z | attn_out | mlp_out | mlp_in | ln2_normalized
    layer: int
    source: str  # path or hub reference
    source_format: str  # one of builders.saes.SAE_FORMATS
    threshold: torch.Tensor | None = None  # (d_sae,) JumpReLU
    k: int | None = None  # TopK
    r_mag: torch.Tensor | None = None  # (d_sae,) gated SAEs
    b_mag: torch.Tensor | None = None  # (d_sae,) gated SAEs
    b_gate: torch.Tensor | None = None  # (d_sae,) gated SAEs
    apply_b_dec_to_input: bool = False
    input_scale: float = 1.0  # activations are multiplied by this before encoding (e.g. Llama Scope norm scaling)
    normalization: str | None = None  # what the format declares, recorded in provenance
    release: str | None = None
    sae_ref: str | None = None
    neuronpedia_id: str | None = None
    sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # anything else the config said
    kind: str = "sae"  # sae | transcoder | clt
    out_hook_name: str | None = None  # transcoder / CLT: the hook it writes (a CLT: at its own layer)
    out_layers: tuple[int, ...] = ()  # CLT: every layer it writes, ascending
    W_skip: torch.Tensor | None = None  # (d_in, d_out): a skip transcoder's output adds x @ W_skip
    W_dec_layers: Any = None  # CLT: (d_sae, len(out_layers), d_out) tensor or StoredTensor
    notes: str | None = None  # where it came from, for the atlas (hub repo, path, revision, registry)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def out_site(self) -> str:
        """The site it writes (an SAE: the one it reads)."""
        return self.site if self.out_hook_name is None else site_of_hook(self.out_hook_name)[1]

    @property
    def write_layers(self) -> tuple[int, ...]:
        """The layers it writes: one for an SAE or transcoder, several for a CLT."""
        if self.out_layers:
            return self.out_layers
        return (self.layer if self.out_hook_name is None else site_of_hook(self.out_hook_name)[0],)

    @property
    def write_hooks(self) -> tuple[str, ...]:
        """Every hook it writes, in layer order."""
        if self.kind == "sae" or self.out_hook_name is None:
            return (self.hook_name,)
        suffix = self.out_hook_name.split(".", 2)[2]
        return tuple(f"blocks.{layer}.{suffix}" for layer in self.write_layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * self.input_scale
        if self.apply_b_dec_to_input:
            x = x - self.b_dec.float()
        pre = x @ self.W_enc.float()  # (..., d_sae)
        if self.architecture == "gated":
            gate = (pre + self.b_gate.float()) > 0
            mag = torch.relu(pre * torch.exp(self.r_mag.float()) + self.b_mag.float())
            return gate * mag
        pre = pre + self.b_enc.float()
        if self.architecture == "jumprelu":
            return pre * (pre > self.threshold.float())
        if self.architecture == "topk":
            vals, idx = torch.relu(pre).topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals)
        return torch.relu(pre)

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        """The reconstruction at the hook it writes (a CLT: summed over its output layers)."""
        return (a.float() @ self.W_dec.float() + self.b_dec.float()) / self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """What it predicts at its output hook from ``x`` at its input: decode(encode(x)) + skip."""
        out = self.decode(self.encode(x))
        if self.W_skip is not None:
            out = out + x.float() @ self.W_skip.float()
        return out

    def decoder_layers(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Per-output-layer decoder rows ``[start, end)``: ``(n, len(write_layers), d_out)`` fp32."""
        end = self.d_sae if end is None else end
        if self.W_dec_layers is None:
            return self.W_dec[start:end, None, :].float()
        if isinstance(self.W_dec_layers, torch.Tensor):
            return self.W_dec_layers[start:end].float()
        return self.W_dec_layers.read(start, end)

    def fold_input_scale(self) -> SAEWeights:
        """An equivalent SAE with ``input_scale == 1`` (the SAELens fold).

        ``W_enc * s`` makes the pre-activations of raw ``x`` equal those of ``s * x``
        (so ``threshold``, ``b_enc`` and ``k`` are unchanged); ``W_dec / s`` and
        ``b_dec / s`` undo the scale on the way out. Feature activations are
        identical to the unfolded SAE's.
        """
        s = float(self.input_scale)
        if s == 1.0:
            return self
        return replace(
            self,
            W_enc=self.W_enc * s,
            W_dec=self.W_dec / s,
            b_dec=self.b_dec / s,
            input_scale=1.0,
            meta={**self.meta, "folded_input_scale": s},
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SAEWeights:
        """A copy with every tensor moved/cast (a decoder left in its file stays there)."""
        names = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "r_mag", "b_mag", "b_gate", "W_skip")
        mv = {
            name: getattr(self, name).to(device=device, dtype=dtype)
            for name in names
            if getattr(self, name) is not None
        }
        if isinstance(self.W_dec_layers, torch.Tensor):
            mv["W_dec_layers"] = self.W_dec_layers.to(device=device, dtype=dtype)
        return replace(self, **mv)

    @property
    def atlas_kind(self) -> str:
        """saes.sae_kind: sae | transcoder | skip_transcoder | clt."""
        if self.kind == "transcoder" and self.W_skip is not None:
            return "skip_transcoder"
        return self.kind

    def atlas_sae_fields(self, model_id: int) -> dict[str, Any]:
        """Row for atlas.add_sae(); a transcoder or CLT also says what it writes (schema 4)."""
        out = dict(
            model_id=model_id,
            release=self.release,
            sae_ref=self.sae_ref,
            hook_name=self.hook_name,
            site=self.site,
            layer=self.layer,
            d_in=self.d_in,
            d_sae=self.d_sae,
            architecture=self.architecture,
            k=self.k,
            source=self.source,
            source_format=self.source_format,
            sha256=self.sha256,
            neuronpedia_id=self.neuronpedia_id,
            notes=self.notes,
            sae_kind=self.atlas_kind,
        )
        if self.kind != "sae":
            out.update(out_hook_name=self.out_hook_name, out_site=self.out_site, d_out=self.d_out)
            if self.kind == "clt":
                out["out_layers"] = list(self.write_layers)
        return out
