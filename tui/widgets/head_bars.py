"""Head participation: query, key and value sides (Liu & Deng) and hook_z attribution (Kissane et al.)."""

from __future__ import annotations

from collections.abc import Sequence

from atlas.types import HeadScore
from tui.widgets.bars import Line, SizedText, bar

ROLE_TITLES = {"q": "query side", "k": "key side", "v": "value side", "o": "output (W_O)", "attribution": "attribution"}
ROLE_STYLES = {"q": "cyan", "k": "magenta", "v": "yellow", "o": "blue", "attribution": "green"}


class HeadBars(SizedText):
    """The strongest heads per role: score, percentile against random directions of the same norm, and a bar."""

    DEFAULT_CSS = """
    HeadBars { width: 1fr; height: auto; padding: 0 1; }
    """

    def __init__(self, *, per_role: int = 5, **kw) -> None:
        super().__init__(**kw)
        self.per_role = per_role
        self.scores: list[HeadScore] = []

    def set_scores(self, scores: Sequence[HeadScore]) -> None:
        self.scores = list(scores)
        self.changed()

    def make_lines(self, width: int) -> list[Line]:
        if not self.scores:
            return [[("(no head scores stored)", "dim")]]
        width = max(width, 40)
        bar_w = max(4, min(30, width - 44))
        scale = max(abs(s.score) for s in self.scores)
        out: list[Line] = [[(f"{'role':<13}{'head':<14}{'score':>8}{'pct':>6}  ", "bold")]]
        for role, title in ROLE_TITLES.items():
            mine = [s for s in self.scores if s.role == role][: self.per_role]
            for i, s in enumerate(mine):
                head = f"L{s.layer}.H{s.head}" + (f" kv{s.kv_group}" if role in ("k", "v") else "")
                pct = "—" if s.percentile is None else f"{s.percentile:.0f}"
                out.append(
                    [
                        (f"{title if i == 0 else '':<13}", ROLE_STYLES[role]),
                        (f"{head:<14}{s.score:>8.3f}{pct:>6}  ", ""),
                        (bar(s.score, scale, bar_w), ROLE_STYLES[role]),
                    ]
                )
        return out
