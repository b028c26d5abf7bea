"""A titled list of tokens with their values and bars (promoted, suppressed, input tokens).

Drawn as plain styled lines sized to the widget's width (see SizedText): a rich
Table per list, re-measured on every layout pass, made opening a card cost ~100 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

from atlas.types import TokenScore
from tui.widgets.bars import Line, SizedText, bar, clip


class TokenBars(SizedText):
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
        self.changed()

    def make_lines(self, width: int) -> list[Line]:
        width = max(width, 20)
        bar_w = max(3, min(10, width // 4))
        tok_w = max(4, width - bar_w - 2 - 1 - 7 - 1)  # rank(2) space token value(7) space bar
        out: list[Line] = [[(clip(self.title, width), "bold")]]
        if not self.scores:
            out.append([("(none stored)", "dim")])
            return out
        scale = max(abs(s.value) for s in self.scores)
        for s in self.scores:
            out.append(
                [
                    (f"{s.rank:>2} ", "dim"),
                    (f"{clip(s.token, tok_w):<{tok_w}}{s.value:>7.2f} ", ""),
                    (bar(s.value, scale, bar_w), self.bar_style),
                ]
            )
        return out
