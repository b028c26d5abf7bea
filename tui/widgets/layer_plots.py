"""The overview's three per-layer plots, drawn in the terminal with textual-plotext.

The widget only draws a :class:`PlotData`; where the numbers come from is
the caller's business (today atlas.listing's SQL aggregates, later the
report's atlas.stats), so the data source can be swapped without touching it.
On a narrow terminal one plot shows at a time (``p`` cycles them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual_plotext import PlotextPlot

from atlas.listing import LayerSummary

PLOTS = ("predicts", "qk", "semantic")


@dataclass(frozen=True)
class PlotData:
    labels: list[str] = field(default_factory=list)  # one per SAE / layer, in depth order
    frac_predicts: list[float] = field(default_factory=list)
    depth: list[str] = field(default_factory=list)  # x labels of the q/k plot
    q: list[float] = field(default_factory=list)
    k: list[float] = field(default_factory=list)
    semantic: list[int] = field(default_factory=list)
    non_semantic: list[int] = field(default_factory=list)

    @classmethod
    def from_summaries(
        cls,
        summaries: list[LayerSummary],
        depth_q: list[tuple[int, float | None]] | None = None,
        depth_k: list[tuple[int, float | None]] | None = None,
    ) -> PlotData:
        """Per-SAE aggregates; q/k by depth from depth_profiles when the attention pass wrote them."""
        labels = [s.sae for s in summaries]
        if depth_q and depth_k:
            kd = dict(depth_k)
            depth = [f"L{layer}" for layer, _ in depth_q]
            q = [v or 0.0 for _, v in depth_q]
            k = [kd.get(layer) or 0.0 for layer, _ in depth_q]
        else:
            depth, q, k = labels, [s.attn_q_mean or 0.0 for s in summaries], [s.attn_k_mean or 0.0 for s in summaries]
        return cls(
            labels=labels,
            frac_predicts=[s.frac_predicts_tokens or 0.0 for s in summaries],
            depth=depth,
            q=q,
            k=k,
            semantic=[s.n_semantic for s in summaries],
            non_semantic=[s.n_non_semantic for s in summaries],
        )


class LayerPlots(Horizontal):
    DEFAULT_CSS = """
    LayerPlots { height: 1fr; min-height: 8; }
    LayerPlots PlotextPlot { width: 1fr; min-width: 24; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.data: PlotData | None = None
        self.current = 0

    def compose(self) -> ComposeResult:
        for i, name in enumerate(PLOTS):
            yield PlotextPlot(id=f"plot-{name}", classes="-current" if i == 0 else "")

    def on_mount(self) -> None:
        self._draw()

    def set_data(self, data: PlotData) -> None:
        self.data = data
        self._draw()

    def cycle(self) -> None:
        """Show the next plot (only visible as a change on narrow terminals)."""
        plots = list(self.query(PlotextPlot))
        plots[self.current].remove_class("-current")
        self.current = (self.current + 1) % len(plots)
        plots[self.current].add_class("-current")

    def _draw(self) -> None:
        d = self.data
        p = self.query_one("#plot-predicts", PlotextPlot).plt
        p.clear_data()
        p.title("fraction predicting tokens")
        if d and d.labels:
            p.bar(d.labels, d.frac_predicts, color="green", width=0.5)
            p.ylim(0, max(1e-9, max(d.frac_predicts)) * 1.15)
        p2 = self.query_one("#plot-qk", PlotextPlot).plt
        p2.clear_data()
        p2.title("query vs key participation")
        if d and d.depth:
            p2.multiple_bar(d.depth, [d.q, d.k], labels=["q", "k"], color=["cyan", "magenta"], width=0.6)
        p3 = self.query_one("#plot-semantic", PlotextPlot).plt
        p3.clear_data()
        p3.title("semantic vs non-semantic")
        if d and d.labels:
            p3.multiple_bar(
                d.labels, [d.semantic, d.non_semantic], labels=["sem", "non"], color=["green", "red"], width=0.6
            )
        for plot in self.query(PlotextPlot):
            plot.refresh()
