"""`sae-atlas registry`: which SAELens registry names resolve through, what is in it, and updating it.

Imports neither torch nor sae_lens (only click and, to read the YAML, pyyaml).
"""

from __future__ import annotations

import json

import click

from atlas.errors import AtlasError


def _fail(e: AtlasError) -> click.ClickException:
    return click.ClickException(" ".join(str(e).split()) or type(e).__name__)


@click.group("registry")
def registry() -> None:
    """SAELens's registry of pretrained dictionaries: the names --sae RELEASE/SAE_ID accepts.

    \b
    Example:
      sae-atlas registry info
      sae-atlas registry list gemma-scope-2b-pt-res-canonical
      sae-atlas registry update
    """


@registry.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(as_json: bool) -> None:
    """Which registry file is used, where it comes from, and how many entries it has.

    \b
    Example:
      sae-atlas registry info --json
    """
    from builders import registry as reg

    try:
        d = reg.describe()
    except AtlasError as e:
        raise _fail(e) from None
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return
    click.echo(
        f"{d['path']}\n  from: {d['origin']}\n  {d['releases']} releases, {d['saes']} SAEs, sha256 {d['sha256'][:16]}"
    )


@registry.command("list")
@click.argument("release", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(release: str | None, as_json: bool) -> None:
    """Releases (or, given RELEASE, its SAE ids) with repository, format and model.

    \b
    Example:
      sae-atlas registry list
      sae-atlas registry list gemma-scope-2-270m-pt-transcoders
    """
    import difflib

    from builders import registry as reg

    try:
        data = reg.releases()
    except AtlasError as e:
        raise _fail(e) from None
    if release is None:
        rows = [
            {
                "release": r,
                "repo_id": v.get("repo_id"),
                "format": reg.CONVERSIONS.get(v.get("conversion_func"), f"({v.get('conversion_func')}: not read)"),
                "model": v.get("model"),
                "saes": len(v.get("saes") or []),
            }
            for r, v in sorted(data.items())
        ]
    else:
        if release not in data:
            near = difflib.get_close_matches(release, list(data), n=4, cutoff=0.5)
            raise click.ClickException(f"no release {release!r}" + (f"; nearest: {', '.join(near)}" if near else ""))
        rows = [
            {
                "name": f"{release}/{s.get('id')}",
                "path": s.get("path"),
                "neuronpedia": s.get("neuronpedia"),
                "l0": s.get("l0"),
            }
            for s in data[release].get("saes") or []
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo("\t".join("" if v is None else str(v) for v in row.values()))


@registry.command("update")
@click.option("--version", "version", default=None, help="A sae-lens version (default: the newest on PyPI).")
def update(version: str | None) -> None:
    """Fetch the newest registry from the sae-lens wheel on PyPI into sae-atlas's cache (needs the network).

    The copy is replaced only when the new one is whole and parses. An installed sae-lens's
    registry still comes first; SAE_ATLAS_SAE_REGISTRY=PATH overrides both.

    \b
    Example:
      sae-atlas registry update
    """
    from builders import registry as reg

    try:
        path, got = reg.update_registry(version=version)
    except AtlasError as e:
        raise _fail(e) from None
    click.echo(f"{path} (sae-lens {got})")
