"""Feature list: every feature of an SAE, a layer or the atlas, sorted and filtered, paged lazily.

Pages come from atlas.listing.feature_page (keyset paging over indexes), one
page per worker call as the cursor nears the end of what is loaded, so a
million-feature atlas costs no more to open than a small one.
"""

from __future__ import annotations

from dataclasses import replace

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Header, Input, Label, Select, Static

from atlas import listing
from atlas.labels import with_overlay_labels
from atlas.listing import LABEL_KINDS, UNLABELLED, FeatureFilter
from atlas.read import METRIC_COLUMNS
from tui.messages import CountLoaded, PageLoaded
from tui.screens._base import AtlasScreen
from tui.widgets.feature_table import FeatureTable
from tui.widgets.key_bar import KeyBar

ALL = "*"
PAGE_SIZE = 100


class FeatureListScreen(AtlasScreen):
    BINDINGS = [
        Binding("s", "focus_sort", "Sort", id="list.sort"),
        Binding("r", "reverse", "Reverse", id="list.reverse"),
        Binding("f", "focus_filters", "Filter", id="list.filter"),
        Binding("l", "label", "Label", id="list.label"),
        Binding("escape,q", "app.back", "Back", id="list.back"),
    ]

    def __init__(self, flt: FeatureFilter | None = None) -> None:
        super().__init__()
        self.flt = flt or FeatureFilter()
        self.generation = 0
        self.cursor: listing.Cursor | None = None
        self.fetching = False
        self.indexed: set[str] = set()
        self.count: int | None = None
        self.ready = False  # selects populated; filter-change events before that are ignored

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="list-controls"):
            with Horizontal(classes="control-row"):
                yield Label("SAE")
                yield Select([("all SAEs", ALL)], value=ALL, allow_blank=False, compact=True, id="f-sae")
                yield Label("layer")
                yield Select([("all", ALL)], value=ALL, allow_blank=False, compact=True, id="f-layer")
                yield Label("label")
                yield Select(
                    [("any", ALL), *((k, k) for k in (*LABEL_KINDS, UNLABELLED))],
                    value=ALL,
                    allow_blank=False,
                    compact=True,
                    id="f-kind",
                )
            with Horizontal(classes="control-row"):
                yield Label("sort")
                yield Select(
                    [("feature id", ALL), *((m, m) for m in METRIC_COLUMNS)],
                    value=ALL,
                    allow_blank=False,
                    compact=True,
                    id="f-sort",
                )
                yield Static("↓", id="f-order")
                yield Label("range on")
                yield Select(
                    [("sort metric", ALL), *((m, m) for m in METRIC_COLUMNS)],
                    value=ALL,
                    allow_blank=False,
                    compact=True,
                    id="f-range",
                )
                yield Input(placeholder="min", type="number", compact=True, id="f-lo")
                yield Input(placeholder="max", type="number", compact=True, id="f-hi")
        yield Static("", id="list-status")
        yield FeatureTable(id="feature-table")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one(FeatureTable).focus()
        self.load_catalogue()

    # ------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="catalogue")
    def load_catalogue(self) -> None:
        res = self.read("SAE list", lambda a: (a.saes(), listing.indexed_metrics(a.conn)))
        if res is not None:
            self.app.call_from_thread(self._populate, *res)

    @work(thread=True, exclusive=True, group="page")
    def load_page(self, generation: int, flt: FeatureFilter, after: listing.Cursor | None) -> None:
        page = self.read(
            "feature list",
            lambda a: with_overlay_labels(a, listing.feature_page(a.conn, flt, limit=PAGE_SIZE, after=after)),
        )
        if page is not None:
            self.post_message(PageLoaded(generation, page, after is None))

    @work(thread=True, exclusive=True, group="count")
    def load_count(self, generation: int, flt: FeatureFilter) -> None:
        n = self.read("feature count", lambda a: listing.count_features(a.conn, flt))
        if n is not None:
            self.post_message(CountLoaded(generation, flt, n))

    # ------------------------------------------------------------ filter state
    def _populate(self, saes, indexed: set[str]) -> None:
        self.indexed = indexed
        with self.prevent(Select.Changed):
            sae_sel = self.query_one("#f-sae", Select)
            sae_sel.set_options([("all SAEs", ALL), *((s.name, str(s.sae_id)) for s in saes)])
            layers = sorted({s.layer for s in saes})
            self.query_one("#f-layer", Select).set_options([("all", ALL), *((str(x), str(x)) for x in layers)])
            f = self.flt
            sae_sel.value = str(f.sae_ids[0]) if f.sae_ids and len(f.sae_ids) == 1 else ALL
            self.query_one("#f-layer", Select).value = str(f.layer) if f.layer is not None else ALL
            self.query_one("#f-kind", Select).value = f.label_kind or ALL
            self.query_one("#f-sort", Select).value = f.metric or ALL
            self.query_one("#f-range", Select).value = f.range_metric or ALL
        self.ready = True
        self.refresh_list()

    def filter_from_controls(self) -> FeatureFilter:
        def val(sel_id: str) -> str | None:
            v = self.query_one(sel_id, Select).value
            return None if v == ALL or v is Select.BLANK else str(v)

        def num(inp_id: str) -> float | None:
            text = self.query_one(inp_id, Input).value.strip()
            try:
                return float(text) if text else None
            except ValueError:
                self.notify(f"{text!r} is not a number", severity="error")
                return None

        sae, layer = val("#f-sae"), val("#f-layer")
        return FeatureFilter(
            sae_ids=(int(sae),) if sae else None,
            layer=int(layer) if layer else None,
            label_kind=val("#f-kind"),
            metric=val("#f-sort"),
            descending=self.flt.descending,
            range_metric=val("#f-range"),
            lo=num("#f-lo"),
            hi=num("#f-hi"),
        )

    def refresh_list(self) -> None:
        """Start over: new generation, empty table, first page and a count."""
        flt = self.flt
        if (flt.lo is not None or flt.hi is not None) and flt.range_column is None:
            self.notify("choose a metric to apply the range to (sort or 'range on')", severity="warning")
            flt = self.flt = replace(flt, lo=None, hi=None)
        self.generation += 1
        self.cursor = None
        self.count = None
        self.fetching = True
        self.query_one(FeatureTable).reset(flt.metric)
        self.query_one("#f-order", Static).update("↓" if flt.descending else "↑")
        self._status()
        self.load_page(self.generation, flt, None)
        self.load_count(self.generation, flt)

    def _status(self) -> None:
        f, table = self.flt, self.query_one(FeatureTable)
        sort = f"sorted by {f.metric} {'↓' if f.descending else '↑'}" if f.metric else "in feature-id order"
        count = "counting…" if self.count is None else f"{self.count:,} match"
        more = " · loading…" if self.fetching else ""
        slow = (
            f" · {f.metric} has no index: each page sorts"
            if f.metric and self.indexed and f.metric not in self.indexed
            else ""
        )
        self.query_one("#list-status", Static).update(f"{sort} · {count} · {table.row_count:,} shown{more}{slow}")

    @on(Select.Changed)
    def control_changed(self, event: Select.Changed) -> None:
        if not self.ready:
            return
        self.flt = self.filter_from_controls()
        self.refresh_list()

    @on(Input.Submitted, "#f-lo, #f-hi")
    def range_submitted(self) -> None:
        self.flt = self.filter_from_controls()
        self.refresh_list()
        self.query_one(FeatureTable).focus()

    # ------------------------------------------------------------ results
    @on(PageLoaded)
    def page_loaded(self, msg: PageLoaded) -> None:
        if msg.generation != self.generation:
            return  # an answer for a filter the user has since changed
        table = self.query_one(FeatureTable)
        if msg.first and table.row_count:
            table.reset(self.flt.metric)
        table.append_rows(msg.page.rows, last=msg.page.cursor is None)
        self.cursor = msg.page.cursor
        self.fetching = False
        self._status()

    @on(CountLoaded)
    def count_loaded(self, msg: CountLoaded) -> None:
        if msg.generation == self.generation:
            self.count = msg.count
            self._status()

    @on(FeatureTable.NeedMore)
    def need_more(self) -> None:
        table = self.query_one(FeatureTable)
        # Re-check: the message may have been posted while rows were still being appended.
        if self.fetching or self.cursor is None or table.cursor_row < table.row_count - table.PREFETCH:
            return
        self.fetching = True
        self._status()
        self.load_page(self.generation, self.flt, self.cursor)

    @on(DataTable.RowSelected, "#feature-table")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.atlas_app.open_feature(int(event.row_key.value))

    @on(DataTable.HeaderSelected, "#feature-table")
    def header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in METRIC_COLUMNS:
            sel = self.query_one("#f-sort", Select)
            if sel.value == key:
                self.action_reverse()
            else:
                sel.value = key  # Select.Changed reloads

    # ------------------------------------------------------------ actions
    def action_focus_sort(self) -> None:
        self.query_one("#f-sort", Select).focus()

    def action_focus_filters(self) -> None:
        self.query_one("#f-sae", Select).focus()

    def action_reverse(self) -> None:
        if self.flt.metric is None:
            self.notify("sorted by feature id; choose a metric to sort by first (s)", severity="warning")
            return
        self.flt = replace(self.flt, descending=not self.flt.descending)
        self.refresh_list()

    def action_label(self) -> None:
        fid = self.query_one(FeatureTable).feature_id_at_cursor()
        if fid is not None:
            self.atlas_app.edit_label(fid)
