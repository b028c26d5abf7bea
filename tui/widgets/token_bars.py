"""A titled list of tokens with their values and bars (promoted, suppressed, input tokens).

Rendered as plain styled text sized to the widget's width: a rich Table per
list re-measured on every layout pass made opening a card cost ~100 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from atlas.types import TokenScore
from tui.widgets.bars import bar, clip


class TokenBars(Widget):
    """Rank, token, value and a bar scaled to the strongest value in the list."""

    DEFAULT_CSS = """
    TokenBars { width: 1fr; height: auto; padding: 0 1; }
    """

    def __init__(self, title: str, *, style: str = "green", **kw) -> None:
        super().__init__(**kw)
        self.title = title
        self.bar_style = style
        self.scores: list[TokenScore] = []

    def set_scores(self, scores: Sequence[TokenScore]) -> None:
        self.scores = list(scores)
        self.refresh(layout=True)

    def render(self) -> Text:
        width = max(self.content_size.width, 20)
        bar_w = max(3, min(10, width // 4))
        tok_w = max(4, width - bar_w - 2 - 1 - 7 - 1)  # rank(2) space token value(7) space bar
        out = Text(clip(self.title, width) + "\n", style="bold", no_wrap=True)
        if not self.scores:
            out.append("(none stored)", style="dim")
            return out
        scale = max(abs(s.value) for s in self.scores)
        for i, s in enumerate(self.scores):
            out.append(f"{s.rank:>2} ", style="dim")
            out.append(f"{clip(s.token, tok_w):<{tok_w}}{s.value:>7.2f} ")
            out.append(bar(s.value, scale, bar_w), style=self.bar_style)
            if i < len(self.scores) - 1:
                out.append("\n")
        return out
