"""One search, used by the CLI (`sae-atlas search`) and the browser's search box and palette.

Token text matches the way a person types it: **exact** matches first (the
token itself, case and surrounding spaces aside, so ``paris`` finds `` Paris``
and ``Paris``), then **partial** matches (tokens containing the text, e.g.
``␣parishes``), each hit labelled as one or the other. Labels are searched
with the FTS5 index over the atlas's labels and the user's overlay labels.
Every query behind it is an index lookup (vocab key, trigram FTS,
token_scores by token, labels FTS), so a search takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from atlas.errors import FeatureNotFound
from atlas.types import TokenHit

# (kind shown to the user, phase, sign)
TOKEN_KINDS: tuple[tuple[str, str, int], ...] = (
    ("promotes", "du", 1),
    ("suppresses", "du", -1),
    ("driven by", "ee", 1),
)
# How many vocabulary tokens a partial match looks at: the shortest containing the text.
PARTIAL_TOKENS = 64

_ID_RE = re.compile(r"^(#\d+|\d+|.+/\d+)$")


@dataclass(frozen=True)
class TokenMatches:
    """The vocabulary tokens a text matches: exactly, and in part (exact ones excluded)."""

    exact: list[tuple[int, int]]  # (model_id, token_id)
    partial: list[tuple[int, int]]


def match_tokens(atlas: Any, text: str, *, partial: bool = True) -> TokenMatches:
    exact = [(m, t) for m, t, _ in atlas.find_tokens(text, exact=True, limit=PARTIAL_TOKENS)]
    part: list[tuple[int, int]] = []
    if partial:
        seen = set(exact)
        part = [(m, t) for m, t, _ in atlas.find_tokens(text, exact=False, limit=PARTIAL_TOKENS) if (m, t) not in seen]
    return TokenMatches(exact, part)


def search_tokens(
    atlas: Any,
    text: str,
    *,
    phase: str = "du",
    sign: int = 1,
    sae: str | None = None,
    max_rank: int | None = None,
    limit: int = 50,
    partial: bool = True,
    matches: TokenMatches | None = None,
) -> list[TokenHit]:
    """Features whose (phase, sign) top-k list holds a token matching ``text``: exact matches first
    (best rank first), then partial ones, up to ``limit`` in all. ``TokenHit.match`` says which."""
    m = matches or match_tokens(atlas, text, partial=partial)
    kw = {"phase": phase, "sign": sign, "sae": sae, "max_rank": max_rank}
    hits = atlas.token_hits(m.exact, limit=limit, **kw)
    if partial and len(hits) < limit:
        hits += [
            dataclasses.replace(h, match="partial") for h in atlas.token_hits(m.partial, limit=limit - len(hits), **kw)
        ]
    return hits


@dataclass(frozen=True)
class SearchHit:
    """One line of the browser's search results."""

    kind: str  # id | promotes | suppresses | driven by | label
    feature_id: int
    feature: str  # readable name, e.g. L12.res/1234
    match: str  # the token or label text that matched
    rank: int | None = None  # token rank in the feature's top-k (0 = strongest)
    value: float | None = None
    how: str = ""  # exact | partial (tokens); overlay | atlas (labels: where the label is kept); id


def search_features(atlas: Any, text: str, *, limit: int = 25) -> list[SearchHit]:
    """Everything a search box can mean: a feature id, then features whose top tokens match ``text``
    (exact matches of every kind first, then partial ones), then labels matching it."""
    q = text.strip()
    if not q:
        return []
    hits: list[SearchHit] = []
    if _ID_RE.match(q):
        spec: str | int = int(q) if q.isdigit() else q
        try:
            f = atlas.feature(spec)
            hits.append(SearchHit("id", f.feature_id, f.name, q, how="id"))
        except FeatureNotFound:
            pass
    m = match_tokens(atlas, q)
    for how, tokens in (("exact", m.exact), ("partial", m.partial)):
        only = TokenMatches(tokens, []) if how == "exact" else TokenMatches([], tokens)
        for kind, phase, sign in TOKEN_KINDS:
            for h in search_tokens(atlas, q, phase=phase, sign=sign, limit=limit, matches=only):
                hits.append(SearchHit(kind, h.feature_id, h.feature, h.token, h.rank, h.value, how=how))
    for name, lab in atlas.search_labels(q, limit=limit):
        hits.append(SearchHit("label", lab.feature_id, name, lab.text, how=lab.stored_in))
    return hits


def token_sql_hint(schema_version: int) -> str:
    """How to match a token in SQL, for the SQL console and help texts."""
    if schema_version >= 2:
        return (
            "Tokens in SQL: token = '␣king' (the shown form), token_raw = ' king' (the text itself), "
            "token_key = 'king' (any case, no surrounding spaces)."
        )
    return (
        "Tokens in SQL: token = '␣king' (the shown form); the text itself: token_id IN (SELECT token_id FROM vocab "
        "WHERE raw = ' king'). (Schema 1: `sae-atlas migrate -o copy.db` adds token_raw and token_key.)"
    )
