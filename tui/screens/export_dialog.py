"""A small modal asking where to export query results (.csv or .json)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class ExportDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="export.cancel")]

    def __init__(self, default_path: str) -> None:
        super().__init__()
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("[b]Export all rows[/b] — the file name picks the format: .csv or .json")
            yield Input(value=self.default_path, id="export-path")
            yield Static("enter exports · escape cancels", classes="hint")

    @on(Input.Submitted, "#export-path")
    def submit(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            self.notify("type a file name", severity="warning")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
