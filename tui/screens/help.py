"""Help: every key binding with its id, and how to remap it."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.keymap import default_keymap_path


def binding_rows(app) -> list[tuple[str, str, str, str]]:
    """(where, keys, id, description) of every binding with an id, with the user's keymap applied."""
    keymap = getattr(app, "_keymap", {})
    rows = []
    for where, cls in (("everywhere", type(app)), *getattr(app, "HELP_SCREENS", ())):
        for b in cls.BINDINGS:
            if not isinstance(b, Binding) or not b.id:
                continue
            keys = keymap.get(b.id, b.key)
            rows.append(
                (
                    where,
                    ", ".join(app.get_key_display(Binding(k, "")) for k in keys.split(",")),
                    b.id,
                    b.description or b.action,
                )
            )
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help-dialog"):
            yield Static(self._text(), id="help-text")

    def _text(self):
        t = Table(title="sae-atlas browser — keys", box=None, padding=(0, 1), header_style="bold")
        t.add_column("where", style="dim")
        t.add_column("keys", style="bold cyan")
        t.add_column("does")
        t.add_column("id (for remapping)", style="dim")
        last = None
        for where, keys, bid, desc in binding_rows(self.app):
            t.add_row(where if where != last else "", keys, desc, bid)
            last = where
        t.add_row("", "", "", "")
        t.add_row("everywhere", "ctrl+p", "command palette: open a feature, a screen", "")
        t.add_row("everywhere", "ctrl+q", "quit", "")
        foot = Text.assemble(
            "\nRemap any key: put lines like ",
            ('"card.back" = "h,backspace"', "bold"),
            f" under [keymap] in {default_keymap_path()} (or pass --keymap FILE). Escape closes this.",
        )
        from rich.console import Group

        return Group(t, foot)
