"""Semantic / non-semantic labels from a feature's du and ee token lists (a heuristic).

For each list (du promoted tokens, ee driving tokens), over its first
``n_tokens`` entries:

* ``word_frac``: fraction of whole-word tokens: the stripped token is
  alphabetic, at least ``word_min_len`` letters, and starts a word (leading
  whitespace in the decoded token, or a capital letter). Sub-word fragments,
  punctuation, whitespace and digits are not words.
* ``stem_frac``: fraction of those words sharing their first ``stem_len``
  letters (case-folded) with another word of the list (run / running / runs).
* ``embed_z``: mean pairwise cosine of the tokens' W_E rows, as a z-score
  against ``n_baseline`` seeded random token sets of the same size.

A list is semantic when ``word_frac >= min_word_frac`` and (``stem_frac >=
min_stem_frac`` or ``embed_z >= min_embed_z``); its score is
``word_frac * max(stem_frac, clip(embed_z / (2 * min_embed_z), 0, 1))``. A
feature is semantic when either list is; its label score is the larger list
score. Otherwise the label says what dominates the du list: punctuation,
whitespace, digits, short (function) words such as " to" or " of", sub-word
fragments, or incoherent words. Evidence (JSON) holds every sub-score per list
(the judged tokens are the feature's own token_scores rows, so they are not
repeated there; ``embed_z`` stands for the raw mean cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlas.domain import HEURISTIC_SOURCE
from builders.passes import du, ee
from builders.passes.base import Context, Pass, Rows, Step, Unit, each_sae
from builders.weights import ModelWeights


@dataclass(frozen=True)
class SemanticSettings:
    n_tokens: int = 10  # how many top tokens of each list are judged
    word_min_len: int = 3  # letters a whole word needs
    stem_len: int = 4  # shared prefix that counts as a shared stem
    min_word_frac: float = 0.5  # a semantic list has at least this fraction of whole words, and
    min_stem_frac: float = 0.3  # at least this fraction of its words share a stem, or
    min_embed_z: float = 2.0  # its tokens' embeddings cohere this many sd above random token sets
    n_baseline: int = 256  # random token sets for the embedding baseline
    seed: int = 0  # seeds the random token sets


def is_word(tok: str, min_len: int) -> bool:
    s = tok.strip()
    return s.isalpha() and len(s) >= min_len and (tok[:1].isspace() or s[:1].isupper())


def _kind(tok: str) -> str:
    """What a token that is not a whole word is (``_reason`` only asks about those)."""
    s = tok.strip()
    if not s:
        return "whitespace"
    if s.isdigit():
        return "digits"
    if not any(c.isalnum() for c in s):
        return "punctuation"
    if s.isalpha() and (tok[:1].isspace() or s[:1].isupper()):
        return "short"  # starts a word but is shorter than word_min_len: " to", " of", "I"
    return "fragment"


def _mean_pair_cos(E: torch.Tensor) -> torch.Tensor:
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
def embed_baseline(model: ModelWeights, settings: SemanticSettings) -> EmbedBaseline:
    m = min(settings.n_tokens, model.d_vocab)
    gen = torch.Generator().manual_seed(settings.seed)
    ids = torch.stack([torch.randperm(model.d_vocab, generator=gen)[:m] for _ in range(settings.n_baseline)])
    c = _mean_pair_cos(model.W_E[ids.to(model.device)].float()).double().cpu().numpy()  # (n_baseline,)
    return EmbedBaseline(float(c.mean()), float(c.std()) or 1.0, m)


def _judge(model, ids: np.ndarray, s: SemanticSettings, base: EmbedBaseline) -> list[dict]:
    ids = ids[:, : base.m]
    cos = _mean_pair_cos(model.W_E[torch.as_tensor(ids, device=model.device)].float()).double().cpu().numpy()
    out = []
    for row, c in zip(ids.tolist(), cos.tolist(), strict=True):
        toks = [model.tokens[t] for t in row]
        words = [t.strip() for t in toks if is_word(t, s.word_min_len)]
        stems = [w.casefold()[: s.stem_len] for w in words]
        shared = sum(1 for st in stems if stems.count(st) > 1) if len(stems) > 1 else 0
        word_frac = len(words) / len(toks)
        stem_frac = shared / len(words) if words else 0.0
        z = (c - base.mean) / base.std
        semantic = word_frac >= s.min_word_frac and (stem_frac >= s.min_stem_frac or z >= s.min_embed_z)
        score = word_frac * max(stem_frac, min(1.0, max(0.0, z / (2 * s.min_embed_z))))
        out.append(
            dict(
                tokens=toks,
                words=words,
                word_frac=round(word_frac, 3),
                stem_frac=round(stem_frac, 3),
                embed_cos=round(c, 3),
                embed_z=round(z, 2),
                semantic=semantic,
                score=round(score, 4),
            )
        )
    return out


_REASONS = {
    "punctuation": "punctuation",
    "whitespace": "whitespace",
    "digits": "digits",
    "fragment": "sub-word fragments",
    "short": "short function words",
}


def _reason(ev: dict) -> str:
    """What dominates a non-semantic list."""
    kinds = [_kind(t) for t in ev["tokens"] if t.strip() not in ev["words"]]
    if ev["word_frac"] >= 0.5 or not kinds:
        return "incoherent words"
    return _REASONS[max(("punctuation", "whitespace", "digits", "short", "fragment"), key=kinds.count)]


@torch.inference_mode()
def semantic_pass(
    model: ModelWeights,
    du_ids: np.ndarray,
    ee_ids: np.ndarray | None,
    settings: SemanticSettings,
    baseline: EmbedBaseline,
) -> list[tuple[str, str, float, dict]]:
    """One (text, kind, score, evidence) per feature row of ``du_ids`` (n, k) [and ``ee_ids``]."""
    du = _judge(model, du_ids, settings, baseline)
    ee = _judge(model, ee_ids, settings, baseline) if ee_ids is not None else [None] * len(du)
    rows = []
    for d, e in zip(du, ee, strict=True):
        lists = [("du", d)] + ([("ee", e)] if e is not None else [])
        sem = [(name, ev) for name, ev in lists if ev["semantic"]]
        # the judged tokens are the feature's token_scores rows, and embed_z carries embed_cos: keep the
        # sub-scores only (atlas size)
        evidence = {
            name: {k: v for k, v in ev.items() if k not in ("tokens", "words", "embed_cos")}
            | {"n_words": len(ev["words"])}
            for name, ev in lists
        }
        if sem:
            name, best = max(sem, key=lambda p: p[1]["score"])
            text = "semantic: " + ", ".join(best["words"][:5])
            rows.append((text, "semantic", best["score"], evidence))
        else:
            rows.append(("non-semantic: " + _reason(d), "non_semantic", max(ev["score"] for _, ev in lists), evidence))
    return rows


# ---------------------------------------------------------------- in a build


def _top_ids(ctx: Context, u: Unit, phase: str) -> np.ndarray:
    """The unit's promoted token lists: as an earlier unit stored them, else (its unit ran in another shard, or
    the pass is not in this build) recomputed: the same numbers."""
    ids = ctx.stored_top_ids(u.sae, u.start, u.end, phase)
    if ids is not None:
        return ids
    cfg = ctx.cfg
    run = du.du_pass if phase == "du" else ee.ee_pass
    return run(
        ctx.model,
        ctx.saes[u.sae],
        u.start,
        u.end,
        k=cfg.top_k,
        fold_norms=cfg.fold_norms,
        block_rows=ctx.block_rows,
        vocab_tile=ctx.vocab_tile,
    ).top_ids


def _run(ctx: Context, u: Unit) -> Rows:
    cfg = ctx.cfg
    du_ids = _top_ids(ctx, u, "du")
    ee_ids = _top_ids(ctx, u, "ee") if "ee" in cfg.passes else None
    base = ctx.cached("embed_baseline", lambda: embed_baseline(ctx.model, cfg.semantic))
    return Rows(labels=semantic_pass(ctx.model, du_ids, ee_ids, cfg.semantic, base))


PASS = Pass(
    name="semantic",
    order=90,
    help="a heuristic semantic / non-semantic label per feature from its token lists",
    reads="one",
    targets=each_sae,
    steps=(Step("semantic", _run),),
    writes=("labels",),
    label_source=HEURISTIC_SOURCE,
)
