"""``sae-atlas browse [ATLAS]``: open the Textual browser (atlas/cli.py imports this lazily)."""

from __future__ import annotations

from pathlib import Path

import click

from atlas.errors import AtlasError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("atlas", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option(
    "--read-only", "readonly", is_flag=True, help="Never write to the file (your labels go to your label overlay)."
)
@click.option("--keymap", "keymap_path", type=click.Path(path_type=Path), help="TOML keymap: binding id = keys.")
@click.option("--no-history", is_flag=True, help="Keep the SQL console history in memory only.")
def browse(atlas: Path | None, readonly: bool, keymap_path: Path | None, no_history: bool) -> None:
    """Browse an atlas in the terminal: overview, feature lists, cards, search, SQL.

    With no ATLAS: the group's --db, then $SAE_ATLAS_DB, then the bundled
    example atlas (atlas.db.example).

    \b
    Example:
        sae-atlas browse
        sae-atlas browse --read-only my.db
    """
    from atlas.dbpath import resolve_db_path
    from tui.app import default_history_path, make_app

    atlas = resolve_db_path(atlas)  # same order as every other command; one line if nothing is found
    try:
        app = make_app(
            atlas,
            readonly=readonly,
            keymap_path=keymap_path,
            history_path=None if no_history else default_history_path(),
        )
    except AtlasError as e:
        raise click.ClickException(str(e)) from None
    app.run()
    if app.fatal_error:  # the atlas opened but could not be shown (damaged): one line, exit 1
        raise click.ClickException(app.fatal_error)
    if app.return_code:  # Textual has already reported what ended it
        raise SystemExit(app.return_code)


if __name__ == "__main__":
    browse()
