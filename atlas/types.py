"""Frozen dataclasses returned by the read API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Model:
    model_id: int
    name: str
    source: str
    source_kind: str
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    tied_embeddings: bool
    norm_kind: str
    embed_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    dtype: str | None
    sha256: str | None
    notes: str | None


@dataclass(frozen=True)
class SAE:
    sae_id: int
    name: str
    model_id: int
    release: str | None
    sae_ref: str | None
    hook_name: str
    site: str
    layer: int
    d_in: int
    d_sae: int
    architecture: str
    k: int | None
    source: str
    source_format: str | None
    sha256: str | None
    neuronpedia_id: str | None
    fve: float | None
    l0: float | None
    dead_fraction: float | None
    notes: str | None
    # schema 4 (an older file reads as an SAE writing where it reads)
    sae_kind: str = "sae"  # sae | transcoder | skip_transcoder | clt
    out_hook_name: str | None = None  # the hook it writes (a CLT: at its own layer); None = hook_name
    out_site: str | None = None  # the site it writes; None = site
    out_layers: str | None = None  # JSON list of the layers it writes; None = its own layer
    d_out: int | None = None  # width of what it writes; None = d_in

    @property
    def write_layers(self) -> tuple[int, ...]:
        """The layers it writes: its own, or a CLT's list (an unreadable list reads as its own layer)."""
        import json

        try:
            layers = json.loads(self.out_layers) if self.out_layers else None
        except ValueError:
            layers = None
        if isinstance(layers, list) and layers and all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            return tuple(layers)
        return (self.layer,)


@dataclass(frozen=True)
class Feature:
    feature_id: int
    name: str  # e.g. L12.res/1234
    sae: str
    sae_id: int
    idx: int
    layer: int
    site: str
    metrics: dict[str, Any] = field(default_factory=dict)  # every scalar column of `features`


@dataclass(frozen=True)
class TokenScore:
    feature_id: int
    phase: str  # du | ee
    sign: int  # +1 promoted, -1 suppressed
    rank: int
    token_id: int
    token: str  # printable display form
    value: float


@dataclass(frozen=True)
class TokenHit:
    """One answer to "which features promote / suppress / are driven by this token"."""

    feature: str
    feature_id: int
    token_id: int
    token: str
    phase: str
    sign: int
    rank: int
    value: float
    match: str = "exact"  # exact (the token, case and surrounding spaces aside) | partial (contains the text)


@dataclass(frozen=True)
class HeadScore:
    feature_id: int
    layer: int
    head: int
    kv_group: int
    role: str  # q | k | v | o | attribution
    score: float
    percentile: float | None


@dataclass(frozen=True)
class Edge:
    kind: str  # qk | ov | cosine | flow | virtual | virtual_in
    src: str
    dst: str
    src_feature: int
    dst_feature: int
    head_layer: int | None
    head: int | None
    score: float
    rank: int
    percentile: float | None = None  # virtual kinds: |score| in the pair's random baseline (schema 4)


@dataclass(frozen=True)
class VirtualBaseline:
    """The random baseline of one (source, destination) dictionary pair of the virtual pass (docs/graph.md)."""

    src_sae_id: int
    dst_sae_id: int
    src: str  # source dictionary's name
    dst: str
    n_samples: int
    mean: float | None
    std: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    p999: float | None
    max: float | None
    n_pairs: int | None
    frac_above_p99: float | None
    frac_above_p999: float | None


@dataclass(frozen=True)
class DecoderSpread:
    """A CLT feature's decoder norm at one layer it writes."""

    feature_id: int
    out_layer: int
    norm: float


@dataclass(frozen=True)
class Label:
    label_id: int
    feature_id: int
    text: str
    kind: str  # semantic | non_semantic | free
    source: str  # heuristic | user | import:<name>
    score: float | None
    evidence: Any
    created_at: str
    stored_in: str = "atlas"  # atlas (the file) | overlay (the user's label overlay, atlas/overlay.py)


@dataclass(frozen=True)
class FeatureCard:
    """Everything the atlas knows about one feature."""

    feature: Feature
    promoted: list[TokenScore]
    suppressed: list[TokenScore]
    inputs: list[TokenScore]  # ee phase, sign +1
    inputs_negative: list[TokenScore]  # ee phase, sign -1
    heads: list[HeadScore]
    edges_out: list[Edge]
    edges_in: list[Edge]
    labels: list[Label]
    sae_kind: str = "sae"  # of the feature's dictionary: sae | transcoder | skip_transcoder | clt (schema 4)
    writes: str | None = None  # the hook its dictionary writes, when not the one it reads (a CLT: at its own layer)
    spread: list[DecoderSpread] = field(default_factory=list)  # a CLT feature: its decoder norm per layer written
