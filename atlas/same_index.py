"""Same-index edges: cross-dictionary edges that join feature i of one dictionary to feature i of another.

Feature indices carry no meaning across dictionaries trained separately, so an
edge (flow, QK, OV, or any other kind) from feature i of dictionary A to a
feature of dictionary B lands on index i only by chance. If the pairing were
random, its destination would be uniform over B's ``d_sae`` latents, so

    chance = 1 / d_sae(B)     for an edge whose source index i < d_sae(B) (0 otherwise)

and the expected count of a group of edges is ``n_eligible / d_sae(B)``.
Far more than that says the dictionaries share their indexing: typically a
trainer that started every dictionary from the same seeded tokens, so feature
i of each began as the same token's activation and stayed close to it.

Rule (one group per edge kind and ordered pair of dictionaries): a group is
**flagged** when its same-index fraction is more than ``RATIO`` (10) times
chance **and** a one-sided binomial test of its count against chance gives
p < ``ALPHA`` (0.001). The ratio keeps a tiny excess in millions of edges
from being flagged; the test keeps two same-index edges out of three from
being flagged. ``validate`` warns (it does not fail) and ``report`` says it.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Any

RATIO = 10.0  # flagged above this many times chance ...
ALPHA = 1e-3  # ... when the binomial test also rejects chance at this level

_GROUPS_SQL = """
SELECT e.kind, fs.sae_id, fd.sae_id, COUNT(*), SUM(fs.idx = fd.idx), SUM(fs.idx < sd.d_sae), sd.d_sae
FROM edges e
JOIN features fs ON fs.feature_id = e.src_feature
JOIN features fd ON fd.feature_id = e.dst_feature
JOIN saes sd ON sd.sae_id = fd.sae_id
WHERE fs.sae_id != fd.sae_id
GROUP BY e.kind, fs.sae_id, fd.sae_id
ORDER BY e.kind, fs.sae_id, fd.sae_id
"""


@dataclass(frozen=True)
class SameIndexGroup:
    """The edges of one kind from one dictionary to another."""

    kind: str
    src_sae: str
    dst_sae: str
    n_edges: int
    n_eligible: int  # edges whose source index exists in the destination (idx < d_sae of dst)
    n_same: int
    chance: float  # 1 / d_sae of the destination
    p_value: float  # one-sided binomial P(X >= n_same), X ~ Bin(n_eligible, chance)

    @property
    def expected(self) -> float:
        return self.n_eligible * self.chance

    @property
    def fraction(self) -> float:
        return self.n_same / self.n_edges if self.n_edges else math.nan

    @property
    def ratio(self) -> float:
        """Observed count over the count chance gives (inf when chance gives none)."""
        if self.expected > 0:
            return self.n_same / self.expected
        return math.inf if self.n_same else math.nan

    @property
    def flagged(self) -> bool:
        return self.n_same > 0 and self.ratio > RATIO and self.p_value < ALPHA

    def describe(self) -> str:
        return (
            f"{self.kind} {self.src_sae} -> {self.dst_sae}: {self.n_same:,} of {self.n_edges:,} "
            f"({100 * self.fraction:.1f}%, {_times(self.ratio)} chance)"
        )


@dataclass(frozen=True)
class SameIndexCheck:
    groups: list[SameIndexGroup]

    @property
    def n_edges(self) -> int:
        return sum(g.n_edges for g in self.groups)

    @property
    def n_same(self) -> int:
        return sum(g.n_same for g in self.groups)

    @property
    def expected(self) -> float:
        return sum(g.expected for g in self.groups)

    @property
    def fraction(self) -> float:
        return self.n_same / self.n_edges if self.n_edges else math.nan

    @property
    def chance(self) -> float:
        """The fraction chance gives over all the groups (each group's chance weighted by its edges)."""
        return self.expected / self.n_edges if self.n_edges else math.nan

    @property
    def flagged(self) -> list[SameIndexGroup]:
        return [g for g in self.groups if g.flagged]

    def summary(self) -> str:
        """One line: the fraction against chance, and the flagged groups."""
        if not self.n_edges:
            return "no edges between two dictionaries"
        text = (
            f"{self.n_same:,} of {self.n_edges:,} cross-dictionary edges ({100 * self.fraction:.2f}%) join "
            f"features with the same index; chance gives {self.expected:.1f} ({100 * self.chance:.3f}%)"
        )
        bad = self.flagged
        if bad:
            text += (
                f"; FAR ABOVE CHANCE in {len(bad)} of {len(self.groups)} groups (e.g. {bad[0].describe()}): "
                "the dictionaries may share their initialisation, so these edges may reflect the trainer, not the model"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": f"flagged when the same-index fraction > {RATIO:g} x chance and one-sided binomial p < {ALPHA:g}",
            "n_edges": self.n_edges,
            "n_same": self.n_same,
            "fraction": self.fraction,
            "chance": self.chance,
            "expected": self.expected,
            "n_flagged": len(self.flagged),
            "groups": [
                {
                    "kind": g.kind,
                    "src_sae": g.src_sae,
                    "dst_sae": g.dst_sae,
                    "n_edges": g.n_edges,
                    "n_same": g.n_same,
                    "fraction": g.fraction,
                    "chance": g.chance,
                    "ratio": g.ratio if math.isfinite(g.ratio) else None,
                    "p_value": g.p_value,
                    "flagged": g.flagged,
                }
                for g in self.groups
            ],
        }


def same_index_check(conn: sqlite3.Connection) -> SameIndexCheck:
    """Count same-index edges per (kind, source dictionary, destination dictionary)."""
    names = dict(conn.execute("SELECT sae_id, name FROM saes"))
    groups = []
    for kind, src, dst, n, same, eligible, d_sae in conn.execute(_GROUPS_SQL):
        n, same, eligible = int(n), int(same or 0), int(eligible or 0)
        chance = 1.0 / int(d_sae) if d_sae else 0.0
        groups.append(
            SameIndexGroup(
                kind=str(kind),
                src_sae=str(names.get(src, src)),
                dst_sae=str(names.get(dst, dst)),
                n_edges=n,
                n_eligible=eligible,
                n_same=same,
                chance=chance,
                p_value=binomial_sf(same, eligible, chance),
            )
        )
    return SameIndexCheck(groups)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space from the nearer tail (stdlib only)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)

    def log_pmf(j: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq

    upper = k > n * p  # sum the upper tail itself when k lies above the mean, else one minus the lower tail
    js = range(k, n + 1) if upper else range(k - 1, -1, -1)
    top = log_pmf(js[0])
    total = 0.0
    for j in js:
        term = math.exp(log_pmf(j) - top)
        total += term
        if term < 1e-17 * total:  # past the mean, terms fall faster than geometrically
            break
    tail = math.exp(top) * total
    return min(1.0, tail) if upper else max(0.0, 1.0 - tail)


def _times(r: float) -> str:
    if math.isnan(r):
        return "– x"
    return "∞ x" if math.isinf(r) else f"{r:,.0f} x" if r >= 10 else f"{r:.2g} x"


def markdown(check: SameIndexCheck) -> list[str]:
    """The report's section body: the rule, the overall fraction, one table row per group."""
    lines = [
        f"**{check.summary()}.** Rule: a group (edge kind, source → destination dictionary) is flagged when its "
        f"same-index fraction is more than {RATIO:g} times chance (1 / d_sae of the destination) and a one-sided "
        f"binomial test rejects chance at p < {ALPHA:g}.",
        "",
    ]
    if not check.groups:
        return lines
    lines += [
        "| edges | from → to | edges | same index | fraction | chance | × chance | p (binomial) | flagged |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for g in check.groups:
        p = f"{g.p_value:.2g}" if g.p_value >= 1e-300 else "< 1e-300"
        lines.append(
            f"| {g.kind} | {g.src_sae} → {g.dst_sae} | {g.n_edges:,} | {g.n_same:,} | {100 * g.fraction:.2f}% | "
            f"{100 * g.chance:.3f}% | {_times(g.ratio)} | {p} | {'**yes**' if g.flagged else 'no'} |"
        )
    return lines + [""]
