"""Draw the hand-labelling sample of the semantic labeller: ``python -m examples.smollm2.semantic_sample ATLAS OUT``.

100 features of the example atlas drawn uniformly with a fixed seed; for each,
its four token lists as the build stored them (du promoted, du suppressed, ee
top, ee bottom; decoded, whitespace as-is) and each list's embedding coherence
``embed_z`` (mean pairwise cosine of the tokens' W_E rows, as a z-score against
random token sets of the same size: the number the labeller uses and cannot
get from the strings). ``OUT`` (JSON) keeps any ``label`` / ``reason`` already
in it for a feature of the same name, so the hand labels survive a redraw.
tests/data/semantic_sample.json is this file with the labels added by hand.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

N, SEED = 100, 18
LISTS = {"du+": ("du", 1), "du-": ("du", -1), "ee+": ("ee", 1), "ee-": ("ee", -1)}


def draw(atlas: Path, n: int = N, seed: int = SEED) -> list[dict]:
    conn = sqlite3.connect(f"file:{atlas}?mode=ro", uri=True)
    names = [
        r[0]
        for r in conn.execute(
            "SELECT s.name || '/' || f.idx FROM features f JOIN saes s USING (sae_id) ORDER BY f.feature_id"
        )
    ]
    picks = sorted(np.random.default_rng(seed).choice(len(names), n, replace=False).tolist())
    out = []
    for i in picks:
        sae, idx = names[i].rsplit("/", 1)
        row = {"feature": names[i]}
        for key, (phase, sign) in LISTS.items():
            row[key] = [
                r[0]
                for r in conn.execute(
                    "SELECT v.raw FROM token_scores t JOIN features f USING (feature_id) JOIN saes s USING (sae_id) "
                    "JOIN vocab v ON v.model_id = s.model_id AND v.token_id = t.token_id "
                    "WHERE s.name = ? AND f.idx = ? AND t.phase = ? AND t.sign = ? ORDER BY t.rank",
                    (sae, int(idx), phase, sign),
                )
            ]
            row.setdefault("token_ids", {})[key] = [
                r[0]
                for r in conn.execute(
                    "SELECT t.token_id FROM token_scores t JOIN features f USING (feature_id) JOIN saes s "
                    "USING (sae_id) WHERE s.name = ? AND f.idx = ? AND t.phase = ? AND t.sign = ? ORDER BY t.rank",
                    (sae, int(idx), phase, sign),
                )
            ]
        out.append(row)
    return out


def add_embed_z(rows: list[dict]) -> None:
    """Each list's embed_z from the example model's embeddings (the labeller's own baseline)."""
    import torch

    from builders.models import load_model, smollm2_gguf_path
    from builders.passes.semantic import SemanticSettings, embed_baseline, mean_pair_cos

    gguf = smollm2_gguf_path()
    model = load_model(str(gguf.parent), gguf_file=gguf.name)
    m = len(rows[0]["token_ids"]["du+"])
    base = embed_baseline(model, SemanticSettings(), m)
    for row in rows:
        ids = torch.tensor([row["token_ids"][k] for k in LISTS])  # (4, m)
        cos = mean_pair_cos(model.W_E[ids].float()).double().numpy()
        row["embed_z"] = {k: round(float((c - base.mean) / base.std), 3) for k, c in zip(LISTS, cos, strict=True)}
        del row["token_ids"]


def main(argv: list[str]) -> int:
    atlas, out = Path(argv[0]), Path(argv[1])
    old = {r["feature"]: r for r in json.loads(out.read_text())["features"]} if out.is_file() else {}
    rows = draw(atlas)
    add_embed_z(rows)
    for row in rows:
        for key in ("label", "reason"):
            if key in old.get(row["feature"], {}):
                row[key] = old[row["feature"]][key]
    doc = {
        "what": "hand labels of the semantic labeller's test sample (tests/test_semantic_labels.py)",
        "drawn": f"{N} features of the example atlas, uniform, numpy default_rng({SEED}).choice; "
        "python -m examples.smollm2.semantic_sample",
        "rule": (
            "semantic: one of the four lists has at least 3 of its 5 tokens that are whole words sharing a meaning "
            "beyond grammar (a topic or concept, or forms of one content word or of one pronoun's referent); "
            "non_semantic: sub-word fragments, code identifiers, punctuation, function words or a grammatical class "
            "across words (articles, auxiliaries, reflexives), or whole words without a shared meaning"
        ),
        "features": rows,
    }
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
