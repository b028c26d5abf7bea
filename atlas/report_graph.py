"""The report's graph section: how strongly features connect across layers, against the random baseline.

For every (source, destination) pair of dictionaries the `virtual` pass scored (its `virtual_baselines`
rows), by layer distance (destination layer minus source layer):

- *above P99*: the fraction of all real (f, g) pairs whose normalised |V(f, g)| beats the baseline's P99
  (stored by the pass; 1% when features connect no more than random directions do), and its ratio to 1%;
- *rank-0 percentile*: the median percentile of each source feature's strongest edge into the destination
  (`virtual` edges of rank 0), next to what the strongest of d_sae(dst) random draws would reach by
  chance (the median of the maximum of n uniform draws is 0.5^(1/n)).

Source features are read in full up to ``max_features`` per source dictionary, then on an even stride
(each an indexed lookup of its rank-0 edges, never a scan of the edges table).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atlas.rows import damage
from atlas.stats import MissingPass

FIGURE = "graph_distance"
CHANCE_ABOVE_P99 = 0.01


@dataclass
class PairRow:
    src: str
    dst: str
    src_layer: int
    dst_layer: int
    distance: int
    d_sae_dst: int
    n_pairs: int | None  # real (f, g) pairs the pass scored
    frac_above_p99: float | None  # of those, beyond the baseline's P99 (chance: 0.01)
    frac_above_p999: float | None  # beyond P999 (chance: 0.001)
    n_rank0: int  # source features read with a rank-0 edge into dst
    median_rank0_percentile: float | None
    frac_rank0_above_p99: float | None  # rank-0 edges at or above percentile 99
    chance_rank0_percentile: float  # median percentile of the best of d_sae_dst random draws

    @property
    def enrichment(self) -> float | None:
        return None if self.frac_above_p99 is None else self.frac_above_p99 / CHANCE_ABOVE_P99


@dataclass
class GraphSection:
    pairs: list[PairRow] = field(default_factory=list)
    max_features: int = 50_000

    def by_distance(self) -> list[dict[str, Any]]:
        """Per layer distance: pairs, median of the pairs' above-P99 fractions and rank-0 percentiles."""
        out = []
        for d in sorted({p.distance for p in self.pairs}):
            rows = [p for p in self.pairs if p.distance == d]
            above = [p.frac_above_p99 for p in rows if p.frac_above_p99 is not None]
            med = [p.median_rank0_percentile for p in rows if p.median_rank0_percentile is not None]
            out.append(
                {
                    "distance": d,
                    "pairs": len(rows),
                    "median_frac_above_p99": float(np.median(above)) if above else None,
                    "median_rank0_percentile": float(np.median(med)) if med else None,
                }
            )
        return out


def graph_section(conn: sqlite3.Connection, *, max_features: int = 50_000) -> GraphSection:
    """Read the section's numbers; MissingPass when the atlas has no virtual edges."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    cols = {r[1] for r in conn.execute("PRAGMA table_info(edges)")}
    if "virtual_baselines" not in tables or "percentile" not in cols:
        raise MissingPass("no virtual edges (the graph section needs schema 4 and a build with the `virtual` pass)")
    rows = conn.execute(
        "SELECT s.name, s.layer, d.name, d.layer, d.d_sae, b.src_sae_id, b.dst_sae_id, b.n_pairs, b.frac_above_p99, "
        "b.frac_above_p999 FROM virtual_baselines b JOIN saes s ON s.sae_id = b.src_sae_id "
        "JOIN saes d ON d.sae_id = b.dst_sae_id ORDER BY s.layer, s.name, d.layer, d.name"
    ).fetchall()
    if not rows:
        raise MissingPass("no virtual edges (the graph section needs a build with the `virtual` pass)")
    section = GraphSection(max_features=max_features)
    rank0 = _rank0_percentiles(conn, sorted({r[5] for r in rows}), max_features)
    for src, s_layer, dst, d_layer, d_sae, src_id, dst_id, n_pairs, above, above999 in rows:
        where = f"virtual_baselines row ({src_id}, {dst_id})"
        for col, v in (("n_pairs", n_pairs), ("frac_above_p99", above), ("frac_above_p999", above999)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise damage(where, col, v, "a number or NULL")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (s_layer, d_layer, d_sae)) or d_sae <= 0:
            raise damage(where, "its dictionaries' layer or d_sae", (s_layer, d_layer, d_sae), "positive integers")
        pct = rank0.get((src_id, dst_id), np.zeros(0))
        section.pairs.append(
            PairRow(
                src=str(src),
                dst=str(dst),
                src_layer=s_layer,
                dst_layer=d_layer,
                distance=d_layer - s_layer,
                d_sae_dst=d_sae,
                n_pairs=n_pairs,
                frac_above_p99=_num(above),
                frac_above_p999=_num(above999),
                n_rank0=len(pct),
                median_rank0_percentile=float(np.median(pct)) if len(pct) else None,
                frac_rank0_above_p99=float(np.mean(pct >= 99.0)) if len(pct) else None,
                chance_rank0_percentile=100.0 * 0.5 ** (1.0 / d_sae),
            )
        )
    return section


def graph_section_if_built(conn: sqlite3.Connection, progress: Any = None) -> GraphSection | None:
    """The section, or None when the atlas has no virtual edges (the report then has no graph section)."""
    try:
        section = graph_section(conn)
    except MissingPass:
        return None
    if progress is not None:
        progress(f"graph: {len(section.pairs)} dictionary pairs")
    return section


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _rank0_percentiles(
    conn: sqlite3.Connection, src_sae_ids: list[int], max_features: int
) -> dict[tuple[int, int], np.ndarray]:
    """Percentiles of the rank-0 `virtual` edges of each source dictionary's features, by destination dictionary."""
    out: dict[tuple[int, int], list[float]] = {}
    for sae_id in src_sae_ids:
        (n,) = conn.execute("SELECT COUNT(*) FROM features WHERE sae_id = ?", (sae_id,)).fetchone()
        stride = max(1, math.ceil(n / max_features))
        sql = (
            "SELECT d.sae_id, e.percentile, e.edge_id FROM features f "
            "JOIN edges e ON e.src_feature = f.feature_id AND e.kind = 'virtual' AND e.head_pk IS NULL AND e.rank = 0 "
            "JOIN features d ON d.feature_id = e.dst_feature "
            "WHERE f.sae_id = ? AND f.idx % ? = 0"
        )
        for dst_sae, pct, edge_id in conn.execute(sql, (sae_id, stride)):
            if pct is None:
                continue
            if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
                raise damage(f"edges row {edge_id}", "percentile", pct, "a percentile between 0 and 100 or NULL")
            out.setdefault((sae_id, dst_sae), []).append(float(pct))
    return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------- laid out
def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{int(x):,}" if isinstance(x, (int, np.integer)) else f"{float(x):.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * float(x):.1f}%"


def table_rows(section: GraphSection | None) -> list[tuple[str, list[str], list[list[str]], tuple[int, ...]]]:
    """The section's table as (title, headers, rows, text columns): atlas.report.Table's fields."""
    if section is None:
        return []
    rows = [
        [
            p.src,
            p.dst,
            str(p.distance),
            _f(p.n_pairs),
            _pct(p.frac_above_p99),
            "–" if p.enrichment is None else f"{p.enrichment:.1f}×",
            _f(p.n_rank0),
            _f(p.median_rank0_percentile, 2),
            _f(p.chance_rank0_percentile, 2),
            _pct(p.frac_rank0_above_p99),
        ]
        for p in section.pairs
    ]
    heads = [
        "source",
        "destination",
        "layer distance",
        "pairs scored",
        "above P99",
        "vs chance (1%)",
        "rank-0 edges",
        "median rank-0 pct",
        "chance",
        "rank-0 ≥ P99",
    ]
    return [("Graph: virtual weights against the random baseline, per dictionary pair", heads, rows, (0, 1))]


def paragraph(section: GraphSection | None) -> str:
    if section is None or not section.pairs:
        return ""
    parts = []
    for d in section.by_distance():
        above = d["median_frac_above_p99"]
        if above is not None:
            parts.append(f"{above * 100:.1f}% at distance {d['distance']} ({d['pairs']} pair{'s' * (d['pairs'] != 1)})")
    lead = (
        "Of all (source feature, destination feature) pairs the `virtual` pass scored, the median share whose "
        "virtual weight beats the P99 of random directions is " + "; ".join(parts) + " (1% if features connected "
        "no more than random directions do)."
        if parts
        else "The baselines hold no above-P99 fractions."
    )
    return (
        lead + " A feature's strongest edge into a dictionary is the best of d_sae draws, so its percentile is high "
        "even by chance; the table sets the median against that chance level. Edges are the direct residual path "
        "only (docs/graph.md): a weight says what a feature can write into another, not how often both are active."
    )


def markdown(section: GraphSection | None, figures: list[str], tables: list[Any]) -> list[str]:
    """The section's Markdown; ``tables`` are atlas.report.Table objects made from table_rows()."""
    if section is None:
        return []
    lines = ["## Graph: how strongly features connect across layers", "", paragraph(section), ""]
    if FIGURE in figures:
        lines += [f"![graph by layer distance]({FIGURE}.png)", "", f"([SVG]({FIGURE}.svg))", ""]
    for tab in tables:
        lines += [f"**{tab.title}**", "", tab.markdown(), ""]
    return lines


def plot(section: GraphSection | None, out_dir: Path) -> list[str]:
    """The figure (PNG and SVG): above-P99 fraction and median rank-0 percentile against layer distance."""
    if section is None or not section.pairs:
        return []
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    x = np.array([p.distance for p in section.pairs], dtype=float)
    jitter = (np.arange(len(x)) % 5 - 2) * 0.04  # pairs at one distance side by side
    above = np.array([np.nan if p.frac_above_p99 is None else p.frac_above_p99 for p in section.pairs])
    ok = np.isfinite(above) & (above > 0)
    ax1.scatter(x[ok] + jitter[ok], above[ok], s=18, color="#4c72b0", label="dictionary pair")
    ax1.axhline(CHANCE_ABOVE_P99, color="#999999", linestyle="--", linewidth=1, label="random (1%)")
    ax1.set_yscale("log")
    ax1.set_xlabel("layer distance (destination − source)")
    ax1.set_ylabel("pairs above the baseline's P99")
    ax1.legend(fontsize=7, frameon=False)
    med = np.array([np.nan if p.median_rank0_percentile is None else p.median_rank0_percentile for p in section.pairs])
    chance = np.array([p.chance_rank0_percentile for p in section.pairs])
    ok = np.isfinite(med)
    ax2.scatter(x[ok] + jitter[ok], med[ok], s=18, color="#c44e52", label="median rank-0 percentile")
    ax2.scatter(x + jitter, chance, s=14, marker="_", color="#999999", label="best of d_sae random draws")
    ax2.set_xlabel("layer distance (destination − source)")
    ax2.set_ylabel("percentile")
    ax2.legend(fontsize=7, frameon=False)
    for ax in (ax1, ax2):
        ax.set_xticks(sorted(set(x.astype(int).tolist())))
    fig.suptitle("Virtual weights against the random baseline, by layer distance", fontsize=10)
    fig.savefig(out_dir / f"{FIGURE}.png", dpi=130)
    fig.savefig(out_dir / f"{FIGURE}.svg", metadata={"Date": None})
    return [FIGURE]


def terminal_plot(section: GraphSection | None, *, width: int = 90, color: bool = False) -> str:
    """The above-P99 fraction (percent, per pair) against layer distance, as a plotext text plot."""
    if section is None or not section.pairs:
        return ""
    import plotext as plt

    pts = [(p.distance, 100 * p.frac_above_p99) for p in section.pairs if p.frac_above_p99 is not None]
    if not pts:
        return ""
    plt.clear_figure()
    plt.plotsize(width, 15)
    plt.theme("pro" if color else "clear")
    plt.title("Graph: % of pairs above the baseline P99 (line: random, 1%)")
    plt.scatter([d for d, _ in pts], [v for _, v in pts], marker="dot")
    plt.hline(100 * CHANCE_ABOVE_P99)
    plt.xticks(sorted({d for d, _ in pts}))
    plt.xlabel("layer distance")
    out = plt.build()
    plt.clear_figure()
    return out
