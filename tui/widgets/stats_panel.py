"""A feature's scalar statistics and its "predicts tokens" verdict with the evidence behind it."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from atlas.read import describe_criterion
from atlas.types import Feature
from tui.widgets.bars import SizedText, fmt

# The evidence for each verdict: the shape of the logit (du) or input (ee) distribution.
EVIDENCE = {
    "predicts_tokens": ("du_top1_z", "du_kurtosis", "du_skew", "du_entropy", "du_max"),
    "reads_tokens": ("ee_top1_z", "ee_kurtosis", "ee_skew", "ee_entropy", "ee_max"),
}
OTHER = (
    "dec_norm",
    "enc_norm",
    "b_enc",
    "threshold",
    "du_mean",
    "du_std",
    "du_min",
    "ee_mean",
    "ee_std",
    "ee_min",
    "attn_q_mean",
    "attn_k_mean",
    "attn_v_mean",
    "attn_q_max",
    "attn_k_max",
    "attn_v_max",
    "top_head",
    "top_head_share",
)


def verdict_text(name: str, value: Any, metrics: dict[str, Any], criterion: Any = None, sae: str | None = None) -> Text:
    label = {"predicts_tokens": "predicts tokens", "reads_tokens": "reads tokens"}[name]
    if value is None:
        word, style = "not computed", "dim"
    elif value:
        word, style = "YES", "bold green"
    else:
        word, style = "no", "bold red"
    t = Text.assemble((f"{label}: ", "bold"), (word, style))
    ev = ", ".join(f"{k} {fmt(metrics.get(k), 2)}" for k in EVIDENCE[name] if metrics.get(k) is not None)
    if ev:
        t.append(f"  ({ev})", style="dim")
    if criterion:
        t.append(f"\n  criterion: {describe_criterion(criterion, sae)}", style="dim italic")
    return t


class StatsPanel(SizedText):
    """Verdicts with evidence, then the remaining statistics in as many columns as fit."""

    DEFAULT_CSS = """
    StatsPanel { height: auto; padding: 0 1; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.feature: Feature | None = None
        self.criteria: dict[str, Any] = {}

    def set_feature(self, feature: Feature, criteria: dict[str, Any] | None = None) -> None:
        self.feature, self.criteria = feature, criteria or {}
        self.changed()

    def make_lines(self, width: int) -> Text:  # wraps: the verdict and criterion lines can be long
        if self.feature is None:
            return Text("")
        m, c = self.feature.metrics, self.criteria
        out = Text(no_wrap=False)
        sae = self.feature.sae
        out.append_text(verdict_text("predicts_tokens", m.get("predicts_tokens"), m, c.get("predicts_tokens"), sae))
        out.append("\n")
        out.append_text(verdict_text("reads_tokens", m.get("reads_tokens"), m, c.get("reads_tokens"), sae))
        # The verdicts' evidence is printed with them; the grid holds the rest.
        cells = [(k, fmt(m.get(k))) for k in OTHER if m.get(k) is not None]
        per_row = max(1, max(width, 26) // 26)
        for i, (k, v) in enumerate(cells):
            out.append("\n" if i % per_row == 0 else "  ")
            out.append(f"{k:<14}", style="dim")
            out.append(f"{v:>10}")
        return out
