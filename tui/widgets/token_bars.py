"""A titled list of tokens with their values and bars (promoted, suppressed, input tokens)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from atlas.types import TokenScore
from tui.widgets.bars import bar


class TokenBars(Static):
    """Rank, token, value and a bar scaled to the strongest value in the list."""

    DEFAULT_CSS = """
    TokenBars { width: 1fr; height: auto; padding: 0 1; }
    """

    def __init__(self, title: str, *, style: str = "green", bar_width: int = 8, **kw) -> None:
        super().__init__(**kw)
        self.title = title
        self.bar_style = style
        self.bar_width = bar_width
        self.scores: list[TokenScore] = []

    def set_scores(self, scores: Sequence[TokenScore]) -> None:
        self.scores = list(scores)
        self.update(self._table())

    def _table(self) -> Table:
        t = Table(title=self.title, title_justify="left", title_style="bold", box=None, padding=(0, 1),
                  show_header=False, expand=True)  # fmt: skip
        t.add_column("rank", justify="right", style="dim", no_wrap=True, width=2)
        t.add_column("token", no_wrap=True, overflow="ellipsis", ratio=3)
        t.add_column("value", justify="right", no_wrap=True, width=6)
        t.add_column("bar", no_wrap=True, width=self.bar_width)
        if not self.scores:
            t.add_row("", Text("(none stored)", style="dim"), "", "")
            return t
        scale = max(abs(s.value) for s in self.scores)
        for s in self.scores:
            t.add_row(
                str(s.rank), s.token, f"{s.value:.2f}", Text(bar(s.value, scale, self.bar_width), style=self.bar_style)
            )
        return t
