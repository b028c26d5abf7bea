"""Command palette (ctrl+p): open a feature by id, token or label text, or jump to a screen."""

from __future__ import annotations

import asyncio
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.search import search_features


class FeatureCommands(Provider):
    """Searches the atlas in a thread (never on the UI thread) as the user types."""

    def _screens(self) -> list[tuple[str, str, object]]:
        app = self.app
        return [
            ("Search features", "token, label or id search (/)", app.action_search),
            ("SQL console", "read-only SQL with export (:)", app.action_sql),
            ("All features", "the feature list, sortable and filterable", app.action_features),
            ("Overview", "model, SAEs and per-layer plots", app.action_overview),
            ("Help", "every key and its id (?)", app.action_help),
        ]

    async def discover(self) -> Hits:
        for name, help_text, cb in self._screens():
            yield DiscoveryHit(name, cb, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, cb in self._screens():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_text)
        if len(query.strip()) < 1:
            return
        app = self.app

        def run() -> list:
            with app.source.open() as atlas:
                return search_features(atlas, query, limit=8)

        try:
            hits = await asyncio.to_thread(run)
        except Exception as e:  # a search error is not worth a crash of the palette
            app.notify(f"search failed: {e}", severity="error")
            return
        for i, h in enumerate(hits[:20]):
            yield Hit(
                0.9 - i * 0.01,
                f"{h.feature}  {h.kind} {h.match}",
                partial(app.open_feature, h.feature_id),
                help=f"open feature #{h.feature_id}",
            )
