"""The write API used by the builders: bulk inserts inside transactions.

Arrays come in as numpy and go out as multi-row ``INSERT ... VALUES (...), (...)``
statements, hundreds of rows each, which keeps writing far from being the
bottleneck of a build (``benchmarks/bench_write.py``: over a million token rows
a second). Every method needs a writable atlas.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
else:

    class _LazyNumpy:
        """numpy, imported on first use: reading commands (`sae-atlas show`) never
        need it, and importing it is most of the CLI's start-up time."""

        def __getattr__(self, name: str) -> Any:
            import numpy

            return getattr(numpy, name)

    np = _LazyNumpy()

from atlas.domain import METRIC_COLUMNS
from atlas.names import default_sae_name, display_token, token_key

MODEL_COLUMNS = (
    "name",
    "source",
    "source_kind",
    "architecture",
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "d_head",
    "d_vocab",
    "tied_embeddings",
    "norm_kind",
    "embed_scale",
    "attn_softcap",
    "final_softcap",
    "dtype",
    "sha256",
    "notes",
)

SAE_COLUMNS = (
    "name",
    "model_id",
    "release",
    "sae_ref",
    "hook_name",
    "site",
    "layer",
    "d_in",
    "d_sae",
    "architecture",
    "k",
    "source",
    "source_format",
    "sha256",
    "neuronpedia_id",
    "fve",
    "l0",
    "dead_fraction",
    "notes",
    "sae_kind",
    "out_hook_name",
    "out_site",
    "out_layers",
    "d_out",  # schema 4: transcoders and CLTs
)


# Statistics columns of virtual_baselines, after its key (src_sae_id, dst_sae_id).
VIRTUAL_BASELINE_STATS = (
    "n_samples",
    "mean",
    "std",
    "p50",
    "p90",
    "p99",
    "p999",
    "max",
    "n_pairs",
    "frac_above_p99",
    "frac_above_p999",
)


# Secondary indexes dropped during a bulk load and rebuilt from schema.sql afterwards:
# one sort per index at the end is far cheaper than keeping them ordered row by row.
_CREATE_INDEX_RE = re.compile(r"CREATE\s+INDEX\s+IF\s+NOT\s+EXISTS\s+(\w+)\s+ON\s+(\w+)[^;]*;", re.I)
BULK_TABLES = ("features", "token_scores", "head_scores", "edges", "labels")


def schema_indexes(tables: Sequence[str] = BULK_TABLES) -> list[tuple[str, str]]:
    """(index name, CREATE INDEX statement) of every schema.sql index on ``tables``."""
    from atlas.migrations import schema_sql

    return [(m.group(1), m.group(0)) for m in _CREATE_INDEX_RE.finditer(schema_sql()) if m.group(2) in tables]


def _py(x: Any) -> Any:
    """numpy scalar -> python scalar; NaN -> NULL."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and x != x:
        return None
    return x


def utc_now() -> str:
    """Now, to the second, as ISO-8601 UTC: the format of every timestamp column."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# Rows per INSERT statement. Binding is per value either way, but each statement
# step costs far more than a row: ~100 rows a statement is 2-3x executemany's
# rate (benchmarks/bench_write.py). SQLite 3.32+ allows 32,766 parameters a statement.
ROWS_PER_STATEMENT = 256
FEATURES_PER_STATEMENT = 32
MAX_PARAMS = 32766


def _insert_blocks(conn: Any, params: np.ndarray, sql: Any, per_statement: int) -> None:
    """Run ``sql(g)`` (a statement for g groups) over ``params`` (n_groups, width), ``per_statement`` groups at a time,
    in order: full statements through one executemany, the rest in one more statement."""
    n, width = params.shape
    g = max(1, min(per_statement, MAX_PARAMS // max(1, width), n))
    full = n // g
    if full:
        conn.executemany(sql(g), params[: full * g].reshape(full, g * width).tolist())
    if n - full * g:
        conn.execute(sql(n - full * g), params[full * g :].reshape(-1).tolist())


def _insert_columns(conn: Any, target: str, columns: Sequence[Sequence[Any]]) -> None:
    """INSERT INTO ``target`` one row per position of the equal-length ``columns``, many rows a statement."""
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("columns of unequal length")
    if n == 0:
        return
    params = np.empty((n, len(columns)), dtype=object)
    for j, c in enumerate(columns):
        params[:, j] = c
    row = "(" + ", ".join("?" * len(columns)) + ")"
    _insert_blocks(conn, params, lambda g: f"INSERT INTO {target} VALUES " + ", ".join([row] * g), ROWS_PER_STATEMENT)


def _token_rows(keys: Sequence[tuple[str, int]], k: int, n_features: int) -> str:
    """VALUES rows of ``n_features`` features' token scores: per feature ?id once, then (?token, ?value) per row.
    ``keys`` were checked against the schema's phases and signs, so they are safe as literals."""
    per_feature = 1 + 2 * len(keys) * k
    out = []
    for f in range(n_features):
        fid = f * per_feature + 1
        j = fid + 1
        for phase, sign in keys:
            for rank in range(k):
                out.append(f"(?{fid},'{phase}',{sign},{rank},?{j},?{j + 1})")
                j += 2
    return ",".join(out)


class AtlasWriter:
    """Mixin over ``self.conn``; see atlas.db.Atlas."""

    conn: Any

    def require_writable(self) -> None:  # overridden by Atlas
        pass

    # ------------------------------------------------------------ provenance
    def provenance(self) -> dict:
        from atlas.provenance import read_provenance

        return read_provenance(self.conn)

    def set_provenance(self, provenance: dict) -> None:
        self.require_writable()
        self.conn.execute(
            "UPDATE atlas_info SET provenance = ? WHERE id = 1", (json.dumps(provenance, sort_keys=True),)
        )

    def update_provenance(self, **entries: Any) -> None:
        p = self.provenance()
        p.update(entries)
        self.set_provenance(p)

    # ------------------------------------------------------------ bulk loading
    @contextmanager
    def bulk_load(self, *, throwaway: bool = False, cache_mb: int = 512) -> Iterator[None]:
        """Drop secondary indexes, load, rebuild them and ANALYZE.

        ``throwaway=True`` also turns off the journal and fsync: a crash then
        corrupts the file, which is fine for a benchmark or scratch build only.
        Callers still wrap their writes in ``transaction()`` (big ones).
        """
        self.require_writable()
        conn = self.conn
        conn.execute(f"PRAGMA cache_size = {-1024 * int(cache_mb)}")
        # A foreign-key lookup per inserted row halves the load rate; the builder
        # writes ids it just created, and `sae-atlas validate` checks them after.
        conn.execute("PRAGMA foreign_keys = OFF")
        if throwaway:
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("PRAGMA journal_mode = OFF")
        self.drop_bulk_indexes()
        try:
            yield
        finally:
            # Rebuild even on error so that the file never lacks its indexes.
            self.create_indexes()
            conn.execute("PRAGMA foreign_keys = ON")
            if throwaway:
                conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("PRAGMA synchronous = FULL")
        self.analyze()

    def drop_bulk_indexes(self) -> None:
        """Drop the secondary indexes of the row tables (a build's partial file has none until it ends)."""
        self.require_writable()
        for name, _ in schema_indexes():
            self.conn.execute(f"DROP INDEX IF EXISTS {name}")

    def create_indexes(self) -> None:
        """Create every schema index the file lacks: one sort per index, far cheaper than row-by-row upkeep."""
        self.require_writable()
        for _, create in schema_indexes():
            self.conn.execute(create)

    def analyze(self) -> None:
        """Refresh sqlite_stat1: the query planner and `sae-atlas info` row counts read it."""
        self.require_writable()
        self.conn.execute("ANALYZE")

    def vacuum(self) -> None:
        """Rewrite the file without free pages, rows in key order (a finished build does this once)."""
        self.require_writable()
        self.conn.execute("VACUUM")

    # ------------------------------------------------------------ models, vocab, heads
    def add_model(self, **fields: Any) -> int:
        """Insert a model row; returns model_id. Unknown fields are an error."""
        self.require_writable()
        unknown = set(fields) - set(MODEL_COLUMNS)
        if unknown:
            raise TypeError(f"unknown model fields: {sorted(unknown)}")
        fields.setdefault("name", fields.get("source"))
        fields["tied_embeddings"] = int(bool(fields.get("tied_embeddings", 0)))
        cols = [c for c in MODEL_COLUMNS if c in fields]
        cur = self.conn.execute(
            f"INSERT INTO models ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [_py(fields[c]) for c in cols],
        )
        return int(cur.lastrowid)

    def add_vocab(self, model_id: int, tokens: Sequence[str]) -> None:
        """Token strings indexed by token id (decoded, whitespace kept)."""
        self.require_writable()
        rows = [(model_id, i, t, display_token(t), token_key(t)) for i, t in enumerate(tokens)]
        self.conn.executemany("INSERT INTO vocab (model_id, token_id, raw, display, key) VALUES (?, ?, ?, ?, ?)", rows)
        self.conn.executemany(
            "INSERT INTO vocab_fts (key, model_id, token_id) VALUES (?, ?, ?)",
            [(r[4], model_id, r[1]) for r in rows],
        )

    def add_heads(self, model_id: int, n_layers: int, n_heads: int, n_kv_heads: int) -> None:
        """One row per query head; kv_group maps a query head to its key/value head (GQA)."""
        self.require_writable()
        group = n_heads // n_kv_heads
        self.conn.executemany(
            "INSERT INTO heads (model_id, layer, head, kv_group) VALUES (?, ?, ?, ?)",
            [(model_id, layer, h, h // group) for layer in range(n_layers) for h in range(n_heads)],
        )

    def head_pks(self, model_id: int) -> np.ndarray:
        """(n_layers, n_heads) array of head_pk, for vectorised writes."""
        rows = self.conn.execute(
            "SELECT layer, head, head_pk FROM heads WHERE model_id = ? ORDER BY layer, head", (model_id,)
        ).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.int64)
        n_layers = max(r[0] for r in rows) + 1
        n_heads = max(r[1] for r in rows) + 1
        out = np.full((n_layers, n_heads), -1, dtype=np.int64)
        for layer, head, pk in rows:
            out[layer, head] = pk
        return out

    # ------------------------------------------------------------ SAEs and features
    def add_sae(self, **fields: Any) -> int:
        """Insert an SAE and its d_sae feature rows (contiguous feature ids). Returns sae_id."""
        self.require_writable()
        unknown = set(fields) - set(SAE_COLUMNS)
        if unknown:
            raise TypeError(f"unknown SAE fields: {sorted(unknown)}")
        fields.setdefault("name", default_sae_name(fields["layer"], fields["site"], fields.get("sae_kind", "sae")))
        if isinstance(fields.get("out_layers"), (list, tuple)):  # stored as a JSON list
            fields["out_layers"] = json.dumps([int(x) for x in fields["out_layers"]])
        cols = [c for c in SAE_COLUMNS if c in fields]
        with self.transaction():  # type: ignore[attr-defined]
            cur = self.conn.execute(
                f"INSERT INTO saes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [_py(fields[c]) for c in cols],
            )
            sae_id = int(cur.lastrowid)
            base = self.conn.execute("SELECT COALESCE(MAX(feature_id), -1) + 1 FROM features").fetchone()[0]
            d_sae = int(fields["d_sae"])
            self.conn.executemany(
                "INSERT INTO features (feature_id, sae_id, idx) VALUES (?, ?, ?)",
                ((base + i, sae_id, i) for i in range(d_sae)),
            )
        return sae_id

    def feature_id_base(self, sae_id: int) -> int:
        """feature_id of latent 0; latent i is base + i (ids are contiguous per SAE)."""
        lo, hi, n = self.conn.execute(
            "SELECT MIN(feature_id), MAX(feature_id), COUNT(*) FROM features WHERE sae_id = ?", (sae_id,)
        ).fetchone()
        if n == 0:
            raise ValueError(f"SAE {sae_id} has no features")
        if hi - lo + 1 != n:
            raise ValueError(f"SAE {sae_id}: feature ids are not contiguous")
        return int(lo)

    def update_features(self, sae_id: int, idx: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Set metric columns for latents ``idx`` of one SAE."""
        self.require_writable()
        bad = set(columns) - set(METRIC_COLUMNS)
        if bad:
            raise ValueError(f"not feature metric columns: {sorted(bad)}")
        if not columns:
            return
        names = list(columns)
        base = self.feature_id_base(sae_id)
        fids = (np.asarray(idx, dtype=np.int64) + base).tolist()
        cols = [np.asarray(columns[n]).tolist() for n in names]
        cols = [[None if (isinstance(v, float) and v != v) else v for v in c] for c in cols]
        sets = ", ".join(f"{n} = ?" for n in names)
        self.conn.executemany(f"UPDATE features SET {sets} WHERE feature_id = ?", zip(*cols, fids, strict=True))

    # ------------------------------------------------------------ per-feature rows
    def add_token_scores(
        self, feature_ids: np.ndarray, phase: str, sign: int, token_ids: np.ndarray, values: np.ndarray
    ) -> None:
        """Top-k tokens: ``token_ids`` and ``values`` are (n_features, k), best first."""
        self.add_token_score_block(feature_ids, {(phase, int(sign)): (token_ids, values)})

    def add_token_score_block(
        self, feature_ids: np.ndarray, blocks: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Several (phase, sign) top-k lists at once, written in primary-key order.

        ``blocks[(phase, sign)] = (token_ids, values)``, each (n_features, k).
        Rows arrive sorted by (feature_id, phase, sign, rank), so SQLite appends
        to the end of the table's B-tree instead of splitting pages all over it.
        One statement writes the rows of ``FEATURES_PER_STATEMENT`` features:
        phase, sign and rank are part of its text, and each feature binds its id
        once, then (token_id, value) per row (see ``benchmarks/bench_write.py``).
        """
        self.require_writable()
        fids = np.asarray(feature_ids, dtype=np.int64).reshape(-1)
        n = len(fids)
        keys = sorted((str(p), int(s)) for p, s in blocks)  # ('du', -1) < ('du', 1) < ('ee', -1) < ...
        if n == 0 or not keys:
            return
        for p, s in keys:
            if p not in ("du", "ee") or s not in (1, -1):  # the same refusal as the table's CHECK, before any SQL
                raise ValueError(f"not a token_scores (phase, sign): {(p, s)!r}")
        toks = np.stack([np.asarray(blocks[key][0], dtype=np.int64).reshape(n, -1) for key in keys], 1)  # (n, B, k)
        vals = np.stack([np.asarray(blocks[key][1], dtype=np.float64).reshape(n, -1) for key in keys], 1)  # (n, B, k)
        n_blocks, k = toks.shape[1:]
        per_row = n_blocks * k
        if 1 + 2 * per_row > MAX_PARAMS:  # a huge top_k: one row per VALUES tuple, every column bound
            columns = [
                np.repeat(fids, per_row).tolist(),
                np.tile(np.repeat([p for p, _ in keys], k), n).tolist(),
                np.tile(np.repeat([s for _, s in keys], k), n).tolist(),
                np.tile(np.arange(k), n * n_blocks).tolist(),
                toks.reshape(-1).tolist(),
                vals.reshape(-1).tolist(),
            ]
            _insert_columns(self.conn, "token_scores (feature_id, phase, sign, rank, token_id, value)", columns)
            return
        params = np.empty((n, 1 + 2 * per_row), dtype=object)  # (n, 1 + 2 B k): id, then (token, value) pairs
        params[:, 0] = fids.tolist()
        params[:, 1::2] = toks.reshape(n, per_row).tolist()
        params[:, 2::2] = vals.reshape(n, per_row).tolist()
        head = "INSERT INTO token_scores (feature_id, phase, sign, rank, token_id, value) VALUES "
        _insert_blocks(self.conn, params, lambda g: head + _token_rows(keys, k, g), FEATURES_PER_STATEMENT)

    def add_head_scores(
        self,
        feature_ids: np.ndarray,
        head_pks: np.ndarray,
        role: str | np.ndarray,
        scores: np.ndarray,
        percentiles: np.ndarray | None = None,
    ) -> None:
        """Flat, equal-length arrays: one row per (feature, head).

        ``role`` is one role for every row, or an array of roles (one per row).
        """
        self.require_writable()
        n = len(scores)
        pct = [None] * n if percentiles is None else np.asarray(percentiles, dtype=np.float64).tolist()
        roles = [role] * n if isinstance(role, str) else np.asarray(role).astype(str).tolist()
        columns = [
            np.asarray(feature_ids, dtype=np.int64).tolist(),
            np.asarray(head_pks, dtype=np.int64).reshape(-1).tolist(),
            roles,
            np.asarray(scores, dtype=np.float64).tolist(),
            pct,
        ]
        _insert_columns(self.conn, "head_scores (feature_id, head_pk, role, score, percentile)", columns)

    def add_edges(
        self,
        kind: str,
        src: np.ndarray,
        dst: np.ndarray,
        scores: np.ndarray,
        ranks: np.ndarray,
        head_pks: np.ndarray | None = None,
        percentiles: np.ndarray | None = None,
    ) -> None:
        """Flat, equal-length arrays of feature ids (atlas-wide), scores and ranks.

        ``percentiles`` (virtual kinds only): each |score|'s percentile in its pair's virtual_baselines row.
        """
        self.require_writable()
        n = len(src)
        heads = [None] * n if head_pks is None else np.asarray(head_pks, dtype=np.int64).reshape(-1).tolist()
        pct = [None] * n if percentiles is None else np.asarray(percentiles, dtype=np.float64).tolist()
        columns = [
            np.asarray(src, dtype=np.int64).tolist(),
            np.asarray(dst, dtype=np.int64).tolist(),
            heads,
            [kind] * n,
            np.asarray(scores, dtype=np.float64).tolist(),
            np.asarray(ranks, dtype=np.int64).tolist(),
            pct,
        ]
        _insert_columns(self.conn, "edges (src_feature, dst_feature, head_pk, kind, score, rank, percentile)", columns)

    def add_virtual_baseline(self, src_sae_id: int, dst_sae_id: int, **stats: float | int | None) -> None:
        """One (source, destination) pair's random baseline (columns of virtual_baselines); replaces any earlier."""
        self.require_writable()
        unknown = set(stats) - set(VIRTUAL_BASELINE_STATS)
        if unknown:
            raise TypeError(f"unknown virtual baseline fields: {sorted(unknown)}")
        if "n_samples" not in stats:
            raise TypeError("a virtual baseline needs n_samples")
        self.conn.execute(
            f"INSERT OR REPLACE INTO virtual_baselines (src_sae_id, dst_sae_id, {', '.join(VIRTUAL_BASELINE_STATS)}) "
            f"VALUES (?, ?, {', '.join('?' * len(VIRTUAL_BASELINE_STATS))})",
            (int(src_sae_id), int(dst_sae_id), *(_py(stats.get(k)) for k in VIRTUAL_BASELINE_STATS)),
        )

    def add_decoder_spread(self, feature_ids: np.ndarray, out_layers: Sequence[int], norms: np.ndarray) -> None:
        """A CLT's per-layer decoder norms: ``norms`` is (n_features, len(out_layers)), ``feature_ids`` atlas-wide."""
        self.require_writable()
        fids = np.asarray(feature_ids, dtype=np.int64)
        norms = np.asarray(norms, dtype=np.float64).reshape(len(fids), len(out_layers))
        self.conn.executemany(
            "INSERT INTO decoder_spread (feature_id, out_layer, norm) VALUES (?, ?, ?)",
            zip(
                np.repeat(fids, len(out_layers)).tolist(),
                np.tile(np.asarray(out_layers, dtype=np.int64), len(fids)).tolist(),
                norms.reshape(-1).tolist(),
                strict=True,
            ),
        )

    def add_depth_profile(self, sae_id: int, layer: int, role: str, **stats: float) -> None:
        self.require_writable()
        self.conn.execute(
            "INSERT OR REPLACE INTO depth_profiles (sae_id, layer, role, n, mean, median, p75, frac_above) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sae_id, layer, role, *(_py(stats.get(k)) for k in ("n", "mean", "median", "p75", "frac_above"))),
        )

    # ------------------------------------------------------------ labels
    def add_label(
        self,
        feature_id: int,
        text: str,
        *,
        kind: str = "free",
        source: str = "user",
        score: float | None = None,
        evidence: Any = None,
    ) -> int:
        self.require_writable()
        cur = self.conn.execute(
            "INSERT INTO labels (feature_id, text, kind, source, score, evidence, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                feature_id,
                text,
                kind,
                source,
                _py(score),
                None if evidence is None else json.dumps(evidence, separators=(",", ":")),
                utc_now(),
            ),
        )
        return int(cur.lastrowid)

    def add_labels(self, rows: Iterable[tuple[int, str, str, str, float | None, Any]]) -> None:
        """Bulk: (feature_id, text, kind, source, score, evidence) tuples."""
        self.require_writable()
        now = utc_now()
        self.conn.executemany(
            "INSERT INTO labels (feature_id, text, kind, source, score, evidence, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (int(f), t, k, s, _py(sc), None if ev is None else json.dumps(ev, separators=(",", ":")), now)
                for f, t, k, s, sc, ev in rows
            ),
        )

    def delete_label(self, label_id: int, *, user_only: bool = True) -> tuple[int, str, str]:
        """Delete one label; returns its (feature_id, text, source).

        ``user_only`` (the CLI's choice) refuses labels a build or an import
        wrote: those come back with the next build anyway.
        """
        from atlas.errors import AtlasError

        self.require_writable()
        row = self.conn.execute(
            "SELECT feature_id, text, source FROM labels WHERE label_id = ?", (int(label_id),)
        ).fetchone()
        if row is None:
            raise AtlasError(f"no label with id {label_id}")
        if user_only and row[2] != "user":
            raise AtlasError(f"label {label_id} is a {row[2]} label; only user labels can be deleted")
        self.conn.execute("DELETE FROM labels WHERE label_id = ?", (int(label_id),))
        return int(row[0]), row[1], row[2]

    # ------------------------------------------------------------ resumable builds
    def mark_unit_done(self, sae_id: int, pass_name: str, chunk_start: int, chunk_end: int) -> None:
        self.require_writable()
        self.conn.execute(
            "INSERT OR REPLACE INTO build_units (sae_id, pass, chunk_start, chunk_end, finished_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (sae_id, pass_name, chunk_start, chunk_end, utc_now()),
        )

    def finished_units(self) -> set[tuple[int, str, int]]:
        """(sae_id, pass, chunk_start) of every finished unit: what a resumed build skips."""
        return {(r[0], r[1], r[2]) for r in self.conn.execute("SELECT sae_id, pass, chunk_start FROM build_units")}

    # ------------------------------------------------------------ what a build reads back
    def top_token_ids(self, first_feature_id: int, n: int, phase: str, sign: int = 1) -> np.ndarray | None:
        """Promoted (``sign`` -1: suppressed) token ids (n, k) of features ``first_feature_id`` .. + n - 1, best
        first; None unless every one of them has its list (the pass has not run on them)."""
        rows = self.conn.execute(
            "SELECT token_id FROM token_scores WHERE phase = ? AND sign = ? AND feature_id BETWEEN ? AND ? "
            "ORDER BY feature_id, rank",
            (phase, int(sign), int(first_feature_id), int(first_feature_id) + int(n) - 1),
        ).fetchall()
        if len(rows) < n:
            return None
        return np.array([r[0] for r in rows], dtype=np.int64).reshape(n, -1)

    def feature_mean(self, sae_id: int, column: str) -> float | None:
        """Mean of one metric column over an SAE's features (NULLs skipped): e.g. the fraction predicting tokens."""
        if column not in METRIC_COLUMNS:
            raise ValueError(f"not a feature metric column: {column!r}")
        return self.conn.execute(f"SELECT AVG({column}) FROM features WHERE sae_id = ?", (int(sae_id),)).fetchone()[0]
