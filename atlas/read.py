"""The read API: typed objects out of an atlas, using only ``?`` parameters.

Column names cannot be parameters, so any metric a user names is checked
against :data:`METRIC_COLUMNS` before it reaches SQL.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from atlas.domain import METRIC_COLUMNS, PHASES
from atlas.errors import DAMAGE_HINT, AtlasError, BadQuery, DamagedAtlas, FeatureNotFound, SAENotFound
from atlas.migrations import SCHEMA_VERSION
from atlas.names import split_feature_name, token_key
from atlas.provenance import describe_criterion, parse_provenance  # noqa: F401 (describe_criterion: re-exported)
from atlas.rows import damage, json_or_null, number_or_null, typed
from atlas.types import (
    SAE,
    DecoderSpread,
    Edge,
    Feature,
    FeatureCard,
    HeadScore,
    Label,
    Model,
    TokenHit,
    TokenScore,
    VirtualBaseline,
)

if TYPE_CHECKING:
    from atlas.overlay import LabelOverlay

COUNTED_TABLES = ("models", "saes", "features", "vocab", "token_scores", "heads", "head_scores", "edges", "labels")


def check_metric(metric: str) -> str:
    if metric not in METRIC_COLUMNS:
        raise BadQuery(f"unknown metric {metric!r}; choose from: {', '.join(METRIC_COLUMNS)}")
    return metric


def _feature_from_row(row: sqlite3.Row) -> Feature:
    d = dict(row)
    where = f"features row #{d['feature_id']}"
    metrics = {k: number_or_null(d[k], where, k) for k in METRIC_COLUMNS if k in d}
    return typed(Feature, {**d, "name": f"{d['sae']}/{d['idx']}", "metrics": metrics}, where)


_FEATURE_SELECT = (
    "SELECT f.*, s.name AS sae, s.layer AS layer, s.site AS site FROM features f JOIN saes s ON s.sae_id = f.sae_id "
)


_MAX_ID = 2**63

RANKED_LABEL_MATCHES = 2000  # rank label matches by relevance (bm25) only up to this many


_LABEL_FIELDS = ("label_id", "feature_id", "text", "kind", "source", "score", "evidence", "created_at")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_EDGE_CHECKS = ((1, "kind", str, "text"), (6, "score", (int, float), "a number"), (7, "rank", int, "an integer"))
# percentile (column 8) may be NULL; typed() checks it as the Edge field float | None


def _label(row: Any) -> Label:
    """A labels row (a mapping, maybe with more columns) as a Label, its evidence JSON parsed; damage named."""
    where = f"labels row {row['label_id']}"
    d = {k: row[k] for k in _LABEL_FIELDS}
    return typed(Label, {**d, "evidence": json_or_null(row["evidence"], where, "evidence")}, where)


class AtlasReader:
    """Mixin over ``self.conn``; see atlas.db.Atlas."""

    conn: sqlite3.Connection

    # ------------------------------------------------------------ catalogue
    def models(self) -> list[Model]:
        rows = self.conn.execute("SELECT * FROM models ORDER BY model_id").fetchall()
        return [typed(Model, r, f"models row {r['model_id']}") for r in rows]

    def saes(self) -> list[SAE]:
        rows = self.conn.execute("SELECT * FROM saes ORDER BY layer, site, name").fetchall()
        return [typed(SAE, r, f"saes row {r['sae_id']}") for r in rows]

    def sae(self, name: str) -> SAE:
        """By readable name (L12.res), by sae_ref, or by release/sae_ref."""
        row = self.conn.execute(
            "SELECT * FROM saes WHERE name = ? OR sae_ref = ? OR release || '/' || sae_ref = ? "
            "ORDER BY name = ? DESC LIMIT 1",
            (name, name, name, name),
        ).fetchone()
        if row is None:
            known = ", ".join(r[0] for r in self.conn.execute("SELECT name FROM saes ORDER BY layer"))
            raise SAENotFound(f"no SAE named {name!r}; known: {known or '(none)'}")
        return typed(SAE, row, f"saes row {row['sae_id']}")

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (cheap: count(*) on indexes)."""
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in COUNTED_TABLES}

    def table_counts(self, *, exact_below: int = 200_000) -> dict[str, tuple[int, bool]]:
        """Row counts of the main tables as ``{table: (rows, exact)}``, fast on any size.

        A table that ANALYZE found to hold more than ``exact_below`` rows gets
        its sqlite_stat1 figure (``exact=False``: as of the last ANALYZE, which
        every bulk build runs); the others are counted. COUNT(*) over the 80
        million token scores of a 1M-feature atlas would take seconds.
        """
        stats: dict[str, int] = {}
        has_stat = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
        ).fetchone()
        if has_stat:
            for tbl, stat in self.conn.execute("SELECT tbl, stat FROM sqlite_stat1"):
                if stat:
                    try:
                        n = int(str(stat).split()[0])
                    except ValueError:
                        continue
                    stats[tbl] = max(stats.get(tbl, 0), n)
        out: dict[str, tuple[int, bool]] = {}
        for t in COUNTED_TABLES:
            if stats.get(t, 0) > exact_below:
                out[t] = (stats[t], False)
            else:
                out[t] = (self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0], True)
        return out

    def info_row(self) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM atlas_info WHERE id = 1").fetchone()
        if row is None:
            raise DamagedAtlas(f"atlas_info has no row; {DAMAGE_HINT}")
        d = dict(row)
        for col, ok in (("schema_version", int), ("sae_atlas_version", str), ("created_at", str)):
            if not isinstance(d[col], ok):
                raise damage("atlas_info", col, d[col], "an integer" if ok is int else "text")
        d["provenance"] = parse_provenance(d["provenance"])
        return d

    # ------------------------------------------------------------ features
    def resolve_feature(self, spec: str | int) -> int:
        """Feature id for ``L12.res/1234``, ``<sae_ref>/1234``, ``#987`` or an int id."""
        if isinstance(spec, int):
            fid = spec
        else:
            s = spec.strip()
            if s.startswith("#") and s[1:].isdigit():
                fid = int(s[1:])
            else:
                parts = split_feature_name(s)
                if parts is None:
                    raise FeatureNotFound(
                        f"cannot read feature name {spec!r}: expected SAE/INDEX, e.g. L12.res/1234, or #ID"
                    )
                sae_name, idx = parts
                if idx >= _MAX_ID:
                    raise FeatureNotFound(f"feature index {idx} is out of range")
                # the common case, a readable SAE name, in one lookup on two unique indexes
                row = self.conn.execute(
                    "SELECT f.feature_id FROM saes s JOIN features f ON f.sae_id = s.sae_id "
                    "WHERE s.name = ? AND f.idx = ?",
                    (sae_name, idx),
                ).fetchone()
                if row is not None:
                    return int(row[0])
                try:
                    sae = self.sae(sae_name)
                except SAENotFound as e:
                    raise FeatureNotFound(str(e)) from None
                row = self.conn.execute(
                    "SELECT feature_id FROM features WHERE sae_id = ? AND idx = ?", (sae.sae_id, idx)
                ).fetchone()
                if row is None:
                    raise FeatureNotFound(f"{sae.name} has no feature {idx} (d_sae = {sae.d_sae})")
                return int(row[0])
        row = None
        if -_MAX_ID <= fid < _MAX_ID:  # SQLite integers are 64-bit
            row = self.conn.execute("SELECT 1 FROM features WHERE feature_id = ?", (fid,)).fetchone()
        if row is None:
            raise FeatureNotFound(f"no feature with id {fid}")
        return fid

    def feature(self, spec: str | int) -> Feature:
        if isinstance(spec, str):
            parts = split_feature_name(spec.strip())
            if parts is not None and parts[1] < _MAX_ID:
                # the common case, SAE/INDEX with the SAE's own name: one query, not two
                row = self.conn.execute(_FEATURE_SELECT + "WHERE s.name = ? AND f.idx = ?", parts).fetchone()
                if row is not None:
                    return _feature_from_row(row)
        fid = self.resolve_feature(spec)
        row = self.conn.execute(_FEATURE_SELECT + "WHERE f.feature_id = ?", (fid,)).fetchone()
        if row is None:  # an index names it but the join finds no row: the file is damaged
            raise FeatureNotFound(f"feature #{fid} is indexed but unreadable: the atlas looks damaged (run validate)")
        return _feature_from_row(row)

    def feature_name(self, feature_id: int) -> str:
        row = self.conn.execute(
            "SELECT s.name || '/' || f.idx FROM features f JOIN saes s USING (sae_id) WHERE f.feature_id = ?",
            (feature_id,),
        ).fetchone()
        if row is None:
            raise FeatureNotFound(f"no feature with id {feature_id}")
        return row[0]

    def token_scores(
        self,
        feature_id: int,
        phase: str | None = None,
        sign: int | None = None,
        limit: int | None = None,
        *,
        max_rank: int | None = None,
    ) -> list[TokenScore]:
        """A feature's token lists in (phase, sign desc, rank) order; ``max_rank`` keeps ranks below it."""
        # the feature's own model picks the vocabulary: one lookup, not a join per row
        sql = (
            "SELECT ts.feature_id, ts.phase, ts.sign, ts.rank, ts.token_id, COALESCE(v.display, '#' || ts.token_id) "
            "AS token, ts.value FROM token_scores ts LEFT JOIN vocab v ON v.model_id = "
            "(SELECT s.model_id FROM features f JOIN saes s ON s.sae_id = f.sae_id WHERE f.feature_id = ?) "
            "AND v.token_id = ts.token_id WHERE ts.feature_id = ?"
        )
        params: list[Any] = [feature_id, feature_id]
        for col, value in (("phase", phase), ("sign", sign)):
            if value is not None:
                sql += f" AND ts.{col} = ?"
                params.append(value)
        if max_rank is not None:
            sql += " AND ts.rank < ?"
            params.append(max_rank)
        sql += " ORDER BY ts.phase, ts.sign DESC, ts.rank"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [typed(TokenScore, tuple(r), f"token_scores of #{feature_id}") for r in self.conn.execute(sql, params)]

    def head_scores(self, feature_id: int, role: str | None = None) -> list[HeadScore]:
        sql = (
            "SELECT hs.feature_id, h.layer, h.head, h.kv_group, hs.role, hs.score, hs.percentile "
            "FROM head_scores hs JOIN heads h ON h.head_pk = hs.head_pk WHERE hs.feature_id = ?"
        )
        params: list[Any] = [feature_id]
        if role is not None:
            sql += " AND hs.role = ?"
            params.append(role)
        sql += " ORDER BY hs.role, hs.score DESC"
        return [typed(HeadScore, tuple(r), f"head_scores of #{feature_id}") for r in self.conn.execute(sql, params)]

    def edges(
        self,
        feature_id: int,
        direction: str = "out",
        kind: str | None = None,
        limit: int | None = None,
        *,
        per_kind: int | None = None,
    ) -> list[Edge]:
        """Edges leaving (``out``) or entering (``in``) a feature, strongest first within each kind.

        ``per_kind`` keeps at most that many of each kind (the strongest); ``limit`` cuts the whole list.
        """
        if direction not in ("out", "in"):
            raise ValueError(f"direction must be 'out' or 'in', not {direction!r}")
        return self._edges(feature_id, (direction,), kind, per_kind)[direction][:limit]

    def _edges(
        self, feature_id: int, directions: tuple[str, ...], kind: str | None, per_kind: int | None
    ) -> dict[str, list[Edge]]:
        """Edges of a feature in the given directions, by kind then strength, at most ``per_kind`` of each.

        Two short queries: the edges themselves (all directions at once), then the
        names of the features they reach, looked up once each. Joining names onto
        every edge row in SQL reads more pages, which is most of the cost of a
        short command on a freshly opened file.
        """
        where = " AND e.kind = ?2" if kind is not None else ""
        pct = "e.percentile" if self._schema_at_least(4) else "NULL"
        arms = [
            f"SELECT '{d}', e.kind, e.src_feature, e.dst_feature, h.layer, h.head, e.score, e.rank, {pct} "
            f"FROM edges e LEFT JOIN heads h ON h.head_pk = e.head_pk WHERE e.{col} = ?1{where}"
            for d, col in (("out", "src_feature"), ("in", "dst_feature"))
            if d in directions
        ]
        params = (feature_id, kind) if kind is not None else (feature_id,)
        groups: dict[tuple[str, str], list] = {}
        for r in self.conn.execute(" UNION ALL ".join(arms), params):
            r = tuple(r)
            for i, col, ok, want in _EDGE_CHECKS:  # checked before the sort below compares them
                if not isinstance(r[i], ok) or isinstance(r[i], bool):
                    raise damage(f"edges of #{feature_id}", col, r[i], want)
            groups.setdefault((r[0], r[1]), []).append(r)
        kept = []
        for key in sorted(groups):
            kept.extend(sorted(groups[key], key=lambda r: -abs(r[6]))[:per_kind])
        ids = {r[2] for r in kept} | {r[3] for r in kept}
        names = (
            dict(
                self.conn.execute(
                    "SELECT f.feature_id, s.name || '/' || f.idx FROM features f JOIN saes s ON s.sae_id = f.sae_id "
                    f"WHERE f.feature_id IN ({','.join('?' * len(ids))})",
                    list(ids),
                ).fetchall()
            )
            if ids
            else {}
        )
        out: dict[str, list[Edge]] = {d: [] for d in directions}
        for d, k, src, dst, layer, head, score, rank, pct in kept:
            e = (k, names.get(src, f"#{src}"), names.get(dst, f"#{dst}"), src, dst, layer, head, score, rank, pct)
            out[d].append(typed(Edge, e, f"edges of #{feature_id}"))
        return out

    def _schema_at_least(self, version: int) -> bool:
        """Whether the file has schema ``version``'s tables and columns (an older file opens read-only)."""
        return int(getattr(self, "schema_version", SCHEMA_VERSION)) >= version

    # ------------------------------------------------------------ schema 4: transcoders, CLTs, virtual weights
    def decoder_spread(self, feature_id: int) -> list[DecoderSpread]:
        """A CLT feature's decoder norm at each layer it writes, by layer (empty: not a CLT, or an older file)."""
        if not self._schema_at_least(4):
            return []
        rows = self.conn.execute(
            "SELECT feature_id, out_layer, norm FROM decoder_spread WHERE feature_id = ? ORDER BY out_layer",
            (int(feature_id),),
        )
        return [typed(DecoderSpread, tuple(r), f"decoder_spread of #{feature_id}") for r in rows]

    def virtual_baselines(self, src_sae_id: int | None = None, dst_sae_id: int | None = None) -> list[VirtualBaseline]:
        """Random baselines of the virtual pass's dictionary pairs, by source then destination (optionally one side)."""
        if not self._schema_at_least(4):
            return []
        where, args = [], []
        for col, val in (("b.src_sae_id", src_sae_id), ("b.dst_sae_id", dst_sae_id)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(int(val))
        rows = self.conn.execute(
            "SELECT b.src_sae_id, b.dst_sae_id, s.name, d.name, b.n_samples, b.mean, b.std, b.p50, b.p90, b.p99, "
            "b.p999, b.max, b.n_pairs, b.frac_above_p99, b.frac_above_p999 FROM virtual_baselines b "
            "JOIN saes s ON s.sae_id = b.src_sae_id JOIN saes d ON d.sae_id = b.dst_sae_id "
            f"WHERE {' AND '.join(where) or '1'} ORDER BY s.layer, s.name, d.layer, d.name",
            args,
        )
        return [typed(VirtualBaseline, tuple(r), "virtual_baselines") for r in rows]

    # ------------------------------------------------------------ labels (the file's and the user's overlay)
    use_overlay = True  # read the user's label overlay with the file's labels (atlas/overlay.py)

    def overlay_store(self) -> LabelOverlay:
        """This atlas's label overlay (found by the atlas's identity; the file may not exist yet)."""
        cached = getattr(self, "_overlay_store", None)
        if cached is None:
            from atlas.overlay import LabelOverlay

            cached = self._overlay_store = LabelOverlay.of(self.conn)
        return cached

    def labels(self, feature_id: int, *, overlay: bool = True) -> list[Label]:
        """A feature's labels, the user's first (from the file and the overlay; ``Label.stored_in`` says which)."""
        rows = self.conn.execute(
            "SELECT * FROM labels WHERE feature_id = ? ORDER BY source = 'user' DESC, label_id DESC", (feature_id,)
        ).fetchall()
        own = [_label(r) for r in rows]
        if not (overlay and self.use_overlay):
            return own
        extra = self.overlay_store().labels([feature_id]).get(feature_id, [])
        return sorted(extra + own, key=lambda lab: lab.source != "user")  # stable: overlay, then the file's

    def label(self, label_id: int) -> Label:
        """One label of the file, by id."""
        row = self.conn.execute("SELECT * FROM labels WHERE label_id = ?", (int(label_id),)).fetchone()
        if row is None:
            raise AtlasError(f"no label with id {label_id}")
        return _label(row)

    def card(self, spec: str | int, *, k: int = 20, edge_limit: int = 50) -> FeatureCard:
        """Everything about one feature: the top ``k`` tokens of each phase and sign,
        heads, labels, and the ``edge_limit`` strongest edges of each kind in each direction."""
        f = self.feature(spec)
        fid = f.feature_id
        picked: dict[tuple[str, int], list[TokenScore]] = {}
        for t in self.token_scores(fid, max_rank=k):
            picked.setdefault((t.phase, t.sign), []).append(t)
        edges = self._edges(fid, ("out", "in"), None, edge_limit) if edge_limit else {"out": [], "in": []}
        return FeatureCard(
            feature=f,
            promoted=picked.get(("du", 1), []),
            suppressed=picked.get(("du", -1), []),
            inputs=picked.get(("ee", 1), []),
            inputs_negative=picked.get(("ee", -1), []),
            heads=self.head_scores(fid),
            edges_out=edges["out"],
            edges_in=edges["in"],
            labels=self.labels(fid),
            **self._card_dictionary(f),
        )

    def _card_dictionary(self, f: Feature) -> dict[str, Any]:
        """What kind of dictionary the feature is in, where it writes, and a CLT feature's decoder spread."""
        if not self._schema_at_least(4):
            return {}
        row = self.conn.execute("SELECT sae_kind, out_hook_name FROM saes WHERE sae_id = ?", (f.sae_id,)).fetchone()
        kind, writes = (row[0], row[1]) if row is not None else ("sae", None)
        if not isinstance(kind, str) or not isinstance(writes, (str, type(None))):
            raise damage(f"saes row {f.sae_id}", "sae_kind", kind, "text")
        spread = self.decoder_spread(f.feature_id) if kind == "clt" else []
        return {"sae_kind": kind, "writes": writes, "spread": spread}

    # ------------------------------------------------------------ search
    def find_tokens(self, text: str, *, exact: bool = True, limit: int = 50) -> list[tuple[int, int, str]]:
        """(model_id, token_id, display) of tokens matching ``text``.

        Exact mode compares case-folded, whitespace-stripped text (``paris``
        finds `` Paris`` and ``Paris``); otherwise a substring match through
        the trigram FTS index (3+ characters) or a LIKE scan (shorter).
        """
        key = token_key(text)
        if exact:
            sql = (
                "SELECT v.model_id, v.token_id, v.display FROM vocab v WHERE v.key = ? "
                "ORDER BY v.model_id, v.token_id LIMIT ?"
            )
            params: list[Any] = [key, limit]
        elif len(key) >= 3:
            sql = (
                "SELECT v.model_id, v.token_id, v.display FROM vocab_fts f "
                "JOIN vocab v ON v.model_id = f.model_id AND v.token_id = f.token_id "
                "WHERE vocab_fts MATCH ? ORDER BY length(v.key), v.token_id LIMIT ?"
            )
            params = ['"' + key.replace('"', '""') + '"', limit]
        else:
            sql = (
                "SELECT model_id, token_id, display FROM vocab WHERE instr(key, ?) > 0 "
                "ORDER BY length(key), token_id LIMIT ?"
            )
            params = [key, limit]
        found = [(r[0], r[1], r[2]) for r in self.conn.execute(sql, params)]
        if not found and not exact and len(key) >= 3 and self._vocab_contains(key):
            raise DamagedAtlas(
                f"the full-text index vocab_fts finds no token containing {text!r} but the vocabulary has one: "
                f"the index is damaged; {DAMAGE_HINT}"
            )
        return found

    def _vocab_contains(self, key: str) -> bool:
        """A scan for what the trigram index should have found (only when it found nothing)."""
        return self.conn.execute("SELECT 1 FROM vocab WHERE instr(key, ?) > 0 LIMIT 1", (key,)).fetchone() is not None

    def search_token(
        self,
        text: str,
        *,
        phase: str = "du",
        sign: int = 1,
        sae: str | None = None,
        max_rank: int | None = None,
        exact: bool = True,
        limit: int = 50,
    ) -> list[TokenHit]:
        """Features whose top-k list for (phase, sign) contains a token matching ``text``.

        ``phase='du', sign=1``: features that promote the token; ``sign=-1``:
        that suppress it; ``phase='ee'``: features driven by it. Best rank first.
        """
        if phase not in PHASES:
            raise BadQuery(f"phase must be one of {PHASES}")
        tokens = self.find_tokens(text, exact=exact, limit=64)
        return self.token_hits(
            [(m, t) for m, t, _ in tokens], phase=phase, sign=sign, sae=sae, max_rank=max_rank, limit=limit
        )

    def token_hits(
        self,
        tokens: list[tuple[int, int]],
        *,
        phase: str = "du",
        sign: int = 1,
        sae: str | None = None,
        max_rank: int | None = None,
        limit: int = 50,
    ) -> list[TokenHit]:
        """Features whose top-k list for (phase, sign) holds one of ``tokens`` ((model_id, token_id)), best rank first."""
        if phase not in PHASES:
            raise BadQuery(f"phase must be one of {PHASES}")
        if not tokens or limit <= 0:
            return []
        sae_id = self.sae(sae).sae_id if sae is not None else None
        by_model: dict[int, list[int]] = {}
        for model_id, token_id in tokens:
            by_model.setdefault(model_id, []).append(token_id)
        hits: list[TokenHit] = []
        for model_id, ids in by_model.items():
            # token ids are per model: match them only in that model's SAEs
            hits += self._token_hits(model_id, sorted(set(ids)), phase, sign, sae_id, max_rank, limit)
        hits.sort(key=lambda h: (h.rank, -abs(h.value), h.feature_id))
        return hits[:limit]

    def _token_hits(
        self, model_id: int, ids: list[int], phase: str, sign: int, sae_id: int | None, max_rank: int | None, limit: int
    ) -> list[TokenHit]:
        marks = ", ".join("?" * len(ids))
        where = f"ts.token_id IN ({marks}) AND ts.phase = ? AND ts.sign = ?"
        params: list[Any] = [*ids, phase, sign]
        if max_rank is not None:
            where += " AND ts.rank <= ?"
            params.append(max_rank)
        if sae_id is None and self._single_model():
            # A common token sits in thousands of top-k lists. Find the rank of the
            # limit-th hit from the index alone (no table reads), then fetch only
            # rows up to that rank: the answer is the same, the reads are far fewer.
            row = self.conn.execute(
                f"SELECT ts.rank FROM token_scores ts WHERE {where} ORDER BY ts.rank LIMIT 1 OFFSET ?",
                [*params, limit - 1],
            ).fetchone()
            if row is not None:
                where += " AND ts.rank <= ?"
                params.append(row[0])
        sql = (
            "SELECT s.name || '/' || f.idx AS feature, ts.feature_id, ts.token_id, "
            "COALESCE(v.display, '#' || ts.token_id) AS token, ts.phase, ts.sign, ts.rank, ts.value "
            "FROM token_scores ts JOIN features f ON f.feature_id = ts.feature_id "
            "JOIN saes s ON s.sae_id = f.sae_id "
            "LEFT JOIN vocab v ON v.model_id = s.model_id AND v.token_id = ts.token_id "
            f"WHERE {where} AND s.model_id = ?"
        )
        params.append(model_id)
        if sae_id is not None:
            sql += " AND f.sae_id = ?"
            params.append(sae_id)
        sql += " ORDER BY ts.rank, ABS(ts.value) DESC, ts.feature_id LIMIT ?"
        params.append(limit)
        return [typed(TokenHit, tuple(r), "token_scores") for r in self.conn.execute(sql, params)]

    def _single_model(self) -> bool:
        cached = getattr(self, "_n_models", None)
        if cached is None:
            cached = self._n_models = self.conn.execute("SELECT COUNT(*) FROM models").fetchone()[0]
        return cached == 1

    def search_labels(self, query: str, *, limit: int = 50) -> list[tuple[str, Label]]:
        """(feature name, label) of labels matching an FTS5 query (plain words are AND-ed).

        The user's overlay labels come first, then the file's, each list best
        first. Ranking (bm25) scores every match, so above RANKED_LABEL_MATCHES
        matches the file's come in label order instead (bounded cost on a
        million labels). Text that is not FTS5 syntax is searched as a phrase.
        """
        found = self.overlay_store().search(query, limit=limit) if self.use_overlay else []
        try:
            found += self._search_labels(query, limit - len(found))
        except sqlite3.OperationalError:
            found += self._search_labels('"' + query.replace('"', '""') + '"', limit - len(found))
        return found[:limit]

    def _search_labels(self, query: str, limit: int) -> list[tuple[str, Label]]:
        if limit <= 0:
            return []
        n = self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM labels_fts WHERE labels_fts MATCH ? LIMIT ?)",
            (query, RANKED_LABEL_MATCHES + 1),
        ).fetchone()[0]
        order = "ORDER BY labels_fts.rank" if n <= RANKED_LABEL_MATCHES else ""
        sql = (
            "SELECT s.name || '/' || f.idx AS feature, l.* FROM "
            f"(SELECT rowid, rank FROM labels_fts WHERE labels_fts MATCH ? {order} LIMIT ?) AS labels_fts "
            "JOIN labels l ON l.label_id = labels_fts.rowid "
            "JOIN features f ON f.feature_id = l.feature_id JOIN saes s ON s.sae_id = f.sae_id"
        )
        out = []
        for r in self.conn.execute(sql, (query, limit)):
            if not isinstance(r["feature"], str):  # NULL when the SAE's name is
                raise damage(f"labels row {r['label_id']}", "its feature's SAE name", r["feature"], "text")
            out.append((r["feature"], _label(r)))
        return out

    def top(
        self,
        metric: str,
        *,
        sae: str | None = None,
        layer: int | None = None,
        lo: float | None = None,
        hi: float | None = None,
        ascending: bool = False,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Feature]:
        """Features ranked by a metric column, optionally within an SAE / layer / value range."""
        check_metric(metric)
        if sae is None and metric in self.indexed_metrics():
            return self._top_per_sae(metric, layer, lo, hi, ascending, limit, offset)
        where, params = [f"f.{metric} IS NOT NULL"], []
        if sae is not None:
            where.append("f.sae_id = ?")
            params.append(self.sae(sae).sae_id)
        if layer is not None:
            where.append("s.layer = ?")
            params.append(layer)
        if lo is not None:
            where.append(f"f.{metric} >= ?")
            params.append(lo)
        if hi is not None:
            where.append(f"f.{metric} <= ?")
            params.append(hi)
        order = "ASC" if ascending else "DESC"
        sql = (
            _FEATURE_SELECT
            + "WHERE "
            + " AND ".join(where)
            + f" ORDER BY f.{metric} {order}, f.feature_id LIMIT ? OFFSET ?"
        )
        params += [limit, offset]
        return [_feature_from_row(r) for r in self.conn.execute(sql, params)]

    def indexed_metrics(self) -> frozenset[str]:
        """Metrics with an index on ``features (sae_id, metric)``: ranked by index, not by a scan."""
        cached = getattr(self, "_indexed_metrics", None)
        if cached is not None:
            return cached
        found = set()
        for idx in self.conn.execute("PRAGMA index_list(features)").fetchall():
            cols = [r[2] for r in self.conn.execute(f"PRAGMA index_info({_quote_ident(idx[1])})")]
            if len(cols) == 2 and cols[0] == "sae_id" and cols[1] in METRIC_COLUMNS:
                found.add(cols[1])
        self._indexed_metrics = frozenset(found)
        return self._indexed_metrics

    def _top_per_sae(
        self,
        metric: str,
        layer: int | None,
        lo: float | None,
        hi: float | None,
        ascending: bool,
        limit: int,
        offset: int,
    ) -> list[Feature]:
        """Top-k over all SAEs as the merge of each SAE's index-ordered top-k (no full scan)."""
        sql_saes, p_saes = "SELECT sae_id FROM saes", []
        if layer is not None:
            sql_saes += " WHERE layer = ?"
            p_saes.append(layer)
        where = f"f.sae_id = ? AND f.{metric} IS NOT NULL"
        extra: list[Any] = []
        if lo is not None:
            where += f" AND f.{metric} >= ?"
            extra.append(lo)
        if hi is not None:
            where += f" AND f.{metric} <= ?"
            extra.append(hi)
        order = "ASC" if ascending else "DESC"
        sql = _FEATURE_SELECT + f"WHERE {where} ORDER BY f.{metric} {order}, f.feature_id LIMIT ?"
        feats: list[Feature] = []
        for (sae_id,) in self.conn.execute(sql_saes, p_saes).fetchall():
            feats += [_feature_from_row(r) for r in self.conn.execute(sql, [sae_id, *extra, limit + offset])]
        sign = 1 if ascending else -1
        feats.sort(key=lambda f: (sign * f.metrics[metric], f.feature_id))
        return feats[offset : offset + limit]

    def search_metric(self, metric: str, lo: float | None, hi: float | None, **kw: Any) -> list[Feature]:
        """Features with ``lo <= metric <= hi``, strongest first."""
        return self.top(metric, lo=lo, hi=hi, **kw)
