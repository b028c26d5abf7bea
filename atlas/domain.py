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

# Short suffix of a site in default SAE names: L12.res, L5.z, L3.mlp ...
SITE_SHORT: dict[str, str] = {
    "resid_pre": "res_pre",
    "resid_mid": "res_mid",
    "resid_post": "res",
    "attn_z": "z",
    "attn_out": "attn",
    "mlp_out": "mlp",
}

# Point of the residual stream a site of block L stands at is 4 L + this: resid_post of L is
# resid_pre of L + 1, and hook_z and attn_out are one point (the heads' output before and after W_O).
_STREAM_OFFSET = {"resid_pre": 0, "attn_z": 1, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4}


def stream_position(site: str, layer: int) -> int:
    """A sortable point in the forward pass, for "which SAE is later" (resid_post L == resid_pre L + 1)."""
    return 4 * layer + _STREAM_OFFSET[site]


def site_order(site: str) -> int:
    """Index of a site within its block, for listing SAEs of one layer (unknown sites last)."""
    return SITES.index(site) if site in SITES else len(SITES)


# ---------------------------------------------------------------- rows
PHASES: tuple[str, ...] = ("du", "ee")  # du: decoder -> unembedding; ee: embedding -> encoder
SIGNS: tuple[int, ...] = (1, -1)  # token_scores.sign: promoted (+1) or suppressed (-1)
ATTENTION_ROLES: tuple[str, ...] = ("q", "k", "v")  # Liu & Deng participation of a head's inputs
HEAD_ROLES: tuple[str, ...] = (*ATTENTION_ROLES, "o", "attribution")  # head_scores.role
EDGE_KINDS: tuple[str, ...] = ("qk", "ov", "cosine", "flow")  # edges.kind
LABEL_KINDS: tuple[str, ...] = ("semantic", "non_semantic", "free")  # labels.kind
HEURISTIC_SOURCE = "heuristic"  # labels.source of the labels a build writes
USER_SOURCE = "user"  # labels.source of a person's labels

# ---------------------------------------------------------------- models and SAEs
MODEL_SOURCE_KINDS: tuple[str, ...] = ("hub", "path", "gguf", "synthetic")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm", "gemma_rmsnorm")
SAE_ARCHITECTURES: tuple[str, ...] = ("relu", "jumprelu", "topk", "gated")

# Columns of `features` a build fills and a user can rank, filter and show: schema order, one line per group
# of columns as in schema.sql.
METRIC_COLUMNS: tuple[str, ...] = (
    "dec_norm", "enc_norm", "b_enc", "threshold",
    "du_max", "du_min", "du_mean", "du_std", "du_skew", "du_kurtosis", "du_entropy", "du_top1_z",
    "ee_max", "ee_min", "ee_mean", "ee_std", "ee_skew", "ee_kurtosis", "ee_entropy", "ee_top1_z",
    "predicts_tokens", "reads_tokens",
    "attn_q_mean", "attn_k_mean", "attn_v_mean", "attn_q_max", "attn_k_max", "attn_v_max",
    "top_head", "top_head_share",
)  # fmt: skip


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
)
TABLE_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
