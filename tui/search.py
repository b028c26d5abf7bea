"""The browser's search is the library's (atlas/search.py), shared with `sae-atlas search`."""

from __future__ import annotations

from atlas.search import TOKEN_KINDS, SearchHit, search_features

__all__ = ["TOKEN_KINDS", "SearchHit", "search_features"]
