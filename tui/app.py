"""The sae-atlas browser app: screens, global keys and the one writing path (labels, see atlas/labels.py).

``make_app(path)`` is shared by ``sae-atlas browse`` and the tests: it checks
the file first (missing, corrupt, not an atlas, too new -> AtlasError, one
line) so that a bad file never starts the UI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.worker import get_current_worker

from atlas.errors import error_line
from atlas.listing import FeatureFilter
from tui.commands import FeatureCommands
from tui.keymap import load_keymap
from tui.labels import save_user_label
from tui.messages import CardLoaded, LabelNotSaved, LabelSaved, WorkFailed
from tui.screens.export_dialog import ExportDialog
from tui.screens.feature_card import FeatureCardScreen, read_card
from tui.screens.feature_list import FeatureListScreen
from tui.screens.help import HelpScreen
from tui.screens.label_editor import LabelEditor, LabelRequest
from tui.screens.overview import OverviewScreen
from tui.screens.search import SearchScreen
from tui.screens.sql_console import SqlConsoleScreen
from tui.screens.trace import TraceScreen, TraceStop
from tui.source import AtlasSource

# For the help screen: every screen whose bindings are listed, in order.
SCREEN_CLASSES = (
    ("overview", OverviewScreen),
    ("feature list", FeatureListScreen),
    ("feature card", FeatureCardScreen),
    ("trace", TraceScreen),
    ("search", SearchScreen),
    ("SQL console", SqlConsoleScreen),
    ("label editor", LabelEditor),
    ("export", ExportDialog),
)


class SaeAtlasApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "sae-atlas"
    COMMANDS = App.COMMANDS | {FeatureCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    HELP_SCREENS = SCREEN_CLASSES  # whose bindings the help screen lists (it cannot import this module)
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", id="app.help"),
        Binding("slash", "search", "Search", id="app.search"),
        Binding("colon", "sql", "SQL", id="app.sql"),
        Binding("o", "overview", "Overview", show=False, id="app.overview"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.quit"),
    ]

    def __init__(
        self, source: AtlasSource, *, keymap: dict[str, str] | None = None, history_path: Path | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self.sub_title = source.path.name
        self.history_path = history_path
        self.sql_history: list[str] = _load_history(history_path)
        self.quit_armed = False
        self.show_timings = True  # query times in status lines; snapshot tests turn them off
        self.fatal_error: str | None = None  # why the app gave up (the CLI prints it and exits 1)
        if keymap:
            self.set_keymap(keymap)

    def get_default_screen(self) -> OverviewScreen:
        return OverviewScreen()

    # ------------------------------------------------------------ navigation
    @property
    def card_screen(self) -> FeatureCardScreen:
        """The one card screen, installed so that it survives being popped (and keeps its history)."""
        if not self.is_screen_installed("card"):
            self.install_screen(FeatureCardScreen(), name="card")
        return self.get_screen("card")  # type: ignore[return-value]

    def open_feature(self, feature_id: int) -> None:
        card = self.card_screen
        if self.screen is card:
            card.show(feature_id)
        else:
            # Read the card before pushing its screen, so the push draws the new card once.
            self._read_then_open(feature_id)

    @work(thread=True, exclusive=True, group="open-card")
    def _read_then_open(self, feature_id: int) -> None:
        try:
            with self.source.open() as atlas:
                loaded = read_card(atlas, feature_id)
        except Exception as e:  # shown as a notification, never a crash
            self.post_message(WorkFailed("feature card", error_line(e)))
            return
        if not get_current_worker().is_cancelled:
            self.call_from_thread(self._open_loaded, feature_id, loaded)

    def _open_loaded(self, feature_id: int, loaded: CardLoaded) -> None:
        card = self.card_screen
        if card in self.screen_stack:  # e.g. card -> search -> card: drop what is above it
            while self.screen is not card:
                self.pop_screen()
            card.show(feature_id, loaded=loaded)
            return
        card.enter(feature_id, loaded)
        self.push_screen(card)

    def open_trace(self, stop: TraceStop, *, record: bool = True) -> None:
        """Open the trace view over the card; the card's history records it, so back and forward cross both."""
        card = self.card_screen
        if record:
            card.history.visit(stop)
        if not self.is_screen_installed("trace"):
            self.install_screen(TraceScreen(), name="trace")
        trace = self.get_screen("trace")
        trace.enter(stop)  # type: ignore[attr-defined]
        if self.screen is not trace:
            self.push_screen(trace)

    def open_list(self, flt: FeatureFilter) -> None:
        self.push_screen(FeatureListScreen(flt))

    def action_back(self) -> None:
        if len(self.screen_stack) > 1:
            self.pop_screen()

    def action_overview(self) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()

    def action_search(self) -> None:
        if isinstance(self.screen, SearchScreen):
            self.screen.action_focus_input()
        else:
            self.push_screen(SearchScreen())

    def action_sql(self) -> None:
        if isinstance(self.screen, SqlConsoleScreen):
            self.screen.action_focus_input()
        else:
            self.push_screen(SqlConsoleScreen())

    def action_features(self) -> None:
        self.open_list(FeatureFilter())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        # A label being typed is never dropped silently: the first ctrl+q only warns.
        if isinstance(self.screen, LabelEditor) and self.screen.dirty and not self.quit_armed:
            self.quit_armed = True
            self.notify("unsaved label: enter saves it; ctrl+q again quits without saving", severity="warning")
            return
        self.exit()

    def exit(self, *args, **kwargs) -> None:  # type: ignore[override]
        # A worker's query cannot be killed, and the event loop waits for its thread before the
        # process ends: stop every query first, so quitting is immediate even mid-query.
        self.source.interrupt_all()
        super().exit(*args, **kwargs)

    def fail(self, error: str) -> None:
        """Give up: the atlas cannot be shown at all (a damaged overview). Exits with status 1."""
        if self.fatal_error is None:
            self.fatal_error = " ".join(error.split())
            self.exit(return_code=1)

    # ------------------------------------------------------------ errors from workers
    @on(WorkFailed)
    def work_failed(self, msg: WorkFailed) -> None:
        self.notify(msg.error, title=f"{msg.what} failed", severity="error", timeout=8)

    # ------------------------------------------------------------ SQL history
    def remember_sql(self, sql: str) -> None:
        if self.sql_history and self.sql_history[-1] == sql:
            return
        self.sql_history.append(sql)
        del self.sql_history[:-500]
        if self.history_path is not None:
            try:
                self.history_path.parent.mkdir(parents=True, exist_ok=True)
                self.history_path.write_text(json.dumps(self.sql_history, indent=0), encoding="utf-8")
            except OSError as e:
                self.notify(f"cannot save SQL history to {self.history_path}: {e.strerror}", severity="warning")

    # ------------------------------------------------------------ labels
    def edit_label(self, feature_id: int, *, text: str | None = None, kind: str | None = None) -> None:
        """Open the label editor for a feature (after reading its current user label off the UI thread)."""
        self._prepare_label(feature_id, text, kind)

    @work(thread=True, group="label-read")
    def _prepare_label(self, feature_id: int, text: str | None, kind: str | None) -> None:
        try:
            with self.source.open() as atlas:
                name = atlas.feature_name(feature_id)
                mine = next((lab for lab in atlas.labels(feature_id) if lab.source == "user"), None)
        except Exception as e:
            self.post_message(WorkFailed("label", error_line(e)))
            return
        try:
            where = self.source.label_target().describe()
        except Exception as e:
            self.post_message(WorkFailed("label", str(e)))
            return
        editor = LabelEditor(
            feature_id,
            name,
            text=text if text is not None else (mine.text if mine else ""),
            kind=kind or (mine.kind if mine else "free"),
            original_text=mine.text if mine else "",
            where=where,
        )
        self.call_from_thread(self.push_screen, editor, self._label_chosen)

    def _label_chosen(self, req: LabelRequest | None) -> None:
        self.quit_armed = False
        if req is not None:
            self._save_label(req)

    @work(thread=True, group="label-write")
    def _save_label(self, req: LabelRequest) -> None:
        try:
            label, target = save_user_label(self.source, req.feature_id, req.text, req.kind)
        except Exception as e:  # the text goes back to the editor: never lost
            self.post_message(LabelNotSaved(req.feature_id, req.text, req.kind, error_line(e)))
            return
        self.post_message(LabelSaved(req.feature_id, label, target.describe()))

    @on(LabelSaved)
    def label_saved(self, msg: LabelSaved) -> None:
        self.notify(f"label saved {msg.where}: {msg.label.text}")
        for screen in self.screen_stack:
            if (
                isinstance(screen, FeatureCardScreen)
                and screen.card
                and screen.card.feature.feature_id == msg.feature_id
            ):
                screen.reload()

    @on(LabelNotSaved)
    def label_not_saved(self, msg: LabelNotSaved) -> None:
        self.notify(f"label not saved: {msg.error}", severity="error", timeout=10)
        self.edit_label(msg.feature_id, text=msg.text, kind=msg.kind)


def _load_history(path: Path | None) -> list[str]:
    if path is None or not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [s for s in data if isinstance(s, str)]
    except (OSError, ValueError):
        return []


def default_history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sae-atlas" / "sql_history.json"


def make_app(
    path: str | os.PathLike,
    *,
    readonly: bool = False,
    keymap: dict[str, str] | None = None,
    keymap_path: str | os.PathLike | None = None,
    history_path: str | os.PathLike | None = None,
) -> SaeAtlasApp:
    """Check the atlas (raises an AtlasError with one clear line) and build the app.

    ``keymap`` wins over ``keymap_path``; with neither, the default keymap file
    is read if it exists. ``history_path=None`` keeps the SQL history in memory only.
    """
    source = AtlasSource(Path(path), force_readonly=readonly)
    source.check()
    km = keymap if keymap is not None else load_keymap(keymap_path)
    return SaeAtlasApp(source, keymap=km, history_path=Path(history_path) if history_path else None)
