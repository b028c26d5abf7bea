"""The feature list's table: rows arrive a page at a time and the table asks for more near its end."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from atlas.listing import FeatureRow
from tui.widgets.bars import fmt

# Column key -> header. The sort metric's column is added first when sorting by a metric.
BASE_COLUMNS = (
    ("feature", "feature"),
    ("du_top1_z", "z"),
    ("predicts_tokens", "pred"),
    ("attn_q_mean", "q"),
    ("attn_k_mean", "k"),
    ("label", "label"),
    ("tokens", "top promoted tokens"),
)


class FeatureTable(DataTable):
    """A DataTable keyed by feature_id that posts :class:`FeatureTable.NeedMore` near its last row."""

    class NeedMore(Message):
        """The cursor came within ``PREFETCH`` rows of the end: load the next page."""

    PREFETCH = 30

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.metric: str | None = None
        self.exhausted = False

    def reset(self, metric: str | None) -> None:
        """Empty the table for a new filter or sort; columns follow the sort metric."""
        self.clear(columns=True)
        self.metric = metric
        self.exhausted = False
        if metric and metric not in dict(BASE_COLUMNS):
            self.add_column("feature", key="feature")
            self.add_column(metric, key=metric)
            for key, title in BASE_COLUMNS[1:]:
                self.add_column(title, key=key)
        else:
            for key, title in BASE_COLUMNS:
                label = f"{title} ▼" if key == metric else title
                self.add_column(label, key=key)

    def append_rows(self, rows: list[FeatureRow], *, last: bool) -> None:
        extra = self.metric if self.metric and self.metric not in dict(BASE_COLUMNS) else None
        for r in rows:
            m = r.metrics
            pred = m.get("predicts_tokens")
            cells: list[object] = [r.name]
            if extra:
                cells.append(fmt(r.value))
            cells += [
                fmt(m.get("du_top1_z"), 2),
                Text("yes", style="green") if pred == 1 else Text("no" if pred == 0 else "—", style="dim"),
                fmt(m.get("attn_q_mean"), 2),
                fmt(m.get("attn_k_mean"), 2),
                Text(_clip(r.label or "", 28), style="italic" if r.label_source == "user" else ""),
                Text(" ".join(r.top_tokens), no_wrap=True, overflow="ellipsis"),
            ]
            self.add_row(*cells, key=str(r.feature_id))
        self.exhausted = last

    def watch_cursor_coordinate(self, old, new) -> None:  # type: ignore[override]
        super().watch_cursor_coordinate(old, new)
        if not self.exhausted and self.row_count and new.row >= self.row_count - self.PREFETCH:
            self.post_message(self.NeedMore())

    def feature_id_at_cursor(self) -> int | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return int(key.value) if key.value is not None else None


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
