-- sae-atlas schema. One file, applied by atlas.db.create(); versioned with
-- PRAGMA user_version (see atlas/migrations.py). Every query the CLI and the
-- TUI run has an index or a named view here.
--
-- Naming follows the field: d_model, d_head, d_sae, W_dec, W_enc ...
-- Phases: 'du' = decoder -> unembedding (what a feature writes to the logits),
--         'ee' = embedding -> encoder (which input tokens drive a feature).

CREATE TABLE IF NOT EXISTS atlas_info (
    id                INTEGER PRIMARY KEY CHECK (id = 1),   -- exactly one row
    schema_version    INTEGER NOT NULL,
    sae_atlas_version TEXT    NOT NULL,
    created_at        TEXT    NOT NULL,                     -- ISO-8601 UTC
    provenance        TEXT    NOT NULL DEFAULT '{}'          -- JSON: every build parameter, sha256 of every weight file
        CHECK (json_valid(provenance)),
    -- This atlas's identity, 32 hex digits, made when it is created (a migrated v1 atlas
    -- gets one derived from its atlas_info row). A copy keeps it, so a copied or moved
    -- atlas finds the same label overlay (atlas/overlay.py); export and merge make new atlases.
    atlas_id          TEXT    NOT NULL DEFAULT (lower(hex(randomblob(16))))
        CHECK (length(atlas_id) = 32 AND atlas_id NOT GLOB '*[^0-9a-f]*')
);

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS models (
    model_id        INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,                -- short readable name
    source          TEXT    NOT NULL,                       -- hub id, local path or GGUF file
    source_kind     TEXT    NOT NULL CHECK (source_kind IN ('hub', 'path', 'gguf', 'synthetic')),
    architecture    TEXT    NOT NULL,                       -- e.g. LlamaForCausalLM
    n_layers        INTEGER NOT NULL CHECK (n_layers > 0),
    d_model         INTEGER NOT NULL CHECK (d_model > 0),
    n_heads         INTEGER NOT NULL CHECK (n_heads > 0),
    n_kv_heads      INTEGER NOT NULL CHECK (n_kv_heads > 0),
    d_head          INTEGER NOT NULL CHECK (d_head > 0),
    d_vocab         INTEGER NOT NULL CHECK (d_vocab > 0),
    tied_embeddings INTEGER NOT NULL CHECK (tied_embeddings IN (0, 1)),
    norm_kind       TEXT    NOT NULL CHECK (norm_kind IN ('layernorm', 'rmsnorm', 'gemma_rmsnorm')),
    embed_scale     REAL    NOT NULL DEFAULT 1.0,
    attn_softcap    REAL,
    final_softcap   REAL,
    dtype           TEXT,                                   -- dtype the weights were read in
    sha256          TEXT,                                   -- of the weight file(s), when known
    notes           TEXT                                    -- e.g. "dequantized Q4_1 GGUF"
);

CREATE TABLE IF NOT EXISTS saes (
    sae_id          INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,                -- readable prefix, e.g. L12.res; features are L12.res/1234
    model_id        INTEGER NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    release         TEXT,                                   -- e.g. gemma-scope-2b-pt-res
    sae_ref         TEXT,                                   -- release-specific id, e.g. layer_12/width_16k/average_l0_82
    hook_name       TEXT    NOT NULL,                       -- e.g. blocks.12.hook_resid_post
    -- where it reads; mlp_in / ln2_normalized: a transcoder's or CLT's input (the normalised MLP input, with / without the gain)
    site            TEXT    NOT NULL CHECK (site IN ('resid_pre', 'resid_mid', 'resid_post', 'attn_z', 'attn_out', 'mlp_out', 'mlp_in', 'ln2_normalized')),
    layer           INTEGER NOT NULL CHECK (layer >= 0),
    d_in            INTEGER NOT NULL CHECK (d_in > 0),
    d_sae           INTEGER NOT NULL CHECK (d_sae > 0),
    architecture    TEXT    NOT NULL CHECK (architecture IN ('relu', 'jumprelu', 'topk', 'gated')),
    k               INTEGER,                                -- for topk SAEs
    source          TEXT    NOT NULL,                       -- path or hub reference it was read from
    source_format   TEXT,                                   -- saelens, gemma_scope, llama_scope, kissane, dictionary_learning
    sha256          TEXT,
    neuronpedia_id  TEXT,                                   -- e.g. gemma-2-2b/12-gemmascope-res-16k
    fve             REAL,                                   -- fraction of variance explained (held-out), when known
    l0              REAL,                                   -- mean active latents per token (held-out), when known
    dead_fraction   REAL,                                   -- fraction of latents never active (held-out), when known
    notes           TEXT,
    -- Schema 4: what the dictionary is and where it writes. An SAE writes where it reads (out_* NULL);
    -- a transcoder reads hook_name and writes out_hook_name of its own layer (a skip transcoder also adds
    -- x @ W_skip); a CLT reads its layer and writes out_site at every layer of out_layers.
    sae_kind        TEXT    NOT NULL DEFAULT 'sae' CHECK (sae_kind IN ('sae', 'transcoder', 'skip_transcoder', 'clt')),
    out_hook_name   TEXT,                                   -- e.g. blocks.11.hook_mlp_out (a CLT: at its own layer)
    out_site        TEXT    CHECK (out_site IN ('resid_pre', 'resid_mid', 'resid_post', 'attn_z', 'attn_out', 'mlp_out', 'mlp_in', 'ln2_normalized')),
    out_layers      TEXT    CHECK (out_layers IS NULL OR json_valid(out_layers)),  -- JSON list of the layers it writes; NULL = its own layer
    d_out           INTEGER CHECK (d_out > 0)               -- width of what it writes; NULL = d_in
);
CREATE INDEX IF NOT EXISTS saes_layer ON saes (layer, site);

-- One row per SAE latent, with its scalar weight metrics. NULL = pass not run.
CREATE TABLE IF NOT EXISTS features (
    feature_id      INTEGER PRIMARY KEY,                    -- atlas-wide id, used by edges
    sae_id          INTEGER NOT NULL REFERENCES saes (sae_id) ON DELETE CASCADE,
    idx             INTEGER NOT NULL CHECK (idx >= 0),      -- latent index within its SAE
    dec_norm        REAL,                                   -- ||W_dec[f]||
    enc_norm        REAL,                                   -- ||W_enc[:, f]||
    b_enc           REAL,
    threshold       REAL,                                   -- JumpReLU threshold, if any
    -- decoder -> unembedding statistics over the whole logit vector
    du_max REAL, du_min REAL, du_mean REAL, du_std REAL, du_skew REAL, du_kurtosis REAL,
    du_entropy REAL,                                        -- entropy (nats) of softmax(logits)
    du_top1_z REAL,                                         -- (max - mean) / std
    -- embedding -> encoder statistics over the whole vocabulary
    ee_max REAL, ee_min REAL, ee_mean REAL, ee_std REAL, ee_skew REAL, ee_kurtosis REAL,
    ee_entropy REAL, ee_top1_z REAL,
    predicts_tokens INTEGER CHECK (predicts_tokens IN (0, 1)),  -- du criterion, see provenance.criteria
    reads_tokens    INTEGER CHECK (reads_tokens IN (0, 1)),     -- ee criterion (the mirror)
    -- attention participation summaries over the heads of the layer that reads the site
    attn_q_mean REAL, attn_k_mean REAL, attn_v_mean REAL,
    attn_q_max  REAL, attn_k_max  REAL, attn_v_max  REAL,
    -- hook_z SAEs: head attribution (Kissane et al.)
    top_head        INTEGER,                                -- head index within the layer
    top_head_share  REAL,                                   -- its share of ||W_dec[f]||^2
    UNIQUE (sae_id, idx)
);
CREATE INDEX IF NOT EXISTS features_du_top1_z ON features (sae_id, du_top1_z);
CREATE INDEX IF NOT EXISTS features_du_max ON features (sae_id, du_max);
CREATE INDEX IF NOT EXISTS features_ee_top1_z ON features (sae_id, ee_top1_z);
CREATE INDEX IF NOT EXISTS features_attn_q ON features (sae_id, attn_q_mean);
CREATE INDEX IF NOT EXISTS features_attn_k ON features (sae_id, attn_k_mean);
CREATE INDEX IF NOT EXISTS features_attn_v ON features (sae_id, attn_v_mean);
CREATE INDEX IF NOT EXISTS features_ee_max ON features (sae_id, ee_max);

CREATE TABLE IF NOT EXISTS vocab (
    model_id  INTEGER NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    token_id  INTEGER NOT NULL CHECK (token_id >= 0),
    raw       TEXT    NOT NULL,                             -- decoded string, whitespace as-is
    display   TEXT    NOT NULL,                             -- printable: space -> ␣, newline -> ↵ ...
    key       TEXT    NOT NULL,                             -- lower(strip(raw)), for exact token search
    PRIMARY KEY (model_id, token_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vocab_key ON vocab (key, model_id);

-- Top-k tokens per feature, phase and sign. sign +1 = promoted, -1 = suppressed.
CREATE TABLE IF NOT EXISTS token_scores (
    feature_id INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    phase      TEXT    NOT NULL CHECK (phase IN ('du', 'ee')),
    sign       INTEGER NOT NULL CHECK (sign IN (1, -1)),
    rank       INTEGER NOT NULL CHECK (rank >= 0),          -- 0 = strongest
    token_id   INTEGER NOT NULL,
    value      REAL    NOT NULL,
    PRIMARY KEY (feature_id, phase, sign, rank)
) WITHOUT ROWID;
-- reverse search: which features promote / suppress / are driven by a token
CREATE INDEX IF NOT EXISTS token_scores_token ON token_scores (token_id, phase, sign, rank);

CREATE TABLE IF NOT EXISTS heads (
    head_pk  INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    layer    INTEGER NOT NULL CHECK (layer >= 0),
    head     INTEGER NOT NULL CHECK (head >= 0),
    kv_group INTEGER NOT NULL CHECK (kv_group >= 0),         -- key/value head this query head reads
    UNIQUE (model_id, layer, head)
);

-- role q/k/v: Liu & Deng participation ||W_X^h (g * d_f)||, normalised;
-- role o: read through W_O; role attribution: hook_z share of ||W_dec[f]||^2.
CREATE TABLE IF NOT EXISTS head_scores (
    feature_id INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    head_pk    INTEGER NOT NULL REFERENCES heads (head_pk) ON DELETE CASCADE,
    role       TEXT    NOT NULL CHECK (role IN ('q', 'k', 'v', 'o', 'attribution')),
    score      REAL    NOT NULL,
    percentile REAL CHECK (percentile BETWEEN 0 AND 100),   -- against random directions of the same norm
    PRIMARY KEY (feature_id, role, head_pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS head_scores_head ON head_scores (head_pk, role, score);

-- Feature -> feature edges. qk/ov go through a head; cosine (neighbours within
-- an SAE) and flow (decoder matching across adjacent SAEs) have no head.
-- Schema 4: virtual / virtual_in are virtual weights along the direct residual path (docs/graph.md),
-- V(f, g) = (sum of f's decoders written before g reads) . diag(gain of g's norm) . W_enc[:, g], always
-- stored src = the writer f -> dst = the reader g. virtual: rank among f's edges into one destination
-- dictionary (top-k out); virtual_in: rank among g's edges from one source dictionary (top-k in).
CREATE TABLE IF NOT EXISTS edges (
    edge_id     INTEGER PRIMARY KEY,
    src_feature INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    dst_feature INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    head_pk     INTEGER REFERENCES heads (head_pk) ON DELETE CASCADE,
    kind        TEXT    NOT NULL CHECK (kind IN ('qk', 'ov', 'cosine', 'flow', 'virtual', 'virtual_in')),
    score       REAL    NOT NULL,
    rank        INTEGER NOT NULL CHECK (rank >= 0),         -- 0 = strongest |score| in its group
    percentile  REAL    CHECK (percentile BETWEEN 0 AND 100)  -- virtual kinds: in virtual_baselines of the pair; else NULL
);
CREATE INDEX IF NOT EXISTS edges_src ON edges (src_feature, kind, head_pk, rank);
CREATE INDEX IF NOT EXISTS edges_dst ON edges (dst_feature, kind);

CREATE TABLE IF NOT EXISTS labels (
    label_id   INTEGER PRIMARY KEY,
    feature_id INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    text       TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('semantic', 'non_semantic', 'free')),
    source     TEXT    NOT NULL,                            -- heuristic, user, or import:<name>
    score      REAL,
    evidence   TEXT CHECK (evidence IS NULL OR json_valid(evidence)),
    created_at TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_feature ON labels (feature_id, source);
CREATE INDEX IF NOT EXISTS labels_kind ON labels (kind, source);

-- Per-layer depth profiles of attention participation, written by the attention pass.
CREATE TABLE IF NOT EXISTS depth_profiles (
    sae_id     INTEGER NOT NULL REFERENCES saes (sae_id) ON DELETE CASCADE,
    layer      INTEGER NOT NULL,                            -- attention layer whose heads were scored
    role       TEXT    NOT NULL CHECK (role IN ('q', 'k', 'v')),
    n          INTEGER NOT NULL,
    mean       REAL, median REAL, p75 REAL,
    frac_above REAL,                                        -- fraction of (feature, head) above the baseline percentile
    PRIMARY KEY (sae_id, layer, role)
) WITHOUT ROWID;

-- Resumable builds: one row per finished unit of work (SAE x pass x feature chunk).
CREATE TABLE IF NOT EXISTS build_units (
    sae_id      INTEGER NOT NULL REFERENCES saes (sae_id) ON DELETE CASCADE,
    pass        TEXT    NOT NULL,
    chunk_start INTEGER NOT NULL,
    chunk_end   INTEGER NOT NULL,
    finished_at TEXT    NOT NULL,
    PRIMARY KEY (sae_id, pass, chunk_start)
) WITHOUT ROWID;

-- Full-text search over labels: labels_fts and its triggers labels_ai / labels_ad / labels_au
-- are declared by sqlite-utils' enable_fts (atlas/migrations.py appends them to this file's
-- text), in the form sqlite-utils and Datasette detect: `sqlite-utils search atlas.db labels
-- QUERY` and Datasette's ?_search= work on the labels table as they are.

-- vocab is WITHOUT ROWID, so its FTS index keeps its own copy of the key text.
CREATE VIRTUAL TABLE IF NOT EXISTS vocab_fts USING fts5 (
    key, model_id UNINDEXED, token_id UNINDEXED, tokenize = 'trigram'
);

-- Schema 3 (Neuronpedia, `sae-atlas import neuronpedia`). Neuronpedia's logit tables (pos_str /
-- neg_str of its export, d_f @ W_U) beside this atlas's du lists, one row per imported feature:
-- how far the two agree among the top top_n tokens of each list. Re-importing replaces the row.
CREATE TABLE IF NOT EXISTS neuronpedia_agreement (
    feature_id     INTEGER PRIMARY KEY REFERENCES features (feature_id) ON DELETE CASCADE,
    neuronpedia_id TEXT    NOT NULL,                        -- model/source the rows came from, e.g. gemma-2-2b/12-gemmascope-res-16k
    top_n          INTEGER NOT NULL CHECK (top_n > 0),      -- tokens compared from the top of each list
    pos_n          INTEGER,                                 -- promoted tokens compared: min(top_n, both lists' lengths); NULL = a list is missing
    pos_shared     INTEGER,                                 -- promoted tokens in both top lists
    pos_rank_corr  REAL,                                    -- Spearman's rho of the shared promoted tokens' ranks (NULL below 3 shared)
    neg_n          INTEGER,                                 -- suppressed tokens compared
    neg_shared     INTEGER,                                 -- suppressed tokens in both top lists
    neg_rank_corr  REAL,                                    -- Spearman's rho of the shared suppressed tokens' ranks (NULL below 3 shared)
    pos_str        TEXT CHECK (pos_str IS NULL OR json_valid(pos_str)),  -- Neuronpedia's top promoted tokens (JSON list, best first)
    neg_str        TEXT CHECK (neg_str IS NULL OR json_valid(neg_str)),  -- Neuronpedia's top suppressed tokens (JSON list, best first)
    imported_at    TEXT    NOT NULL                         -- ISO-8601 UTC
);
CREATE INDEX IF NOT EXISTS neuronpedia_agreement_pos ON neuronpedia_agreement (pos_shared, pos_rank_corr);

-- Activation examples (`sae-atlas import neuronpedia --activations N`): the N strongest contexts per
-- feature, each trimmed to a window of tokens around its most active one.
CREATE TABLE IF NOT EXISTS activation_examples (
    example_id INTEGER PRIMARY KEY,
    feature_id INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    source     TEXT    NOT NULL,                            -- where it came from: neuronpedia:<model>/<source>
    rank       INTEGER NOT NULL CHECK (rank >= 0),          -- 0 = highest maximum activation
    tokens     TEXT    NOT NULL CHECK (json_valid(tokens)), -- JSON list of the window's token strings, whitespace as-is
    acts       TEXT    NOT NULL CHECK (json_valid(acts)),   -- JSON list of the activations, one per token (4 significant digits)
    max_value  REAL    NOT NULL,                            -- the example's highest activation
    max_index  INTEGER NOT NULL CHECK (max_index >= 0),     -- position of that token in the window
    UNIQUE (feature_id, source, rank)
);

-- Schema 4: the random baseline of each (source, destination) dictionary pair of the virtual pass:
-- quantiles of |V(r, g)| over random unit directions r of the space the source writes into (the residual;
-- the image of W_O for a hook_z SAE), mapped as real decoder rows are, against every destination feature g.
-- A virtual edge's percentile compares |V(f, g)| / ||f's summed decoder row|| with these quantiles.
CREATE TABLE IF NOT EXISTS virtual_baselines (
    src_sae_id      INTEGER NOT NULL REFERENCES saes (sae_id) ON DELETE CASCADE,
    dst_sae_id      INTEGER NOT NULL REFERENCES saes (sae_id) ON DELETE CASCADE,
    n_samples       INTEGER NOT NULL CHECK (n_samples > 0),  -- random directions x destination features
    mean REAL, std REAL,                                    -- of |V| for unit random directions
    p50 REAL, p90 REAL, p99 REAL, p999 REAL, max REAL,     -- quantiles and maximum of that |V|
    n_pairs         INTEGER,                                -- real (f, g) pairs scored
    frac_above_p99  REAL,                                   -- fraction of real pairs, normalised as above, beyond p99 (0.01 if random)
    frac_above_p999 REAL,                                   -- same beyond p999 (0.001 if random)
    PRIMARY KEY (src_sae_id, dst_sae_id)
) WITHOUT ROWID;

-- Schema 4: how a cross-layer transcoder feature's decoder spreads over the layers it writes.
CREATE TABLE IF NOT EXISTS decoder_spread (
    feature_id INTEGER NOT NULL REFERENCES features (feature_id) ON DELETE CASCADE,
    out_layer  INTEGER NOT NULL CHECK (out_layer >= 0),
    norm       REAL    NOT NULL,                            -- ||W_dec[f, out_layer]||
    PRIMARY KEY (feature_id, out_layer)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- views

CREATE VIEW IF NOT EXISTS feature_names AS
SELECT f.feature_id, s.name || '/' || f.idx AS name, f.sae_id, s.name AS sae, f.idx,
       s.layer, s.site, s.model_id
FROM features f JOIN saes s USING (sae_id);

CREATE VIEW IF NOT EXISTS features_view AS
SELECT s.name || '/' || f.idx AS name, s.name AS sae, s.layer, s.site, f.*,
       (SELECT l.kind FROM labels l WHERE l.feature_id = f.feature_id AND l.source = 'heuristic'
        ORDER BY l.label_id DESC LIMIT 1) AS label_kind
FROM features f JOIN saes s USING (sae_id);

-- token is the printable form (' Paris' shows as '␣Paris'); token_raw is the text
-- itself (WHERE token_raw = ' Paris') and token_key its search key (WHERE token_key = 'paris':
-- case-folded, surrounding spaces stripped, as `sae-atlas search` matches).
CREATE VIEW IF NOT EXISTS token_scores_view AS
SELECT fn.name AS feature, ts.feature_id, ts.phase, ts.sign, ts.rank, ts.token_id,
       v.display AS token, ts.value, v.raw AS token_raw, v.key AS token_key
FROM token_scores ts
JOIN feature_names fn USING (feature_id)
LEFT JOIN vocab v ON v.model_id = fn.model_id AND v.token_id = ts.token_id;

CREATE VIEW IF NOT EXISTS head_scores_view AS
SELECT fn.name AS feature, hs.feature_id, h.layer, h.head, h.kv_group, hs.role,
       hs.score, hs.percentile
FROM head_scores hs
JOIN feature_names fn USING (feature_id)
JOIN heads h USING (head_pk);

CREATE VIEW IF NOT EXISTS edges_view AS
SELECT e.edge_id, e.kind, src.name AS src, dst.name AS dst, h.layer AS head_layer,
       h.head, e.score, e.rank, e.src_feature, e.dst_feature
FROM edges e
JOIN feature_names src ON src.feature_id = e.src_feature
JOIN feature_names dst ON dst.feature_id = e.dst_feature
LEFT JOIN heads h USING (head_pk);

CREATE VIEW IF NOT EXISTS labels_view AS
SELECT fn.name AS feature, l.*
FROM labels l JOIN feature_names fn USING (feature_id);

CREATE VIEW IF NOT EXISTS sae_summary AS
SELECT s.sae_id, s.name, s.layer, s.site, s.d_sae,
       COUNT(f.feature_id)               AS n_features,
       AVG(f.predicts_tokens)            AS frac_predicts_tokens,
       AVG(f.reads_tokens)               AS frac_reads_tokens,
       AVG(f.attn_q_mean)                AS attn_q_mean,
       AVG(f.attn_k_mean)                AS attn_k_mean,
       AVG(f.attn_v_mean)                AS attn_v_mean
FROM saes s LEFT JOIN features f USING (sae_id)
GROUP BY s.sae_id;


-- Neuronpedia agreement per feature, the overlap as a fraction, and the feature's page on neuronpedia.org
-- when its SAE's neuronpedia_id is known (the agreement's own neuronpedia_id says where the rows came from).
CREATE VIEW IF NOT EXISTS neuronpedia_view AS
SELECT fn.name AS feature, a.feature_id, fn.sae,
       CAST(a.pos_shared AS REAL) / NULLIF(a.pos_n, 0) AS pos_overlap, a.pos_rank_corr,
       CAST(a.neg_shared AS REAL) / NULLIF(a.neg_n, 0) AS neg_overlap, a.neg_rank_corr,
       a.pos_str, a.neg_str, a.neuronpedia_id,
       'https://www.neuronpedia.org/' || s.neuronpedia_id || '/' || fn.idx AS neuronpedia_url  -- NULL: id unknown
FROM neuronpedia_agreement a JOIN feature_names fn USING (feature_id) JOIN saes s ON s.sae_id = fn.sae_id;

CREATE VIEW IF NOT EXISTS activation_examples_view AS
SELECT fn.name AS feature, e.*
FROM activation_examples e JOIN feature_names fn USING (feature_id);

-- Schema 4: virtual edges with the layers and sites of both ends and the percentile.
CREATE VIEW IF NOT EXISTS virtual_edges_view AS
SELECT e.edge_id, e.kind, src.name AS src, src.layer AS src_layer, src.site AS src_site,
       dst.name AS dst, dst.layer AS dst_layer, dst.site AS dst_site,
       e.score, e.rank, e.percentile, e.src_feature, e.dst_feature
FROM edges e
JOIN feature_names src ON src.feature_id = e.src_feature
JOIN feature_names dst ON dst.feature_id = e.dst_feature
WHERE e.kind IN ('virtual', 'virtual_in');
