"""The overview's three per-layer plots, drawn in the terminal with textual-plotext.

The widget only draws :class:`tui.plots.Panel` objects, whose numbers come
from atlas.stats (the report's functions). Each plot arrives on its own, as
its worker finishes it; until then its title says it is being computed. A
plot whose build pass is missing shows that line ("not built: run ...") in
its place. On a narrow terminal one plot shows at a time (``p`` cycles them).

What a reader needs from an axis: every SAE named under its bars (the names
are shortened, ``L14.res`` -> ``L14``, ``L14.z`` -> ``L14z``, until they all
fit the width the plot has, and numbered with a key when even that does not
fit), counts as whole numbers, fractions as percentages. The title and the
legend sit on two lines above the plot, never over the bars. The plot is redrawn
for its size every time it renders, so a resize keeps the labels fitting.
"""

from __future__ import annotations

import math
import re

from rich.text import Text
from textual.app import ComposeResult, RenderResult
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
# How each plot's y axis reads: fractions as percentages, counts as whole numbers.
Y_FORMAT = {"predicts": "percent", "qk": "value", "semantic": "count"}
BAR_SERIES_WIDTH = 0.6


# ------------------------------------------------------------------ axis labels (pure, tested)
def compact_name(name: str) -> str:
    """``L14.res`` -> ``L14``, ``L14.z`` -> ``L14z``, ``L3.res_pre`` -> ``L3rp``; other names as they are."""
    m = re.fullmatch(r"L(\d+)\.([A-Za-z_]+)", name)
    if not m:
        return name
    layer, site = m.groups()
    return f"L{layer}" if site == "res" else f"L{layer}" + "".join(part[:1] for part in site.split("_"))


def fit_labels(names: list[str], width: int) -> tuple[list[str], str]:
    """Tick labels naming every SAE within ``width`` columns of plot area, and a key when they are numbers.

    Tries the names, then their compact forms, then 1..n (the key maps them
    back). A label fits when it and a space fit in its bar group's share of the width.
    """
    n = max(len(names), 1)
    per = width / n
    for labels in (list(names), [compact_name(x) for x in names]):
        if len(set(labels)) == len(labels) and max((len(x) for x in labels), default=0) + 1 <= per:
            return labels, ""
    numbers = [str(i + 1) for i in range(len(names))]
    return numbers, "  ".join(f"{i}={x}" for i, x in zip(numbers, names, strict=True))


def _nice_step(span: float, n: int, *, integer: bool) -> float:
    raw = max(span / max(n, 1), 1e-12)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return max(1.0, math.ceil(step)) if integer else step


def y_ticks(top: float, kind: str, n: int = 4) -> tuple[list[float], list[str], float]:
    """(positions, labels, axis top) for a y axis from 0 to ``top``: whole numbers for counts,
    percentages for fractions, up to three significant digits for values."""
    top = max(top, 1.0 if kind == "count" else 1e-9)
    step = _nice_step(top, n, integer=kind == "count")
    ticks = [i * step for i in range(int(math.floor(top / step + 1e-9)) + 1)]
    if kind == "count":
        labels = [f"{int(round(t)):,}" for t in ticks]
    elif kind == "percent":
        d = _decimals(step * 100)
        labels = [f"{t * 100:.{d}f}%" for t in ticks]
    else:  # a value: at least one decimal, so 1.0 does not read as a count
        d = max(1, _decimals(step))
        labels = [f"{t:.{d}f}" for t in ticks]
    return ticks, labels, max(top * 1.1, ticks[-1])


def _decimals(step: float) -> int:
    """The fewest decimals that write every multiple of ``step`` exactly (0.5 -> 1, 0.25 -> 2)."""
    return next((d for d in range(6) if abs(round(step, d) - step) < 1e-9 * max(step, 1e-12)), 6)


def legend_text(title: str, labels: list[str], colors: tuple[str, ...], key: str = "") -> Text:
    """The title, and the legend on the line below it: above the plot, never over its bars."""
    t = Text(title, style="bold")
    t.append("\n")
    for i, (label, color) in enumerate(zip(labels, colors, strict=False)):
        t.append("  " if i else "")
        t.append("██", style=color)
        t.append(f" {label}")
    if key:
        t.append(f"   {key}", style="dim")
    return t


# ------------------------------------------------------------------ widgets
class PanelPlot(PlotextPlot):
    """One plot, redrawn for its current size at every render (labels keep fitting after a resize)."""

    def __init__(self, name: str, **kw) -> None:
        super().__init__(**kw)
        self.panel_name = name
        self.panel: Panel | None = None
        self.key = ""  # number -> SAE name, when the names did not fit

    def show(self, panel: Panel) -> None:
        self.panel = panel
        self.key = _draw(self.plt, panel, COLORS[panel.name], max(self.size.width, 40), max(self.size.height, 8))
        self.refresh()

    def render(self) -> RenderResult:
        if self.panel is not None and self.size.width and self.size.height:
            key = _draw(self.plt, self.panel, COLORS[self.panel.name], self.size.width, self.size.height)
            if key != self.key:
                self.key = key
                self.call_later(self._legend_changed)
        return super().render()

    def _legend_changed(self) -> None:
        parent = self.parent
        if isinstance(parent, Vertical) and self.panel is not None:
            parent.query_one(".plot-legend", Static).update(
                legend_text(self.panel.title, list(self.panel.series), COLORS[self.panel.name], self.key)
            )


class LayerPlots(Horizontal):
    DEFAULT_CSS = """
    LayerPlots { height: 1fr; min-height: 8; }
    LayerPlots .plot-slot { width: 1fr; min-width: 24; height: 1fr; }
    LayerPlots .plot-legend { height: 2; padding: 0 1; }
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
                yield Static(Text(f"{TITLES[name]}\ncomputing…", style="bold"), classes="plot-legend")
                yield PanelPlot(name, id=f"plot-{name}")
                yield Static(id=f"missing-{name}", classes="plot-missing")

    def on_mount(self) -> None:
        for name in PLOTS:
            self.query_one(f"#plot-{name}", PanelPlot).plt.clear_data()

    def set_panel(self, panel: Panel) -> None:
        self.panels[panel.name] = panel
        slot = self.query_one(f"#slot-{panel.name}", Vertical)
        legend = slot.query_one(".plot-legend", Static)
        if panel.missing:
            legend.update(Text(f"{panel.title}\n", style="bold"))
            self.query_one(f"#missing-{panel.name}", Static).update(panel.missing)
            slot.add_class("-missing")
            return
        slot.remove_class("-missing")
        plot = self.query_one(f"#plot-{panel.name}", PanelPlot)
        plot.show(panel)
        legend.update(legend_text(panel.title, list(panel.series), COLORS[panel.name], plot.key))

    def cycle(self) -> None:
        """Show the next plot (only visible as a change on narrow terminals)."""
        slots = list(self.query(".plot-slot"))
        slots[self.current].remove_class("-current")
        self.current = (self.current + 1) % len(slots)
        slots[self.current].add_class("-current")


def _draw(p, panel: Panel, colors: tuple[str, ...], width: int, height: int) -> str:
    """Draw ``panel`` on the plotext object ``p`` for a ``width`` x ``height`` plot; returns the label key."""
    p.clear_data()
    if not panel.x or not panel.series:
        return ""
    top = max((v for vals in panel.series.values() for v in vals if not math.isnan(v)), default=0.0)
    ticks, tick_labels, axis_top = y_ticks(top, Y_FORMAT[panel.name], n=max(2, min(5, (height - 3) // 2)))
    area = width - max(len(s) for s in tick_labels) - 3  # the y labels, the axis and the frame
    labels, key = fit_labels(panel.x, area)
    positions = list(range(1, len(panel.x) + 1))
    if len(panel.x) <= MAX_BARS:
        # A missing value (NaN) is an empty bar, not left to break plotext's scaling.
        values = [[0.0 if math.isnan(v) else v for v in vals] for vals in panel.series.values()]
        if len(values) == 1:
            p.bar(positions, values[0], color=colors[0], width=0.5)
        else:
            p.multiple_bar(positions, values, color=list(colors[: len(values)]), width=BAR_SERIES_WIDTH)
        p.xticks(positions, labels)
    else:
        # Many SAEs: bars would merge into a block, so draw depth curves, as the report does.
        # A missing value is left out of its curve; as many SAEs are named as fit.
        for vals, color in zip(panel.series.values(), colors, strict=False):
            pts = [(i + 1, v) for i, v in enumerate(vals) if not math.isnan(v)]
            p.plot([i for i, _ in pts], [v for _, v in pts], color=color, marker="braille")
        short = [compact_name(x) for x in panel.x]
        step = max(1, math.ceil(len(short) * (max(map(len, short)) + 1) / max(area, 1)))
        every = positions[::step]
        p.xticks(every, [short[i - 1] for i in every])
        key = ""
    p.yticks(ticks, tick_labels)
    p.ylim(0, axis_top)
    p.xlim(0.5, len(panel.x) + 0.5)
    return key
