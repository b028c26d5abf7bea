"""Semantic / non-semantic labels from a feature's four token lists (a heuristic).

The four lists: du promoted and suppressed tokens, ee top and bottom tokens
(the feature's token_scores rows). For each, over its first ``n_tokens``
entries (at most those the build stored):

* **whole words**: the stripped token is alphabetic, starts a word (a leading
  space, or a capitalised token that is not all capitals: "Years" but not
  "MER"), and is an English word: its Zipf frequency in ``wordfreq``'s list
  is at least ``min_zipf`` (3.0: once per million words). So the sub-word
  fragments a tokenizer cuts after a space (" enthus", " opin", " strugg")
  are not words, nor are code identifiers (" setattr", "ChannelType").
* **content words**: the distinct (case-folded) words rarer than
  ``max_zipf`` (6.0): the most frequent (the, of, and, we, some) are function
  words, which never make a list semantic on their own, and " war" / "War"
  are one word.
* ``word_frac``: the fraction of whole words; ``stem_frac``: the fraction of
  content words sharing their first ``stem_len`` letters (case-folded) with
  another (years / Years, running / runners); ``embed_z``: mean pairwise
  cosine of the tokens' W_E rows, as a z-score against ``n_baseline`` seeded
  random token sets of the same size.

A list is semantic when ``word_frac >= min_word_frac``, it has at least
``min_content`` content words, and (``stem_frac >= min_stem_frac`` or
``embed_z >= min_embed_z``); its score is ``word_frac * max(stem_frac,
clip(embed_z / (2 * min_embed_z), 0, 1))``. A feature is semantic when any of
its four lists is; its label names the best list's words. Otherwise the label
says what dominates the tokens of all four lists that are not words:
punctuation, whitespace, digits, short (function) words such as " to" or
" of", sub-word fragments, or incoherent words. Evidence (JSON) holds, per
list, the four numbers the verdict follows from, in ``EVIDENCE_KEYS`` order:
``{"du+": [word_frac, n_content, stem_frac, embed_z], ...}``. The agreement of these labels with hand labels of 100
example features is measured by tests/test_semantic_labels.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from atlas.domain import HEURISTIC_SOURCE
from builders.errors import LoadError
from builders.passes import du, ee, predicts
from builders.passes.base import Context, Pass, Rows, Step, Unit, each_sae
from builders.weights import ModelWeights

EVIDENCE_KEYS = ("word_frac", "n_content", "stem_frac", "embed_z")  # per list, in a label's evidence
LISTS = (("du+", "du", 1), ("du-", "du", -1), ("ee+", "ee", 1), ("ee-", "ee", -1))  # name, phase, sign


@dataclass(frozen=True)
class SemanticSettings:
    n_tokens: int = 10  # how many top tokens of each list are judged (at most those stored)
    min_zipf: float = 3.0  # a whole word is in wordfreq's English list at least this often (Zipf: 3 = 1 per million)
    max_zipf: float = 6.0  # words at least this frequent (the, of, we) are function words, not content words
    stem_len: int = 4  # shared prefix that counts as a shared stem
    min_word_frac: float = 0.5  # a semantic list has at least this fraction of whole words,
    min_content: int = 2  # at least this many content words, and
    min_stem_frac: float = 0.3  # at least this fraction of its content words share a stem, or
    min_embed_z: float = 2.0  # its tokens' embeddings cohere this many sd above random token sets
    n_baseline: int = 256  # random token sets for the embedding baseline
    seed: int = 0  # seeds the random token sets


@functools.lru_cache(maxsize=1)
def _wordfreq() -> Callable[[str], float]:
    try:
        from wordfreq import zipf_frequency
    except ImportError:  # pragma: no cover - wordfreq is in the build extra
        raise LoadError("the semantic pass needs wordfreq: pip install 'sae-atlas[build]'") from None
    return functools.lru_cache(maxsize=1 << 17)(lambda w: float(zipf_frequency(w, "en")))


def zipf(word: str) -> float:
    """Zipf frequency of a word in wordfreq's English list (0 when absent), case-folded."""
    return _wordfreq()(word.casefold())


def starts_word(tok: str) -> bool:
    """The token begins a word: a leading space, or capitalised (not all capitals, which are mostly fragments)."""
    s = tok.strip()
    return bool(s) and (tok[:1].isspace() or (s[:1].isupper() and not (len(s) > 1 and s.isupper())))


def is_word(tok: str, min_zipf: float = 3.0) -> bool:
    """A whole English word: alphabetic, starts a word, and in the word list at least ``min_zipf`` often."""
    s = tok.strip()
    return s.isalpha() and starts_word(tok) and zipf(s) >= min_zipf


def _kind(tok: str, min_zipf: float = 3.0) -> str:
    """What a token that is not a whole word is (``_reason`` only asks about those)."""
    s = tok.strip()
    if not s:
        return "whitespace"
    if s.isdigit():
        return "digits"
    if not any(c.isalnum() for c in s):
        return "punctuation"
    if s.isalpha() and starts_word(tok) and len(s) <= 2:
        return "short"  # " to", " of", "I"
    if s.isalpha() and starts_word(tok) and zipf(s) >= min_zipf:
        return "word"
    return "fragment"


def mean_pair_cos(E: torch.Tensor) -> torch.Tensor:
    """E: (n, m, d) -> (n,) mean cosine over distinct pairs."""
    u = E / E.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    G = u @ u.transpose(1, 2)  # (n, m, m)
    m = E.shape[1]
    return (G.sum((1, 2)) - G.diagonal(dim1=1, dim2=2).sum(1)) / (m * (m - 1))


@dataclass
class EmbedBaseline:
    mean: float
    std: float
    m: int


@torch.inference_mode()
def embed_baseline(model: ModelWeights, settings: SemanticSettings, m: int | None = None) -> EmbedBaseline:
    """Mean pairwise cosine of ``n_baseline`` random sets of ``m`` tokens (default ``n_tokens``): the sets must be
    as large as the lists judged, or the z-scores are off (a mean over fewer pairs spreads more)."""
    m = min(settings.n_tokens if m is None else m, model.d_vocab)
    gen = torch.Generator().manual_seed(settings.seed)
    ids = torch.stack([torch.randperm(model.d_vocab, generator=gen)[:m] for _ in range(settings.n_baseline)])
    c = mean_pair_cos(model.W_E[ids.to(model.device)].float()).double().cpu().numpy()  # (n_baseline,)
    return EmbedBaseline(float(c.mean()), float(c.std()) or 1.0, m)


def judge_list(toks: list[str], embed_z: float, s: SemanticSettings) -> dict:
    """Evidence of one token list (strings) with its embedding coherence already measured."""
    words = [t.strip() for t in toks if is_word(t, s.min_zipf)]
    # a word repeated in another case or spacing (" war", " War") is one word: neither two content words nor a
    # shared stem
    content = list(dict.fromkeys(w.casefold() for w in words if zipf(w) < s.max_zipf))
    stems = [w[: s.stem_len] for w in content]
    shared = sum(1 for st in stems if stems.count(st) > 1) if len(stems) > 1 else 0
    word_frac = len(words) / len(toks) if toks else 0.0
    stem_frac = shared / len(content) if content else 0.0
    semantic = (
        word_frac >= s.min_word_frac
        and len(content) >= s.min_content
        and (stem_frac >= s.min_stem_frac or embed_z >= s.min_embed_z)
    )
    score = word_frac * max(stem_frac, min(1.0, max(0.0, embed_z / (2 * s.min_embed_z))))
    return dict(
        tokens=toks,
        words=words,
        n_content=len(content),
        word_frac=round(word_frac, 3),
        stem_frac=round(stem_frac, 3),
        embed_z=round(embed_z, 2),
        semantic=semantic,
        score=round(score, 4),
    )


_REASONS = {
    "punctuation": "punctuation",
    "whitespace": "whitespace",
    "digits": "digits",
    "fragment": "sub-word fragments",
    "short": "short function words",
}


def _reason(lists: list[dict], min_zipf: float) -> str:
    """What dominates a non-semantic feature's tokens, over its four lists."""
    kinds = [_kind(t, min_zipf) for ev in lists for t in ev["tokens"]]
    other = [k for k in kinds if k != "word"]
    if len(other) <= len(kinds) // 2 or not other:
        return "incoherent words"
    return _REASONS[max(("punctuation", "whitespace", "digits", "short", "fragment"), key=other.count)]


def label_feature(lists: dict[str, list[str]], embed_z: dict[str, float], s: SemanticSettings) -> tuple:
    """(text, kind, score, evidence) of one feature from its token lists (name -> tokens) and their embed_z."""
    judged = [(name, judge_list(lists[name][: s.n_tokens], embed_z[name], s)) for name in lists]
    # the judged tokens are the feature's token_scores rows, and a list's verdict and score follow from these
    # four numbers: keep only them, as a list in EVIDENCE_KEYS order (atlas size: four lists of every feature;
    # the order is recorded in provenance["conventions"])
    evidence = {name: [ev[k] for k in EVIDENCE_KEYS] for name, ev in judged}
    sem = [(name, ev) for name, ev in judged if ev["semantic"]]
    if sem:
        _, best = max(sem, key=lambda p: p[1]["score"])
        return "semantic: " + ", ".join(best["words"][:5]), "semantic", best["score"], evidence
    reason = _reason([ev for _, ev in judged], s.min_zipf)
    return "non-semantic: " + reason, "non_semantic", max(ev["score"] for _, ev in judged), evidence


@torch.inference_mode()
def semantic_pass(
    model: ModelWeights,
    ids: dict[str, np.ndarray],
    settings: SemanticSettings,
    baseline: EmbedBaseline,
) -> list[tuple[str, str, float, dict]]:
    """One (text, kind, score, evidence) per feature row of the lists ``ids`` (name -> (n, k) token ids)."""
    lists, zs = {}, {}
    for name, a in ids.items():
        a = a[:, : baseline.m]
        cos = mean_pair_cos(model.W_E[torch.as_tensor(a, device=model.device)].float()).double().cpu().numpy()
        lists[name] = [[model.tokens[t] for t in row] for row in a.tolist()]
        zs[name] = ((cos - baseline.mean) / baseline.std).tolist()
    n = len(next(iter(ids.values())))
    return [label_feature({k: lists[k][i] for k in ids}, {k: zs[k][i] for k in ids}, settings) for i in range(n)]


# ---------------------------------------------------------------- in a build


def _lists(ctx: Context, u: Unit, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """The unit's (top, bottom) token lists of a phase: as an earlier unit stored them, else (its unit ran in another
    shard, or the pass is not in this build) recomputed: the same numbers."""
    top = ctx.stored_top_ids(u.sae, u.start, u.end, phase, 1)
    bottom = ctx.stored_top_ids(u.sae, u.start, u.end, phase, -1)
    if top is not None and bottom is not None:
        return top, bottom
    run = du.du_pass if phase == "du" else ee.ee_pass
    r = predicts.unit_scores(ctx, u, phase, run, moments=False)
    return r.top_ids, r.bot_ids


def _run(ctx: Context, u: Unit) -> Rows:
    cfg = ctx.cfg
    phases = ["du"] + (["ee"] if "ee" in cfg.passes else [])
    ids = {}
    for phase in phases:
        ids[f"{phase}+"], ids[f"{phase}-"] = _lists(ctx, u, phase)
    m = min(cfg.semantic.n_tokens, next(iter(ids.values())).shape[1])
    base = ctx.cached(("embed_baseline", m), lambda: embed_baseline(ctx.model, cfg.semantic, m))
    return Rows(labels=semantic_pass(ctx.model, ids, cfg.semantic, base))


PASS = Pass(
    name="semantic",
    order=90,
    help="a heuristic semantic / non-semantic label per feature from its token lists",
    reads="one",
    targets=each_sae,
    steps=(Step("semantic", _run),),
    writes=("labels",),
    label_source=HEURISTIC_SOURCE,
    conventions={"semantic evidence": "per token list (du+, du-, ee+, ee-): [" + ", ".join(EVIDENCE_KEYS) + "]"},
)
