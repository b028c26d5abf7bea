"""The overview's three per-layer plots, drawn in the terminal with textual-plotext.

The widget only draws :class:`tui.plots.Panel` objects, whose numbers come
from atlas.stats (the report's functions). Each plot arrives on its own, as
its worker finishes it; until then its title says it is being computed. A
plot whose build pass is missing shows that line ("not built: run ...") in
its place. On a narrow terminal one plot shows at a time (``p`` cycles them).
"""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from tui.plots import PLOTS, TITLES, Panel

MAX_BARS = 8  # more SAEs than this are drawn as curves
COLORS = {
    "predicts": ("green", "blue"),
    "qk": ("cyan", "magenta"),
    "semantic": ("green", "red"),
}


class LayerPlots(Horizontal):
    DEFAULT_CSS = """
    LayerPlots { height: 1fr; min-height: 8; }
    LayerPlots .plot-slot { width: 1fr; min-width: 24; height: 1fr; }
    LayerPlots PlotextPlot { height: 1fr; }
    LayerPlots .plot-missing { display: none; height: 1fr; padding: 1 1; color: $text-muted; content-align: center middle; }
    LayerPlots .plot-slot.-missing PlotextPlot { display: none; }
    LayerPlots .plot-slot.-missing .plot-missing { display: block; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.panels: dict[str, Panel] = {}
        self.current = 0

    @property
    def data(self) -> dict[str, Panel] | None:
        """Every panel once all have arrived, else None (the benchmark waits on this)."""
        return self.panels if len(self.panels) == len(PLOTS) else None

    def compose(self) -> ComposeResult:
        for i, name in enumerate(PLOTS):
            with Vertical(id=f"slot-{name}", classes="plot-slot -current" if i == 0 else "plot-slot"):
                yield PlotextPlot(id=f"plot-{name}")
                yield Static(id=f"missing-{name}", classes="plot-missing")

    def on_mount(self) -> None:
        for name in PLOTS:
            p = self.query_one(f"#plot-{name}", PlotextPlot).plt
            p.clear_data()
            p.title(f"{TITLES[name]} (computing…)")

    def set_panel(self, panel: Panel) -> None:
        self.panels[panel.name] = panel
        slot = self.query_one(f"#slot-{panel.name}", Vertical)
        if panel.missing:
            self.query_one(f"#missing-{panel.name}", Static).update(f"[b]{panel.title}[/b]\n\n{panel.missing}")
            slot.add_class("-missing")
            return
        slot.remove_class("-missing")
        plot = self.query_one(f"#plot-{panel.name}", PlotextPlot)
        _draw(plot, panel, COLORS[panel.name])
        plot.refresh()

    def cycle(self) -> None:
        """Show the next plot (only visible as a change on narrow terminals)."""
        slots = list(self.query(".plot-slot"))
        slots[self.current].remove_class("-current")
        self.current = (self.current + 1) % len(slots)
        slots[self.current].add_class("-current")


def _draw(plot: PlotextPlot, panel: Panel, colors: tuple[str, ...]) -> None:
    p = plot.plt
    p.clear_data()
    p.title(panel.title)
    if not panel.x or not panel.series:
        return
    labels = list(panel.series)
    top = max((v for vals in panel.series.values() for v in vals if not math.isnan(v)), default=0.0)
    if len(panel.x) <= MAX_BARS:
        # A missing value (NaN) is an empty bar, not left to break plotext's scaling.
        values = [[0.0 if math.isnan(v) else v for v in vals] for vals in panel.series.values()]
        if len(values) == 1:
            p.bar(panel.x, values[0], label=labels[0], color=colors[0], width=0.5)
        else:
            p.multiple_bar(panel.x, values, labels=labels, color=list(colors[: len(values)]), width=0.6)
    else:
        # Many SAEs: bars would merge into a block, so draw depth curves, as the report does.
        # A missing value is left out of its curve.
        for label, vals, color in zip(labels, panel.series.values(), colors, strict=False):
            pts = [(i, v) for i, v in enumerate(vals) if not math.isnan(v)]
            p.plot([i for i, _ in pts], [v for _, v in pts], label=label, color=color, marker="braille")
        step = max(1, len(panel.x) // 6)  # a handful of tick labels fit in a third of the screen
        ticks = list(range(0, len(panel.x), step))
        p.xticks(ticks, [panel.x[i] for i in ticks])
    p.ylim(0, max(1e-9, top) * 1.15)
