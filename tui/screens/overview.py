"""Overview: the model, how the atlas was built (provenance as facts), its SAEs, and per-layer plots."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Header, Static
from textual.worker import get_current_worker

from atlas import listing
from atlas.errors import BadProvenance, error_line
from atlas.listing import FeatureFilter
from atlas.provenance import parse_provenance
from atlas.provenance_facts import provenance_facts
from tui.messages import OverviewLoaded, PlotLoaded, WorkFailed
from tui.screens._base import AtlasScreen
from tui.widgets.bars import fmt
from tui.widgets.key_bar import KeyBar
from tui.widgets.layer_plots import LayerPlots


class OverviewScreen(AtlasScreen):
    BINDINGS = [
        Binding("enter", "open_sae", "Features of SAE", id="overview.open_sae"),
        Binding("L", "open_layer", "Features of layer", id="overview.open_layer"),
        Binding("a", "open_all", "All features", id="overview.open_all"),
        Binding("p", "cycle_plot", "Next plot", id="overview.cycle_plot"),
        Binding("q", "app.quit", "Quit", id="overview.quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.saes: list = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="overview"):
            with VerticalScroll(id="overview-info", can_focus=True):
                yield Static("Reading the atlas…", id="overview-facts")
            yield DataTable(id="sae-table", cursor_type="row", zebra_stripes=True)
            yield LayerPlots(id="layer-plots")
        yield KeyBar()

    def on_mount(self) -> None:
        table = self.query_one("#sae-table", DataTable)
        for key, title in (
            ("layer", "layer"),
            ("name", "SAE"),
            ("site", "site"),
            ("d_sae", "features"),
            ("arch", "arch"),
            ("ref", "release / ref"),
            ("fve", "FVE"),
            ("l0", "L0"),
            ("source", "source"),
        ):
            table.add_column(title, key=key)
        table.focus()
        self.load_overview()

    # ------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="overview")
    def load_overview(self) -> None:
        # Without its overview the atlas cannot be browsed: damage here ends the app with one line and
        # exit status 1 (a notification on an empty screen would leave the user nowhere to go).
        try:
            with self.atlas_app.source.open() as atlas:
                msg = OverviewLoaded(atlas.info_row(), atlas.models(), atlas.saes(), listing.table_counts(atlas.conn))
        except Exception as e:
            self.app.call_from_thread(self.atlas_app.fail, f"cannot show {self.atlas_app.source.path}: {error_line(e)}")
            return
        if not get_current_worker().is_cancelled:
            self.post_message(msg)

    @work(thread=True, exclusive=True, group="plots")
    def load_plots(self) -> None:
        """The report's own statistics (atlas.stats), one plot at a time, each posted as soon as it is ready.

        One thread, one after the other: on a shared 2-core machine a second
        core stays free for the UI and whatever the user opens meanwhile.
        """
        from tui.plots import PLOTS, TITLES, Panel, compute_panel  # imports numpy: not before the first frame

        def q(atlas):
            for name in PLOTS:
                if get_current_worker().is_cancelled:
                    return
                try:
                    panel = compute_panel(atlas, name)
                except Exception as e:  # one bad plot must not take the others with it
                    self.post_message(WorkFailed(f"{TITLES[name]} plot", error_line(e)))
                    panel = Panel(name, TITLES[name], missing=f"could not compute: {error_line(e)}")
                self.post_message(PlotLoaded(panel))

        self.read("overview plots", q)

    # ------------------------------------------------------------ results
    @on(OverviewLoaded)
    def show_overview(self, msg: OverviewLoaded) -> None:
        try:
            self._show_overview(msg)
        except Exception as e:  # typed reads should make this unreachable; never a traceback all the same
            self.atlas_app.fail(f"cannot show {self.atlas_app.source.path}: {error_line(e)}")

    def _show_overview(self, msg: OverviewLoaded) -> None:
        self.saes = msg.saes
        self.query_one("#overview-facts", Static).update(_info_text(msg, self.atlas_app.source.path.name))
        table = self.query_one("#sae-table", DataTable)
        table.clear()
        for s in msg.saes:
            ref = "/".join(x for x in (s.release, s.sae_ref) if x) or "—"
            table.add_row(
                s.layer,
                s.name,
                s.site,
                f"{s.d_sae:,}",
                s.architecture + (f" k={s.k}" if s.k else ""),
                ref,
                fmt(s.fve, 2),
                fmt(s.l0, 1),
                s.source,
                key=str(s.sae_id),
            )
        table.border_title = f"{len(msg.saes)} SAEs"
        # The plots aggregate every feature (seconds on a million): start only once the first frame is out.
        if not self.query_one(LayerPlots).panels:
            self.call_after_refresh(self.load_plots)

    @on(PlotLoaded)
    def show_plot(self, msg: PlotLoaded) -> None:
        self.query_one(LayerPlots).set_panel(msg.panel)

    @on(DataTable.RowSelected, "#sae-table")
    def sae_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_sae()

    # ------------------------------------------------------------ actions
    def _current_sae(self):
        table = self.query_one("#sae-table", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((s for s in self.saes if str(s.sae_id) == key), None)

    def action_open_sae(self) -> None:
        sae = self._current_sae()
        if sae is not None:
            self.atlas_app.open_list(FeatureFilter(sae_ids=(sae.sae_id,)))

    def action_open_layer(self) -> None:
        sae = self._current_sae()
        if sae is not None:
            self.atlas_app.open_list(FeatureFilter(layer=sae.layer))

    def action_open_all(self) -> None:
        self.atlas_app.open_list(FeatureFilter())

    def action_cycle_plot(self) -> None:
        self.query_one(LayerPlots).cycle()


def _info_text(msg: OverviewLoaded, filename: str) -> Table:  # the model line, then facts
    """The model, the atlas and its row counts, then how it was built, as facts (never raw JSON)."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    top = Table.grid()
    top.add_column()
    for m in msg.models:
        shape = Text(m.name, style="bold")
        shape.append(
            f"  {m.architecture} · {m.n_layers} layers · d_model {m.d_model} · {m.n_heads} heads "
            f"({m.n_kv_heads} kv) · d_vocab {m.d_vocab:,}"
        )
        top.add_row(shape)
    c = msg.counts
    grid.add_row(
        "atlas",
        f"{filename} · schema {msg.info['schema_version']} · {c['features']:,} features · "
        f"{c['token_scores']:,} token scores · {c['head_scores']:,} head scores · "
        f"{c['edges']:,} edges · {c['labels']:,} labels",
    )
    facts = provenance_facts(
        msg.info.get("provenance"),
        created_at=msg.info.get("created_at"),
        sae_atlas_version=msg.info.get("sae_atlas_version"),
    )
    for f in facts:
        if f.label != "SAEs":  # the table below lists them, with their sources
            grid.add_row(f.label, Text(f.text, style="dim" if f.label in ("settings", "passes") else ""))
    if not facts:
        grid.add_row("built", Text("no build provenance recorded", style="dim"))
    scope = example_scope(msg.info.get("provenance"))
    if scope:  # what an example atlas can and cannot show, as its recipe recorded it
        grid.add_row("example", Text(scope, style="italic"))
    top.add_row(grid)
    return top


def example_scope(provenance: object) -> str:
    """provenance["example"]["scope"] when it is text (an example's own caveat), else ""."""
    try:
        example = parse_provenance(provenance).get("example")
    except BadProvenance:
        return ""
    scope = example.get("scope") if isinstance(example, dict) else None
    return " ".join(scope.split())[:600] if isinstance(scope, str) else ""
