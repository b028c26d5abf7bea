"""Reading Neuronpedia's public exports: the folder layout, its batch files and a tally of what was wrong.

Neuronpedia publishes one folder per model and source (``utils/neuronpedia-utils/
neuronpedia_utils/export-data.py`` in its repository writes them)::

    <modelId>/<sourceId>/
        model.jsonl  source.jsonl  sourceset.jsonl  release.jsonl    (one row each; plain JSON lines)
        features/batch-N.jsonl.gz        one Neuron row per line: modelId, layer (= the source id),
                                         index (a string), pos_str/pos_values, neg_str/neg_values, ...
        explanations/batch-N.jsonl.gz    id, modelId, layer, index, description, typeName, explanationModelName
        activations/batch-N.jsonl.gz     modelId, layer, index, tokens, values, maxValue, maxValueTokenIndex

Batch files may be gzipped or plain. They are read one line at a time, so
memory does not grow with the export. A line that is not a JSON object is
tallied and skipped; a file that cannot be read (a corrupt gzip stream, an I/O
error) raises :class:`UnreadableFile`, and the importer decides what that means.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("features", "explanations", "activations")
_BATCH_RE = re.compile(r"^batch-(\d+)\.jsonl(\.gz)?$")
GZIP_MAGIC = b"\x1f\x8b"


class UnreadableFile(Exception):
    """A batch file that cannot be read to its end (corrupt gzip stream, truncated, I/O error)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Tally:
    """Counts of what an import met, and for each kind of problem the first place it was seen."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, where: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n
        self.first.setdefault(what, where)

    def lines(self) -> list[str]:
        """One line per kind of problem, most frequent first."""
        return [
            f"{n:,} {what} (first: {self.first[what]})"
            for what, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]

    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class SourceFolder:
    """One ``<modelId>/<sourceId>/`` folder of an export."""

    path: Path
    model_id: str | None  # Neuronpedia's model id, e.g. gemma-2-2b
    source_id: str | None  # its source id (the rows' ``layer``), e.g. 12-gemmascope-res-16k

    @property
    def neuronpedia_id(self) -> str | None:
        return f"{self.model_id}/{self.source_id}" if self.model_id and self.source_id else None

    def batches(self, kind: str) -> list[Path]:
        """The folder's batch files of one kind, in batch order (``batch-N.jsonl.gz`` or ``.jsonl``).

        When a batch is there both gzipped and plain (an export interrupted while
        compressing), the gzipped one is read.
        """
        folder = self.path / kind
        if not folder.is_dir():
            return []
        found: dict[int, Path] = {}
        for p in folder.iterdir():
            m = _BATCH_RE.match(p.name)
            if m and p.is_file() and (int(m.group(1)) not in found or m.group(2)):
                found[int(m.group(1))] = p
        return [found[n] for n in sorted(found)]


def find_sources(path: Path) -> list[SourceFolder]:
    """The source folders at ``path``: the folder itself, each folder below it (a model's folder), or each
    one two levels below (the root `sae-atlas export --format neuronpedia OUT` writes: OUT/<model>/<source>)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such export folder")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder (give a Neuronpedia export's <model>/<source>/ folder)")
    if _is_source(path):
        return [_source(path)]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and _is_source(p))
    if not subs:
        subs = sorted(p for m in path.iterdir() if m.is_dir() for p in m.iterdir() if p.is_dir() and _is_source(p))
    return [_source(p) for p in subs]


def _is_source(path: Path) -> bool:
    return any((path / kind).is_dir() for kind in KINDS)


def _source(path: Path) -> SourceFolder:
    """The folder's ids: from source.jsonl (``id``, ``modelId``) and model.jsonl, else from its first row
    (``modelId``, ``layer``), else the folder names (``<model>/<source>``, as the export lays them out)."""
    row = first_row(path / "source.jsonl") or {}
    model_row = first_row(path / "model.jsonl") or {}
    data = {} if row else _first_data_row(SourceFolder(path, None, None))
    model_id = _text(row.get("modelId")) or _text(model_row.get("id")) or _text(data.get("modelId"))
    source_id = _text(row.get("id")) or _text(data.get("layer"))
    return SourceFolder(path, model_id or path.resolve().parent.name, source_id or path.resolve().name)


def _first_data_row(folder: SourceFolder) -> dict:
    for kind in KINDS:
        for batch in folder.batches(kind)[:1]:
            try:
                for _, row in iter_rows(batch, Tally()):
                    return row
            except UnreadableFile:
                pass  # the import reads it again and reports it
    return {}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def first_row(path: Path) -> dict | None:
    """The first JSON object of a small top-level file (model.jsonl, source.jsonl ...), or None."""
    if not path.is_file():
        return None
    try:
        for _, row in iter_rows(path, Tally()):
            return row
    except UnreadableFile:
        return None
    return None


def _open(path: Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == GZIP_MAGIC
    if gz or path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="strict", newline="\n")
    return open(path, encoding="utf-8", errors="strict", newline="\n")


def iter_rows(path: Path, tally: Tally, label: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) for each line of ``path`` that is a JSON object; other lines are tallied.

    ``where`` is ``label:line`` for messages. Raises UnreadableFile when the
    file cannot be read to its end.
    """
    label = label or path.name
    try:
        with _open(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{label}:{n}"
                try:
                    row = json.loads(line)
                except ValueError:
                    tally.add("lines that are not JSON", where)
                    continue
                if not isinstance(row, dict):
                    tally.add("lines that are not a JSON object", where)
                    continue
                yield where, row
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UnreadableFile(path, f"not a readable gzip file ({e or 'truncated'})") from None
    except UnicodeDecodeError as e:
        raise UnreadableFile(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UnreadableFile(path, f"cannot read ({e.strerror or e})") from None


def parse_index(value: Any) -> int | None:
    """A feature index as Neuronpedia writes it (a string of digits; an int accepted), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
