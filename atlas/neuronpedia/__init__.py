"""Neuronpedia beside the atlas: its public exports in (``importer``), the atlas out in its layout
(``exporter``), and what a feature card shows of it (this module).

A feature's Neuronpedia page is ``https://www.neuronpedia.org/<model>/<source>/<index>``, known when
its SAE's ``neuronpedia_id`` (``<model>/<source>``, filled from SAELens's registry or by
``import neuronpedia --link``) is. The card shows that URL, the agreement between Neuronpedia's logit
table and the atlas's own du list, and imported activation examples with the active tokens marked.
Standard library only, like the rest of the read path.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

NEURONPEDIA = "https://www.neuronpedia.org"
CARD_EXAMPLES = 5  # activation examples a card shows


def feature_url(neuronpedia_id: str | None, idx: int) -> str | None:
    """The feature's page on neuronpedia.org, or None when its SAE's Neuronpedia id is unknown."""
    if not neuronpedia_id or "/" not in neuronpedia_id.strip("/"):
        return None
    return f"{NEURONPEDIA}/{neuronpedia_id.strip('/')}/{idx}"


@dataclass(frozen=True)
class Agreement:
    """Neuronpedia's logit table beside the atlas's du lists (table neuronpedia_agreement)."""

    neuronpedia_id: str
    top_n: int
    pos_n: int | None
    pos_shared: int | None
    pos_rank_corr: float | None
    neg_n: int | None
    neg_shared: int | None
    neg_rank_corr: float | None
    pos_str: list[str]
    neg_str: list[str]


@dataclass(frozen=True)
class ActivationExample:
    rank: int
    source: str
    tokens: list[str]
    acts: list[float]
    max_value: float
    max_index: int


@dataclass(frozen=True)
class NeuronpediaCard:
    """What a feature card shows of Neuronpedia: the URL, the agreement, activation examples."""

    url: str | None
    agreement: Agreement | None
    examples: list[ActivationExample]

    def as_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


def _has_tables(conn: sqlite3.Connection) -> bool:
    """Whether the atlas has schema 3's tables (an older one opens read-only without them)."""
    n = conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
        "AND name IN ('neuronpedia_agreement', 'activation_examples')"
    ).fetchone()[0]
    return n == 2


def _json_list(text: Any) -> list:
    try:
        value = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def card_extras(atlas: Any, feature_id: int, *, examples: int = CARD_EXAMPLES) -> NeuronpediaCard:
    """The Neuronpedia part of one feature's card (empty on an atlas without schema 3's tables)."""
    conn = atlas.conn
    row = conn.execute(
        "SELECT s.neuronpedia_id, f.idx FROM features f JOIN saes s ON s.sae_id = f.sae_id WHERE f.feature_id = ?",
        (feature_id,),
    ).fetchone()
    url = feature_url(row[0], row[1]) if row else None
    if not _has_tables(conn):
        return NeuronpediaCard(url, None, [])
    a = conn.execute(
        "SELECT neuronpedia_id, top_n, pos_n, pos_shared, pos_rank_corr, neg_n, neg_shared, neg_rank_corr, "
        "pos_str, neg_str FROM neuronpedia_agreement WHERE feature_id = ?",
        (feature_id,),
    ).fetchone()
    agreement = Agreement(*tuple(a)[:8], _json_list(a[8]), _json_list(a[9])) if a else None
    rows = conn.execute(
        "SELECT rank, source, tokens, acts, max_value, max_index FROM activation_examples "
        "WHERE feature_id = ? ORDER BY source, rank LIMIT ?",
        (feature_id, examples),
    ).fetchall()
    shown = [ActivationExample(r[0], r[1], [str(t) for t in _json_list(r[2])], _acts(r[3]), r[4], r[5]) for r in rows]
    return NeuronpediaCard(url, agreement, shown)


def _acts(text: Any) -> list[float]:
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0 for v in _json_list(text)]


# ------------------------------------------------------------------ text for the CLI card
_VISIBLE = {"\n": "↵", "\r": "", "\t": "⇥"}


def running_text(token: str) -> str:
    """A token as it reads inside running text: spaces kept, line breaks and tabs made visible."""
    out = []
    for ch in token:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def example_text(ex: ActivationExample, *, mark: tuple[str, str] = ("«", "»")) -> str:
    """The example's window as one line, each token with a positive activation inside ``mark``."""
    parts = []
    for i, tok in enumerate(ex.tokens):
        text = running_text(tok)
        active = i < len(ex.acts) and ex.acts[i] > 0
        parts.append(f"{mark[0]}{text}{mark[1]}" if active else text)
    return "".join(parts)


def describe_list(n: int | None, shared: int | None, rho: float | None) -> str:
    if not n:
        return "not compared (a list is missing)"
    corr = f", rank corr {rho:+.2f}" if rho is not None else ", rank corr n/a (< 3 shared)"
    return f"{shared}/{n} shared{corr}"


def card_lines(np_card: NeuronpediaCard, *, k: int = 10) -> list[str]:
    """The Neuronpedia section of ``sae-atlas show`` (no lines when there is nothing to show)."""
    out: list[str] = []
    a = np_card.agreement
    if np_card.url or a:
        out.append("\nNeuronpedia" + (f"  {np_card.url}" if np_card.url else ""))
    if a:
        out.append(f"  agreement of its logit table ({a.neuronpedia_id}) with du, top {a.top_n}:")
        out.append(f"    promoted   {describe_list(a.pos_n, a.pos_shared, a.pos_rank_corr)}")
        out.append(f"    suppressed {describe_list(a.neg_n, a.neg_shared, a.neg_rank_corr)}")
        from atlas.names import display_token

        for title, toks in (("promotes", a.pos_str), ("suppresses", a.neg_str)):
            if toks:
                out.append(f"  Neuronpedia {title}: " + " ".join(display_token(t) for t in toks[:k]))
    if np_card.examples:
        out.append(f"\nactivation examples ({np_card.examples[0].source}; «active tokens»)")
        for ex in np_card.examples:
            out.append(f"  {ex.max_value:9.3f}  {example_text(ex)}")
    return out
