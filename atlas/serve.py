"""``sae-atlas serve``: the atlas in Datasette, read-only, on 127.0.0.1.

No web server of our own: Datasette is the one researchers use on SQLite
files. The atlas is first opened with :func:`atlas.db.open_atlas`, so a file
it refuses (not an atlas, too new, damaged, foreign schema objects) is refused
here too, with its one line; then Datasette serves it ``--immutable`` (read-only,
no locks, nothing written beside it) with the metadata the atlas carries
(:mod:`atlas.datasette_metadata`): titles and descriptions of every table, view
and column, units, facets, token and label search, canned queries.
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import click

from atlas.dbpath import resolve_db_path
from atlas.neuronpedia.cli import CONTEXT_SETTINGS, db_option  # not atlas.cli: a lazy command must not import it

HOST = "127.0.0.1"
DEFAULT_PORT = 8001  # Datasette's own default
SQL_TIME_LIMIT_MS = 5000  # the canned queries on a million-feature atlas need more than Datasette's default 1 s


def datasette_args(path: Path, metadata: Path, port: int, *, open_browser: bool = False) -> list[str]:
    """The `datasette serve` arguments: the atlas immutable, on 127.0.0.1 only."""
    args = [
        "serve",
        "--immutable",
        str(path),
        "--metadata",
        str(metadata),
        "--host",
        HOST,
        "--port",
        str(port),
        "--setting",
        "sql_time_limit_ms",
        str(SQL_TIME_LIMIT_MS),
    ]
    return args + (["--open"] if open_browser else [])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("atlas", required=False, type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option(
    "-p", "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True, help="Port on 127.0.0.1"
)
@click.option("-o", "--open", "open_browser", is_flag=True, help="Open the atlas in a web browser")
@click.option("--print-metadata", is_flag=True, help="Print the Datasette metadata (JSON) and exit, serving nothing")
def serve(atlas: Path | None, db: Path | None, port: int, open_browser: bool, print_metadata: bool) -> None:
    """Serve ATLAS (default: --db, then the bundled example) read-only in Datasette on 127.0.0.1.

    Every table, view and column is described; labels and tokens are
    searchable (labels?_search=, vocab_fts?_search=); canned queries answer
    the common questions (features that promote a token, a feature's card as
    tables, top features by a metric, label search, virtual-weight
    neighbours). Needs Datasette: pip install 'sae-atlas[web]'. --print-metadata
    gives the metadata to run Datasette yourself (sae-atlas serve ATLAS
    --print-metadata > m.json; datasette ATLAS --immutable ATLAS -m m.json).

    \b
    Example:
        sae-atlas serve
        sae-atlas serve my.db --port 8002 --open
        sae-atlas serve my.db --print-metadata
    """
    from atlas.datasette_metadata import build_metadata
    from atlas.db import open_atlas

    path = resolve_db_path(atlas or db)
    with open_atlas(path) as opened:  # what the atlas library refuses, serve refuses
        changed = opened.schema.changed_views + opened.schema.changed_triggers
        if changed:  # Datasette would show them as the file has them, under sae-atlas's names and descriptions
            raise click.ClickException(
                f"{path}: {', '.join(changed[:3])} differ from sae-atlas's own, and Datasette would serve them as "
                "they are: `sae-atlas validate` lists them; `sae-atlas export` makes a clean copy"
            )
        metadata = build_metadata(opened)
        others = opened.schema.other_objects
    if others and not print_metadata:
        click.echo(
            f"note: {path} also holds objects sae-atlas did not define, served as they are: {', '.join(others[:5])}",
            err=True,
        )
    if print_metadata:
        click.echo(json.dumps(metadata, indent=2, ensure_ascii=False))
        return
    try:
        from datasette.cli import cli as datasette_cli
    except ImportError:
        raise click.ClickException("sae-atlas serve needs Datasette: pip install 'sae-atlas[web]'") from None
    if not _port_free(port):
        raise click.ClickException(f"port {port} on {HOST} is in use: choose another with --port")
    with tempfile.TemporaryDirectory(prefix="sae-atlas-serve-") as tmp:
        md = Path(tmp) / "metadata.json"
        md.write_text(json.dumps(metadata, ensure_ascii=False), encoding="utf-8")
        click.echo(f"serving {path} read-only at http://{HOST}:{port}/ (Ctrl-C stops)", err=True)
        try:
            datasette_cli.main(
                datasette_args(path.resolve(), md, port, open_browser=open_browser),
                prog_name="datasette",
                standalone_mode=False,
            )
        except click.exceptions.Abort:
            pass
