"""Head participation: query, key and value sides (Liu & Deng) and hook_z attribution (Kissane et al.)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from atlas.types import HeadScore
from tui.widgets.bars import bar

ROLE_TITLES = {"q": "query side", "k": "key side", "v": "value side", "o": "output (W_O)", "attribution": "attribution"}
ROLE_STYLES = {"q": "cyan", "k": "magenta", "v": "yellow", "o": "blue", "attribution": "green"}


class HeadBars(Static):
    """The strongest heads per role, with score, percentile against random directions, and a bar."""

    DEFAULT_CSS = """
    HeadBars { width: 1fr; height: auto; padding: 0 1; }
    """

    def __init__(self, *, per_role: int = 5, **kw) -> None:
        super().__init__(**kw)
        self.per_role = per_role
        self.scores: list[HeadScore] = []

    def set_scores(self, scores: Sequence[HeadScore]) -> None:
        self.scores = list(scores)
        self.update(self._table())

    def _table(self) -> Table:
        t = Table(box=None, padding=(0, 1), show_header=True, header_style="bold", expand=True)
        t.add_column("role", no_wrap=True)
        t.add_column("head", no_wrap=True)
        t.add_column("score", justify="right", no_wrap=True)
        t.add_column("pct", justify="right", no_wrap=True)
        t.add_column("", no_wrap=True, width=12)
        if not self.scores:
            t.add_row(Text("(no head scores stored)", style="dim"), "", "", "", "")
            return t
        scale = max(abs(s.score) for s in self.scores)
        for role in ROLE_TITLES:
            mine = [s for s in self.scores if s.role == role][: self.per_role]
            for i, s in enumerate(mine):
                t.add_row(
                    Text(ROLE_TITLES[role] if i == 0 else "", style=ROLE_STYLES[role]),
                    f"L{s.layer}.H{s.head}" + (f" (kv{s.kv_group})" if role in ("k", "v") else ""),
                    f"{s.score:.3f}",
                    "—" if s.percentile is None else f"{s.percentile:.0f}",
                    Text(bar(s.score, scale, 12), style=ROLE_STYLES[role]),
                )
        return t
