"""Search: one box for feature ids, token text (promotes / suppresses / driven by) and label text.

The search itself is the library's (atlas/search.py, the CLI's too): exact
token matches first, then partial ones, each marked in the match column.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, Input, Static

from tui.messages import SearchDone
from tui.screens._base import AtlasScreen
from tui.search import search_features
from tui.widgets.bars import fmt
from tui.widgets.key_bar import KeyBar

KIND_STYLES = {"id": "bold", "promotes": "green", "suppresses": "red", "driven by": "cyan", "label": "yellow"}
# The match column: exact / partial token matches; where a matching label is kept.
_HOW_SHOWN = {"exact": "exact", "partial": "partial", "atlas": "label", "overlay": "your label", "id": "id"}


class SearchScreen(AtlasScreen):
    BINDINGS = [
        Binding("escape", "app.back", "Back", id="search.back"),
        Binding("ctrl+l", "focus_input", "Edit query", id="search.edit"),
        Binding("down", "focus_results", "Results", show=False, id="search.results"),
    ]

    def __init__(self, query: str = "") -> None:
        super().__init__()
        self.initial = query
        self.generation = 0
        self.last_seconds: float | None = None
        self.last_query: str | None = None  # the query whose results are on screen

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(
            value=self.initial, placeholder="token (paris), label words, or feature (L2.res/5, #17)", id="search-input"
        )
        yield Static(
            "Type to search: tokens a feature promotes, suppresses or is driven by; label text; ids.",
            id="search-status",
        )
        yield DataTable(id="search-results", cursor_type="row", zebra_stripes=True)
        yield KeyBar()

    def on_mount(self) -> None:
        table = self.query_one("#search-results", DataTable)
        for key, title in (
            ("kind", "kind"),
            ("feature", "feature"),
            ("match", "token / label"),
            ("how", "match"),
            ("rank", "rank"),
            ("value", "value"),
        ):
            table.add_column(title, key=key)
        self.query_one("#search-input", Input).focus()
        if self.initial:
            self.start_search(self.initial)

    @on(Input.Changed, "#search-input")
    def query_changed(self, event: Input.Changed) -> None:
        self.start_search(event.value)

    @on(Input.Submitted, "#search-input")
    def query_submitted(self) -> None:
        self.action_focus_results()

    def start_search(self, text: str) -> None:
        self.generation += 1
        self.run_search(self.generation, text)

    @work(thread=True, exclusive=True, group="search")
    def run_search(self, generation: int, text: str) -> None:
        t0 = time.perf_counter()
        hits = self.read("search", lambda a: search_features(a, text))
        if hits is not None:
            self.post_message(SearchDone(generation, text, hits, time.perf_counter() - t0))

    @on(SearchDone)
    def search_done(self, msg: SearchDone) -> None:
        if msg.generation != self.generation:
            return
        table = self.query_one("#search-results", DataTable)
        table.clear()
        for i, h in enumerate(msg.hits):
            how = Text(_HOW_SHOWN.get(h.how, h.how), style="dim" if h.how == "partial" else "")
            table.add_row(
                Text(h.kind, style=KIND_STYLES.get(h.kind, "")),
                h.feature,
                h.match,
                how,
                "" if h.rank is None else h.rank,
                fmt(h.value, 2),
                key=f"{i}:{h.feature_id}",
            )
        self.last_seconds = msg.seconds
        self.last_query = msg.query
        status = self.query_one("#search-status", Static)
        if not msg.query.strip():
            status.update("Type to search.")
        elif msg.hits:
            took = f" in {msg.seconds * 1000:.0f} ms" if self.atlas_app.show_timings else ""
            hows = {h.how for h in msg.hits}
            note = " · no token is exactly that: partial matches" if "partial" in hows and "exact" not in hows else ""
            status.update(f"{len(msg.hits)} results for {msg.query!r}{took}{note} · enter opens")
        else:
            status.update(f"nothing found for {msg.query!r}")

    @on(DataTable.RowSelected, "#search-results")
    def result_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value or ""
        self.atlas_app.open_feature(int(key.split(":", 1)[1]))

    def action_focus_results(self) -> None:
        table = self.query_one("#search-results", DataTable)
        if table.row_count:
            # at once, not on the next loop turn (widget.focus() defers): an enter typed
            # right after the down key must reach the results, not the input again
            self.set_focus(table)

    def action_focus_input(self) -> None:
        self.set_focus(self.query_one("#search-input", Input))
