"""``sae-atlas report``: the three experiments of Liu & Deng (2026), reproduced from an atlas.

The numbers come from :mod:`atlas.stats`; this module only lays them out:
``report.md`` (tables, plots, one paragraph per experiment setting the
paper's finding next to the measured one), ``report.json`` (every number),
PNG and SVG figures (matplotlib, imported inside the plotting functions
only), and the same tables and plots in the terminal (plotext).

Every file is written to a temporary folder first and moved into place at
the end, so a failed report leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from atlas import report_graph, stats
from atlas.errors import AtlasError
from atlas.provenance import read_provenance, verdict_criteria
from atlas.same_index import SameIndexCheck, same_index_check
from atlas.same_index import markdown as same_index_markdown

ROLE_COLORS = {"q": "#1f77b4", "k": "#d62728", "v": "#2ca02c"}
GROUP_COLORS = {"semantic": "#9467bd", "non_semantic": "#8c8c8c"}
FIGURE_NAMES = ("exp1_predicts", "exp2_depth", "exp3_semantic")
VIOLIN_MAX_POINTS = 20_000  # per violin: the density estimate needs no more, and it keeps plots fast


# ---------------------------------------------------------------------- computing


@dataclass
class ReportData:
    """Everything the report shows. An experiment whose pass is missing is None, with the reason in ``missing``."""

    atlas_path: str
    models: list[dict[str, Any]]
    n_features: int
    predicts: stats.PredictsTable | None = None
    overlap: stats.TokenOverlap | None = None
    depth: stats.DepthProfiles | None = None
    variability: list[stats.VariabilityTest] = field(default_factory=list)
    semantic: stats.SemanticSplit | None = None
    same_index: SameIndexCheck | None = None
    baselines: dict[str, str] = field(default_factory=dict)  # SAE -> the random directions its percentiles use
    graph: report_graph.GraphSection | None = None  # virtual weights against the baseline (atlas/report_graph.py)
    missing: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return any(m.get("source_kind") == "synthetic" for m in self.models)


def compute_report(
    atlas: Any,
    *,
    top: int | None = None,
    min_shared: int = 1,
    overlap_max_features: int = 200_000,
    progress: Callable[[str], None] | None = None,
) -> ReportData:
    """Run every experiment that the atlas has the passes for; raise only if it has none of them.

    ``progress`` is called with one line after each step (the command prints it on stderr).
    """
    conn = stats._conn(atlas)
    criteria = verdict_criteria(read_provenance(conn))  # damaged provenance is named before any experiment runs
    models = [
        dict(zip(("name", "source", "source_kind", "architecture", "n_layers"), r, strict=True))
        for r in conn.execute("SELECT name, source, source_kind, architecture, n_layers FROM models")
    ]
    data = ReportData(
        atlas_path=str(getattr(atlas, "path", "")),
        models=models,
        n_features=conn.execute("SELECT COUNT(*) FROM features").fetchone()[0],
        options={"top": top, "min_shared": min_shared, "overlap_max_features": overlap_max_features},
        baselines=dict((criteria.get("attention_percentile") or {}).get("baseline_by_sae") or {}),
    )

    def run(key: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        try:
            out = fn()
        except stats.MissingPass as e:
            data.missing[key] = str(e)  # what is skipped is said once, at the end
            return None
        finally:
            data.seconds[key] = round(time.perf_counter() - t0, 3)
        if progress is not None:  # only for a step that finished: an error is the one line said
            progress(f"{key.replace('_', ' ')}: done in {data.seconds[key]:.1f} s")
        return out

    data.predicts = run("experiment_1", lambda: stats.predicts_by_layer(conn))
    data.overlap = run(
        "token_overlap",
        lambda: stats.token_overlap(conn, top=top, min_shared=min_shared, max_features=overlap_max_features),
    )
    data.depth = run("experiment_2", lambda: stats.depth_profiles(conn))
    if data.depth is not None:
        data.variability = run("qk_variability", lambda: stats.qk_variability(data.depth))
    data.semantic = run("experiment_3", lambda: stats.semantic_split(conn))
    data.graph = report_graph.graph_section_if_built(conn, progress)  # None without virtual edges: no section
    if data.predicts is None and data.depth is None and data.semantic is None:
        raise AtlasError("nothing to report: " + "; ".join(data.missing[k] for k in sorted(data.missing)))
    data.same_index = run("same_index", lambda: same_index_check(conn))
    return data


# ---------------------------------------------------------------------- formatting


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{float(x):.{digits}f}"


def _g(x: float) -> str:
    """Three significant digits: coefficients of variation can be tiny."""
    return "–" if x is None or math.isnan(x) else f"{x:.3g}"


def _pct(x: Any) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * float(x):.1f}%"


def _p(x: Any) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.1e}"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    left: tuple[int, ...] = (0,)  # columns of text, aligned left; the rest are numbers

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "|".join(":---" if i in self.left else "---:" for i in range(len(self.headers))) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def text(self) -> str:
        rows = [[c.replace("**", "") for c in r] for r in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(self.headers)]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in self.left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        return "\n".join(out + [line(r) for r in rows])


def exp1_tables(data: ReportData) -> list[Table]:
    t, o = data.predicts, data.overlap
    if t is None:
        return []
    headers = ["SAE", "layer", "site", "features", "predicts (du)", "reads (ee)", "both", "Jaccard"]
    if o is not None:
        headers += ["tokens agree", "mean shared", "chance"]
    rows = []
    for i, name in enumerate(t.saes.name):
        row = [
            name,
            str(t.saes.layer[i]),
            t.saes.site[i],
            _f(t.n_features[i]),
            _pct(t.frac_predicts[i]),
            _pct(t.frac_reads[i]),
            _pct(t.frac_both[i]),
            _f(t.jaccard[i]),
        ]
        if o is not None:
            row += [_pct(o.frac_agree[i]), _f(o.mean_shared[i], 2), _f(o.chance_shared[i], 2)]
        rows.append(row)
    a = t.overall
    row = [
        "**all**",
        "",
        "",
        _f(int(a["n_features"])),
        _pct(a["frac_predicts"]),
        _pct(a["frac_reads"]),
        _pct(a["frac_both"]),
        _f(a["jaccard"]),
    ]
    if o is not None:
        b = o.overall
        row += [_pct(b["frac_agree"]), _f(b["mean_shared"], 2), _f(b["chance_shared"], 2)]
    rows.append(row)
    return [Table("Experiment 1: features that predict (du) and read (ee) tokens", headers, rows, left=(0, 2))]


def exp2_tables(data: ReportData) -> list[Table]:
    d = data.depth
    if d is None:
        return []
    rows = []
    for i, name in enumerate(d.saes.name):
        row = [name, str(d.saes.layer[i]), _f(int(max(d.roles[r].n[i] for r in stats.ROLES)))]
        for role in stats.ROLES:
            p = d.roles[role]
            row.append(f"{_f(p.mean[i])} / {_f(p.median[i])} / {_f(p.p75[i])}")
        row.append(" / ".join(_pct(d.roles[r].frac_above[i]) for r in stats.ROLES))
        scored = any(d.roles[r].n[i] for r in stats.ROLES)  # no attention layer reads it (the last layer): no baseline
        row.append(_baseline_words(data.baselines.get(name)) if scored else "–")
        rows.append(row)
    tables = [
        Table(
            "Experiment 2: attention participation by depth (features.attn_{q,k,v}_mean: mean / median / P75)",
            [
                "SAE",
                "layer",
                "features",
                "query side",
                "key side",
                "value side",
                "above baseline q / k / v",
                "baseline",
            ],
            rows,
        )
    ]
    shape_rows = [[s, *(d.shapes[(s, r)] for r in stats.ROLES)] for s in dict.fromkeys(d.saes.series())]
    tables.append(Table("Shape of the per-layer mean", ["series", "q", "k", "v"], shape_rows, left=(0, 1, 2, 3)))
    if data.variability:
        vrows = [
            [
                v.series,
                str(len(v.layers)),
                _g(v.cv_q),
                _g(v.cv_k),
                _g(v.diff),
                f"[{_g(v.ci95[0])}, {_g(v.ci95[1])}]",
                _p(v.p_value),
                _p(v.min_p),
                f"{v.n_permutations:,}{'' if v.exact else ' (random)'}",
            ]
            for v in data.variability
        ]
        tables.append(
            Table(
                "Does the key side vary more across layers than the query side?",
                [
                    "series",
                    "layers",
                    "CV q",
                    "CV k",
                    "CV k − CV q",
                    "95% CI",
                    "p (permutation)",
                    "smallest p possible",
                    "permutations",
                ],
                vrows,
            )
        )
    return tables


def _baseline_words(text: str | None) -> str:
    """The random baseline an SAE's attention numbers use, in two or three words."""
    if text is None:
        return "residual (old)"
    return "hook_z through W_O" if "W_O" in text else "residual" if "residual" in text else str(text)[:40]


def exp3_tables(data: ReportData) -> list[Table]:
    s = data.semantic
    if s is None:
        return []
    rows = []
    for role in stats.ROLES:
        for r in [x for x in s.rows if x.role == role] + [x for x in s.pooled if x.role == role]:
            name = "**all**" if r.sae == "all" else r.sae
            rows.append(
                [
                    role,
                    name,
                    _f(r.n_sem),
                    _f(r.n_non),
                    f"{_f(r.mean_sem)} / {_f(r.mean_non)}",
                    f"{_f(r.median_sem)} / {_f(r.median_non)}",
                    f"{_f(r.p75_sem)} / {_f(r.p75_non)}",
                    _f(r.cliffs_delta),
                    _f(r.cohens_d),
                    _p(r.p_value),
                    _p(r.p_holm),
                ]
            )
    return [
        Table(
            "Experiment 3: semantic against non-semantic features (semantic / non-semantic)",
            ["role", "SAE", "n sem", "n non", "mean", "median", "P75", "Cliff's δ", "Cohen's d", "p (MWU)", "p (Holm)"],
            rows,
            left=(0, 1),
        )
    ]


# ---------------------------------------------------------------------- the paragraphs


def _magnitude(delta: float) -> str:
    """Cliff's delta thresholds of Romano et al. (2006)."""
    a = abs(delta)
    return "negligible" if a < 0.147 else "small" if a < 0.33 else "medium" if a < 0.474 else "large"


def exp1_paragraph(data: ReportData) -> str:
    t, o = data.predicts, data.overlap
    if t is None:
        return f"Not computed: {data.missing.get('experiment_1')}."
    a = t.overall
    f = a["frac_predicts"]
    lo, hi = np.nanmin(t.frac_predicts), np.nanmax(t.frac_predicts)
    if math.isnan(f):
        verdict = "cannot be compared: the du pass has not run"
    elif abs(f - stats.PAPER_PREDICTS_FRACTION) <= 0.05:
        verdict = "**agrees**: within 5 points of the paper's 1/4"
    elif 0.125 <= f <= 0.5:
        verdict = "is **of the same order** as the paper's 1/4, but not close to it"
    else:
        verdict = "**differs** from the paper's 1/4"
    crit = _criteria_text(t.criteria)
    text = (
        "**Paper.** Liu & Deng find that about 1/4 of SAE features directly predict output tokens "
        "(decoder → unembedding), on Gemma-2 (Gemma Scope) and Llama-3.1 (Llama Scope).\n\n"
        f"**Here.** {_pct(f)} of {int(a['n_du']):,} features predict tokens (per SAE {_pct(lo)} to {_pct(hi)}); "
        f"{_pct(a['frac_reads'])} read tokens through the mirror phase (embedding → encoder), and {_pct(a['frac_both'])} "
        f"do both (Jaccard overlap of the two sets {_f(a['jaccard'])})."
    )
    if o is not None:
        b = o.overall
        k = "all stored" if o.top is None else f"the top {o.top}"
        text += (
            f" Input and output tokens agree (at least {o.min_shared} shared token among {k} ee and du tokens) "
            f"for {_pct(b['frac_agree'])} of features, {_pct(b['frac_agree_predicting'])} of those that predict tokens; "
            f"on average they share {_f(b['mean_shared'], 2)} tokens, against {_f(b['chance_shared'], 2)} expected "
            "for unrelated lists."
        )
        if o.sampled:
            text += f" (Token agreement estimated on a uniform {_pct(o.sample_fraction)} sample, ± {_pct(b['se_agree'])} s.e.)"
    text += (
        f"\n\n**Verdict.** The measured fraction {verdict}. The fraction depends on the builder's criterion "
        f"({crit}), which is a fixed rule and not fitted to give 1/4; another threshold gives another fraction, so "
        "this compares the criterion as much as the model."
    )
    return text


def _criteria_text(criteria: dict[str, Any]) -> str:
    """The builder's rule, from provenance.criteria, in words (the per-SAE fractions are in the table)."""
    rule = criteria.get("predicts_tokens") if isinstance(criteria, dict) else None
    if not isinstance(rule, dict):
        return "not recorded in the atlas's provenance"
    by = rule.get("tau_by_sae")
    if isinstance(by, dict) and by:  # one tau per SAE, each from random directions of that SAE's own space
        taus = [float(v) for v in by.values()]
        return (
            f"`{rule.get('column', '?')} >= tau` with tau set per SAE ({min(taus):.3g} to {max(taus):.3g}), the "
            f"{100 * float(rule.get('quantile') or 0):g}th percentile of the same statistic over "
            f"{rule.get('n_random')} random directions of the space the SAE writes into (du) or reads from (ee), "
            "sent through the same folding as its features"
        )
    text = f"`{rule.get('sql') or rule.get('column', '?') + ' >= ' + str(rule.get('tau'))}`"
    if rule.get("how") == "random-quantile" and rule.get("quantile") is not None:
        text += (
            f", the {100 * float(rule['quantile']):g}th percentile of the same statistic over "
            f"{rule.get('n_random')} random directions"
        )
    return text


def exp2_paragraph(data: ReportData) -> str:
    d = data.depth
    if d is None:
        return f"Not computed: {data.missing.get('experiment_2')}."
    series = list(dict.fromkeys(d.saes.series()))
    counts = {s: n for s, n in zip(*np.unique(d.saes.series(), return_counts=True), strict=True)}
    shape_txt = "; ".join(
        f"{s}: " + (", ".join(f"{r} {d.shapes[(s, r)]}" for r in stats.ROLES) if counts[s] > 1 else "one layer only")
        for s in series
    )
    curved = [f"{r} ({s})" for s in series for r in stats.ROLES if d.shapes[(s, r)] in ("U-shaped", "inverted-U")]
    text = (
        "**Paper.** Features take part in attention mainly through the query and key weights, with a structure that "
        "depends on depth: the summaries mention U-shaped and inverted-U profiles, and key-side weights that vary "
        "more across layers than query-side weights.\n\n"
        f"**Here.** Shapes of the per-layer mean participation: {shape_txt}. "
    )
    verdicts = []
    for v in data.variability:
        more = "more" if v.diff > 0 else "less"
        text += (
            f"Across {len(v.layers)} layers of {v.series}, the key side's coefficient of variation is {_g(v.cv_k)} "
            f"against {_g(v.cv_q)} for the query side (difference {_g(v.diff)}, 95% CI from feature sampling "
            f"[{_g(v.ci95[0])}, {_g(v.ci95[1])}], permutation p = {_p(v.p_value)}). "
        )
        if not v.testable:  # no p-value of this test can fall below 0.05: say so, call nothing significant
            verdicts.append(
                f"{v.series}: **cannot be tested** with {len(v.layers)} layers — the smallest p a sign-flip test over "
                f"{len(v.layers)} layers can give is {_p(v.min_p)}; p < {stats.ALPHA:g} needs at least "
                f"{v.depths_needed} depths"
            )
        elif v.significant:
            verdicts.append(
                f"{v.series}: the key side varies significantly {more} than the query side"
                + (" — **agrees**" if v.diff > 0 else " — **disagrees**")
            )
        else:
            verdicts.append(
                f"{v.series}: the key side varies {more} than the query side, but not significantly "
                + ("(same direction as the paper, **not confirmed**)" if v.diff > 0 else "(**not confirmed**)")
            )
    if not data.variability:
        verdicts.append("no series has query and key scores at two or more layers, so the variability was not tested")
    verdicts.append(
        "U-shaped or inverted-U profiles: "
        + (", ".join(curved) if curved else "none here")
        + " (the shape rule needs each arm monotone by Kendall's tau-b >= 0.6 with at most a third of its steps "
        "going back by more than 5% of the mean, and says 'no clear trend' when the curve zigzags; see "
        "atlas/stats.py `profile_shape`)"
    )
    text += (
        f"A paired sign-flip permutation test over L layers can give p no smaller than 2 / 2^L (swapping no layer "
        f"and swapping all of them give the same statistic), so p < {stats.ALPHA:g} needs at least "
        f"{stats.sign_flip_depths_needed()} depths. "
    )
    text += "\n\n**Verdict.** " + "; ".join(verdicts) + "."
    text += (
        " Layers are few and not a random sample, so the permutation test treats the layers measured as the whole "
        "population of interest; it says whether the key profile is more spread out than the query profile beyond "
        "what swapping their labels layer by layer would produce."
    )
    return text


def exp3_paragraph(data: ReportData) -> str:
    s = data.semantic
    if s is None:
        return f"Not computed: {data.missing.get('experiment_3')}."
    text = (
        "**Paper.** Semantic and non-semantic features have distinct distributions in attention circuits; semantic "
        "features show higher weight magnitudes, compared through means, medians and 75th percentiles.\n\n"
        f"**Here.** {s.n_labelled:,} features carry a heuristic semantic/non-semantic label. "
    )
    verdicts = []
    for r in s.pooled:
        per = [x for x in s.rows if x.role == r.role]
        higher = sum(x.mean_sem > x.mean_non and x.median_sem > x.median_non and x.p75_sem > x.p75_non for x in per)
        sig = sum(x.p_holm < 0.05 and x.cliffs_delta > 0 for x in per)
        sig_low = sum(x.p_holm < 0.05 and x.cliffs_delta < 0 for x in per)
        text += (
            f"{r.role}: pooled, semantic vs non-semantic mean {_f(r.mean_sem)} vs {_f(r.mean_non)}, median "
            f"{_f(r.median_sem)} vs {_f(r.median_non)}, P75 {_f(r.p75_sem)} vs {_f(r.p75_non)}; Cliff's δ "
            f"{_f(r.cliffs_delta)} ({_magnitude(r.cliffs_delta)}), p = {_p(r.p_value)}. Semantic features are higher "
            f"on all three in {higher} of {len(per)} SAEs, significantly higher (Holm) in {sig}, significantly lower in "
            f"{sig_low}. "
        )
        all3 = r.mean_sem > r.mean_non and r.median_sem > r.median_non and r.p75_sem > r.p75_non
        if all3 and r.p_value < 0.05 and _magnitude(r.cliffs_delta) != "negligible" and higher * 2 > len(per):
            verdicts.append(f"{r.role} **agrees**")
        elif r.cliffs_delta < 0 and r.p_value < 0.05:
            verdicts.append(f"{r.role} **disagrees** (semantic lower)")
        elif all3 and r.p_value < 0.05:
            verdicts.append(f"{r.role} in the paper's direction but {_magnitude(r.cliffs_delta)} or not in most SAEs")
        else:
            verdicts.append(f"{r.role} **not confirmed**")
    text += (
        "\n\n**Verdict.** " + "; ".join(verdicts) + ". The labels come from a heuristic on each feature's token lists "
        "(source `heuristic`), not from human judgement or activations; with thousands of features even a negligible "
        "difference is significant, so read the effect size before the p-value. Pooled rows mix layers."
    )
    return text


def caveats(data: ReportData) -> list[str]:
    out = []
    if data.synthetic:
        out.append(
            "This atlas is **synthetic**: its scores are random draws, not a model's weights. Any agreement or "
            "disagreement with the paper below is an accident of the generator and says nothing about the paper."
        )
    n_saes = len((data.predicts or data.depth or data.semantic).saes)  # type: ignore[union-attr]
    if n_saes < 6:
        out.append(f"Only {n_saes} SAE(s): depth profiles and the across-layer test have little to go on.")
    if data.same_index is not None and data.same_index.flagged:
        out.append("Same-index edges: " + data.same_index.summary() + ".")
    for key, why in sorted(data.missing.items()):
        out.append(f"Skipped {key.replace('_', ' ')}: {why}.")
    return out


# ---------------------------------------------------------------------- JSON


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "values"}
    if isinstance(x, dict):
        return {("/".join(map(str, k)) if isinstance(k, tuple) else str(k)): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def report_json(data: ReportData) -> dict[str, Any]:
    from atlas import __version__

    return _jsonable(
        {
            "sae_atlas_version": __version__,
            "generated_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "atlas": data.atlas_path,
            "models": data.models,
            "n_features": data.n_features,
            "options": data.options,
            "paper": {
                "frac_predicts": stats.PAPER_PREDICTS_FRACTION,
                "depth": "U-shaped / inverted-U profiles; key side varies more across layers than query side",
                "semantic": "semantic features higher by mean, median and P75",
            },
            "experiment_1": {"predicts": data.predicts, "token_overlap": data.overlap},
            "experiment_2": {"depth": data.depth, "qk_variability": data.variability},
            "experiment_3": data.semantic,
            "same_index": data.same_index.as_dict() if data.same_index is not None else None,
            "graph": {"pairs": data.graph.pairs, "by_distance": data.graph.by_distance()} if data.graph else None,
            "missing": data.missing,
            "seconds": data.seconds,
        }
    )


# ---------------------------------------------------------------------- matplotlib figures


def _series_points(saes: stats.SAERows) -> dict[str, np.ndarray]:
    """Indices of each depth series' SAEs, in layer order."""
    series = saes.series()
    return {s: np.array([i for i, x in enumerate(series) if x == s]) for s in dict.fromkeys(series)}


def plot_figures(data: ReportData, out_dir: Path) -> list[str]:
    """Write every figure the data allows as PNG and SVG; returns their base names."""
    import matplotlib

    written = []
    # No pyplot: Figure objects need no backend and leave no global state behind.
    with matplotlib.rc_context(
        {"svg.hashsalt": "sae-atlas", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    ):
        for name, fn in (("exp1_predicts", _fig_exp1), ("exp2_depth", _fig_exp2), ("exp3_semantic", _fig_exp3)):
            fig = fn(data)
            if fig is None:
                continue
            fig.savefig(out_dir / f"{name}.png", dpi=130)
            fig.set_layout_engine("none")  # keep the layout just solved; solving it again costs as much as drawing
            fig.savefig(out_dir / f"{name}.svg", metadata={"Date": None})
            written.append(name)
        written += report_graph.plot(data.graph, out_dir)
    return written


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _layer_ticks(ax: Any, layers: np.ndarray) -> None:
    """Every layer as a tick when they are few, otherwise about ten integer ticks."""
    ticks = np.unique(layers)
    if len(ticks) <= 12:
        ax.set_xticks(ticks)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))


def _fig_exp1(data: ReportData) -> Any:
    t, o = data.predicts, data.overlap
    if t is None:
        return None
    fig, axes = _figure(7.5, 3.6)
    ax = axes[0, 0]
    styles = ["-", "--", ":", "-."]
    for j, (s, idx) in enumerate(_series_points(t.saes).items()):
        x = t.saes.layer[idx]
        ls = styles[j % len(styles)]
        suffix = "" if len(_series_points(t.saes)) == 1 else f" · {s}"
        ax.plot(x, t.frac_predicts[idx], ls, marker="o", color="#1f77b4", label="predicts tokens (du)" + suffix)
        ax.plot(x, t.frac_reads[idx], ls, marker="s", color="#ff7f0e", label="reads tokens (ee)" + suffix)
        ax.plot(x, t.frac_both[idx], ls, marker="^", color="#7f7f7f", label="both" + suffix)
        if o is not None:
            ax.plot(x, o.frac_agree[idx], ls, marker="d", color="#2ca02c", label="input/output tokens agree" + suffix)
    ax.axhline(stats.PAPER_PREDICTS_FRACTION, color="black", lw=0.8, ls=(0, (4, 3)))
    ax.annotate(
        "paper: ≈ 1/4 predict",
        (0.0, stats.PAPER_PREDICTS_FRACTION),
        xycoords=("axes fraction", "data"),
        xytext=(3, 3),
        textcoords="offset points",
        fontsize=8,
    )
    ax.set_xlabel("layer of the SAE")
    ax.set_ylabel("fraction of features")
    shown = [t.frac_predicts, t.frac_reads] + ([o.frac_agree] if o is not None else [])  # every curve drawn fits
    top = max((float(np.nanmax(v)) for v in shown if np.isfinite(v).any()), default=0.0)
    ax.set_ylim(0, min(1.0, max(0.5, top * 1.15)))
    _layer_ticks(ax, t.saes.layer)
    ax.set_title("Experiment 1: features that directly predict / read tokens")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _fig_exp2(data: ReportData) -> Any:
    d = data.depth
    if d is None:
        return None
    stats_shown = [("mean", "mean"), ("median", "median"), ("p75", "P75"), ("frac_above", "fraction above baseline")]
    has_frac = any(np.isfinite(d.roles[r].frac_above).any() for r in stats.ROLES)
    if not has_frac:
        stats_shown = stats_shown[:3]
    points = _series_points(d.saes)
    # One row per series (site): sites differ in scale, and one layer can hold several sites.
    fig, axes = _figure(3.0 * len(stats_shown) + 1.0, 0.4 + 2.9 * len(points), len(points), len(stats_shown))
    for row, (s, idx) in enumerate(points.items()):
        x = d.saes.layer[idx]
        for a, (attr, title) in enumerate(stats_shown):
            ax = axes[row, a]
            for role in stats.ROLES:
                y = getattr(d.roles[role], attr)[idx]
                ax.plot(x, y, "-", marker="o", ms=3.5, color=ROLE_COLORS[role], label=role)
                if attr == "mean":
                    se = d.roles[role].se[idx]
                    ax.fill_between(x, y - 1.96 * se, y + 1.96 * se, color=ROLE_COLORS[role], alpha=0.2, lw=0)
            ax.set_title(title if len(points) == 1 else f"{title} · {s}")
            _layer_ticks(ax, x)
            if attr == "frac_above":
                ax.set_ylim(0, 1)
            if row == len(points) - 1:
                ax.set_xlabel("layer of the SAE")
        axes[row, 0].set_ylabel("participation score" if len(points) == 1 else f"{s}: participation score")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("Experiment 2: query / key / value participation by depth (band on the mean: 95% CI)")
    return fig


def _fig_exp3(data: ReportData) -> Any:
    s = data.semantic
    if s is None:
        return None
    names = [n for n in s.saes.name if any((n, r) in s.values for r in stats.ROLES)]
    fig, axes = _figure(max(6.0, 0.75 * len(names) + 2.0), 2.4 * len(stats.ROLES), len(stats.ROLES), 1)
    rng = np.random.default_rng(0)
    for a, role in enumerate(stats.ROLES):
        ax = axes[a, 0]
        shown = [v for name in names for v in s.values.get((name, role), ()) if len(v)]
        if not shown:
            continue
        for i, name in enumerate(names):
            sem, non = s.values.get((name, role), (np.zeros(0), np.zeros(0)))
            for offset, vals, group in ((-0.2, sem, "semantic"), (0.2, non, "non_semantic")):
                if len(vals) < 2 or np.ptp(vals) == 0:
                    continue
                if len(vals) > VIOLIN_MAX_POINTS:
                    vals = rng.choice(vals, VIOLIN_MAX_POINTS, replace=False)
                parts = ax.violinplot(
                    [vals], positions=[i + offset], widths=0.38, showmedians=True, showextrema=False, quantiles=[[0.75]]
                )
                for body in parts["bodies"]:
                    body.set_facecolor(GROUP_COLORS[group])
                    body.set_edgecolor(GROUP_COLORS[group])
                    body.set_alpha(0.55)
                for key in ("cmedians", "cquantiles"):
                    if key in parts:
                        parts[key].set_color("black")
                        parts[key].set_linewidth(1.0 if key == "cmedians" else 0.6)
                ax.scatter(
                    [i + offset], [vals.mean()], s=14, color="white", edgecolors="black", linewidths=0.7, zorder=3
                )
        # Participation scores have long right tails; cut the axis so the bodies stay readable.
        lo, hi = np.percentile(np.concatenate(shown), [1, 99])
        pad = 0.08 * (hi - lo) if hi > lo else 0.5
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
        ax.set_ylabel(f"{role}-side score")
    from matplotlib.patches import Patch

    axes[0, 0].legend(
        handles=[Patch(color=GROUP_COLORS[g], alpha=0.55, label=g.replace("_", "-")) for g in GROUP_COLORS],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    fig.suptitle(
        "Experiment 3: semantic vs non-semantic participation\n(dot: mean; line: median; thin line: P75; y axis cut at the 1st and 99th percentiles)"
    )
    return fig


# ---------------------------------------------------------------------- terminal plots


def terminal_plots(data: ReportData, *, width: int = 90, color: bool = False) -> str:
    """The report's curves as plotext text plots."""
    import plotext as plt

    out = []

    def start(title: str, layers: np.ndarray) -> None:
        plt.clear_figure()
        plt.plotsize(width, 17)
        plt.theme("pro" if color else "clear")
        plt.title(title)
        ticks = np.unique(layers)
        step = max(1, len(ticks) // 12)  # at most about a dozen labels
        plt.xticks(ticks[::step].tolist())
        plt.xlabel("layer")

    def curve(x: np.ndarray, y: np.ndarray, label: str, marker: str) -> None:
        ok = np.isfinite(y)  # a missing value is left out, not drawn as 0
        if ok.any():
            plt.plot(
                np.asarray(x)[ok].tolist(), np.asarray(y, dtype=np.float64)[ok].tolist(), label=label, marker=marker
            )

    markers = ("dot", "x", "+", "o", "*", "@")
    t, o, d, s = data.predicts, data.overlap, data.depth, data.semantic
    if t is not None:
        start("Exp. 1: fraction of features by layer (flat line: paper, 1/4)", t.saes.layer)
        points = _series_points(t.saes)
        for j, (name, idx) in enumerate(points.items()):
            tag = "" if len(points) == 1 else f" · {name}"
            x = t.saes.layer[idx]
            curve(x, t.frac_predicts[idx], "predicts (du)" + tag, markers[(3 * j) % 6])
            curve(x, t.frac_reads[idx], "reads (ee)" + tag, markers[(3 * j + 1) % 6])
            if o is not None:
                curve(x, o.frac_agree[idx], "tokens agree" + tag, markers[(3 * j + 2) % 6])
        plt.hline(stats.PAPER_PREDICTS_FRACTION)
        out.append(plt.build())
    if d is not None:
        # One plot per site: sites differ in scale.
        for name, idx in _series_points(d.saes).items():
            start(f"Exp. 2: mean participation by layer · {name}", d.saes.layer[idx])
            for role, marker in zip(stats.ROLES, markers, strict=False):
                curve(d.saes.layer[idx], d.roles[role].mean[idx], role, marker)
            out.append(plt.build())
    if s is not None:
        start("Exp. 3: Cliff's delta, semantic vs non-semantic", s.saes.layer)
        series = dict(zip(s.saes.name, s.saes.series(), strict=True))
        names = list(dict.fromkeys(s.saes.series()))
        for j, name in enumerate(names):
            for i, role in enumerate(stats.ROLES):
                rows = [r for r in s.rows if r.role == role and series[r.sae] == name]
                tag = "" if len(names) == 1 else f" · {name}"
                curve(
                    np.array([r.layer for r in rows]),
                    np.array([r.cliffs_delta for r in rows]),
                    role + tag,
                    markers[(3 * j + i) % 6],
                )
        plt.hline(0.0)
        out.append(plt.build())
    plt.clear_figure()
    return "\n".join(out)


# ---------------------------------------------------------------------- Markdown


def report_markdown(data: ReportData, figures: list[str]) -> str:
    model = ", ".join(f"{m['name']} ({m['architecture']}, {m['n_layers']} layers)" for m in data.models) or "–"
    lines = [
        "# Weight-based SAE feature statistics: Liu & Deng (2026), reproduced from an atlas",
        "",
        f"Atlas `{Path(data.atlas_path).name}` · model {model} · {data.n_features:,} features · "
        f"computed by `sae-atlas report` in {sum(data.seconds.values()):.1f} s.",
        "",
        "Every number below is read from the atlas with SQL and numpy (`atlas/stats.py`); `report.json` has them all.",
        "",
    ]
    notes = caveats(data)
    if notes:
        lines += ["> " + n for n in notes] + [""]
    sections = (
        ("1. About a quarter of features directly predict output tokens", exp1_paragraph, exp1_tables, "exp1_predicts"),
        ("2. Query- and key-side participation depends on depth", exp2_paragraph, exp2_tables, "exp2_depth"),
        ("3. Semantic features weigh more in attention circuits", exp3_paragraph, exp3_tables, "exp3_semantic"),
    )
    for title, paragraph, tables, fig in sections:
        lines += [f"## {title}", "", paragraph(data), ""]
        if fig in figures:
            lines += [f"![{title}]({fig}.png)", "", f"([SVG]({fig}.svg))", ""]
        for tab in tables(data):
            lines += [f"**{tab.title}**", "", tab.markdown(), ""]
        if fig == "exp2_depth" and data.depth is not None and data.depth.builder:
            lines += _builder_details(data.depth)
    lines += report_graph.markdown(data.graph, figures, [Table(*t) for t in report_graph.table_rows(data.graph)])
    if data.same_index is not None:
        lines += ["## Edges between dictionaries: same-index check", "", *same_index_markdown(data.same_index)]
    lines += ["## Method", "", METHOD, ""]
    return "\n".join(lines)


def _builder_details(d: stats.DepthProfiles) -> list[str]:
    rows = [
        [
            str(r["sae"]),
            str(r["layer"]),
            str(r["role"]),
            _f(int(r["n"] or 0)),
            _f(r["mean"]),
            _f(r["median"]),
            _f(r["p75"]),
            _pct(r["frac_above"] if r["frac_above"] is not None else math.nan),
        ]
        for r in d.builder
    ]
    tab = Table(
        "", ["SAE", "attention layer", "role", "(feature, head) pairs", "mean", "median", "P75", "above baseline"], rows
    )
    return [
        "<details><summary>The attention pass's own depth profiles (over every (feature, head) pair of each "
        "attention layer reached)</summary>",
        "",
        tab.markdown(),
        "",
        "</details>",
        "",
    ]


METHOD = """\
- **Experiment 1.** `features.predicts_tokens` (the du criterion) and `features.reads_tokens` (its ee mirror) are
  averaged over the features whose pass ran, per SAE and over all. *Both* counts features with both flags set;
  *Jaccard* is |predicts ∧ reads| / |predicts ∨ reads|. *Tokens agree*: the feature's top du promoted tokens and
  top ee tokens (sign +1) share at least `--min-shared` distinct token ids; *chance* is k_du·k_ee/d_vocab, the
  number two unrelated lists would share on average. Above `--overlap-max-features` features, agreement is
  estimated on a seeded uniform sample of each SAE.
- **Experiment 2.** Mean, median and P75 over each SAE's features of `features.attn_{q,k,v}_mean`, each
  feature's mean normalised participation over the heads of the attention layer that reads its site; the band
  on the mean is ±1.96 standard errors. *Above baseline* is the attention pass's fraction of (feature, head)
  pairs above the random-direction percentile, from the `depth_profiles` table (first attention layer reached).
  *Baseline*: the random directions of each SAE's scores and percentiles, drawn in the space it writes into
  (provenance `criteria.attention_percentile`): a `hook_z` SAE's are random z directions through `W_O` (it can
  write nothing else), a residual SAE's or a transcoder's random residual-stream directions; "residual (old)"
  marks an atlas built before baselines were drawn per space, whose hook_z percentiles are flattered.
  Shapes name the per-layer mean divided by its average: *flat* when every layer is within 5% of it; *inverted-U*
  (*U-shaped*) when the highest (lowest) layer is inside the range, stands out from both ends by more than 5%, and
  the curve is monotone up to it and after it; *increasing* / *decreasing* when the whole curve is monotone;
  otherwise *flat* if it spans at most 10%, else *no clear trend*. Monotone: Kendall's tau-b with depth (layers
  within 5% of each other tied) of at least 0.6 in that direction, at most a third of the steps going the other way by more than 5%, and the last layer
  beyond the first by more than 5%.
  Variability: coefficient of variation across layers of the per-layer means, key minus query; p-value from a
  paired sign-flip permutation test over layers (exact up to 14 layers), CI from a parametric bootstrap of the
  layer means.
- **Experiment 3.** The latest heuristic label of each feature (kind semantic or non_semantic); user labels are
  ignored. For each SAE and role: mean, median and P75 of `features.attn_{role}_mean` per group, Cliff's δ
  (= rank-biserial correlation, > 0 when semantic features score higher), Cohen's d (pooled SD), and a two-sided
  Mann-Whitney U test (normal approximation with tie and continuity correction, matching
  `scipy.stats.mannwhitneyu(method="asymptotic")`). *p (Holm)* adjusts over every per-SAE row of the table;
  pooled rows are not adjusted."""


# ---------------------------------------------------------------------- writing


def write_report(data: ReportData, out_dir: Path, *, figures: bool = True) -> list[Path]:
    """Write report.md, report.json and the figures into ``out_dir``; all or nothing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AtlasError(f"{out_dir}: exists and is not a directory; pass another -o")
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=parent))
    except OSError as e:
        raise AtlasError(f"{out_dir}: cannot write the report there ({e.strerror})") from None
    try:
        drawn = plot_figures(data, tmp) if figures else []
        (tmp / "report.md").write_text(report_markdown(data, drawn) + "\n", encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report_json(data), indent=1) + "\n", encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
            written.append(out_dir / f.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("atlas_path", metavar="[ATLAS]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False),
    default=None,
    help="Atlas file, as the ATLAS argument (default: the group's --db, $SAE_ATLAS_DB, atlas.db.example)",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="atlas-report",
    show_default=True,
    metavar="DIR",
    help="Folder for report.md, report.json and the figures (created; files in it are replaced)",
)
@click.option(
    "--min-shared",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Shared tokens for a feature's input and output tokens to count as agreeing",
)
@click.option(
    "--top",
    type=click.IntRange(1),
    default=None,
    help="Compare only the top N tokens of each list (default: all stored)",
)
@click.option(
    "--overlap-max-features",
    default=200_000,
    show_default=True,
    type=click.IntRange(1),
    help="Above this many features, estimate token agreement on a uniform sample of this size",
)
@click.option("--plots/--no-plots", "terminal", default=True, help="Show the plots in the terminal too")
@click.option(
    "--figures/--no-figures", default=True, help="Write the PNG and SVG figures (without: tables and JSON only)"
)
def report(
    atlas_path: str | None,
    db: str | None,
    out_dir: str,
    min_shared: int,
    top: int | None,
    overlap_max_features: int,
    terminal: bool,
    figures: bool,
) -> None:
    """Reproduce the three experiments of Liu & Deng (2026) from an atlas.

    Fractions of features that predict and read tokens; query/key/value
    participation by depth with a test of key-side against query-side
    variability; semantic against non-semantic features. Writes report.md,
    report.json and PNG/SVG figures to the output folder and prints the tables
    and plots here.

    \b
    Example:
        sae-atlas report -o report/
        sae-atlas --db my.db report --no-plots -o report-mine/
    """
    from atlas import open_atlas
    from atlas.dbpath import resolve_db_path  # the same resolution as every other command

    path = resolve_db_path(atlas_path or db)
    t0 = time.perf_counter()
    try:
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise AtlasError(f"{out_dir}: exists and is not a directory; pass another -o")
        with open_atlas(path) as atlas:
            data = compute_report(
                atlas,
                top=top,
                min_shared=min_shared,
                overlap_max_features=overlap_max_features,
                progress=lambda line: click.echo(line, err=True),
            )
        if figures:
            click.echo("drawing the figures ...", err=True)
        written = write_report(data, Path(out_dir), figures=figures)
    except AtlasError as e:  # also when the command runs outside the sae-atlas group
        raise click.ClickException(str(e)) from None
    for note in caveats(data):
        click.echo("note: " + note.replace("**", ""), err=True)
    for tables in (
        exp1_tables(data),
        exp2_tables(data),
        exp3_tables(data),
        [Table(*t) for t in report_graph.table_rows(data.graph)],
    ):
        for tab in tables:
            click.echo(tab.text().replace("**", "") + "\n")
    if terminal:
        width = min(100, shutil.get_terminal_size((100, 30)).columns)
        click.echo(terminal_plots(data, width=width, color=click.get_text_stream("stdout").isatty()))
        click.echo(report_graph.terminal_plot(data.graph, width=width, color=click.get_text_stream("stdout").isatty()))
    click.echo(f"wrote {len(written)} files to {out_dir}/ in {time.perf_counter() - t0:.1f} s")
