"""Add or edit the user label of a feature.

If the atlas cannot be written (read-only file or folder, the shared example,
--read-only), the dialog says so and offers a writable copy instead. Typed
text is never dropped silently: escape with unsaved text asks again first,
and a failed save reopens this dialog with the text in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    copy_to: Path | None  # write into a new copy of the atlas at this path first


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
        readonly_reason: str | None = None,
        copy_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.feature_id = feature_id
        self.feature_name = feature_name
        self.initial_text = text
        self.initial_kind = kind
        self.original_text = original_text  # what is stored now; "dirty" means different from it
        self.readonly_reason = readonly_reason
        self.copy_path = copy_path
        self.armed_discard = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="label-dialog"):
            yield Static(f"[b]Label for {self.feature_name}[/b]")
            if self.readonly_reason:
                yield Static(
                    f"[b yellow]This atlas cannot be written:[/] {self.readonly_reason}.\n"
                    "Saving will make a writable copy with your label in it, and browse that copy from now on:",
                    id="label-readonly",
                )
                yield Input(value=str(self.copy_path or ""), id="label-copy-path")
            yield Input(value=self.initial_text, placeholder="what this feature does", id="label-text")
            with Horizontal(classes="dialog-row"):
                yield Label("kind")
                yield Select(KINDS, value=self.initial_kind, allow_blank=False, compact=True, id="label-kind")
                yield Button("Save" if not self.readonly_reason else "Save to copy", variant="primary", id="label-save")
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
        copy_to = None
        if self.readonly_reason:
            raw = self.query_one("#label-copy-path", Input).value.strip()
            if not raw:
                self.notify("type a path for the writable copy", severity="warning")
                return
            copy_to = Path(raw).expanduser()
        kind = str(self.query_one("#label-kind", Select).value)
        self.dismiss(LabelRequest(self.feature_id, text, kind, copy_to))

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
