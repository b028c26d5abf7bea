"""Add or edit the user label of a feature.

The dialog says where the label will be kept (atlas.labels' rule): the atlas
file when the user may write it, else their label overlay, with the reason
(the bundled example, a read-only file, --read-only ...). Typed text is never
dropped silently: escape with unsaved text asks again first, and a failed save
reopens this dialog with the text in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

KINDS = (("free text", "free"), ("semantic", "semantic"), ("non-semantic", "non_semantic"))


@dataclass(frozen=True)
class LabelRequest:
    feature_id: int
    text: str
    kind: str


class LabelEditor(ModalScreen[LabelRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="label.cancel")]

    def __init__(
        self,
        feature_id: int,
        feature_name: str,
        *,
        text: str = "",
        kind: str = "free",
        original_text: str = "",
        where: str = "",
    ) -> None:
        super().__init__()
        self.feature_id = feature_id
        self.feature_name = feature_name
        self.initial_text = text
        self.initial_kind = kind
        self.original_text = original_text  # what is stored now; "dirty" means different from it
        self.where = where  # "in the atlas file X" / "in your label overlay Y (why)"
        self.armed_discard = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="label-dialog"):
            yield Static(f"[b]Label for {self.feature_name}[/b]")
            if self.where:
                yield Static(f"[dim]saved {self.where}[/]", id="label-where")
            yield Input(value=self.initial_text, placeholder="what this feature does", id="label-text")
            with Horizontal(classes="dialog-row"):
                yield Label("kind")
                yield Select(KINDS, value=self.initial_kind, allow_blank=False, compact=True, id="label-kind")
                yield Button("Save", variant="primary", id="label-save")
                yield Button("Cancel", id="label-cancel")
            yield Static("enter saves · escape cancels", classes="hint", id="label-hint")

    def on_mount(self) -> None:
        self.query_one("#label-text", Input).focus()

    @property
    def text(self) -> str:
        return self.query_one("#label-text", Input).value

    @property
    def dirty(self) -> bool:
        return self.text.strip() != self.original_text.strip()

    @on(Input.Submitted)
    @on(Button.Pressed, "#label-save")
    def save(self) -> None:
        text = self.text.strip()
        if not text:
            self.notify("type a label first (or escape to cancel)", severity="warning")
            return
        kind = str(self.query_one("#label-kind", Select).value)
        self.dismiss(LabelRequest(self.feature_id, text, kind))

    @on(Button.Pressed, "#label-cancel")
    def action_cancel(self) -> None:
        if self.dirty and not self.armed_discard:
            self.armed_discard = True
            self.query_one("#label-hint", Static).update(
                "[b yellow]unsaved label[/] — enter saves it, escape again discards it"
            )
            return
        self.dismiss(None)

    @on(Input.Changed, "#label-text")
    def edited(self) -> None:
        self.armed_discard = False
