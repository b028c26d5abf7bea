"""The Datasette metadata an atlas carries: titles, descriptions, units, facets, search and canned queries.

Descriptions come from ``atlas/schema.sql`` itself, so they cannot drift from the
schema: a table's or view's description is the comment above its ``CREATE``; a
column's is the comment on its line, else the comment heading its group of
columns (``-- decoder -> unembedding statistics ...`` over ``du_max REAL, du_min
REAL, ...``, each column then said by what its name ends in). Only what the
schema has no comment for is written here (:data:`COLUMN_WORDS`,
:data:`VIEW_COLUMNS`, :data:`TITLES`), and a test checks that every table, view
and column of a new atlas gets a title or description.

Canned queries answer the common questions; one whose tables an atlas lacks
(an older schema) is left out. ``virtual_neighbours`` reads edges of kind
``virtual`` (virtual weights between dictionaries): before any atlas has them it
returns no rows.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from atlas.domain import METRIC_COLUMNS
from atlas.migrations import schema_file_sql, split_sql

_CREATE_RE = re.compile(r"CREATE\s+(?:VIRTUAL\s+)?(TABLE|VIEW)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)
_COLUMN_RE = re.compile(r"\b([a-z_][a-z0-9_]*)\s+(?:INTEGER|TEXT|REAL|BLOB)\b", re.I)

TITLES: dict[str, str] = {
    "atlas_info": "About this atlas",
    "schema_migrations": "Schema migrations applied",
    "models": "Models",
    "saes": "SAEs (dictionaries)",
    "features": "Features (SAE latents)",
    "vocab": "Vocabulary",
    "token_scores": "Top tokens per feature",
    "heads": "Attention heads",
    "head_scores": "Head scores per feature",
    "edges": "Feature-to-feature edges",
    "labels": "Labels",
    "depth_profiles": "Attention depth profiles",
    "build_units": "Finished build units",
    "labels_fts": "Label search index",
    "vocab_fts": "Token search index",
    "neuronpedia_agreement": "Agreement with Neuronpedia's logit tables",
    "activation_examples": "Activation examples",
    "feature_names": "Feature names",
    "features_view": "Features with names and labels",
    "token_scores_view": "Top tokens per feature, readable",
    "head_scores_view": "Head scores, readable",
    "edges_view": "Edges, readable",
    "labels_view": "Labels with feature names",
    "sae_summary": "Per-SAE summary",
    "neuronpedia_view": "Neuronpedia agreement, readable",
    "activation_examples_view": "Activation examples with feature names",
    "virtual_baselines": "Random baselines of virtual weights, per dictionary pair",
    "decoder_spread": "Cross-layer transcoders: decoder norm per layer written",
    "virtual_edges_view": "Virtual weights (writer -> reader) with layers and percentiles",
}

# Columns the schema has no comment for, by name (in any table), or by what the name ends in.
COLUMN_WORDS: dict[str, str] = {
    "model_id": "the model (models.model_id)",
    "sae_id": "the SAE (saes.sae_id)",
    "feature_id": "the feature, atlas-wide id (features.feature_id)",
    "token_id": "token id in the model's vocabulary",
    "head_pk": "the attention head (heads.head_pk)",
    "layer": "layer index (0 = first block)",
    "head": "head index within its layer",
    "role": "what the score measures (q, k, v, o or attribution)",
    "phase": "du = decoder -> unembedding (what the feature writes); ee = embedding -> encoder (what drives it)",
    "sign": "+1 = promoted / driven by, -1 = suppressed / inhibited by",
    "value": "the token's logit (du) or input score (ee)",
    "score": "strength of the relation",
    "version": "schema version",
    "applied_at": "when it was applied (ISO-8601 UTC)",
    "source_kind": "where the weights came from: hub, path, gguf or synthetic",
    "n_layers": "number of transformer blocks",
    "d_model": "width of the residual stream",
    "n_heads": "attention (query) heads per layer",
    "n_kv_heads": "key/value heads per layer (fewer than n_heads with grouped-query attention)",
    "d_head": "width of one attention head",
    "d_vocab": "vocabulary size",
    "tied_embeddings": "1 when the unembedding is the embedding transposed",
    "norm_kind": "layernorm, rmsnorm or gemma_rmsnorm",
    "embed_scale": "factor the embeddings are multiplied by (Gemma: sqrt(d_model))",
    "attn_softcap": "attention logit softcap, if any",
    "final_softcap": "final logit softcap, if any",
    "b_enc": "encoder bias of the latent",
    "pass": "the build pass",
    "chunk_start": "first latent index of the unit",
    "chunk_end": "last latent index of the unit, exclusive",
    "finished_at": "when it finished (ISO-8601 UTC)",
    "n": "number of (feature, head) pairs",
    "mean": "mean participation",
    "median": "median participation",
    "p75": "75th percentile of participation",
    "kind": "what kind of row it is (see the table's description)",
    "site": "where the SAE reads the model: resid_pre, attn_z, attn_out, resid_mid, mlp_out or resid_post "
    "(a transcoder or CLT: mlp_in or ln2_normalized)",
    "out_site": "where a transcoder or CLT writes (mlp_out); NULL for an SAE, which writes where it reads",
    "idx": "latent index within its SAE",
    "name": "readable name",
    "label_id": "the label (labels.label_id)",
    "text": "the label text",
    "created_at": "when it was made (ISO-8601 UTC)",
    "d_in": "width of the SAE's input",
    "d_sae": "number of latents",
    "k": "active latents per token (top-k SAEs)",
    "kv_group": "key/value head this query head reads",
    "edge_id": "the edge",
    "src_feature": "feature the edge leaves",
    "dst_feature": "feature the edge reaches",
    "example_id": "the activation example",
    "rank": "0 = strongest",
    "schema_version": "schema version the atlas was written at",
    "sae_atlas_version": "sae-atlas version that wrote it",
    "architecture": "the SAE's activation: relu, jumprelu, topk or gated",
    "sha256": "sha256 of the weight file(s)",
    "src_sae_id": "the source dictionary, which writes (saes.sae_id)",
    "dst_sae_id": "the destination dictionary, which reads (saes.sae_id)",
    "out_layer": "a layer the CLT feature writes",
    "notes": "free-text notes",
    "evidence": "JSON: what the label rests on (scores, tokens, the imported row's id)",
}

FOREIGN = "not defined by sae-atlas: served as the file has it"

# Tables and views schema.sql has no comment above.
DESCRIPTIONS: dict[str, str] = {
    "atlas_info": "One row: the schema version, what wrote the atlas and when, every build parameter (provenance, "
    "JSON) and the atlas's identity.",
    "schema_migrations": "The migrations applied to this file, after sqlite-utils' migrations table.",
    "models": "The model the SAEs read: its shape, norm, vocabulary size and where its weights came from.",
    "saes": "One row per SAE (dictionary): where it reads the model, its width, and where it came from. A feature "
    "is named SAE/INDEX after the name here.",
    "vocab": "The model's tokens: the text itself, a printable form and the key token search matches.",
    "heads": "One row per attention (query) head of the model.",
    "labels": "What each feature is about: heuristic labels of the build, your own, and imported ones "
    "(source import:...). Full-text search: ?_search=.",
    "labels_fts": "Full-text index of labels.text (sqlite-utils' form); search it through labels?_search=.",
    "vocab_fts": "Token search: ?_search= here finds the tokens whose key (case-folded, surrounding spaces "
    "stripped) contains the text, 3 characters or more (a trigram index of vocab.key). The search_tokens query "
    "shows them with their printed form and how many features promote each.",
    "feature_names": "Every feature's readable name, SAE/INDEX, with its SAE's layer and site.",
    "features_view": "Features with their readable names, SAE, layer and site, and the kind of their heuristic label.",
    "head_scores_view": "head_scores with feature names and the heads' layer, head and key/value group.",
    "edges_view": "edges with the names of the features at both ends and the head they go through.",
    "labels_view": "labels with the feature's name. Full-text search: ?_search=.",
    "sae_summary": "Per SAE: how many features predict or read tokens, and the mean attention participation.",
    "activation_examples_view": "activation_examples with the feature's name.",
}
_STAT_WORDS = {
    "max": "maximum",
    "min": "minimum",
    "mean": "mean",
    "std": "standard deviation (population)",
    "skew": "skewness",
    "kurtosis": "excess kurtosis (0 for a normal)",
    "entropy": "entropy (nats) of softmax over the vocabulary",
    "top1_z": "(max - mean) / std",
}
_ROLE_WORDS = {"q": "queries", "k": "keys", "v": "values"}

VIEW_COLUMNS: dict[str, str] = {
    "src_layer": "layer of the source dictionary (a CLT: the layer it reads)",
    "src_site": "site the source reads",
    "dst_layer": "layer of the destination dictionary",
    "dst_site": "site the destination reads",
    "feature": "the feature's name, SAE/INDEX (e.g. L14.res/1234)",
    "sae": "the SAE's name (saes.name)",
    "label_kind": "kind of the newest heuristic label: semantic, non_semantic or free",
    "token": "the token as shown: whitespace made visible (' Paris' is '␣Paris')",
    "token_raw": "the token's text itself, whitespace as-is (WHERE token_raw = ' Paris')",
    "token_key": "the token's search key: case-folded, surrounding spaces stripped (WHERE token_key = 'paris')",
    "src": "name of the feature the edge leaves",
    "dst": "name of the feature the edge reaches",
    "head_layer": "layer of the head the edge goes through",
    "n_features": "features of the SAE in the atlas",
    "frac_predicts_tokens": "fraction of features that predict tokens (du criterion)",
    "frac_reads_tokens": "fraction of features that read tokens (ee criterion)",
    "sae_summary.attn_q_mean": "mean over the SAE's features of attn_q_mean",
    "sae_summary.attn_k_mean": "mean over the SAE's features of attn_k_mean",
    "sae_summary.attn_v_mean": "mean over the SAE's features of attn_v_mean",
    "feature_names.name": "the feature's name, SAE/INDEX (e.g. L14.res/1234)",
    "features_view.name": "the feature's name, SAE/INDEX (e.g. L14.res/1234)",
    "sae_summary.name": "the SAE's name",
    "fts_rowid": "the token's row in vocab_fts (what ?_search= matches)",
    "pos_overlap": "pos_shared / pos_n: share of the top promoted tokens both lists hold",
    "neg_overlap": "neg_shared / neg_n: share of the top suppressed tokens both lists hold",
    "neuronpedia_url": "the feature's page on neuronpedia.org (when its SAE's neuronpedia_id is known)",
}

# Datasette shows and filters these with Pint. Entropies are in nats, which their descriptions say: Pint has no
# unit for that (its `nat` is a pressure), and a custom one breaks Datasette's display of the value.
UNITS = {"percentile": "percent"}

FACETS: dict[str, list[str]] = {
    "saes": ["site", "architecture", "layer"],
    "features": ["sae_id", "predicts_tokens", "reads_tokens"],
    "features_view": ["sae", "label_kind", "predicts_tokens", "reads_tokens"],
    "token_scores": ["phase", "sign"],
    "token_scores_view": ["phase", "sign"],
    "head_scores": ["role"],
    "head_scores_view": ["role", "layer"],
    "edges": ["kind"],
    "edges_view": ["kind"],
    "labels": ["kind", "source"],
    "labels_view": ["kind", "source"],
    "depth_profiles": ["sae_id", "role"],
    "neuronpedia_agreement": ["pos_shared", "neg_shared"],
    "neuronpedia_view": ["sae"],
    "activation_examples": ["source"],
    "activation_examples_view": ["source"],
}


def _comment(line: str) -> tuple[str, str]:
    """(code, comment) of one schema line."""
    code, _, comment = line.partition("--")
    return code, " ".join(comment.split())


def schema_descriptions(sql: str | None = None) -> dict[str, dict[str, Any]]:
    """{table or view: {"description": ..., "columns": {column: ...}}} from schema.sql's comments."""
    out: dict[str, dict[str, Any]] = {}
    for statement in split_sql(sql or schema_file_sql()):
        m = _CREATE_RE.search(statement)
        if not m:
            continue
        head, body = statement[: m.start()], statement[m.end() :]
        block: list[str] = []  # the comment lines right above the CREATE (a blank line ends a block)
        for line in head.splitlines():
            block = [*block, _comment(line)[1]] if line.strip().startswith("--") else []
        desc = " ".join(t for t in block if t)
        columns: dict[str, str] = {}
        if m.group(1).upper() == "TABLE":
            group, in_group = "", False
            for line in body.splitlines():
                code, note = _comment(line)
                if not code.strip():  # a comment line of its own heads the columns below it
                    if note:
                        group = f"{group} {note}" if in_group else note
                    in_group = bool(note)
                    continue
                in_group = False
                for name in _COLUMN_RE.findall(code):
                    columns[name] = note or _from_group(name, group)
                if note:
                    group = ""
        out[m.group(2)] = {"description": desc, "columns": {k: v for k, v in columns.items() if v}}
    return out


def _from_group(name: str, group: str) -> str:
    """A column's description from its group's comment and what its name ends in (du_max -> maximum)."""
    if not group:
        return ""
    for stat, words in _STAT_WORDS.items():
        if name.endswith("_" + stat):
            m = re.match(r"attn_([qkv])_", name)
            about = f" of the {_ROLE_WORDS[m.group(1)]}' participation" if m else ""
            return f"{words}{about}: {group}"
    return group


def _columns(conn: sqlite3.Connection, name: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_xinfo({name})") if r[6] in (0, 2, 3)]


_BASE_RE = re.compile(r"\b(?:FROM|JOIN)\s+(\w+)", re.I)


def describe(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Title, description and column descriptions of every table and view the atlas holds.

    A column is described by, in order: its own comment in schema.sql (tables),
    :data:`VIEW_COLUMNS` (``view.column``, then ``column``), the tables and views
    a view reads (its FROM and JOIN, in order), then :data:`COLUMN_WORDS`.
    """
    from_schema = schema_descriptions()
    rows = conn.execute(
        "SELECT name, type, sql FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
        "AND name NOT GLOB '*_fts_*'"
    ).fetchall()
    sql_of = {r[0]: r[2] or "" for r in rows}
    out: dict[str, dict[str, Any]] = {}

    def column_text(name: str, col: str, seen: frozenset[str]) -> str:
        own = from_schema.get(name, {}).get("columns", {}).get(col)
        if own:
            return own
        for key in (f"{name}.{col}", col):
            if key in VIEW_COLUMNS:
                return VIEW_COLUMNS[key]
        for base in _BASE_RE.findall(sql_of.get(name, "")):
            if base in sql_of and base not in seen and base != name and col in _columns(conn, base):
                text = column_text(base, col, seen | {name})
                if text:
                    return text
        return COLUMN_WORDS.get(col, "")

    for name in sorted(sql_of):
        info = from_schema.get(name, {"description": ""})
        try:
            cols = {col: column_text(name, col, frozenset()) for col in _columns(conn, name)}
        except sqlite3.Error:  # an object sae-atlas did not define, unreadable on a defensive connection
            cols = {}
        if name not in from_schema and name not in DESCRIPTIONS:
            info = {"description": FOREIGN}
            cols = {c: text or FOREIGN for c, text in cols.items()}
        if name == "labels_fts":
            cols = {c: "label text, full-text indexed (labels.text)" for c in cols}
        elif name == "vocab_fts":
            cols = {c: COLUMN_WORDS.get(c, "token search key, trigram-indexed (vocab.key)") for c in cols}
        desc = info["description"] or DESCRIPTIONS.get(name, "")
        out[name] = {"title": TITLES.get(name, name), "description": desc, "columns": cols}
    return out


# ------------------------------------------------------------------ canned queries
_FEATURE_CTE = (
    "WITH target AS (SELECT f.feature_id, f.sae_id, s.model_id FROM saes s JOIN features f ON f.sae_id = s.sae_id "
    "WHERE s.name = substr(rtrim(:feature, '0123456789'), 1, length(rtrim(:feature, '0123456789')) - 1) "
    "AND f.idx = CAST(substr(:feature, length(rtrim(:feature, '0123456789')) + 1) AS INTEGER))\n"
)
_FEATURE_PARAM = "feature: its name, SAE/INDEX (e.g. L14.res/1234; `sae-atlas info` lists the SAEs)."


def _token_query(phase: str, sign: int, verb: str) -> dict[str, Any]:
    return {
        "title": f"Features that {verb} a token",
        "description": f"Features whose top-k list ({phase}, sign {sign:+d}) holds the token, best rank first. "
        "token: its text, any case, surrounding spaces ignored (king finds ' King' and 'king').",
        "sql": "SELECT fn.name AS feature, v.display AS token, ts.rank, ts.value, ts.feature_id\n"
        "FROM vocab v\n"
        f"JOIN token_scores ts ON ts.token_id = v.token_id AND ts.phase = '{phase}' AND ts.sign = {sign}\n"
        "JOIN feature_names fn ON fn.feature_id = ts.feature_id AND fn.model_id = v.model_id\n"
        "WHERE v.key = lower(trim(:token))\nORDER BY ts.rank, abs(ts.value) DESC, ts.feature_id\nLIMIT 500",
    }


def canned_queries(tables: set[str]) -> dict[str, dict[str, Any]]:
    """The canned queries whose tables and views the atlas has."""
    metric_case = "\n".join(f"    WHEN '{m}' THEN f.{m}" for m in METRIC_COLUMNS)
    q: dict[str, tuple[set[str], dict[str, Any]]] = {
        "promotes_token": ({"vocab", "token_scores"}, _token_query("du", 1, "promote")),
        "suppresses_token": ({"vocab", "token_scores"}, _token_query("du", -1, "suppress")),
        "driven_by_token": ({"vocab", "token_scores"}, _token_query("ee", 1, "are driven by")),
        "feature": (
            {"features_view"},
            {
                "title": "A feature's card: its row",
                "description": "Every metric of one feature. " + _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT v.* FROM features_view v JOIN target USING (feature_id)",
            },
        ),
        "feature_tokens": (
            {"token_scores"},
            {
                "title": "A feature's card: its top tokens",
                "description": "What the feature promotes and suppresses (du) and what drives it (ee). "
                + _FEATURE_PARAM,
                "sql": _FEATURE_CTE
                + "SELECT ts.phase, ts.sign, ts.rank, v.display AS token, ts.value, v.raw AS token_raw\n"
                "FROM target JOIN token_scores ts USING (feature_id)\n"
                "LEFT JOIN vocab v ON v.model_id = target.model_id AND v.token_id = ts.token_id\n"
                "ORDER BY ts.phase, ts.sign DESC, ts.rank",
            },
        ),
        "feature_labels": (
            {"labels"},
            {
                "title": "A feature's card: its labels",
                "description": _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT l.label_id, l.kind, l.source, l.score, l.text, l.created_at\n"
                "FROM target JOIN labels l USING (feature_id) ORDER BY l.source = 'user' DESC, l.label_id DESC",
            },
        ),
        "feature_heads": (
            {"head_scores", "heads"},
            {
                "title": "A feature's card: its attention heads",
                "description": _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT hs.role, h.layer, h.head, hs.score, hs.percentile\n"
                "FROM target JOIN head_scores hs USING (feature_id) JOIN heads h USING (head_pk)\n"
                "ORDER BY hs.role, hs.score DESC",
            },
        ),
        "feature_edges": (
            {"edges_view"},
            {
                "title": "A feature's card: its edges and neighbours",
                "description": "Edges out of and into the feature, strongest first within each kind. " + _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT CASE WHEN e.src_feature = target.feature_id THEN 'out' ELSE 'in' END AS "
                "direction, e.kind, e.src, e.dst, e.head_layer, e.head, e.score, e.rank\n"
                "FROM target JOIN edges_view e ON e.src_feature = target.feature_id OR e.dst_feature = target.feature_id\n"
                "ORDER BY direction DESC, e.kind, abs(e.score) DESC LIMIT 500",
            },
        ),
        "feature_neuronpedia": (
            {"neuronpedia_view"},
            {
                "title": "A feature's card: Neuronpedia",
                "description": "Its agreement with Neuronpedia's logit table "
                "and its neuronpedia.org page. " + _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT n.* FROM target JOIN neuronpedia_view n USING (feature_id)",
            },
        ),
        "feature_examples": (
            {"activation_examples"},
            {
                "title": "A feature's card: activation examples",
                "description": _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT e.rank, e.max_value, e.source, e.tokens, e.acts, e.max_index\n"
                "FROM target JOIN activation_examples e USING (feature_id) ORDER BY e.source, e.rank",
            },
        ),
        "top_features": (
            {"features"},
            {
                "title": "Top features by a metric",
                "description": "The 100 features highest in a metric column of features (e.g. du_top1_z, attn_k_mean), "
                "in one SAE or all (sae left empty).",
                "sql": "SELECT s.name || '/' || f.idx AS feature, s.layer, s.site, CASE :metric\n"
                + metric_case
                + "\n  END AS value\nFROM features f JOIN saes s ON s.sae_id = f.sae_id\n"
                "WHERE (:sae = '' OR s.name = :sae) AND value IS NOT NULL\nORDER BY value DESC LIMIT 100",
            },
        ),
        "search_tokens": (
            {"vocab_fts", "vocab", "token_scores"},
            {
                "title": "Search tokens",
                "description": "Tokens whose text contains the text (3 characters or more; case and surrounding spaces "
                "ignored), exact matches first, with how many features promote, suppress or are driven by each.",
                "sql": "SELECT v.display AS token, v.raw AS token_raw, v.token_id, CASE WHEN v.key = lower(trim(:text)) "
                "THEN 'exact' ELSE 'partial' END AS match,\n"
                "  (SELECT COUNT(*) FROM token_scores ts WHERE ts.token_id = v.token_id AND ts.phase = 'du' AND ts.sign = 1)"
                " AS promoted_by,\n"
                "  (SELECT COUNT(*) FROM token_scores ts WHERE ts.token_id = v.token_id AND ts.phase = 'du' AND ts.sign = -1)"
                " AS suppressed_by,\n"
                "  (SELECT COUNT(*) FROM token_scores ts WHERE ts.token_id = v.token_id AND ts.phase = 'ee' AND ts.sign = 1)"
                " AS driven_by\n"
                "FROM vocab_fts f JOIN vocab v ON v.model_id = f.model_id AND v.token_id = f.token_id\n"
                "WHERE vocab_fts MATCH '\"' || replace(lower(trim(:text)), '\"', '\"\"') || '\"'\n"
                "ORDER BY match, length(v.key), v.token_id LIMIT 200",
            },
        ),
        "search_labels": (
            {"labels_fts"},
            {
                "title": "Search labels",
                "description": "Labels matching a full-text query (FTS5: words are AND-ed, "
                '"a phrase", prefix*), best match first.',
                "sql": "SELECT s.name || '/' || f.idx AS feature, l.text, l.kind, l.source, l.feature_id\n"
                "FROM labels_fts JOIN labels l ON l.label_id = labels_fts.rowid\n"
                "JOIN features f ON f.feature_id = l.feature_id JOIN saes s ON s.sae_id = f.sae_id\n"
                "WHERE labels_fts MATCH :query ORDER BY labels_fts.rank LIMIT 200",
            },
        ),
        "virtual_neighbours": (
            {"edges_view"},
            {
                "title": "A feature's virtual-weight neighbours",
                "description": "Features this one writes to or reads from through virtual weights (edges of kind "
                "'virtual', between dictionaries at different depths), strongest first; no rows in an atlas built "
                "without them. " + _FEATURE_PARAM,
                "sql": _FEATURE_CTE + "SELECT CASE WHEN e.src_feature = target.feature_id THEN 'out' ELSE 'in' END AS "
                "direction, e.src, e.dst, e.score, e.rank\n"
                "FROM target JOIN edges_view e ON (e.src_feature = target.feature_id OR e.dst_feature = target.feature_id)"
                " AND e.kind = 'virtual'\nORDER BY abs(e.score) DESC LIMIT 200",
            },
        ),
        "neuronpedia_agreement_by_sae": (
            {"neuronpedia_view"},
            {
                "title": "Agreement with Neuronpedia, per SAE",
                "description": "How far Neuronpedia's logit tables agree with the atlas's du lists, per SAE: "
                "features compared, mean overlap of the top promoted / suppressed tokens, mean rank correlation.",
                "sql": "SELECT sae, COUNT(*) AS features, AVG(pos_overlap) AS pos_overlap, AVG(pos_rank_corr) AS "
                "pos_rank_corr, AVG(neg_overlap) AS neg_overlap, AVG(neg_rank_corr) AS neg_rank_corr\n"
                "FROM neuronpedia_view GROUP BY sae ORDER BY sae",
            },
        ),
    }
    return {name: query for name, (needs, query) in q.items() if needs <= tables}


# ------------------------------------------------------------------ the whole document
def database_name(path: Path) -> str:
    """The name Datasette gives a database file: its name without the last suffix."""
    return Path(path).stem


def build_metadata(atlas: Any) -> dict[str, Any]:
    """Datasette metadata for the atlas open as ``atlas`` (an atlas.db.Atlas)."""
    conn = atlas.conn
    described = describe(conn)
    tables: dict[str, Any] = {}
    for name, info in described.items():
        meta: dict[str, Any] = {"title": info["title"], "description": info["description"]}
        meta["columns"] = info["columns"]
        units = {c: u for c, u in UNITS.items() if c in info["columns"]}
        if units:
            meta["units"] = units
        facets = [f for f in FACETS.get(name, []) if f in info["columns"]]
        if facets:
            meta["facets"] = facets
        if name in ("models", "saes"):
            meta["label_column"] = "name"
        if name.endswith("_fts") or name in ("schema_migrations", "build_units"):
            meta["hidden"] = True
        tables[name] = meta
    if "labels_view" in tables and "labels_fts" in tables:
        tables["labels_view"].update(fts_table="labels_fts", fts_pk="label_id")
    name = database_name(atlas.path)
    return {
        "title": f"sae-atlas: {atlas.path.name}",
        "description": "What SAE features do, read from the weights alone. Start with features_view, "
        "token_scores_view or the canned queries below. Search labels with labels?_search=... and tokens with "
        "vocab_fts?_search=... (any 3+ characters of the token) or the search_tokens query.",
        "databases": {
            name: {
                "description": f"An atlas (schema {atlas.schema_version}): models, SAEs, their features and what "
                "the weights say each one does.",
                "tables": tables,
                "queries": canned_queries(set(tables)),
            }
        },
    }
