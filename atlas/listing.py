"""Read-only queries for browsing: paged, filtered, sorted feature lists and table counts.

The TUI's feature list must stay smooth on an atlas of 1,000,000 features, so
nothing here loads a whole table. A page is fetched with *keyset* paging: the
cursor is the (sort value, feature_id) of the last row shown, and the next
page is ``WHERE (value, feature_id) < cursor ORDER BY value DESC, feature_id
DESC LIMIT n``. With an index on ``(sae_id, metric)`` (schema.sql has them for
the main metrics) that is an index seek per page, however deep the user has
scrolled. Several SAEs are merged in Python: each SAE answers its own seek
with the same global cursor and the best ``n`` of the union form the page,
which is exact because the tie-break (feature_id) is atlas-wide.

Only the standard library; every function takes a ``sqlite3.Connection``
(``Atlas.conn`` or a worker thread's own read-only connection). The
overview's per-layer plots are not computed here: they come from atlas.stats,
as the report's do (tui/plots.py).
"""

from __future__ import annotations

import heapq
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from atlas.domain import LABEL_KINDS
from atlas.errors import BadQuery
from atlas.read import METRIC_COLUMNS, check_metric

# Pseudo label kind for "features with no label at all".
UNLABELLED = "unlabelled"

# Metrics shown as columns of every row of the feature list (cheap: same table row).
ROW_METRICS: tuple[str, ...] = ("du_top1_z", "predicts_tokens", "ee_top1_z", "attn_q_mean", "attn_k_mean")

Cursor = tuple[Any, int]  # (sort value, feature_id) of the last row of a page


@dataclass(frozen=True)
class FeatureFilter:
    """What the feature list shows. ``metric=None`` sorts by feature id."""

    sae_ids: tuple[int, ...] | None = None  # None: every SAE
    layer: int | None = None
    label_kind: str | None = None  # semantic | non_semantic | free | unlabelled
    metric: str | None = None  # sort column, one of METRIC_COLUMNS
    descending: bool = True
    range_metric: str | None = None  # filtered column; defaults to the sort metric
    lo: float | None = None
    hi: float | None = None

    def checked(self) -> FeatureFilter:
        """Validate names before any of them reaches SQL (columns cannot be parameters)."""
        if self.metric is not None:
            check_metric(self.metric)
        if self.range_metric is not None:
            check_metric(self.range_metric)
        if self.label_kind is not None and self.label_kind not in (*LABEL_KINDS, UNLABELLED):
            raise BadQuery(f"unknown label kind {self.label_kind!r}; choose from {(*LABEL_KINDS, UNLABELLED)}")
        if (self.lo is not None or self.hi is not None) and self.range_column is None:
            raise BadQuery("a value range needs a metric to apply to")
        return self

    @property
    def range_column(self) -> str | None:
        return self.range_metric or self.metric


@dataclass(frozen=True)
class FeatureRow:
    """One line of the feature list."""

    feature_id: int
    name: str  # L12.res/1234
    sae: str
    layer: int
    value: Any  # the sort metric's value (None when sorted by id)
    metrics: dict[str, Any] = field(default_factory=dict)  # ROW_METRICS
    top_tokens: tuple[str, ...] = ()  # promoted tokens, strongest first
    label: str | None = None
    label_kind: str | None = None
    label_source: str | None = None


@dataclass(frozen=True)
class Page:
    rows: list[FeatureRow]
    cursor: Cursor | None  # pass as ``after`` to get the next page; None when this was the last


# ------------------------------------------------------------------ catalogue helpers


def _sae_table(conn: sqlite3.Connection) -> dict[int, tuple[str, int]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT sae_id, name, layer FROM saes")}


def indexed_metrics(conn: sqlite3.Connection) -> set[str]:
    """Metric columns with an ``(sae_id, metric)`` index: those sort by index seek, the rest by a sort."""
    out = set()
    for (name,) in conn.execute("SELECT name FROM pragma_index_list('features')"):
        cols = [r[0] for r in conn.execute("SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,))]
        if len(cols) >= 2 and cols[0] == "sae_id" and cols[1] in METRIC_COLUMNS:
            out.add(cols[1])
    return out


def sae_ids_for(conn: sqlite3.Connection, flt: FeatureFilter) -> list[int]:
    """The SAEs a filter covers (SAE and layer filters intersect)."""
    sql, params = "SELECT sae_id FROM saes WHERE 1", []
    if flt.sae_ids is not None:
        if not flt.sae_ids:
            return []
        sql += f" AND sae_id IN ({', '.join('?' * len(flt.sae_ids))})"
        params += list(flt.sae_ids)
    if flt.layer is not None:
        sql += " AND layer = ?"
        params.append(flt.layer)
    return [r[0] for r in conn.execute(sql + " ORDER BY sae_id", params)]


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Row counts of the main tables, from ANALYZE's sqlite_stat1 where present.

    COUNT(*) on an 80-million-row token_scores table takes seconds; the
    statistics are exact as of the last ANALYZE (every build ends with one).
    Small tables are counted for real.
    """
    tables = ("models", "saes", "features", "vocab", "token_scores", "heads", "head_scores", "edges", "labels")
    stat: dict[str, int] = {}
    try:
        for tbl, stat_text in conn.execute("SELECT tbl, stat FROM sqlite_stat1"):
            n = int(str(stat_text).split()[0])
            stat[tbl] = max(stat.get(tbl, 0), n)
    except sqlite3.OperationalError:  # never analysed
        pass
    out = {}
    for t in tables:
        if t in stat and stat[t] > 100_000:
            out[t] = stat[t]
        else:
            out[t] = conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
    return out


# ------------------------------------------------------------------ the feature list


def _where(flt: FeatureFilter, sae_id: int | None, after: Cursor | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if sae_id is not None:
        where.append("f.sae_id = ?")
        params.append(sae_id)
    m = flt.metric
    if m is not None:
        where.append(f"f.{m} IS NOT NULL")
    rc = flt.range_column
    if flt.lo is not None:
        where.append(f"f.{rc} >= ?")
        params.append(flt.lo)
    if flt.hi is not None:
        where.append(f"f.{rc} <= ?")
        params.append(flt.hi)
    if flt.label_kind == UNLABELLED:
        where.append("NOT EXISTS (SELECT 1 FROM labels l WHERE l.feature_id = f.feature_id)")
    elif flt.label_kind is not None:
        where.append("EXISTS (SELECT 1 FROM labels l WHERE l.feature_id = f.feature_id AND l.kind = ?)")
        params.append(flt.label_kind)
    if after is not None:
        if m is None:
            where.append("f.feature_id > ?")
            params.append(after[1])
        else:
            # Row values: SQLite seeks the (sae_id, metric) index to the cursor.
            where.append(f"(f.{m}, f.feature_id) {'<' if flt.descending else '>'} (?, ?)")
            params += [after[0], after[1]]
    return where, params


def _select(flt: FeatureFilter) -> str:
    value = f"f.{flt.metric}" if flt.metric else "NULL"
    cols = ", ".join(f"f.{c}" for c in ROW_METRICS)
    return f"SELECT f.feature_id, f.sae_id, f.idx, {value} AS value, {cols} FROM features f"


def _order(flt: FeatureFilter) -> str:
    if flt.metric is None:
        return " ORDER BY f.feature_id"
    d = "DESC" if flt.descending else "ASC"
    return f" ORDER BY f.{flt.metric} {d}, f.feature_id {d}"


def feature_page(
    conn: sqlite3.Connection, flt: FeatureFilter, *, limit: int = 100, after: Cursor | None = None, tokens: int = 5
) -> Page:
    """One page of the feature list after ``after`` (None: the first page)."""
    flt = flt.checked()
    saes = _sae_table(conn)
    sae_ids = sae_ids_for(conn, flt)
    if not sae_ids or limit <= 0:
        return Page([], None)
    raw: list[sqlite3.Row]
    if flt.metric is None:
        # Primary-key order: one range scan over the rowid, whatever the SAEs.
        where, params = _where(flt, None, after)
        if len(sae_ids) < len(saes):
            where.insert(0, f"f.sae_id IN ({', '.join('?' * len(sae_ids))})")
            params = [*sae_ids, *params]
        sql = _select(flt) + (" WHERE " + " AND ".join(where) if where else "") + _order(flt) + " LIMIT ?"
        raw = conn.execute(sql, [*params, limit + 1]).fetchall()
    else:
        # One index seek per SAE with the same global cursor, merged.
        per_sae = []
        for sae_id in sae_ids:
            where, params = _where(flt, sae_id, after)
            sql = _select(flt) + " WHERE " + " AND ".join(where) + _order(flt) + " LIMIT ?"
            per_sae.append(conn.execute(sql, [*params, limit + 1]).fetchall())
        sign = -1 if flt.descending else 1
        key = (lambda r: (sign * r["value"], sign * r["feature_id"])) if len(per_sae) > 1 else None
        raw = list(heapq.merge(*per_sae, key=key))[: limit + 1] if key else per_sae[0]
    more = len(raw) > limit
    raw = raw[:limit]
    ids = [r["feature_id"] for r in raw]
    toks = top_tokens(conn, ids, k=tokens) if tokens else {}
    labels = first_labels(conn, ids)
    rows = []
    for r in raw:
        sae_name, layer = saes[r["sae_id"]]
        lab = labels.get(r["feature_id"])
        rows.append(
            FeatureRow(
                feature_id=r["feature_id"],
                name=f"{sae_name}/{r['idx']}",
                sae=sae_name,
                layer=layer,
                value=r["value"],
                metrics={c: r[c] for c in ROW_METRICS},
                top_tokens=tuple(toks.get(r["feature_id"], ())),
                label=lab[0] if lab else None,
                label_kind=lab[1] if lab else None,
                label_source=lab[2] if lab else None,
            )
        )
    cursor = (rows[-1].value, rows[-1].feature_id) if more and rows else None
    return Page(rows, cursor)


def count_features(conn: sqlite3.Connection, flt: FeatureFilter) -> int:
    """How many features the filter matches (one index range count per SAE; run it off the UI thread)."""
    flt = flt.checked()
    total = 0
    for sae_id in sae_ids_for(conn, flt):
        where, params = _where(flt, sae_id, None)
        total += conn.execute("SELECT COUNT(*) FROM features f WHERE " + " AND ".join(where), params).fetchone()[0]
    return total


def top_tokens(
    conn: sqlite3.Connection, feature_ids: list[int], *, k: int = 5, phase: str = "du", sign: int = 1
) -> dict[int, list[str]]:
    """Display text of the ``k`` strongest tokens of each feature (one primary-key lookup per feature)."""
    if not feature_ids:
        return {}
    out: dict[int, list[str]] = {fid: [] for fid in feature_ids}
    sql = (
        "SELECT ts.feature_id, COALESCE(v.display, '#' || ts.token_id) FROM token_scores ts "
        "JOIN features f ON f.feature_id = ts.feature_id JOIN saes s ON s.sae_id = f.sae_id "
        "LEFT JOIN vocab v ON v.model_id = s.model_id AND v.token_id = ts.token_id "
        f"WHERE ts.feature_id IN ({', '.join('?' * len(feature_ids))}) AND ts.phase = ? AND ts.sign = ? "
        "AND ts.rank < ? ORDER BY ts.feature_id, ts.rank"
    )
    for fid, tok in conn.execute(sql, [*feature_ids, phase, sign, k]):
        out[fid].append(tok)
    return out


def first_labels(conn: sqlite3.Connection, feature_ids: list[int]) -> dict[int, tuple[str, str, str]]:
    """(text, kind, source) of the label to show for each feature: the newest user label, else the newest."""
    if not feature_ids:
        return {}
    sql = (
        "SELECT feature_id, text, kind, source FROM labels "
        f"WHERE feature_id IN ({', '.join('?' * len(feature_ids))}) "
        "ORDER BY feature_id, source = 'user' DESC, label_id DESC"
    )
    out: dict[int, tuple[str, str, str]] = {}
    for fid, text, kind, source in conn.execute(sql, feature_ids):
        out.setdefault(fid, (text, kind, source))
    return out
