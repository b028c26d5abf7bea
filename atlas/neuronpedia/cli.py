"""``sae-atlas import neuronpedia`` and the printing half of ``sae-atlas export --format neuronpedia``.

Loaded lazily by atlas.cli (LAZY_COMMANDS), so ``sae-atlas show`` never imports it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from atlas.dbpath import resolve_db_path
from atlas.neuronpedia.importer import DEFAULT_WINDOW, ImportFailed, ImportReport, import_export

# atlas.cli's settings, spelled here: a lazy command module must not import atlas.cli (an import cycle);
# its usage errors are made one line by the group that loads it.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def db_option(fn: Callable) -> Callable:
    """atlas.cli's --db: the atlas file, else the group's --db / $SAE_ATLAS_DB, else the bundled example."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Atlas file (default: the group's --db, $SAE_ATLAS_DB, then the bundled atlas.db.example)",
    )(fn)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@click.group("import", context_settings=CONTEXT_SETTINGS)
def import_group() -> None:
    """Bring in what other tools know of the atlas's features: Neuronpedia's public exports.

    \b
    Example:
        sae-atlas --db my.db import neuronpedia np/smollm2-135m-instruct-q4_1/26-sae-atlas-res --sae L26.res
    """


@import_group.command("neuronpedia", context_settings=CONTEXT_SETTINGS)
@click.argument("path", type=click.Path(path_type=Path))
@db_option
@click.option(
    "--sae",
    default=None,
    help="The atlas SAE the rows belong to (default: the SAE whose neuronpedia_id is the export's <model>/<source>)",
)
@click.option(
    "--activations",
    "n_examples",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Also import the top N activation examples per feature (0 = none)",
)
@click.option(
    "--window",
    type=click.IntRange(1, 4096),
    default=DEFAULT_WINDOW,
    show_default=True,
    help="Tokens kept per activation example, around its most active token",
)
@click.option(
    "--link",
    is_flag=True,
    help="Record the export's <model>/<source> as the SAE's neuronpedia_id "
    "(the card then shows its neuronpedia.org URL)",
)
@click.option(
    "--skip-bad-files",
    is_flag=True,
    help="Import the rest when a file cannot be read (default: an unreadable file leaves the atlas unchanged)",
)
def neuronpedia(
    path: Path, db: Path | None, sae: str | None, n_examples: int, window: int, link: bool, skip_bad_files: bool
) -> None:
    """Import a Neuronpedia export folder PATH (<model>/<source>/, or a model folder holding several).

    Explanations become labels (source import:neuronpedia:<explanation model>,
    found by `search --label`); logit tables (pos_str/neg_str) are compared
    with the atlas's du lists (shared tokens among the top 10 and a rank
    correlation, shown by `show`); --activations N keeps the N strongest
    activation examples per feature. Files may be gzipped or plain. Rows that
    are bad on their own are skipped and counted; a file that cannot be read
    leaves the atlas unchanged. Importing again replaces the earlier import.
    The atlas must be your own writable file at the current schema.

    \b
    Example:
        sae-atlas --db my.db import neuronpedia gemma-2-2b/12-gemmascope-res-16k
        sae-atlas --db my.db import neuronpedia ./export --sae L12.res --activations 5
    """
    atlas_path = resolve_db_path(db)
    try:
        report = import_export(
            atlas_path, path, sae=sae, activations=n_examples, window=window, link=link, skip_bad_files=skip_bad_files
        )
    except ImportFailed as e:
        for line in _problem_lines(e.report):
            click.echo(line, err=True)
        raise click.ClickException(str(e)) from None
    for line in report_lines(report, atlas_path):
        click.echo(line)
    for line in _problem_lines(report):
        click.echo(line, err=True)


def _problem_lines(report: ImportReport) -> list[str]:
    return [f"  {line}" for line in report.problems.lines()]


def report_lines(report: ImportReport, atlas_path: Path) -> list[str]:
    """What an import printed: per source, the matched / unmatched / skipped rows of each kind."""
    from atlas.db import open_atlas

    out = []
    for src in report.sources:
        out.append(f"{src.sae} <- {src.neuronpedia_id or '?'} ({src.folder})")
        c = src.counts
        e, f, a = c["explanations"], c["features"], c["activations"]
        if e.files:
            out.append(
                f"  explanations: {e.matched:,} matched ({src.labels:,} labels), {e.unmatched:,} unmatched, "
                f"{e.skipped:,} skipped"
            )
        if f.files:
            out.append(f"  logit tables: {f.matched:,} matched, {f.unmatched:,} unmatched, {f.skipped:,} skipped")
        if a.files:
            per = f", {src.example_bytes / src.examples:,.0f} bytes each" if src.examples else ""
            out.append(
                f"  activations:  {a.matched:,} matched, {a.unmatched:,} unmatched, {a.skipped:,} skipped; "
                f"kept {src.examples:,} examples{per}"
            )
        elif src.activation_files_unread:
            out.append(f"  activations:  {src.activation_files_unread} files not read (--activations N imports them)")
    with open_atlas(atlas_path) as atlas:
        for src in report.sources:
            line = agreement_summary(atlas, src.sae)
            if line:
                out.append(f"  {src.sae}: {line}")
    for name, np_id in report.linked:
        out.append(f"{name} is now linked to {np_id} on Neuronpedia")
    rate = report.rows_read / report.seconds if report.seconds > 0 else 0.0
    grew = report.bytes_after - report.bytes_before
    out.append(
        f"imported {report.rows_read:,} rows in {report.seconds:.1f} s ({rate:,.0f} rows/s) into "
        f"{atlas_path} ({'+' if grew >= 0 else '-'}{_size(abs(grew))})"
    )
    return out


def agreement_summary(atlas: Any, sae: str) -> str | None:
    """Medians and quartiles of the SAE's agreement with Neuronpedia's logit tables, in one line."""
    rows = atlas.conn.execute(
        "SELECT CAST(a.pos_shared AS REAL) / a.pos_n, a.pos_rank_corr, CAST(a.neg_shared AS REAL) / a.neg_n, "
        "a.neg_rank_corr, a.top_n FROM neuronpedia_agreement a JOIN features f USING (feature_id) "
        "JOIN saes s ON s.sae_id = f.sae_id WHERE s.name = ?",
        (sae,),
    ).fetchall()
    if not rows:
        return None
    parts = []
    for i, what in (
        (0, "promoted overlap"),
        (1, "promoted rank corr"),
        (2, "suppressed overlap"),
        (3, "suppressed rank corr"),
    ):
        vals = sorted(r[i] for r in rows if r[i] is not None)
        if vals:
            parts.append(f"{what} median {statistics.median(vals):.2f} (IQR {_q(vals, 0.25):.2f}-{_q(vals, 0.75):.2f})")
    return f"agreement with du over {len(rows):,} features, top {rows[0][4]}: " + "; ".join(parts)


def _q(sorted_vals: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (numpy's default)."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)
