"""Readable names: feature names like ``L12.res/1234`` and printable token text."""

from __future__ import annotations

import re

from atlas.domain import SITE_SHORT

_FEATURE_RE = re.compile(r"^(?P<sae>.+)/(?P<idx>\d+)$")

_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


# Short suffix of a transcoder's or CLT's default name (an SAE's says its site): L11.tc, L3.clt
KIND_SHORT = {"transcoder": "tc", "skip_transcoder": "stc", "clt": "clt"}


def default_sae_name(layer: int, site: str, kind: str = "sae") -> str:
    """``L12.res`` for a resid_post SAE at layer 12; ``L11.tc`` for a transcoder, ``L3.clt`` for a CLT."""
    return f"L{layer}.{KIND_SHORT.get(kind) or SITE_SHORT.get(site, site)}"


def split_feature_name(name: str) -> tuple[str, int] | None:
    """``'L12.res/1234'`` -> ``('L12.res', 1234)``; None if it has no ``/index`` tail."""
    m = _FEATURE_RE.match(name.strip())
    if not m:
        return None
    return m.group("sae"), int(m.group("idx"))


def display_token(raw: str) -> str:
    """A printable, unambiguous form of a token string.

    Whitespace becomes visible (space -> ␣, newline -> ↵, tab -> ⇥) and other
    control characters become ``\\xNN`` escapes, so ``' Paris'`` shows as
    ``'␣Paris'`` and a bare newline token is still visible in a table.
    """
    out = []
    for ch in raw:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) if out else "∅"


def token_key(raw: str) -> str:
    """Key for exact token search: case-folded, surrounding whitespace stripped."""
    key = raw.strip().casefold()
    return key if key else raw
