"""The numbers behind the overview's three plots, taken from atlas.stats.

Issue 7: the TUI overview reuses the report's computations and does not
reimplement them. Each plot here is one call into :mod:`atlas.stats` (the
same function ``sae-atlas report`` calls) turned into a :class:`Panel`: one
value per SAE in the report's depth order. Nothing is aggregated here.

- ``predicts``: :func:`atlas.stats.predicts_by_layer`, fraction of features
  that predict tokens (du) and read tokens (ee), per SAE (experiment 1).
- ``qk``: :func:`atlas.stats.depth_profiles`, mean query- and key-side
  participation per SAE (experiment 2, the report's depth curves).
- ``semantic``: :func:`atlas.stats.semantic_split`, the numbers of semantic
  and non-semantic features per SAE that experiment 3 compares.

The report's costlier extras (the sampled token overlap, the q/k variability
permutation test) are not needed for these plots and are not computed.
A missing build pass gives a Panel saying which pass to run, never an error.
No textual here, so this is testable without a UI; atlas.stats (and numpy
with it) is imported on first use, in the worker, so that the browser's
start-up does not pay for it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from atlas import stats

PLOTS = ("predicts", "qk", "semantic")
TITLES = {
    "predicts": "fraction predicting tokens",
    "qk": "query vs key participation",
    "semantic": "semantic vs non-semantic",
}
# The pass to suggest when a MissingPass message names none.
DEFAULT_PASSES = {"predicts": "du,ee", "qk": "attn", "semantic": "semantic"}


@dataclass(frozen=True)
class Panel:
    """One plot: a value per SAE for each series, or why there is nothing to draw."""

    name: str  # one of PLOTS
    title: str
    x: list[str] = field(default_factory=list)  # one label per SAE, in depth order
    series: dict[str, list[float]] = field(default_factory=dict)  # legend -> one value per x; NaN: no value
    missing: str | None = None  # "not built: run sae-atlas build --passes attn"


def x_labels(saes: stats.SAERows) -> list[str]:
    """``L<layer>`` when each layer has one SAE (short, so 20+ bars fit), else the SAE name."""
    layers = saes.layer.tolist()
    return [f"L{x}" for x in layers] if len(set(layers)) == len(layers) else list(saes.name)


def _values(a: np.ndarray) -> list[float]:
    return [float(v) for v in a.tolist()]


def _keep(series: dict[str, list[float]]) -> dict[str, list[float]]:
    """Drop a series with no value at all (e.g. the ee pass was not run while du was)."""
    return {k: v for k, v in series.items() if any(not math.isnan(x) for x in v)}


def predicts_panel(t: stats.PredictsTable) -> Panel:
    series = {"predicts (du)": _values(t.frac_predicts), "reads (ee)": _values(t.frac_reads)}
    return Panel("predicts", TITLES["predicts"], x_labels(t.saes), _keep(series))


def qk_panel(d: stats.DepthProfiles) -> Panel:
    series = {role: _values(d.roles[role].mean) for role in ("q", "k")}
    return Panel("qk", TITLES["qk"], x_labels(d.saes), _keep(series))


def semantic_panel(s: stats.SemanticSplit) -> Panel:
    """Counts of the features experiment 3 compares, per SAE.

    semantic_split has one row per (role, SAE), counting the labelled features
    with a score for that role; the query-side row is shown, or the first
    role with a row when an SAE has no query-side scores.
    """
    first: dict[str, stats.SemanticComparison] = {}
    for role in ("q", "k", "v"):
        for r in s.rows:
            if r.role == role:
                first.setdefault(r.sae, r)
    sem = [float(first[n].n_sem) if n in first else math.nan for n in s.saes.name]
    non = [float(first[n].n_non) if n in first else math.nan for n in s.saes.name]
    return Panel("semantic", TITLES["semantic"], x_labels(s.saes), _keep({"semantic": sem, "non-semantic": non}))


def missing_text(name: str, err: stats.MissingPass) -> str:
    """A short line for the plot's place: which pass to build, from the MissingPass message when it names one."""
    m = re.search(r"--passes ([\w,]+)", str(err))
    if m or "no SAEs" not in str(err):
        return f"not built: run sae-atlas build --passes {m.group(1) if m else DEFAULT_PASSES[name]}"
    return str(err)


def compute_panel(atlas: Any, name: str) -> Panel:
    """One plot's numbers from an open Atlas or sqlite3 connection (seconds on a million features)."""
    from atlas import stats

    compute, to_panel = {
        "predicts": (stats.predicts_by_layer, predicts_panel),
        "qk": (stats.depth_profiles, qk_panel),
        "semantic": (stats.semantic_split, semantic_panel),
    }[name]
    try:
        return to_panel(compute(atlas))
    except stats.MissingPass as e:
        return Panel(name, TITLES[name], missing=missing_text(name, e))
