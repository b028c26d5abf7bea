"""One search box for everything: feature ids, token text (promotes / suppresses / driven by) and labels.

Pure functions over an open Atlas, so tests and the command palette can call
them too. Every query behind them is an index lookup (vocab key, trigram FTS,
token_scores by token, labels FTS), so a search takes milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atlas.db import Atlas
from atlas.errors import FeatureNotFound
from atlas.listing import search_labels_bounded

# (kind shown to the user, phase, sign)
TOKEN_KINDS: tuple[tuple[str, str, int], ...] = (
    ("promotes", "du", 1),
    ("suppresses", "du", -1),
    ("driven by", "ee", 1),
)

_ID_RE = re.compile(r"^(#\d+|\d+|.+/\d+)$")


@dataclass(frozen=True)
class SearchHit:
    kind: str  # id | promotes | suppresses | driven by | label
    feature_id: int
    feature: str  # readable name, e.g. L12.res/1234
    match: str  # the token or label text that matched
    rank: int | None = None  # token rank in the feature's top-k (0 = strongest)
    value: float | None = None


def search_features(atlas: Atlas, text: str, *, limit: int = 25) -> list[SearchHit]:
    """Feature by id, then features whose top tokens contain ``text``, then labels matching it."""
    q = text.strip()
    if not q:
        return []
    hits: list[SearchHit] = []
    if _ID_RE.match(q):
        spec: str | int = int(q) if q.isdigit() else q
        try:
            f = atlas.feature(spec)
            hits.append(SearchHit("id", f.feature_id, f.name, q))
        except FeatureNotFound:
            pass
    token_hits = []
    # Exact token first (" Paris" and "Paris" for "paris"); substring only if no token is exactly that.
    for exact in (True, False):
        for kind, phase, sign in TOKEN_KINDS:
            for h in atlas.search_token(q, phase=phase, sign=sign, exact=exact, limit=limit):
                token_hits.append(SearchHit(kind, h.feature_id, h.feature, h.token, h.rank, h.value))
        if token_hits:
            break
    hits += token_hits
    for name, feature_id, text, _source in search_labels_bounded(atlas.conn, q, limit=limit):
        hits.append(SearchHit("label", feature_id, name, text))
    return hits
