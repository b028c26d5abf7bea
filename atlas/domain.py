"""The atlas's vocabulary: every closed set of names the schema, the builders, the CLI and the TUI share.

Each tuple here is also a CHECK constraint in ``atlas/schema.sql`` (or, for
:data:`METRIC_COLUMNS`, the metric columns of ``features``);
``tests/test_domain.py`` parses the schema and fails when the two drift apart.
Everything else imports these names instead of spelling the lists again.
Standard library only: the CLI and the TUI import it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- sites
# Where an SAE reads the model, in the order the residual stream meets them within one block.
SITES: tuple[str, ...] = ("resid_pre", "attn_z", "attn_out", "resid_mid", "mlp_out", "resid_post")
RESIDUAL_SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")
# Sites a transcoder or CLT reads besides SITES: the MLP's input after the pre-MLP norm, gain included
# (circuit-tracer's mlp.hook_in; Gemma Scope 2's pre_feedforward_layernorm.output), and the same before
# the gain (TransformerLens's ln2.hook_normalized: unit RMS; Gemma Scope 1 transcoders).
TRANSCODER_SITES: tuple[str, ...] = ("mlp_in", "ln2_normalized")
READ_SITES: tuple[str, ...] = SITES + TRANSCODER_SITES  # saes.site and saes.out_site
# Every site in forward-pass order within one block (for listing the dictionaries of one layer).
FORWARD_SITES: tuple[str, ...] = (
    "resid_pre",
    "attn_z",
    "attn_out",
    "resid_mid",
    "mlp_in",
    "ln2_normalized",
    "mlp_out",
    "resid_post",
)

# Short suffix of a site in default SAE names: L12.res, L5.z, L3.mlp ...
SITE_SHORT: dict[str, str] = {
    "resid_pre": "res_pre",
    "resid_mid": "res_mid",
    "resid_post": "res",
    "attn_z": "z",
    "attn_out": "attn",
    "mlp_out": "mlp",
    "mlp_in": "mlp_in",
    "ln2_normalized": "ln2",
}

# Point of the residual stream a site of block L stands at is 8 L + this: resid_post of L is resid_pre
# of L + 1; hook_z and attn_out are one point (the heads' output before and after W_O), which the
# residual stream adds at resid_mid; mlp_in / ln2_normalized read resid_mid through the MLP's norm;
# mlp_out is what the MLP adds, which resid_post of L includes.
_STREAM_OFFSET = {
    "resid_pre": 0,
    "attn_z": 2,
    "attn_out": 2,
    "resid_mid": 4,
    "mlp_in": 5,
    "ln2_normalized": 5,
    "mlp_out": 6,
    "resid_post": 8,
}


def stream_position(site: str, layer: int) -> int:
    """A sortable point in the forward pass, for "which SAE is later" (resid_post L == resid_pre L + 1).

    A dictionary writing at (site u, layer a) reaches one reading at (site t, layer b) along the
    residual stream iff stream_position(u, a) < stream_position(t, b): a transcoder at L writes mlp_out
    of L, which resid_post of L reads, and the mlp_in of L + 1; not its own layer's mlp_in.
    """
    return 8 * layer + _STREAM_OFFSET[site]


def reaches(src_site: str, write_layers: tuple[int, ...], dst_site: str, dst_layer: int) -> bool:
    """Whether a dictionary writing ``src_site`` at ``write_layers`` reaches, along the residual stream, one
    that reads ``dst_site`` of ``dst_layer`` (which must read the stream: a residual or transcoder site)."""
    if dst_site not in RESIDUAL_SITES + TRANSCODER_SITES:
        return False
    read = stream_position(dst_site, dst_layer)
    return any(stream_position(src_site, u) < read for u in write_layers)


def site_order(site: str) -> int:
    """Index of a site within its block, for listing SAEs of one layer (unknown sites last)."""
    return FORWARD_SITES.index(site) if site in FORWARD_SITES else len(FORWARD_SITES)


# ---------------------------------------------------------------- rows
PHASES: tuple[str, ...] = ("du", "ee")  # du: decoder -> unembedding; ee: embedding -> encoder
SIGNS: tuple[int, ...] = (1, -1)  # token_scores.sign: promoted (+1) or suppressed (-1)
ATTENTION_ROLES: tuple[str, ...] = ("q", "k", "v")  # Liu & Deng participation of a head's inputs
HEAD_ROLES: tuple[str, ...] = (*ATTENTION_ROLES, "o", "attribution")  # head_scores.role
# edges.kind; virtual: a feature's strongest virtual weights into one later dictionary, virtual_in: a
# feature's strongest from one earlier dictionary (both stored writer -> reader; docs/graph.md)
EDGE_KINDS: tuple[str, ...] = ("qk", "ov", "cosine", "flow", "virtual", "virtual_in")
VIRTUAL_EDGE_KINDS: tuple[str, ...] = ("virtual", "virtual_in")
LABEL_KINDS: tuple[str, ...] = ("semantic", "non_semantic", "free")  # labels.kind
HEURISTIC_SOURCE = "heuristic"  # labels.source of the labels a build writes
USER_SOURCE = "user"  # labels.source of a person's labels

# ---------------------------------------------------------------- models and SAEs
MODEL_SOURCE_KINDS: tuple[str, ...] = ("hub", "path", "gguf", "synthetic")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm", "gemma_rmsnorm")
SAE_ARCHITECTURES: tuple[str, ...] = ("relu", "jumprelu", "topk", "gated")
# saes.sae_kind: an SAE (reads and writes one hook), a transcoder (reads the MLP input, writes the MLP
# output of its layer), a skip transcoder (the same plus x @ W_skip), a cross-layer transcoder (reads
# its layer, writes its own and every later layer's MLP output)
SAE_KINDS: tuple[str, ...] = ("sae", "transcoder", "skip_transcoder", "clt")

# Columns of `features` a build fills and a user can rank, filter and show: schema order, one line per group
# of columns as in schema.sql.
METRIC_COLUMNS: tuple[str, ...] = (
    "dec_norm",
    "enc_norm",
    "b_enc",
    "threshold",
    "du_max",
    "du_min",
    "du_mean",
    "du_std",
    "du_skew",
    "du_kurtosis",
    "du_entropy",
    "du_top1_z",
    "ee_max",
    "ee_min",
    "ee_mean",
    "ee_std",
    "ee_skew",
    "ee_kurtosis",
    "ee_entropy",
    "ee_top1_z",
    "predicts_tokens",
    "reads_tokens",
    "attn_q_mean",
    "attn_k_mean",
    "attn_v_mean",
    "attn_q_max",
    "attn_k_max",
    "attn_v_max",
    "top_head",
    "top_head_share",
)


# ---------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    """A table that holds an atlas's rows."""

    name: str
    id: str | None  # the integer id other tables reference it by, or that numbers its rows
    refs: dict[str, str] = field(default_factory=dict)  # column -> the table it references (by that table's id)


# Every table of rows, each after the tables it references. export, merge, the shard merge and validate
# walk this one list; atlas_info and schema_migrations describe the file, and the FTS indexes are
# derived from vocab and labels.
TABLES: tuple[Table, ...] = (
    Table("models", "model_id"),
    Table("vocab", None, {"model_id": "models"}),
    Table("heads", "head_pk", {"model_id": "models"}),
    Table("saes", "sae_id", {"model_id": "models"}),
    Table("features", "feature_id", {"sae_id": "saes"}),
    Table("token_scores", None, {"feature_id": "features"}),
    Table("head_scores", None, {"feature_id": "features", "head_pk": "heads"}),
    Table("edges", "edge_id", {"src_feature": "features", "dst_feature": "features", "head_pk": "heads"}),
    Table("labels", "label_id", {"feature_id": "features"}),
    Table("depth_profiles", None, {"sae_id": "saes"}),
    Table("build_units", None, {"sae_id": "saes"}),
    Table("neuronpedia_agreement", None, {"feature_id": "features"}),  # schema 3: absent from older files
    Table("activation_examples", "example_id", {"feature_id": "features"}),  # schema 3
    Table("virtual_baselines", None, {"src_sae_id": "saes", "dst_sae_id": "saes"}),  # schema 4
    Table("decoder_spread", None, {"feature_id": "features"}),  # schema 4
)
TABLE_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
