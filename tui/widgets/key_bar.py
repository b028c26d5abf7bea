"""A one-line footer of the active key bindings, drawn as text.

Textual's Footer recomposes a widget per key whenever bindings change (every
screen switch and focus change): about 100 ms a time on a loaded 2-core
machine, which alone would blow the 100 ms budget for opening a card. This
bar re-renders one line of text instead. It shows the same thing: each
shown binding's key (after any keymap remapping) and description.
"""

from __future__ import annotations

from collections import OrderedDict

from rich.text import Text
from textual.screen import Screen
from textual.widget import Widget


class KeyBar(Widget):
    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $footer-background; color: $footer-foreground; }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen:
            self.refresh()

    def render(self) -> Text:
        by_action: OrderedDict[str, tuple] = OrderedDict()
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if binding.show and binding.action not in by_action:
                by_action[binding.action] = (binding, enabled)
        out = Text(no_wrap=True, overflow="ellipsis")
        for binding, enabled in by_action.values():
            key = self.app.get_key_display(binding)
            out.append(f" {key} ", style="bold" if enabled else "dim")
            out.append(f"{binding.description} ", style="" if enabled else "dim")
        out.append("  ^p palette", style="dim")
        return out
