"""What every screen shares: the app's atlas source and a safe way to run database work off the UI thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual.screen import Screen
from textual.worker import get_current_worker

from atlas.db import Atlas
from atlas.errors import error_line
from tui.messages import WorkFailed

if TYPE_CHECKING:
    from tui.app import SaeAtlasApp


class AtlasScreen(Screen):
    """A screen whose workers each open their own read-only connection."""

    @property
    def atlas_app(self) -> SaeAtlasApp:
        return self.app  # type: ignore[return-value]

    def read(self, what: str, fn: Callable[[Atlas], Any]) -> Any:
        """Run ``fn`` on a fresh read-only Atlas in the calling worker thread.

        Returns None (after posting WorkFailed) on error, or when the worker was
        cancelled meanwhile, so callers only post results that are still wanted.
        """
        try:
            with self.atlas_app.source.open() as atlas:
                result = fn(atlas)
        except Exception as e:  # shown as a notification, never a crash
            self.post_message(WorkFailed(what, error_line(e)))
            return None
        if get_current_worker().is_cancelled:
            return None
        return result
