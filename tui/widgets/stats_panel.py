"""A feature's scalar statistics and its "predicts tokens" verdict with the evidence behind it."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from atlas.types import Feature
from tui.widgets.bars import fmt

# The evidence for each verdict: the shape of the logit (du) or input (ee) distribution.
EVIDENCE = {
    "predicts_tokens": ("du_top1_z", "du_kurtosis", "du_skew", "du_entropy", "du_max"),
    "reads_tokens": ("ee_top1_z", "ee_kurtosis", "ee_skew", "ee_entropy", "ee_max"),
}
OTHER = ("dec_norm", "enc_norm", "b_enc", "threshold", "du_mean", "du_std", "du_min", "ee_mean", "ee_std", "ee_min",
         "attn_q_mean", "attn_k_mean", "attn_v_mean", "attn_q_max", "attn_k_max", "attn_v_max",
         "top_head", "top_head_share")  # fmt: skip


def verdict_text(name: str, value: Any, metrics: dict[str, Any], criterion: Any = None) -> Text:
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
        t.append(f"\n  criterion: {criterion}", style="dim italic")
    return t


class StatsPanel(Static):
    DEFAULT_CSS = """
    StatsPanel { height: auto; padding: 0 1; }
    """

    def set_feature(self, feature: Feature, criteria: dict[str, Any] | None = None) -> None:
        criteria = criteria or {}
        m = feature.metrics
        verdicts = [
            verdict_text("predicts_tokens", m.get("predicts_tokens"), m, criteria.get("predicts_tokens")),
            verdict_text("reads_tokens", m.get("reads_tokens"), m, criteria.get("reads_tokens")),
        ]
        t = Table(box=None, padding=(0, 1), show_header=False, expand=True)
        for _ in range(3):
            t.add_column(style="dim", no_wrap=True)
            t.add_column(justify="right", no_wrap=True)
        # The verdicts' evidence is printed with them; the grid holds the rest.
        cells = [(k, fmt(m.get(k))) for k in OTHER if m.get(k) is not None]
        for i in range(0, len(cells), 3):
            row: list[str] = []
            for k, v in cells[i : i + 3]:
                row += [k, v]
            t.add_row(*row)
        self.update(Group(*verdicts, Text(""), t))
