"""``sae-atlas export --format neuronpedia OUT/``: an atlas's features in Neuronpedia's export layout.

Each SAE becomes ``OUT/<modelId>/<sourceId>/`` with ``model.jsonl``,
``sourceset.jsonl``, ``source.jsonl`` (and ``release.jsonl`` when the SAE has a
release) and ``features/batch-N.jsonl.gz``, 1,024 features per batch in index
order, as Neuronpedia's own exports are laid out, so the folder can be loaded
into a Neuronpedia instance. Each feature row carries what the atlas knows that
fits Neuronpedia's Neuron fields:

* ``pos_str``/``pos_values`` and ``neg_str``/``neg_values``: the atlas's
  weight-based du lists (decoded token text, best first; note the atlas folds
  the final norm's gain by default, Neuronpedia does not);
* ``topkCosSimIndices``/``topkCosSimValues``: the decoder-cosine neighbours
  (``cosine`` edges) within the SAE;
* ``hookName``, ``sourceSetName``.

With ``labels``, ``explanations/batch-N.jsonl.gz`` holds the atlas's labels
(not those it imported from Neuronpedia) as explanations whose
``explanationModelName`` is ``sae-atlas:<source>``.

The ids: an SAE whose ``neuronpedia_id`` is known keeps it; otherwise the model
id is the model's name made URL-safe (or ``model_id``) and the source id is
``<layer>-<set>``, the set being ``set_name`` or ``sae-atlas-<site>``, as
Neuronpedia names sources. OUT appears only when complete.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError
from atlas.neuronpedia.agreement import TOP_N
from atlas.neuronpedia.importer import LABEL_SOURCE_PREFIX

BATCH_SIZE = 1024  # Neuronpedia's FEATURES_EXPLANATIONS_BATCH_SIZE
GZIP_LEVEL = 5  # what Neuronpedia compresses its exports with
_WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".npz")


@dataclass(frozen=True)
class ExportedSource:
    sae: str
    neuronpedia_id: str
    folder: Path  # where it will be once OUT is in place
    features: int
    explanations: int


def slug(text: str) -> str:
    """A Neuronpedia id part: lowercase letters, digits, '-' and '_' (its model id rule)."""
    for suffix in _WEIGHT_SUFFIXES:
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    out = re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-")
    return out or "model"


def neuronpedia_ids(atlas: Any, saes: list, model_id: str | None, set_name: str | None) -> dict[str, tuple[str, str]]:
    """{SAE name: (model id, source id)} for the SAEs exported; ids must differ per SAE."""
    models = {m.model_id: m for m in atlas.models()}
    out: dict[str, tuple[str, str]] = {}
    for s in saes:
        if s.neuronpedia_id and "/" in s.neuronpedia_id and not (model_id or set_name):
            m, src = s.neuronpedia_id.split("/", 1)
        else:
            m = model_id or slug(models[s.model_id].name)
            suffix = slug(s.name.split(".", 1)[1] if s.name.startswith(f"L{s.layer}.") else s.name)
            src = f"{s.layer}-{slug(set_name) if set_name else 'sae-atlas-' + suffix}"
            if set_name and sum(o.layer == s.layer for o in saes) > 1:
                src += f"-{suffix}"
        out[s.name] = (m, src)
    seen: dict[tuple[str, str], str] = {}
    for name, ids in out.items():
        if ids in seen:
            raise AtlasError(f"{seen[ids]} and {name} would both be {'/'.join(ids)} on Neuronpedia: export them apart")
        seen[ids] = name
    return out


def export_neuronpedia(
    atlas: Any,
    out: Path,
    sae_names: list[str],
    *,
    model_id: str | None = None,
    set_name: str | None = None,
    top_n: int = TOP_N,
    labels: bool = False,
    compress: bool = True,
    force: bool = False,
) -> list[ExportedSource]:
    """Write the SAEs named (all when empty) under ``out`` in Neuronpedia's layout. Returns what was written."""
    saes = [atlas.sae(n) for n in sae_names] if sae_names else atlas.saes()
    ids = neuronpedia_ids(atlas, saes, model_id, set_name)
    _check_out(out, force)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    written = []
    try:
        for s in saes:
            m, src = ids[s.name]
            n_feat, n_expl = _write_source(atlas, s, tmp / m / src, m, src, top_n, labels, compress)
            written.append(ExportedSource(s.name, f"{m}/{src}", out / m / src, n_feat, n_expl))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _check_out(out: Path, force: bool) -> None:
    if not out.exists():
        if not out.parent.is_dir():
            raise FileNotFoundError(f"{out.parent}: no such folder")
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    if not force:
        raise FileExistsError(f"{out}: already exists (use --force to replace it)")
    looks_like_export = all(
        e.is_dir() and all(s.is_dir() and (s / "features").is_dir() for s in e.iterdir()) for e in entries
    )
    if not looks_like_export:
        raise AtlasError(f"{out}: holds files that are not a Neuronpedia export; --force replaces only an export")


def _jsonl(path: Path, rows: list[dict], compress: bool) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb", compresslevel=GZIP_LEVEL) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _write_source(
    atlas: Any, s: Any, folder: Path, model_id: str, source_id: str, top_n: int, labels: bool, compress: bool
) -> tuple[int, int]:
    model = next(m for m in atlas.models() if m.model_id == s.model_id)
    set_name = source_id.split("-", 1)[1] if "-" in source_id else source_id
    _jsonl(
        folder / "model.jsonl",
        [
            {
                "id": model_id,
                "displayName": model.name,
                "displayNameShort": model.name,
                "layers": model.n_layers,
                "dimension": model.d_model,
                "neuronsPerLayer": s.d_sae,
                "owner": model.source,
                "creatorId": None,
            }
        ],
        compress=False,
    )
    _jsonl(
        folder / "sourceset.jsonl",
        [
            {
                "modelId": model_id,
                "name": set_name,
                "description": f"sae-atlas export of {s.name}",
                "type": "sae",
                "creatorName": "sae-atlas",
                "urls": [],
                "releaseName": s.release,
                "creatorId": None,
            }
        ],
        compress=False,
    )
    _jsonl(
        folder / "source.jsonl",
        [
            {
                "id": source_id,
                "modelId": model_id,
                "setName": set_name,
                "hasDashboards": True,
                "saelensRelease": s.release,
                "saelensSaeId": s.sae_ref,
                "creatorId": None,
                "notes": s.notes,
            }
        ],
        compress=False,
    )
    if s.release:
        _jsonl(
            folder / "release.jsonl",
            [
                {
                    "name": s.release,
                    "description": s.release,
                    "creatorName": "sae-atlas",
                    "urls": [],
                    "creatorId": None,
                }
            ],
            compress=False,
        )
    n_feat = n_expl = 0
    idxs = [r[0] for r in atlas.conn.execute("SELECT idx FROM features WHERE sae_id = ? ORDER BY idx", (s.sae_id,))]
    for b, start in enumerate(range(0, len(idxs), BATCH_SIZE)):
        chunk = idxs[start : start + BATCH_SIZE]
        rows, expl = _batch(atlas.conn, s, model_id, source_id, set_name, chunk[0], chunk[-1], top_n, labels)
        _jsonl(folder / "features" / f"batch-{b}.jsonl", rows, compress)
        n_feat += len(rows)
        if labels and expl:
            _jsonl(folder / "explanations" / f"batch-{b}.jsonl", expl, compress)
            n_expl += len(expl)
    return n_feat, n_expl


def _batch(
    conn: Any, s: Any, model_id: str, source_id: str, set_name: str, lo: int, hi: int, top_n: int, labels: bool
) -> tuple[list[dict], list[dict]]:
    """Feature rows (and explanation rows) of the SAE's features with lo <= idx <= hi."""
    feats = conn.execute(
        "SELECT feature_id, idx FROM features WHERE sae_id = ? AND idx BETWEEN ? AND ? ORDER BY idx", (s.sae_id, lo, hi)
    ).fetchall()
    rows = {
        fid: {
            "modelId": model_id,
            "layer": source_id,
            "index": str(idx),
            "sourceSetName": set_name,
            "hookName": s.hook_name,
            "pos_str": [],
            "pos_values": [],
            "neg_str": [],
            "neg_values": [],
            "topkCosSimIndices": [],
            "topkCosSimValues": [],
        }
        for fid, idx in feats
    }
    where = "f.sae_id = ? AND f.idx BETWEEN ? AND ?"
    for fid, sign, raw, value in conn.execute(
        "SELECT ts.feature_id, ts.sign, COALESCE(v.raw, ''), ts.value FROM features f "
        "JOIN token_scores ts ON ts.feature_id = f.feature_id AND ts.phase = 'du' AND ts.rank < ? "
        "LEFT JOIN vocab v ON v.model_id = ? AND v.token_id = ts.token_id "
        f"WHERE {where} ORDER BY ts.feature_id, ts.sign DESC, ts.rank",
        (top_n, s.model_id, s.sae_id, lo, hi),
    ):
        key = "pos" if sign == 1 else "neg"
        rows[fid][f"{key}_str"].append(raw)
        rows[fid][f"{key}_values"].append(value)
    for fid, dst_idx, score in conn.execute(
        "SELECT e.src_feature, d.idx, e.score FROM features f JOIN edges e ON e.src_feature = f.feature_id "
        "AND e.kind = 'cosine' JOIN features d ON d.feature_id = e.dst_feature AND d.sae_id = f.sae_id "
        f"WHERE {where} ORDER BY e.src_feature, e.rank",
        (s.sae_id, lo, hi),
    ):
        rows[fid]["topkCosSimIndices"].append(dst_idx)
        rows[fid]["topkCosSimValues"].append(score)
    expl = []
    if labels:
        for label_id, idx, text, source in conn.execute(
            "SELECT l.label_id, f.idx, l.text, l.source FROM features f JOIN labels l ON l.feature_id = f.feature_id "
            f"WHERE {where} AND substr(l.source, 1, ?) != ? ORDER BY f.idx, l.label_id",
            (s.sae_id, lo, hi, len(LABEL_SOURCE_PREFIX), LABEL_SOURCE_PREFIX),
        ):
            expl.append(
                {
                    "id": f"sae-atlas-{label_id}",
                    "modelId": model_id,
                    "layer": source_id,
                    "index": str(idx),
                    "description": text,
                    "typeName": "sae-atlas",
                    "explanationModelName": f"sae-atlas:{source}",
                    "authorId": None,
                }
            )
    return list(rows.values()), expl
