"""Feature card: everything the atlas knows about one feature, with browser-like history.

Enter on an edge or neighbour opens that feature here; backspace / alt+left
goes back, alt+right forward; back from the feature the card was entered
with closes it. The app keeps one installed instance of this screen and
re-enters it, which is several times faster than composing a new one.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Header, Static

from atlas.db import Atlas
from atlas.names import display_token
from atlas.neuronpedia import NeuronpediaCard, card_extras, describe_list, running_text
from atlas.provenance import read_verdict_criteria
from atlas.types import FeatureCard
from tui.history import History
from tui.messages import CardLoaded
from tui.screens._base import AtlasScreen
from tui.screens.trace import TraceStop
from tui.widgets.bars import fmt
from tui.widgets.head_bars import HeadBars
from tui.widgets.key_bar import KeyBar
from tui.widgets.stats_panel import StatsPanel
from tui.widgets.token_bars import TokenBars

EDGE_KINDS = {"qk": "QK", "ov": "OV", "cosine": "neighbour", "flow": "flow"}


class FeatureCardScreen(AtlasScreen):
    BINDINGS = [
        Binding("backspace,alt+left", "back", "Back", id="card.back"),
        Binding("alt+right", "forward", "Forward", id="card.forward"),
        Binding("l", "label", "Label", id="card.label"),
        Binding("e", "focus_edges", "Edges", id="card.edges"),
        Binding("t", "trace", "Trace", id="card.trace"),
        Binding("u", "copy_url", "Copy URL", id="card.copy_url"),  # shown when the feature's Neuronpedia URL is known
        Binding("escape,q", "close", "Close", id="card.close"),
    ]

    def __init__(self, feature_id: int | None = None) -> None:
        super().__init__()
        self.history: History[int | TraceStop] = History()  # features and traces (tui/screens/trace.py)
        self.pending = feature_id  # shown when the screen is next mounted or resumed
        self.base = 0  # history position this visit of the screen started at
        self.card: FeatureCard | None = None
        self.neuronpedia: NeuronpediaCard | None = None
        self.preloaded: CardLoaded | None = None  # read before the push, drawn on mount

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="card"):
            yield Static("Loading…", id="card-title")
            yield StatsPanel(id="card-stats")
            with Horizontal(id="card-tokens"):
                yield TokenBars("promoted (W_dec·W_U)", style="green", id="tok-promoted")
                yield TokenBars("suppressed", style="red", id="tok-suppressed")
                yield TokenBars("input tokens (W_E·W_enc)", style="cyan", id="tok-inputs")
            yield Static("", id="card-labels")
            yield Static("", id="card-spread")  # a CLT feature: where its decoder writes
            yield Static("", id="card-neuronpedia")  # shown when there is something of Neuronpedia to show
            yield Static("[b]heads[/b]", classes="section")
            yield HeadBars(id="card-heads")
            yield Static("[b]edges and neighbours[/b]  (enter opens)", classes="section")
            yield DataTable(id="card-edges", cursor_type="row", zebra_stripes=True)
        yield KeyBar()

    def on_mount(self) -> None:
        edges = self.query_one("#card-edges", DataTable)
        for key, title in (
            ("kind", "kind"),
            ("dir", "dir"),
            ("other", "feature"),
            ("head", "head"),
            ("score", "score"),
            ("rank", "rank"),
        ):
            edges.add_column(title, key=key)
        # The card scrolls as a whole; `e` (or tab) moves into the edge table to follow an edge.
        self.query_one("#card", VerticalScroll).focus()
        self._enter_pending()

    def enter(self, feature_id: int, loaded: CardLoaded | None = None) -> None:
        """Prepare to be pushed showing ``feature_id``; with its card already read, draw it now."""
        self.pending, self.preloaded = feature_id, loaded
        if loaded is not None and self.is_mounted:
            self._enter_pending()  # before the push: the push then lays out the new card only

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self._enter_pending()

    def _enter_pending(self) -> None:
        if self.pending is None:
            return
        fid, self.pending = self.pending, None
        loaded, self.preloaded = self.preloaded, None
        self.history.visit(fid)
        self.base = self.history.position
        self._show_loaded(fid, loaded)

    # ------------------------------------------------------------ navigation
    def show(self, feature_id: int | TraceStop, *, record: bool = True, loaded: CardLoaded | None = None) -> None:
        if isinstance(feature_id, TraceStop):  # a trace in the history: its view opens over this card
            self.atlas_app.open_trace(feature_id, record=record)
            return
        if record:
            self.history.visit(feature_id)
        self._show_loaded(feature_id, loaded)

    def _show_loaded(self, feature_id: int, loaded: CardLoaded | None) -> None:
        if loaded is not None and loaded.card.feature.feature_id == feature_id:
            self.draw(loaded)
        else:
            self.load_card(feature_id)

    def action_back(self) -> None:
        if self.history.position <= self.base:
            self.dismiss()  # back past where this visit began: to the screen we came from
            return
        fid = self.history.back()
        if fid is not None:
            self.show(fid, record=False)

    def action_forward(self) -> None:
        fid = self.history.forward()
        if fid is not None:
            self.show(fid, record=False)

    def action_close(self) -> None:
        self.dismiss()

    def action_trace(self) -> None:
        if self.card is not None:
            self.atlas_app.open_trace(TraceStop(self.card.feature.feature_id, "down"))

    def action_label(self) -> None:
        if self.card is not None:
            self.atlas_app.edit_label(self.card.feature.feature_id)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "copy_url":  # hidden from the key bar when the feature has no known URL
            return bool(self.url)
        return True

    @property
    def url(self) -> str | None:
        return getattr(self.neuronpedia, "url", None)

    def action_copy_url(self) -> None:
        if self.url:
            self.app.copy_to_clipboard(self.url)
            self.notify(f"copied {self.url}")

    def action_focus_edges(self) -> None:
        table = self.query_one("#card-edges", DataTable)
        self.set_focus(table)  # now, so a down key typed right after `e` moves in the table
        table.scroll_visible(animate=False)

    # ------------------------------------------------------------ loading
    @work(thread=True, exclusive=True, group="card")
    def load_card(self, feature_id: int) -> None:
        msg = self.read("feature card", lambda atlas: read_card(atlas, feature_id))
        if msg is not None:
            self.post_message(msg)

    def reload(self) -> None:
        if isinstance(self.history.current, int):
            self.load_card(self.history.current)

    @on(CardLoaded)
    def card_loaded(self, msg: CardLoaded) -> None:
        if msg.card.feature.feature_id == self.history.current:  # else an answer overtaken by a newer move
            self.draw(msg)

    def draw(self, msg: CardLoaded) -> None:
        card = self.card = msg.card
        f = card.feature
        title = Text.assemble(
            (f.name, "bold"),
            f"  #{f.feature_id} · layer {f.layer} · {f.site} · SAE {f.sae}",
            (f"   history {self.history.position + 1}/{len(self.history)}" if len(self.history) > 1 else "", "dim"),
        )
        self.query_one("#card-title", Static).update(title)
        self.sub_title = f.name
        self.query_one(StatsPanel).set_feature(f, msg.criteria)
        self.query_one("#tok-promoted", TokenBars).set_scores(card.promoted)
        self.query_one("#tok-suppressed", TokenBars).set_scores(card.suppressed)
        self.query_one("#tok-inputs", TokenBars).set_scores(card.inputs)
        self.query_one("#card-labels", Static).update(_labels_text(card))
        spread = self.query_one("#card-spread", Static)
        spread.update(spread_text(card) or "")
        spread.display = bool(card.spread)
        self.neuronpedia = msg.neuronpedia
        np_text = neuronpedia_text(msg.neuronpedia)
        np_widget = self.query_one("#card-neuronpedia", Static)
        np_widget.update(np_text or "")
        np_widget.display = np_text is not None
        self.refresh_bindings()
        self.query_one(HeadBars).set_scores(card.heads)
        self.query_one("#card-edges", DataTable).clear()
        # The edge table sits below the fold and measures every cell before its first
        # paint: fill it once the card above it is on screen.
        self.call_after_refresh(self._fill_edges, card)
        # A new card starts at its top, like a new page in a browser.
        card_view = self.query_one("#card", VerticalScroll)
        card_view.scroll_home(animate=False)
        card_view.focus()

    def _fill_edges(self, card: FeatureCard) -> None:
        if card is not self.card:  # another card was drawn meanwhile
            return
        table = self.query_one("#card-edges", DataTable)
        table.clear()
        for i, e in enumerate(card.edges_out):
            head = f"L{e.head_layer}.H{e.head}" if e.head is not None else ""
            table.add_row(
                EDGE_KINDS.get(e.kind, e.kind),
                "→",
                e.dst,
                head,
                f"{e.score:.3f}",
                e.rank,
                key=f"out{i}:{e.dst_feature}",
            )
        for i, e in enumerate(card.edges_in):
            head = f"L{e.head_layer}.H{e.head}" if e.head is not None else ""
            table.add_row(
                EDGE_KINDS.get(e.kind, e.kind), "←", e.src, head, f"{e.score:.3f}", e.rank, key=f"in{i}:{e.src_feature}"
            )

    @on(DataTable.RowSelected, "#card-edges")
    def edge_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value or ""
        if ":" in key:
            self.show(int(key.rsplit(":", 1)[1]))


def read_card(atlas: Atlas, feature_id: int) -> CardLoaded:
    """Everything the card shows, read in the calling (worker) thread."""
    return CardLoaded(atlas.card(feature_id), read_verdict_criteria(atlas.conn), card_extras(atlas, feature_id))


def neuronpedia_text(np: NeuronpediaCard | None) -> Text | None:
    """The card's Neuronpedia section: URL, agreement with du, activation examples (active tokens shaded)."""
    if np is None or not (np.url or np.agreement or np.examples):
        return None
    t = Text("Neuronpedia", style="bold")
    if np.url:
        t.append(f"  {np.url}")
        t.append("  (u copies it)", style="dim")
    a = np.agreement
    if a:
        t.append(f"\n  its logit table ({a.neuronpedia_id}) against du, top {a.top_n}: ", style="dim")
        t.append(f"promoted {describe_list(a.pos_n, a.pos_shared, a.pos_rank_corr)}")
        t.append(" · ", style="dim")
        t.append(f"suppressed {describe_list(a.neg_n, a.neg_shared, a.neg_rank_corr)}")
        for title, toks in (("promotes", a.pos_str), ("suppresses", a.neg_str)):
            if toks:
                t.append(f"\n  Neuronpedia {title}: ", style="dim")
                t.append(" ".join(display_token(tok) for tok in toks))
    if np.examples:
        t.append(f"\nactivation examples ({np.examples[0].source})", style="bold")
        for ex in np.examples:
            t.append(f"\n  {fmt(ex.max_value, 2):>8}  ", style="dim")
            top = ex.max_value if ex.max_value > 0 else 1.0
            for i, tok in enumerate(ex.tokens):
                act = ex.acts[i] if i < len(ex.acts) else 0.0
                if act > 0:  # shaded by activation, as Neuronpedia draws them
                    g = int(70 + 150 * min(1.0, act / top))
                    t.append(running_text(tok), style=f"{'bold ' if i == ex.max_index else ''}black on rgb(0,{g},0)")
                else:
                    t.append(running_text(tok))
    return t


def spread_text(card: FeatureCard) -> Text | None:
    """A cross-layer transcoder feature's decoder norm per layer it writes, as bars (what `sae-atlas show` prints)."""
    if not card.spread:
        return None
    t = Text("decoder spread", style="bold")
    t.append("  ||W_dec[f, layer]|| per layer it writes", style="dim")
    top = max(s.norm for s in card.spread) or 1.0
    for s in card.spread:
        t.append(f"\n  L{s.out_layer:<3} {fmt(s.norm, 4):>9}  ")
        t.append("█" * max(1, round(24 * s.norm / top)) if s.norm > 0 else "", style="magenta")
    return t


def _labels_text(card: FeatureCard) -> Text:
    t = Text("labels", style="bold")
    if not card.labels:
        t.append("  none yet — press l to add one", style="dim")
        return t
    for lab in card.labels:
        t.append("\n  ")
        t.append(lab.text, style="italic" if lab.source == "user" else "")
        t.append(f"  [{lab.kind}] {lab.source}", style="dim")
        if lab.stored_in == "overlay":
            t.append(" · your overlay", style="dim")
        if lab.score is not None:
            t.append(f" score {fmt(lab.score, 2)}", style="dim")
    return t
