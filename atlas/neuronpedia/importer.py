"""``sae-atlas import neuronpedia``: a Neuronpedia export's explanations, logit tables and activation examples.

What goes where:

* **explanations** become labels (kind ``free``, source
  ``import:neuronpedia:<explanationModelName>``), so the atlas's label search
  (and Datasette's ``?_search=``) finds them;
* **logit tables** (``pos_str``/``neg_str``) are compared with the atlas's own
  ``du`` lists (:mod:`atlas.neuronpedia.agreement`) and stored, with Neuronpedia's
  top tokens, in ``neuronpedia_agreement``;
* **activation examples** (``--activations N``): the N strongest per feature,
  trimmed to a window around the most active token, in ``activation_examples``.

The rows go into the atlas file, never into the label overlay: agreement and
examples have no place there, and an import is one unit. The file must be one
that :mod:`atlas.labels` would write your own labels into (yours, writable, at
the current schema, not the bundled example); otherwise the import is refused
with that reason and nothing is written.

Atomicity: the whole import is one transaction. Rows that are bad on their own
(a line that is not JSON, rows for another model or source, an index past
d_sae, missing fields) are skipped and counted. A file that cannot be read (a
corrupt gzip stream, an I/O error) fails the import and leaves the atlas as it
was, after every file has been looked at so that all problems are reported at
once; ``skip_bad_files`` instead drops that file's rows alone (a savepoint per
file). Re-importing replaces what an earlier import of the same SAE brought in,
so importing twice gives the same atlas.

Memory stays bounded: rows are read one line at a time and written per batch
file; activation examples keep a heap of N per feature for one file at a time,
and the final top N per feature is chosen in SQL.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.errors import AtlasError
from atlas.neuronpedia.agreement import TOP_N, compare
from atlas.neuronpedia.reader import SourceFolder, Tally, UnreadableFile, find_sources, iter_rows, parse_index

LABEL_SOURCE_PREFIX = "import:neuronpedia:"
EXAMPLE_SOURCE_PREFIX = "neuronpedia:"
DEFAULT_WINDOW = 32  # tokens kept per activation example
WINDOW_BEFORE = 0.75  # share of the window before the most active token (a causal model reads leftwards)
BUSY_TIMEOUT_MS = 30_000


class ImportFailed(AtlasError):
    """The import wrote nothing; ``report`` says what was read and what was wrong."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class KindCount:
    files: int = 0
    matched: int = 0  # rows of a feature of the atlas, imported
    unmatched: int = 0  # well-formed rows for no feature of the atlas (another model or source, index past d_sae)
    skipped: int = 0  # malformed rows and duplicates


@dataclass
class SourceReport:
    folder: Path
    neuronpedia_id: str | None
    sae: str
    counts: dict[str, KindCount] = field(default_factory=lambda: {k: KindCount() for k in _KINDS})
    labels: int = 0  # labels the explanations became
    examples: int = 0  # activation examples kept (top N per feature)
    example_bytes: int = 0  # bytes of their tokens and activations (JSON)
    activation_files_unread: int = 0  # activation files present while --activations was 0


@dataclass
class ImportReport:
    sources: list[SourceReport] = field(default_factory=list)
    problems: Tally = field(default_factory=Tally)
    unreadable: list[str] = field(default_factory=list)
    rows_read: int = 0
    seconds: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    linked: list[tuple[str, str]] = field(default_factory=list)  # (SAE, neuronpedia id) recorded by --link


_KINDS = ("explanations", "features", "activations")


@dataclass(frozen=True)
class _Target:
    """The atlas SAE one source folder's rows go to."""

    sae_id: int
    name: str
    d_sae: int
    model_id: int
    np_id: str | None
    feature_ids: Any  # idx -> feature_id: (base, n) when id = base + idx for idx < n, else a dict


def import_export(
    atlas_path: Path,
    export_path: Path,
    *,
    sae: str | None = None,
    activations: int = 0,
    window: int = DEFAULT_WINDOW,
    link: bool = False,
    skip_bad_files: bool = False,
    top_n: int = TOP_N,
) -> ImportReport:
    """Import the export at ``export_path`` (a ``<model>/<source>/`` folder, or a model folder of them)."""
    from atlas.db import open_atlas
    from atlas.labels import overlay_reason

    t0 = time.perf_counter()
    report = ImportReport(bytes_before=_size(atlas_path))
    with open_atlas(atlas_path) as ro:
        reason = overlay_reason(ro.path, ro.schema_version)
        if reason is not None:
            raise AtlasError(
                f"{ro.path}: cannot import into it ({reason}); import into your own copy: "
                "`sae-atlas migrate -o mine.db`, then `sae-atlas --db mine.db import neuronpedia ...`"
            )
    sources = find_sources(export_path)
    if not sources:
        raise AtlasError(
            f"{export_path}: no Neuronpedia export here (expected features/, explanations/ or activations/, "
            "or folders holding them)"
        )
    if sae is not None and len(sources) > 1:
        raise AtlasError(f"--sae goes with one source folder; {export_path} holds {len(sources)}: give one of them")
    with open_atlas(atlas_path, readonly=False) as atlas:
        conn = atlas.conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        targets = _match(atlas, sources, sae, link, report)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for folder, target in targets:
                src = SourceReport(folder.path, folder.neuronpedia_id, target.name)
                report.sources.append(src)
                _import_source(conn, folder, target, src, report, activations, window, skip_bad_files, top_n)
                if link and folder.neuronpedia_id and folder.neuronpedia_id != target.np_id:
                    conn.execute(
                        "UPDATE saes SET neuronpedia_id = ? WHERE sae_id = ?", (folder.neuronpedia_id, target.sae_id)
                    )
                    report.linked.append((target.name, folder.neuronpedia_id))
            if report.unreadable and not skip_bad_files:
                raise ImportFailed(
                    f"nothing imported: {len(report.unreadable)} file(s) could not be read "
                    "(--skip-bad-files imports the rest)",
                    report,
                )
            if not any(c.matched for s in report.sources for c in s.counts.values()):
                raise ImportFailed("nothing imported: no row of the export belongs to a feature of the atlas", report)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    report.seconds = time.perf_counter() - t0
    report.bytes_after = _size(atlas_path)
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ------------------------------------------------------------------ which SAE
def _match(atlas: Any, sources: list[SourceFolder], sae: str | None, link: bool, report: ImportReport) -> list:
    """(folder, target) for each source folder an SAE of the atlas takes; others are tallied."""
    rows = atlas.conn.execute("SELECT sae_id, name, d_sae, model_id, neuronpedia_id FROM saes").fetchall()
    by_np = {r["neuronpedia_id"]: r for r in rows if r["neuronpedia_id"]}
    out = []
    for folder in sources:
        if sae is not None:
            row = next(r for r in rows if r["sae_id"] == atlas.sae(sae).sae_id)
            np_id = folder.neuronpedia_id
            if row["neuronpedia_id"] and np_id and row["neuronpedia_id"] != np_id and not link:
                raise AtlasError(
                    f"{row['name']} is {row['neuronpedia_id']} on Neuronpedia, but {folder.path} holds {np_id}; "
                    "--link records the export's id for it instead"
                )
        else:
            row = by_np.get(folder.neuronpedia_id)
            if row is None:
                report.problems.add(
                    "source folders no SAE of the atlas is linked to (pass --sae NAME)",
                    f"{folder.path} ({folder.neuronpedia_id})",
                )
                continue
        out.append((folder, _target(atlas.conn, row)))
    if not out:
        linked = ", ".join(f"{r['name']}={r['neuronpedia_id']}" for r in rows if r["neuronpedia_id"]) or "none"
        ids = ", ".join(str(f.neuronpedia_id) for f in sources)
        raise AtlasError(
            f"no SAE of the atlas is linked to {ids} on Neuronpedia (linked: {linked}); pass --sae NAME to choose one"
        )
    return out


def _target(conn: Any, row: Any) -> _Target:
    lo, n = conn.execute("SELECT MIN(feature_id), COUNT(*) FROM features WHERE sae_id = ?", (row["sae_id"],)).fetchone()
    off = conn.execute(  # features written by add_sae (and kept so by export and merge): id = base + idx
        "SELECT COUNT(*) FROM features WHERE sae_id = ? AND (feature_id != ? + idx OR idx >= ?)",
        (row["sae_id"], lo, n),
    ).fetchone()[0]
    ids: Any = (
        (lo, n)
        if n and not off
        else dict(conn.execute("SELECT idx, feature_id FROM features WHERE sae_id = ?", (row["sae_id"],)))
    )
    return _Target(row["sae_id"], row["name"], row["d_sae"], row["model_id"], row["neuronpedia_id"], ids)


def _feature_id(target: _Target, idx: int) -> int | None:
    if isinstance(target.feature_ids, tuple):
        base, n = target.feature_ids
        return base + idx if idx < n else None
    return target.feature_ids.get(idx)


# ------------------------------------------------------------------ one source folder
def _import_source(
    conn: Any,
    folder: SourceFolder,
    target: _Target,
    src: SourceReport,
    report: ImportReport,
    activations: int,
    window: int,
    skip_bad_files: bool,
    top_n: int,
) -> None:
    in_sae = "feature_id IN (SELECT feature_id FROM features WHERE sae_id = ?)"
    files = {kind: folder.batches(kind) for kind in _KINDS}
    if files["explanations"]:
        conn.execute(
            f"DELETE FROM labels WHERE substr(source, 1, ?) = ? AND {in_sae}",
            (len(LABEL_SOURCE_PREFIX), LABEL_SOURCE_PREFIX, target.sae_id),
        )
    if files["features"]:
        conn.execute(f"DELETE FROM neuronpedia_agreement WHERE {in_sae}", (target.sae_id,))
    if files["activations"] and activations > 0:
        conn.execute(
            f"DELETE FROM activation_examples WHERE substr(source, 1, ?) = ? AND {in_sae}",
            (len(EXAMPLE_SOURCE_PREFIX), EXAMPLE_SOURCE_PREFIX, target.sae_id),
        )
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS np_examples (feature_id INTEGER NOT NULL, max_value REAL NOT NULL, "
            "seq INTEGER NOT NULL, tokens TEXT NOT NULL, acts TEXT NOT NULL, max_index INTEGER NOT NULL)"
        )
        conn.execute("DELETE FROM temp.np_examples")
    elif files["activations"]:
        src.activation_files_unread = len(files["activations"])
    heap_seq = 0
    for kind in _KINDS:
        if kind == "activations" and activations <= 0:
            continue
        for path in files[kind]:
            label = f"{kind}/{path.name}"
            conn.execute("SAVEPOINT np_file")
            try:
                rows = _rows(path, label, folder, target, src.counts[kind], report)
                if kind == "features":
                    _features(conn, rows, target, src, folder, top_n, report)
                elif kind == "explanations":
                    _explanations(conn, rows, src, report)
                else:
                    heap_seq = _activations(conn, rows, src, activations, window, heap_seq, report)
            except UnreadableFile as e:
                conn.execute("ROLLBACK TO np_file")
                report.unreadable.append(label)
                report.problems.add(f"unreadable files ({e.reason})", label)
            conn.execute("RELEASE np_file")
            src.counts[kind].files += 1
    if files["explanations"]:
        _drop_duplicate_labels(conn, target, src, report)
    if files["activations"] and activations > 0:
        _keep_top_examples(conn, target, folder, src, activations)


def _rows(path: Path, label: str, folder: SourceFolder, target: _Target, count: KindCount, report: ImportReport):
    """(where, feature_id, idx, row) of the rows of one file that belong to a feature of the SAE; the rest counted."""
    tally = report.problems
    bad_before = _bad_lines(tally)
    for where, row in iter_rows(path, tally, label):
        report.rows_read += 1
        model, layer = row.get("modelId"), row.get("layer")
        if (model is not None and folder.model_id and model != folder.model_id) or (
            layer is not None and folder.source_id and layer != folder.source_id
        ):
            count.unmatched += 1
            tally.add(f"rows for another model or source than {folder.neuronpedia_id}", f"{where} ({model}/{layer})")
            continue
        idx = parse_index(row.get("index"))
        if idx is None:
            count.skipped += 1
            tally.add("rows without a valid feature index", where)
            continue
        fid = _feature_id(target, idx)
        if fid is None:
            count.unmatched += 1
            tally.add(f"rows with an index past d_sae of {target.name} ({target.d_sae})", f"{where} (index {idx})")
            continue
        yield where, fid, idx, row
    bad = _bad_lines(tally) - bad_before  # lines that were not JSON objects are skipped rows of this kind
    count.skipped += bad
    report.rows_read += bad


def _bad_lines(tally: Tally) -> int:
    return tally.counts.get("lines that are not JSON", 0) + tally.counts.get("lines that are not a JSON object", 0)


# ------------------------------------------------------------------ explanations -> labels
def _explanations(conn: Any, rows: Iterable, src: SourceReport, report: ImportReport) -> None:
    from atlas.write import utc_now

    count, now, out = src.counts["explanations"], utc_now(), []
    for where, fid, _, row in rows:
        text = row.get("description")
        if not isinstance(text, str) or not text.strip():
            count.skipped += 1
            report.problems.add("explanations without a description", where)
            continue
        model = row.get("explanationModelName") or row.get("typeName") or "unknown"
        evidence = {k: row[key] for k, key in (("id", "id"), ("type", "typeName")) if isinstance(row.get(key), str)}
        out.append(
            (
                fid,
                " ".join(text.split()),
                LABEL_SOURCE_PREFIX + str(model).strip()[:100],
                json.dumps(evidence, separators=(",", ":")) if evidence else None,
                now,
            )
        )
        count.matched += 1
    conn.executemany(
        "INSERT INTO labels (feature_id, text, kind, source, evidence, created_at) VALUES (?, ?, 'free', ?, ?, ?)", out
    )
    src.labels += len(out)


def _drop_duplicate_labels(conn: Any, target: _Target, src: SourceReport, report: ImportReport) -> None:
    """One label per (feature, explanation model, text): an export that repeats a row imports it once."""
    cur = conn.execute(
        "DELETE FROM labels WHERE substr(source, 1, ?) = ? AND feature_id IN "
        "(SELECT feature_id FROM features WHERE sae_id = ?) AND label_id NOT IN "
        "(SELECT MIN(label_id) FROM labels WHERE substr(source, 1, ?) = ? AND feature_id IN "
        "(SELECT feature_id FROM features WHERE sae_id = ?) GROUP BY feature_id, source, text)",
        (len(LABEL_SOURCE_PREFIX), LABEL_SOURCE_PREFIX, target.sae_id) * 2,
    )
    if cur.rowcount > 0:
        count = src.counts["explanations"]
        count.matched -= cur.rowcount
        count.skipped += cur.rowcount
        src.labels -= cur.rowcount
        report.problems.add("repeated explanations (same feature, model and text)", f"{src.folder}", cur.rowcount)


# ------------------------------------------------------------------ logit tables -> agreement
def _token_list(row: dict, tokens_key: str, values_key: str, descending: bool) -> list[str] | None:
    """A logit table's tokens best first (by its values when they are there), or None when malformed."""
    tokens, values = row.get(tokens_key, []), row.get(values_key)
    if tokens is None:
        return []
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None
    if values is None or values == []:
        return tokens
    if not isinstance(values, list) or len(values) != len(tokens) or not all(_finite(v) for v in values):
        return None
    order = sorted(range(len(tokens)), key=lambda i: -values[i] if descending else values[i])  # stable on ties
    return [tokens[i] for i in order]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _features(
    conn: Any,
    rows: Iterable,
    target: _Target,
    src: SourceReport,
    folder: SourceFolder,
    top_n: int,
    report: ImportReport,
) -> None:
    from atlas.write import utc_now

    count, parsed = src.counts["features"], []
    for where, fid, _, row in rows:
        pos = _token_list(row, "pos_str", "pos_values", descending=True)
        neg = _token_list(row, "neg_str", "neg_values", descending=False)
        if pos is None or neg is None:
            count.skipped += 1
            report.problems.add("logit tables that are not lists of tokens with one value each", where)
            continue
        parsed.append((fid, pos, neg))
    if not parsed:
        return
    ours = _du_lists(conn, target.model_id, min(p[0] for p in parsed), max(p[0] for p in parsed), top_n)
    now, np_id, out = utc_now(), folder.neuronpedia_id or "", {}
    for fid, pos, neg in parsed:
        if fid in out:
            count.skipped += 1
            report.problems.add("repeated logit tables of one feature (the last kept)", f"{src.folder} #{fid}")
        p = compare(ours.get((fid, 1), []), pos, top_n)
        n = compare(ours.get((fid, -1), []), neg, top_n)
        out[fid] = (
            fid,
            np_id,
            top_n,
            p.n,
            p.shared,
            p.rank_corr,
            n.n,
            n.shared,
            n.rank_corr,
            _json_list(pos[:top_n]),
            _json_list(neg[:top_n]),
            now,
        )
    conn.executemany(
        "INSERT OR REPLACE INTO neuronpedia_agreement (feature_id, neuronpedia_id, top_n, pos_n, pos_shared, "
        "pos_rank_corr, neg_n, neg_shared, neg_rank_corr, pos_str, neg_str, imported_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        list(out.values()),
    )
    count.matched += len(out)


def _json_list(items: list) -> str | None:
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")) if items else None


def _du_lists(conn: Any, model_id: int, lo: int, hi: int, top_n: int) -> dict[tuple[int, int], list[str]]:
    """{(feature_id, sign): the atlas's du tokens (decoded text), best first} for feature ids lo..hi."""
    out: dict[tuple[int, int], list[str]] = {}
    for fid, sign, raw in conn.execute(
        "SELECT ts.feature_id, ts.sign, v.raw FROM token_scores ts "
        "JOIN vocab v ON v.model_id = ? AND v.token_id = ts.token_id "
        "WHERE ts.feature_id BETWEEN ? AND ? AND ts.phase = 'du' AND ts.rank < ? "
        "ORDER BY ts.feature_id, ts.sign, ts.rank",
        (model_id, lo, hi, top_n),
    ):
        out.setdefault((fid, sign), []).append(raw)
    return out


# ------------------------------------------------------------------ activation examples
def _activations(
    conn: Any, rows: Iterable, src: SourceReport, n_keep: int, window: int, seq: int, report: ImportReport
) -> int:
    """Keep the ``n_keep`` strongest examples per feature of one file (a heap each) in temp.np_examples."""
    count = src.counts["activations"]
    heaps: dict[int, list] = {}
    for where, fid, _, row in rows:
        ex = _example(row)
        if ex is None:
            count.skipped += 1
            report.problems.add("activation rows whose tokens and values do not match", where)
            continue
        count.matched += 1
        seq += 1
        item = (ex[0], -seq, ex)  # strongest first; on a tie the earlier row wins
        heap = heaps.setdefault(fid, [])
        if len(heap) < n_keep:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    out = []
    for fid, heap in heaps.items():
        for _, neg_seq, (max_value, tokens, values, max_index) in heap:
            toks, acts, at = trim(tokens, values, max_index, window)
            out.append((fid, max_value, -neg_seq, _json_list(toks) or "[]", _json_list(acts) or "[]", at))
    conn.executemany("INSERT INTO temp.np_examples VALUES (?, ?, ?, ?, ?, ?)", out)
    return seq


def _example(row: dict) -> tuple[float, list[str], list[float], int] | None:
    """(max value, tokens, values, index of the max) of an Activation row, or None when malformed."""
    tokens, values = row.get("tokens"), row.get("values")
    if (
        not isinstance(tokens, list)
        or not isinstance(values, list)
        or not tokens
        or len(tokens) != len(values)
        or not all(isinstance(t, str) for t in tokens)
        or not all(_finite(v) for v in values)
    ):
        return None
    at = row.get("maxValueTokenIndex")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at < len(values):
        at = max(range(len(values)), key=values.__getitem__)
    top = row.get("maxValue")
    return (float(top) if _finite(top) else float(values[at])), tokens, values, at


def trim(tokens: list[str], values: list[float], at: int, window: int) -> tuple[list[str], list, int]:
    """The ``window`` tokens around position ``at`` (3/4 of them before it), activations rounded to 4 digits."""
    window = max(1, window)
    start = max(0, at - int(window * WINDOW_BEFORE))
    end = min(len(tokens), start + window)
    start = max(0, end - window)
    return tokens[start:end], [_compact(v) for v in values[start:end]], at - start


def _compact(v: float) -> float | int:
    """4 significant digits; whole numbers (the many zeros) as ints, which JSON writes shortest."""
    r = float(f"{v:.4g}")
    return int(r) if r.is_integer() and abs(r) < 2**53 else r


def _keep_top_examples(conn: Any, target: _Target, folder: SourceFolder, src: SourceReport, n_keep: int) -> None:
    """The top ``n_keep`` examples per feature over every file, ranked, into activation_examples."""
    source = EXAMPLE_SOURCE_PREFIX + (folder.neuronpedia_id or target.name)
    conn.execute(
        "INSERT INTO activation_examples (feature_id, source, rank, tokens, acts, max_value, max_index) "
        "SELECT feature_id, ?, rank, tokens, acts, max_value, max_index FROM ("
        "  SELECT *, ROW_NUMBER() OVER (PARTITION BY feature_id ORDER BY max_value DESC, seq) - 1 AS rank "
        "  FROM temp.np_examples) WHERE rank < ? ORDER BY feature_id, rank",
        (source, n_keep),
    )
    src.examples, src.example_bytes = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(CAST(tokens AS BLOB)) + length(CAST(acts AS BLOB))), 0) "
        "FROM activation_examples WHERE source = ? AND feature_id IN (SELECT feature_id FROM features WHERE sae_id = ?)",
        (source, target.sae_id),
    ).fetchone()
    conn.execute("DELETE FROM temp.np_examples")
