"""Small Neuronpedia exports in the real layout (utils/neuronpedia-utils/neuronpedia_utils/export-data.py).

``<model>/<source>/`` with model.jsonl, source.jsonl, sourceset.jsonl at the top (plain JSON lines)
and ``features/``, ``explanations/``, ``activations/`` holding ``batch-N.jsonl.gz`` (or ``.jsonl``),
rows with the column names of Neuronpedia's Neuron, Explanation and Activation tables.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

MODEL = "synth-model"
SOURCE = "2-res-synth"
NP_ID = f"{MODEL}/{SOURCE}"


def write_jsonl(path: Path, rows: list, *, gz: bool = True, raw_lines: list[str] | None = None) -> Path:
    """Rows as JSON lines (plus ``raw_lines`` as they are), gzipped as Neuronpedia ships them."""
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw_lines or [])
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=5))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_export(
    root: Path,
    *,
    features: list[list[dict]] | None = None,
    explanations: list[list[dict]] | None = None,
    activations: list[list[dict]] | None = None,
    gz: bool = True,
    model: str = MODEL,
    source: str = SOURCE,
) -> Path:
    """``root/<model>/<source>/`` with one batch file per inner list of each kind. Returns the source folder."""
    folder = root / model / source
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "model.jsonl", [{"id": model, "displayName": model, "layers": 8, "neuronsPerLayer": 200}],
                gz=False)  # fmt: skip
    write_jsonl(folder / "source.jsonl", [{"id": source, "modelId": model, "setName": "res-synth"}], gz=False)
    write_jsonl(folder / "sourceset.jsonl", [{"modelId": model, "name": "res-synth", "description": "x"}], gz=False)
    for kind, batches in (("features", features), ("explanations", explanations), ("activations", activations)):
        for i, rows in enumerate(batches or []):
            write_jsonl(folder / kind / f"batch-{i}.jsonl", rows, gz=gz)
    return folder


def explanation(index: int, text: str, model_name: str = "gpt-4o-mini", **extra) -> dict:
    return {"id": f"cx{index}{abs(hash(text)) % 10_000}", "modelId": MODEL, "layer": SOURCE, "index": str(index),
            "authorId": "x", "description": text, "typeName": "oai_token-act-pair",
            "explanationModelName": model_name, **extra}  # fmt: skip


def feature_row(index: int, pos: list[tuple[str, float]], neg: list[tuple[str, float]], **extra) -> dict:
    return {"modelId": MODEL, "layer": SOURCE, "index": str(index), "pos_str": [t for t, _ in pos],
            "pos_values": [v for _, v in pos], "neg_str": [t for t, _ in neg], "neg_values": [v for _, v in neg],
            "frac_nonzero": 0.01, "hookName": "blocks.2.hook_resid_post", **extra}  # fmt: skip


def activation(index: int, tokens: list[str], values: list[float], **extra) -> dict:
    at = max(range(len(values)), key=values.__getitem__)
    return {"id": f"a{index}-{len(tokens)}-{at}", "modelId": MODEL, "layer": SOURCE, "index": str(index),
            "tokens": tokens, "values": values, "maxValue": values[at], "minValue": min(values),
            "maxValueTokenIndex": at, "dataSource": "test", **extra}  # fmt: skip


def link(atlas: Path, sae: str = "L2.res", np_id: str = NP_ID) -> None:
    """Record the SAE's Neuronpedia id, as the registry resolution of a build does."""
    conn = sqlite3.connect(atlas)
    conn.execute("UPDATE saes SET neuronpedia_id = ? WHERE name = ?", (np_id, sae))
    conn.commit()
    conn.close()


def du_lists(atlas: Path, feature_id: int, top_n: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The atlas's du lists of one feature as (decoded text, value), best first: the oracle's input."""
    conn = sqlite3.connect(f"file:{atlas}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT ts.sign, v.raw, ts.value FROM token_scores ts JOIN vocab v ON v.token_id = ts.token_id "
        "WHERE ts.feature_id = ? AND ts.phase = 'du' AND ts.rank < ? ORDER BY ts.sign DESC, ts.rank",
        (feature_id, top_n),
    ).fetchall()
    conn.close()
    return [(r, v) for s, r, v in rows if s == 1], [(r, v) for s, r, v in rows if s == -1]
