"""The statistics of Liu & Deng (2026), computed from an atlas alone.

Three experiments, each a pure function of an open atlas (or its sqlite3
connection) that returns a dataclass of numpy arrays. ``sae-atlas report``
(atlas/report.py) and the TUI overview both call these; neither recomputes.

1. :func:`predicts_by_layer` -- fraction of features that directly predict
   output tokens (``features.predicts_tokens``, the ``du`` criterion) and that
   read input tokens (``features.reads_tokens``, the ``ee`` mirror), per SAE
   and overall; :func:`token_overlap` -- features whose input and output
   tokens agree (shared tokens between the ``du`` promoted and ``ee`` top-k).
2. :func:`depth_profiles` -- query/key/value participation by layer (mean,
   median, P75 of ``features.attn_{q,k,v}_mean``; fraction above the baseline
   percentile from the builder's ``depth_profiles`` table);
   :func:`qk_variability` -- does the key side vary more across layers than
   the query side (paired sign-flip permutation test over layers).
3. :func:`semantic_split` -- participation of heuristically labelled semantic
   against non-semantic features, per SAE: mean, median, P75, Cliff's delta,
   Cohen's d and a Mann-Whitney U test (:func:`mann_whitney_u`, numpy only).

Only numpy and the standard library: the report must run where scipy does not.
Every aggregation that SQL can do (counts, sums) is done in SQL; medians and
percentiles are done in numpy on arrays fetched once.
"""

from __future__ import annotations

import math
import sqlite3
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from atlas.domain import ATTENTION_ROLES, site_order
from atlas.errors import DAMAGE_HINT, AtlasError, DamagedAtlas
from atlas.provenance import read_provenance, verdict_criteria
from atlas.rows import damage, describe

ROLES = ATTENTION_ROLES
PAPER_PREDICTS_FRACTION = 0.25  # Liu & Deng: "about 1/4 of SAE features directly predict output tokens"


class MissingPass(AtlasError):
    """The atlas lacks the rows a statistic needs (a build pass was not run)."""


def _conn(atlas: Any) -> sqlite3.Connection:
    """Accept an Atlas (anything with ``.conn``) or a raw sqlite3 connection."""
    return atlas.conn if hasattr(atlas, "conn") else atlas


# ---------------------------------------------------------------------- SAE rows


@dataclass(frozen=True)
class SAERows:
    """One row per SAE, in depth order (layer, then site). Every per-SAE array aligns with these."""

    sae_id: np.ndarray  # (n_saes,) int
    name: list[str]
    layer: np.ndarray  # (n_saes,) int
    site: list[str]
    d_sae: np.ndarray  # (n_saes,) int
    d_vocab: np.ndarray  # (n_saes,) int, of the SAE's model

    def __len__(self) -> int:
        return len(self.name)

    def series(self) -> list[str]:
        """Which depth curve each SAE belongs to: its site, plus its width when one site has several."""
        widths: dict[str, set[int]] = {}
        for s, d in zip(self.site, self.d_sae.tolist(), strict=True):
            widths.setdefault(s, set()).add(d)
        return [
            s if len(widths[s]) == 1 else f"{s} d_sae={d}" for s, d in zip(self.site, self.d_sae.tolist(), strict=True)
        ]

    def index(self) -> dict[int, int]:
        return {int(s): i for i, s in enumerate(self.sae_id.tolist())}


_SAE_ROW_COLUMNS = ("sae_id", "name", "layer", "site", "d_sae", "models.d_vocab")


def sae_rows(atlas: Any) -> SAERows:
    rows = (
        _conn(atlas)
        .execute(
            "SELECT s.sae_id, s.name, s.layer, s.site, s.d_sae, m.d_vocab, s.model_id FROM saes s "
            "LEFT JOIN models m USING (model_id)"
        )
        .fetchall()
    )
    for r in rows:  # a damaged file can hold anything: name it before numpy or sorted() trips on it
        if r[5] is None and r[6] is not None:
            raise damage(f"saes row {r[0]!r}", "model_id", r[6], "the id of a model in the atlas")
        for col, v, kind in zip(_SAE_ROW_COLUMNS, r[:6], (int, str, int, str, int, int), strict=True):
            if not isinstance(v, kind) or isinstance(v, bool):
                raise damage(f"saes row {r[0]!r}", col, v, "an integer" if kind is int else "text")
    rows = sorted(rows, key=lambda r: (r[2], site_order(r[3]), r[1]))
    if not rows:
        raise MissingPass("the atlas has no SAEs: nothing to report")
    return SAERows(
        sae_id=np.array([r[0] for r in rows], dtype=np.int64),
        name=[r[1] for r in rows],
        layer=np.array([r[2] for r in rows], dtype=np.int64),
        site=[r[3] for r in rows],
        d_sae=np.array([r[4] for r in rows], dtype=np.int64),
        d_vocab=np.array([r[5] for r in rows], dtype=np.int64),
    )


def _fetch_floats(conn: sqlite3.Connection, sql: str, params: Any = ()) -> np.ndarray:
    """All rows of a numeric query as one (n, n_cols) float64 array; NULL -> NaN."""
    cur = conn.execute(sql, params)
    n_cols = len(cur.description)
    rows = cur.fetchall()
    if not rows:
        return np.zeros((0, n_cols))
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), n_cols)
    except (TypeError, ValueError):  # text or a BLOB where a number belongs
        bad = next(v for r in rows for v in r if v is not None and not isinstance(v, (int, float)))
        names = ", ".join(d[0] for d in cur.description)
        raise DamagedAtlas(f"a value read for ({names}) is {describe(bad)}, not a number; {DAMAGE_HINT}") from None


def _dicts(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    """Rows as dicts, whatever the connection's row_factory."""
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, tuple(r), strict=True)) for r in cur.fetchall()]


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


# ---------------------------------------------------------------------- experiment 1


@dataclass(frozen=True)
class PredictsTable:
    """Experiment 1: who directly predicts (du) and reads (ee) tokens, per SAE.

    Counts are over features whose pass has run (the flag is not NULL);
    ``frac_*`` = count / that denominator. ``*_both`` counts only features
    with both flags set. ``overall`` pools every SAE.
    """

    saes: SAERows
    n_features: np.ndarray  # (n_saes,)
    n_du: np.ndarray  # features with predicts_tokens not NULL
    n_predicts: np.ndarray
    frac_predicts: np.ndarray
    n_ee: np.ndarray  # features with reads_tokens not NULL
    n_reads: np.ndarray
    frac_reads: np.ndarray
    n_both_passes: np.ndarray  # features with both flags set
    n_both: np.ndarray  # predicts AND reads
    n_either: np.ndarray  # predicts OR reads (among n_both_passes)
    frac_both: np.ndarray  # n_both / n_both_passes
    jaccard: np.ndarray  # n_both / n_either: overlap of the two feature sets
    overall: dict[str, float]
    criteria: dict[str, Any] = field(default_factory=dict)  # provenance.criteria, when the builder recorded it


def predicts_by_layer(atlas: Any) -> PredictsTable:
    """Fractions of features that predict / read tokens, per SAE in depth order, and overall."""
    conn = _conn(atlas)
    saes = sae_rows(conn)
    agg = _fetch_floats(
        conn,
        "SELECT sae_id, COUNT(*), COUNT(predicts_tokens), TOTAL(predicts_tokens), "
        "COUNT(reads_tokens), TOTAL(reads_tokens), "
        "TOTAL(predicts_tokens IS NOT NULL AND reads_tokens IS NOT NULL), "
        "TOTAL(predicts_tokens = 1 AND reads_tokens = 1), "
        "TOTAL(predicts_tokens IS NOT NULL AND reads_tokens IS NOT NULL AND (predicts_tokens = 1 OR reads_tokens = 1)) "
        "FROM features GROUP BY sae_id",
    )
    table = np.zeros((len(saes), 8))
    where = saes.index()
    for row in agg:
        if int(row[0]) in where:
            table[where[int(row[0])]] = row[1:]
    n, n_du, n_pred, n_ee, n_reads, n_bp, n_both, n_either = table.T
    if n_du.sum() == 0 and n_ee.sum() == 0:
        raise MissingPass(
            "experiment 1 needs the du/ee passes: features.predicts_tokens and reads_tokens are empty "
            "(run `sae-atlas build --passes du,ee`)"
        )
    tot = {k: float(v.sum()) for k, v in dict(n=n, n_du=n_du, n_pred=n_pred, n_ee=n_ee, n_reads=n_reads).items()}
    overall = {
        "n_features": tot["n"],
        "n_du": tot["n_du"],
        "n_predicts": tot["n_pred"],
        "frac_predicts": float(_safe_div(n_pred.sum(), n_du.sum())),
        "n_ee": tot["n_ee"],
        "n_reads": tot["n_reads"],
        "frac_reads": float(_safe_div(n_reads.sum(), n_ee.sum())),
        "n_both_passes": float(n_bp.sum()),
        "n_both": float(n_both.sum()),
        "frac_both": float(_safe_div(n_both.sum(), n_bp.sum())),
        "jaccard": float(_safe_div(n_both.sum(), n_either.sum())),
    }
    return PredictsTable(
        saes=saes,
        n_features=n.astype(np.int64),
        n_du=n_du.astype(np.int64),
        n_predicts=n_pred.astype(np.int64),
        frac_predicts=_safe_div(n_pred, n_du),
        n_ee=n_ee.astype(np.int64),
        n_reads=n_reads.astype(np.int64),
        frac_reads=_safe_div(n_reads, n_ee),
        n_both_passes=n_bp.astype(np.int64),
        n_both=n_both.astype(np.int64),
        n_either=n_either.astype(np.int64),
        frac_both=_safe_div(n_both, n_bp),
        jaccard=_safe_div(n_both, n_either),
        overall=overall,
        criteria=_criteria(conn),
    )


def _criteria(conn: sqlite3.Connection) -> dict[str, Any]:
    return verdict_criteria(read_provenance(conn))


@dataclass(frozen=True)
class TokenOverlap:
    """Experiment 1, second half: do a feature's input tokens agree with its output tokens?

    For each feature, ``shared`` = |top-``top`` du promoted tokens ∩
    top-``top`` ee tokens (sign +1)|, as distinct token ids. A feature
    *agrees* when ``shared >= min_shared``. ``chance_shared`` is what two
    independent random top-k lists would share on average (k_du·k_ee/d_vocab),
    the yardstick for ``mean_shared``. Above ``max_features`` features a seeded
    uniform sample of each SAE is used (``sampled``), with the standard error
    of the fraction in ``se_agree``.
    """

    saes: SAERows
    top: int | None
    min_shared: int
    n_checked: np.ndarray  # (n_saes,) features with both token lists
    n_agree: np.ndarray
    frac_agree: np.ndarray
    se_agree: np.ndarray
    mean_shared: np.ndarray
    mean_jaccard: np.ndarray
    chance_shared: np.ndarray
    n_predicting_checked: np.ndarray  # of the checked, how many predict tokens
    frac_agree_predicting: np.ndarray  # agreement among features that predict tokens
    sampled: bool
    sample_fraction: float
    overall: dict[str, float]


def token_overlap(
    atlas: Any,
    *,
    top: int | None = None,
    min_shared: int = 1,
    max_features: int = 200_000,
    seed: int = 0,
    block: int = 256,
) -> TokenOverlap:
    """Shared tokens between each feature's du (promoted) and ee (sign +1) top-k lists.

    The lists are read with one ``group_concat`` per (feature, phase) over a
    feature-id range, so SQLite walks ``token_scores`` in primary-key order,
    and the set arithmetic runs in numpy. Reading every row of a 1M-feature
    atlas takes longer than the report may; above ``max_features`` features,
    random blocks of ``block`` consecutive latents are read from each SAE
    instead (latent order within an SAE carries no meaning, so this is a
    uniform sample for every purpose here).
    """
    conn = _conn(atlas)
    saes = sae_rows(conn)
    for phase in ("du", "ee"):
        if not conn.execute("SELECT 1 FROM token_scores WHERE phase = ? AND sign = 1 LIMIT 1", (phase,)).fetchone():
            others = [p for p in ("du", "ee") if p != phase]
            other_missing = not conn.execute(
                "SELECT 1 FROM token_scores WHERE phase = ? AND sign = 1 LIMIT 1", (others[0],)
            ).fetchone()
            which = "du and ee passes" if other_missing else f"{phase} pass"
            raise MissingPass(f"the token overlap needs the {which}: token_scores has no such rows")
    spans = {
        int(r[0]): (int(r[1]), int(r[2]), int(r[3]))
        for r in conn.execute("SELECT sae_id, MIN(feature_id), MAX(feature_id), COUNT(*) FROM features GROUP BY sae_id")
    }
    n_total = sum(n for _, _, n in spans.values())
    frac = 1.0 if n_total <= max_features else max_features / n_total
    rng = np.random.default_rng(seed)
    m = len(saes)
    acc = np.zeros((6, m))  # n_checked, n_agree, shared, k_du, n_pred_checked, n_pred_agree
    jacc_sum = np.zeros(m)
    k_ee_sum = np.zeros(m)
    for i, sid in enumerate(saes.sae_id.tolist()):
        if sid not in spans:
            continue
        lo, hi, _ = spans[sid]
        if frac >= 1.0:
            ranges = [(a, min(hi, a + 20_000 - 1)) for a in range(lo, hi + 1, 20_000)]
        else:
            n_blocks = -(-(hi - lo + 1) // block)
            take = np.sort(rng.choice(n_blocks, max(1, int(round(frac * n_blocks))), replace=False))
            ranges = [(lo + b * block, min(hi, lo + (b + 1) * block - 1)) for b in take.tolist()]
        for a, b in ranges:
            got = _overlap_range(conn, sid, a, b, top)
            if got is None:
                continue
            pred, k_du, k_ee, shared = got
            ok = (k_du > 0) & (k_ee > 0)
            agree = ok & (shared >= min_shared)
            is_pred = ok & (pred == 1)
            acc[:, i] += [
                ok.sum(),
                agree.sum(),
                shared[ok].sum(),
                k_du[ok].sum(),
                is_pred.sum(),
                (is_pred & agree).sum(),
            ]
            k_ee_sum[i] += k_ee[ok].sum()
            jacc_sum[i] += (shared[ok] / (k_du[ok] + k_ee[ok] - shared[ok])).sum()
    n_checked, n_agree, shared_sum, k_du_sum, n_pred_checked, n_pred_agree = acc
    frac_agree = _safe_div(n_agree, n_checked)
    chance = _safe_div(k_du_sum, n_checked) * _safe_div(k_ee_sum, n_checked) / saes.d_vocab
    n_all = float(n_checked.sum())
    p_all = float(_safe_div(n_agree.sum(), n_all))
    overall = {
        "n_checked": n_all,
        "n_agree": float(n_agree.sum()),
        "frac_agree": p_all,
        "se_agree": float(math.sqrt(p_all * (1 - p_all) / n_all)) if n_all > 0 else math.nan,
        "mean_shared": float(_safe_div(shared_sum.sum(), n_all)),
        "mean_jaccard": float(_safe_div(jacc_sum.sum(), n_all)),
        "chance_shared": float(np.nansum(chance * n_checked) / n_all) if n_all > 0 else math.nan,
        "n_predicting_checked": float(n_pred_checked.sum()),
        "frac_agree_predicting": float(_safe_div(n_pred_agree.sum(), n_pred_checked.sum())),
    }
    return TokenOverlap(
        saes=saes,
        top=top,
        min_shared=min_shared,
        n_checked=n_checked.astype(np.int64),
        n_agree=n_agree.astype(np.int64),
        frac_agree=frac_agree,
        se_agree=np.sqrt(_safe_div(frac_agree * (1 - frac_agree), n_checked)),
        mean_shared=_safe_div(shared_sum, n_checked),
        mean_jaccard=_safe_div(jacc_sum, n_checked),
        chance_shared=chance,
        n_predicting_checked=n_pred_checked.astype(np.int64),
        frac_agree_predicting=_safe_div(n_pred_agree, n_pred_checked),
        sampled=frac < 1.0,
        sample_fraction=min(1.0, frac),
        overall=overall,
    )


def _overlap_range(
    conn: sqlite3.Connection, sae_id: int, lo: int, hi: int, top: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(predicts, k_du, k_ee, shared) per feature of one SAE with lo <= feature_id <= hi."""
    meta = _fetch_floats(
        conn,
        "SELECT feature_id, predicts_tokens FROM features WHERE feature_id BETWEEN ? AND ? AND sae_id = ?",
        (lo, hi, sae_id),
    )
    if len(meta) == 0:
        return None
    rank_cut = "" if top is None else f" AND rank < {int(top)}"
    rows = conn.execute(
        "SELECT feature_id, phase = 'du', group_concat(token_id) FROM token_scores "
        f"WHERE feature_id BETWEEN ? AND ? AND sign = 1{rank_cut} GROUP BY feature_id, phase",
        (lo, hi),
    ).fetchall()
    width = hi - lo + 1
    k = np.zeros((2, width))  # distinct tokens per feature: row 0 ee, row 1 du
    shared = np.zeros(width)
    if rows:
        fid = np.fromiter((r[0] for r in rows), np.int64, len(rows)) - lo
        is_du = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        texts = [r[2] for r in rows]
        counts = np.array([t.count(",") + 1 for t in texts])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            toks = np.fromstring(",".join(texts), dtype=np.int64, sep=",")  # text mode: fast and exact
        f_rep = np.repeat(fid, counts)
        d_rep = np.repeat(is_du, counts)
        base = int(toks.max()) + 1
        uniq = []
        for d in (0, 1):
            keys = _sorted_unique(f_rep[d_rep == d] * base + toks[d_rep == d])  # distinct (feature, token)
            k[d] = np.bincount(keys // base, minlength=width)
            uniq.append(keys)
        both = np.sort(np.concatenate(uniq))
        dup = both[1:][both[1:] == both[:-1]]  # (feature, token) present in both phases
        shared = np.bincount(dup // base, minlength=width).astype(np.float64)
    pos = meta[:, 0].astype(np.int64) - lo
    return meta[:, 1], k[1, pos], k[0, pos], shared[pos]


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # np.unique on int64 is far slower than a sort and a mask in recent numpy.
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


# ---------------------------------------------------------------------- experiment 2


@dataclass(frozen=True)
class RoleProfile:
    """Per-SAE summaries of one role's participation score (arrays align with SAERows)."""

    n: np.ndarray  # features with a score
    mean: np.ndarray
    median: np.ndarray
    p75: np.ndarray
    se: np.ndarray  # standard error of the mean
    frac_above: np.ndarray  # from the builder's depth_profiles table; NaN where absent


@dataclass(frozen=True)
class DepthProfiles:
    """Experiment 2: query/key/value participation by depth.

    ``roles[r]`` summarises ``features.attn_{r}_mean`` (each feature's mean
    normalised score over the heads of the attention layer that reads its
    site) over each SAE's features. ``frac_above`` is the fraction of
    (feature, head) pairs above the baseline percentile, as the attention pass
    wrote it to ``depth_profiles`` for the first attention layer the SAE
    reaches. ``builder`` holds that table's rows unchanged (every layer the
    pass reached). ``shapes[(series, role)]`` names each curve's shape
    (:func:`profile_shape`).
    """

    saes: SAERows
    roles: dict[str, RoleProfile]
    builder: list[dict[str, Any]]
    shapes: dict[tuple[str, str], str]


def depth_profiles(atlas: Any) -> DepthProfiles:
    conn = _conn(atlas)
    saes = sae_rows(conn)
    data = _fetch_floats(
        conn,
        "SELECT sae_id, attn_q_mean, attn_k_mean, attn_v_mean FROM features "
        "WHERE attn_q_mean IS NOT NULL OR attn_k_mean IS NOT NULL OR attn_v_mean IS NOT NULL",
    )
    builder = _dicts(
        conn,
        "SELECT d.sae_id, s.name AS sae, s.layer AS sae_layer, d.layer, d.role, d.n, d.mean, d.median, "
        "d.p75, d.frac_above FROM depth_profiles d JOIN saes s USING (sae_id)",
    )
    rank = saes.index()
    builder.sort(key=lambda r: (rank.get(int(r["sae_id"]), len(rank)), r["layer"], ROLES.index(r["role"])))
    if len(data) == 0 and not builder:
        raise MissingPass(
            "experiment 2 needs the attention pass: features.attn_q_mean/attn_k_mean/attn_v_mean "
            "and the depth_profiles table are empty (run `sae-atlas build --passes attn`)"
        )
    where = saes.index()
    m = len(saes)
    pos = np.array([where.get(int(s), -1) for s in data[:, 0]], dtype=np.int64) if len(data) else np.zeros(0, int)
    # First attention layer each SAE reaches: the layer attn_*_mean summarises.
    first: dict[tuple[int, str], dict[str, Any]] = {}
    for row in builder:
        key = (int(row["sae_id"]), row["role"])
        if key not in first or row["layer"] < first[key]["layer"]:
            first[key] = row
    roles: dict[str, RoleProfile] = {}
    order = np.argsort(pos, kind="stable")
    for j, role in enumerate(ROLES):
        vals = data[order, 1 + j] if len(data) else np.zeros(0)
        grp = pos[order]
        summ = np.full((5, m), np.nan)  # mean, median, P75, se, n per SAE
        n = np.zeros(m, dtype=np.int64)
        for i in range(m):
            lo, hi = np.searchsorted(grp, [i, i + 1])
            v = vals[lo:hi]
            v = v[~np.isnan(v)]
            n[i] = len(v)
            if len(v):
                summ[:, i] = _summary(v)
        frac = np.array([_get(first.get((int(s), role)), "frac_above") for s in saes.sae_id.tolist()])
        if n.sum() == 0:
            # No per-feature scores: fall back to the builder's (feature, head) summaries.
            for i, s in enumerate(saes.sae_id.tolist()):
                row = first.get((int(s), role))
                if row is not None:
                    n[i] = int(row["n"] or 0)
                    summ[0, i], summ[1, i], summ[2, i] = (_get(row, c) for c in ("mean", "median", "p75"))
        roles[role] = RoleProfile(
            n=n, mean=summ[0], median=summ[1], p75=summ[2], se=summ[3], frac_above=frac.astype(np.float64)
        )
    shapes = {}
    series = saes.series()
    for s in dict.fromkeys(series):
        idx = [i for i, x in enumerate(series) if x == s]
        for role in ROLES:
            shapes[(s, role)] = profile_shape(saes.layer[idx], roles[role].mean[idx])
    return DepthProfiles(saes=saes, roles=roles, builder=builder, shapes=shapes)


def _get(row: dict | None, key: str) -> float:
    if row is None or row.get(key) is None:
        return math.nan
    return float(row[key])


def _summary(v: np.ndarray) -> np.ndarray:
    """mean, median, P75, standard error of the mean, and the count, of a non-empty 1-D array."""
    mean = float(v.mean())
    med, p75 = np.percentile(v, [50, 75])
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return np.array([mean, med, p75, se, len(v)], dtype=np.float64)


SHAPE_TAU = 0.6  # |Kendall's tau-b| a monotone stretch needs
SHAPE_MAX_AGAINST = 1 / 3  # at most this fraction of its steps may go against the trend by more than tol


def kendall_tau_b(x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> float:
    """Kendall's tau-b of two short 1-D arrays, ties counted as tau-b does; NaN when undefined.

    Two y values within ``tol`` of each other count as tied: a step smaller than the shape rule's tolerance is
    noise, neither for nor against a trend.
    """
    i, j = np.triu_indices(len(x), 1)
    dy = y[j] - y[i]
    sx, sy = np.sign(x[j] - x[i]), np.where(np.abs(dy) <= tol, 0.0, np.sign(dy))
    n0 = len(i)
    denom = math.sqrt((n0 - int((sx == 0).sum())) * (n0 - int((sy == 0).sum())))
    return float((sx * sy).sum() / denom) if denom > 0 else math.nan


def _monotone(x: np.ndarray, y: np.ndarray, sign: int, tol: float) -> bool:
    """y rises (sign +1) or falls (-1) along x: tau-b agrees, few steps go against it, and it moves by > tol."""
    if len(y) < 2:
        return False
    steps = sign * np.diff(y)
    tau = kendall_tau_b(x, y, tol)
    return (
        not math.isnan(tau)
        and sign * tau >= SHAPE_TAU
        and float(np.mean(steps < -tol)) <= SHAPE_MAX_AGAINST
        and sign * (y[-1] - y[0]) > tol
    )


def profile_shape(layers: np.ndarray, values: np.ndarray, *, tol: float = 0.05) -> str:
    """Name a depth curve: 'U-shaped', 'inverted-U', 'increasing', 'decreasing', 'flat', 'no clear trend' or 'n/a'.

    The curve is divided by its mean (so ``tol`` is 5% of it), in layer order.

    * **flat**: every point within ``tol`` of the mean;
    * **inverted-U** (**U-shaped**): the highest (lowest) point is neither the
      first nor the last, rises (falls) more than ``tol`` above (below) both
      ends, and the curve is monotone up to it and monotone after it;
    * **increasing** / **decreasing**: the whole curve is monotone;
    * **flat** again if none of these holds but the curve spans at most 2 * ``tol``;
    * otherwise **no clear trend**: the curve zigzags.

    Monotone (each arm, or the whole curve): Kendall's tau-b with depth (two
    layers within ``tol`` of each other counting as tied) at least
    ``SHAPE_TAU`` (0.6) in the trend's direction, at most
    ``SHAPE_MAX_AGAINST`` (1/3) of its steps going against it by more than
    ``tol``, and the last point beyond the first by more than ``tol``. So
    q = (0.81, 0.97, 0.75, 0.92, 0.96) is no clear trend (tau-b 0.2).
    """
    ok = ~np.isnan(values)
    x = np.asarray(layers, dtype=np.float64)[ok]
    y = np.asarray(values, dtype=np.float64)[ok]
    if len(y) < 2 or np.ptp(x) == 0 or y.mean() == 0:
        return "n/a"
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order] / y.mean()
    if np.abs(y - 1).max() <= tol:
        return "flat"
    for name, sign, j in (("inverted-U", 1, int(np.argmax(y))), ("U-shaped", -1, int(np.argmin(y)))):
        inside = 0 < j < len(y) - 1
        rise = sign * (y[j] - y[0]), sign * (y[j] - y[-1])  # how far the extremum stands out from each end
        if inside and min(rise) > tol:
            if _monotone(x[: j + 1], y[: j + 1], sign, tol) and _monotone(x[j:], y[j:], -sign, tol):
                return name
    if _monotone(x, y, 1, tol):
        return "increasing"
    if _monotone(x, y, -1, tol):
        return "decreasing"
    return "flat" if np.ptp(y) <= 2 * tol else "no clear trend"


@dataclass(frozen=True)
class VariabilityTest:
    """Does the key side vary more across layers than the query side?

    Statistic: ``diff = cv_k - cv_q``, where ``cv_r`` is the coefficient of
    variation (population std / mean) across layers of the per-layer mean
    score of role ``r``. The coefficient of variation is scale-free, so a
    side that is merely larger everywhere does not count as more variable.

    ``p_value``: paired sign-flip permutation test with layers as the units.
    Each role's layer means are divided by their average over layers; under
    the null hypothesis that query and key profiles are exchangeable, swapping
    the q and k values of any set of layers gives an equally likely profile
    pair. All 2^L swaps are enumerated when L <= 14 (``exact``), otherwise
    20,000 random swaps (seeded) and p = (1 + #{|diff*| >= |diff|}) / (1 + P).
    Two-sided: P(|diff*| >= |diff|). ``min_p``: the smallest p this test can
    give with these layers: swapping no layer and swapping every layer give
    the same |diff|, so it is 2 / 2^L (exact), or 1 / (1 + P) when sampled: 5
    or fewer layers can never give p < 0.05 (2/32 = 0.0625), 6 can
    (2/64 = 0.031). ``depths_needed``: the fewest layers for which p < 0.05 is
    possible at all (:func:`sign_flip_depths_needed`). ``significant`` is
    p < 0.05, and never when ``min_p`` >= 0.05.

    ``ci95``: feature-sampling uncertainty of ``diff``: a parametric bootstrap
    that redraws each layer mean from N(mean, se²) (2,000 draws). It ignores
    the correlation between a feature's q and k scores, which makes it wider
    (conservative) when that correlation is positive.
    """

    series: str
    layers: np.ndarray
    cv_q: float
    cv_k: float
    diff: float
    p_value: float
    n_permutations: int
    exact: bool
    ci95: tuple[float, float]
    min_p: float = math.nan  # smallest p the test can give with these layers
    depths_needed: int = 0  # fewest layers for which p < ALPHA is attainable at all

    @property
    def testable(self) -> bool:
        return self.min_p < ALPHA

    @property
    def significant(self) -> bool:
        return self.testable and self.p_value < ALPHA


ALPHA = 0.05  # the significance level experiment 2 reports against


def sign_flip_min_p(n_layers: int, n_permutations: int | None = None) -> float:
    """Smallest p-value of the paired sign-flip test over ``n_layers`` layers: 2 / 2^L when exact (the identity
    and the all-swap give the same |statistic|), 1 / (1 + P) when P random swaps are sampled."""
    exact = 2.0 / 2.0**n_layers
    return exact if n_permutations is None else max(exact, 1.0 / (1 + n_permutations))


def sign_flip_depths_needed(alpha: float = ALPHA) -> int:
    """Fewest layers for which the exact sign-flip test can give p < alpha (6 for 0.05)."""
    n = 1
    while sign_flip_min_p(n) >= alpha:
        n += 1
    return n


def qk_variability(
    profiles: DepthProfiles, *, n_permutations: int = 20_000, n_bootstrap: int = 2_000, seed: int = 0
) -> list[VariabilityTest]:
    """One test per depth series (site) that has query and key means at two or more layers."""
    out = []
    series = profiles.saes.series()
    q, k = profiles.roles["q"], profiles.roles["k"]
    for s in dict.fromkeys(series):
        idx = np.array([i for i, x in enumerate(series) if x == s])
        ok = idx[~np.isnan(q.mean[idx]) & ~np.isnan(k.mean[idx])]
        if len(ok) < 2:
            continue
        layers = profiles.saes.layer[ok]
        out.append(
            _variability(s, layers, q.mean[ok], k.mean[ok], q.se[ok], k.se[ok], n_permutations, n_bootstrap, seed)
        )
    return out


def _cv(m: np.ndarray) -> np.ndarray:
    """Coefficient of variation along the last axis."""
    return m.std(axis=-1) / m.mean(axis=-1)


def _variability(
    series: str,
    layers: np.ndarray,
    mq: np.ndarray,
    mk: np.ndarray,
    se_q: np.ndarray,
    se_k: np.ndarray,
    n_permutations: int,
    n_bootstrap: int,
    seed: int,
) -> VariabilityTest:
    rng = np.random.default_rng(seed)
    n_layers = len(layers)
    zq, zk = mq / mq.mean(), mk / mk.mean()
    diff = float(_cv(zk) - _cv(zq))
    exact = n_layers <= 14
    if exact:
        codes = np.arange(2**n_layers)[:, None]
        swap = ((codes >> np.arange(n_layers)) & 1).astype(bool)  # (2^L, L): every subset of layers
    else:
        swap = rng.random((n_permutations, n_layers)) < 0.5  # (P, L)
    pq = np.where(swap, zk, zq)  # (P, L)
    pk = np.where(swap, zq, zk)  # (P, L)
    null = _cv(pk) - _cv(pq)  # (P,)
    hits = int(np.sum(np.abs(null) >= abs(diff) - 1e-12))
    # exact: the identity is among the swaps; sampled: count the observed one too, so p is never 0
    p = hits / len(null) if exact else (1 + hits) / (1 + len(null))
    # Feature-sampling uncertainty of the layer means (NaN se: a single feature; use 0).
    bq = mq + rng.standard_normal((n_bootstrap, n_layers)) * np.nan_to_num(se_q)  # (B, L)
    bk = mk + rng.standard_normal((n_bootstrap, n_layers)) * np.nan_to_num(se_k)  # (B, L)
    boot = _cv(bk) - _cv(bq)  # (B,)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return VariabilityTest(
        series=series,
        layers=np.asarray(layers),
        cv_q=float(_cv(zq)),
        cv_k=float(_cv(zk)),
        diff=diff,
        p_value=p,
        n_permutations=len(null),
        exact=exact,
        ci95=(float(lo), float(hi)),
        min_p=sign_flip_min_p(n_layers, None if exact else len(null)),
        depths_needed=sign_flip_depths_needed(ALPHA),
    )


# ---------------------------------------------------------------------- experiment 3


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample: pairs (x, y) with x > y, ties counting one half
    z: float  # normal approximation, tie-corrected, with continuity correction
    p_value: float  # two-sided
    n1: int
    n2: int


def rank_average(v: np.ndarray) -> tuple[np.ndarray, float]:
    """Ranks 1..n with ties given their average rank, and the tie term sum(t^3 - t)."""
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    counts = np.diff(np.r_[starts, len(v)])
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    counts = counts.astype(np.float64)
    return ranks, float(np.sum(counts**3 - counts))


def mann_whitney_u(x: np.ndarray, y: np.ndarray, *, continuity: bool = True) -> MannWhitney:
    """Two-sided Mann-Whitney U test, normal approximation with tie correction.

    Matches ``scipy.stats.mannwhitneyu(x, y, method='asymptotic')`` (tested).
    NaNs are dropped. When every value is tied the variance is zero and the
    test has nothing to say: z = 0, p = 1.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return MannWhitney(math.nan, math.nan, math.nan, n1, n2)
    ranks, ties = rank_average(np.concatenate([x, y]))
    n = n1 + n2
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return MannWhitney(u1, 0.0, 1.0, n1, n2)
    u = max(u1, n1 * n2 - u1)  # the two-sided statistic is the larger U
    z = (u - mu - (0.5 if continuity else 0.0)) / math.sqrt(var)
    p = min(1.0, math.erfc(z / math.sqrt(2)))  # = 2 * P(Z > z)
    return MannWhitney(u1, z, p, n1, n2)


def cliffs_delta(u1: float, n1: int, n2: int) -> float:
    """P(x > y) - P(x < y) from U of x; equals the rank-biserial correlation. In [-1, 1]."""
    return 2 * u1 / (n1 * n2) - 1 if n1 and n2 else math.nan


def cohens_d(x: np.ndarray, y: np.ndarray) -> float:
    """(mean x - mean y) / pooled standard deviation (ddof 1)."""
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        return math.nan
    pooled = ((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2)
    return float((x.mean() - y.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs left out of the family and kept as NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


@dataclass(frozen=True)
class SemanticComparison:
    """Semantic (group 1) against non-semantic (group 0) participation for one role and one SAE (or all)."""

    role: str
    sae: str  # SAE name, or "all" for the pooled row
    layer: int  # -1 for the pooled row
    site: str
    n_sem: int
    n_non: int
    mean_sem: float
    mean_non: float
    median_sem: float
    median_non: float
    p75_sem: float
    p75_non: float
    cliffs_delta: float  # > 0: semantic features score higher
    cohens_d: float
    u: float
    z: float
    p_value: float
    p_holm: float  # Holm-adjusted over every per-SAE row of every role; the pooled rows are not adjusted


@dataclass(frozen=True)
class SemanticSplit:
    """Experiment 3. ``values[(sae, role)] = (semantic, non_semantic)`` arrays, for plots."""

    saes: SAERows
    rows: list[SemanticComparison]
    pooled: list[SemanticComparison]
    values: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    n_labelled: int


def semantic_split(atlas: Any) -> SemanticSplit:
    """Participation of semantic vs non-semantic features (latest heuristic label of each feature)."""
    conn = _conn(atlas)
    saes = sae_rows(conn)
    data = _fetch_floats(
        conn,
        "SELECT l.feature_id, l.label_id, l.kind = 'semantic', f.sae_id, "
        "f.attn_q_mean, f.attn_k_mean, f.attn_v_mean "
        "FROM labels l JOIN features f ON f.feature_id = l.feature_id "
        "WHERE l.source = 'heuristic' AND l.kind IN ('semantic', 'non_semantic')",
    )
    if len(data) == 0:
        raise MissingPass(
            "experiment 3 needs the semantic-label pass: no labels with source 'heuristic' and kind "
            "semantic/non_semantic (run `sae-atlas build --passes semantic`)"
        )
    # The latest heuristic label of each feature wins (highest label_id), as in features_view.
    data = data[np.lexsort((-data[:, 1], data[:, 0]))]
    data = data[np.unique(data[:, 0], return_index=True)[1]]
    if np.all(np.isnan(data[:, 4:7])):
        raise MissingPass(
            "experiment 3 needs the attention pass: the labelled features have no attn_q/k/v_mean "
            "(run `sae-atlas build --passes attn`)"
        )
    is_sem = data[:, 2] == 1
    where = saes.index()
    pos = np.array([where.get(int(s), -1) for s in data[:, 3]], dtype=np.int64)
    rows: list[SemanticComparison] = []
    pooled: list[SemanticComparison] = []
    values: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for j, role in enumerate(ROLES):
        v = data[:, 4 + j]
        for i, name in enumerate(saes.name):
            sel = (pos == i) & ~np.isnan(v)
            sem, non = v[sel & is_sem], v[sel & ~is_sem]
            if len(sem) + len(non) == 0:
                continue
            values[(name, role)] = (sem, non)
            rows.append(_compare(role, name, int(saes.layer[i]), saes.site[i], sem, non))
        ok = ~np.isnan(v)
        if ok.any():
            pooled.append(_compare(role, "all", -1, "all", v[ok & is_sem], v[ok & ~is_sem]))
    adjusted = holm(np.array([r.p_value for r in rows]))
    rows = [_with_holm(r, float(a)) for r, a in zip(rows, adjusted, strict=True)]
    return SemanticSplit(saes=saes, rows=rows, pooled=pooled, values=values, n_labelled=len(data))


def _with_holm(r: SemanticComparison, p_holm: float) -> SemanticComparison:
    return replace(r, p_holm=p_holm)


def _compare(role: str, sae: str, layer: int, site: str, sem: np.ndarray, non: np.ndarray) -> SemanticComparison:
    def q(v: np.ndarray, pct: float) -> float:
        return float(np.percentile(v, pct)) if len(v) else math.nan

    mw = mann_whitney_u(sem, non)
    return SemanticComparison(
        role=role,
        sae=sae,
        layer=layer,
        site=site,
        n_sem=len(sem),
        n_non=len(non),
        mean_sem=float(sem.mean()) if len(sem) else math.nan,
        mean_non=float(non.mean()) if len(non) else math.nan,
        median_sem=q(sem, 50),
        median_non=q(non, 50),
        p75_sem=q(sem, 75),
        p75_non=q(non, 75),
        cliffs_delta=cliffs_delta(mw.u, mw.n1, mw.n2),
        cohens_d=cohens_d(sem, non),
        u=mw.u,
        z=mw.z,
        p_value=mw.p_value,
        p_holm=math.nan,
    )
