"""How far two top-token lists agree: Neuronpedia's logit table against the atlas's ``du`` list.

Both lists say which tokens a feature's decoder direction promotes (or
suppresses) through the unembedding. Neuronpedia computes ``d_f @ W_U`` on the
raw unembedding; the atlas folds the final norm's gain in first by default
(``fold_norms``), so the two need not agree exactly: the agreement measures that
difference, and any disagreement between the two systems' weights.

For the top ``top_n`` tokens of each list (tokens compared as their decoded text):

* ``n``: how many are compared: the fewer distinct texts of the two top lists (two token ids
  that decode alike count once); None when a list is empty;
* ``shared``: tokens in both top lists (``shared / n`` is the overlap);
* ``rank_corr``: Spearman's rho between the two lists' orders of the shared
  tokens (ranks taken within the shared tokens, so it measures ordering alone);
  None below :data:`MIN_SHARED_FOR_RHO` shared tokens, where it says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TOP_N = 10
MIN_SHARED_FOR_RHO = 3


@dataclass(frozen=True)
class ListAgreement:
    n: int | None
    shared: int | None
    rank_corr: float | None

    @property
    def overlap(self) -> float | None:
        return None if not self.n or self.shared is None else self.shared / self.n


def _first_ranks(tokens: Sequence[str]) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for i, t in enumerate(tokens):
        ranks.setdefault(t, i)  # a repeated text (two token ids decoding alike) keeps its best rank
    return ranks


def compare(ours: Sequence[str], theirs: Sequence[str], top_n: int = TOP_N) -> ListAgreement:
    """Agreement of two best-first token lists among their top ``top_n``."""
    a, b = list(ours[:top_n]), list(theirs[:top_n])
    if not a or not b:
        return ListAgreement(None, None, None)
    ra, rb = _first_ranks(a), _first_ranks(b)
    shared = [t for t in ra if t in rb]
    rho = spearman([ra[t] for t in shared], [rb[t] for t in shared]) if len(shared) >= MIN_SHARED_FOR_RHO else None
    return ListAgreement(min(len(ra), len(rb)), len(shared), rho)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of two sequences without ties (ranks are positions): 1 - 6 sum d^2 / (m (m^2 - 1))."""
    m = len(x)
    rx = {v: i for i, v in enumerate(sorted(x))}
    ry = {v: i for i, v in enumerate(sorted(y))}
    d2 = sum((rx[a] - ry[b]) ** 2 for a, b in zip(x, y, strict=True))
    return 1.0 - 6.0 * d2 / (m * (m * m - 1))
