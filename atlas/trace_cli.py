"""`sae-atlas trace`: the strongest paths from a feature through the virtual edges, as a tree.

Lazy (see LAZY_COMMANDS in atlas/cli.py): matplotlib is imported only for ``--out FILE.png/.svg``.
"""

from __future__ import annotations

from pathlib import Path

import click

from atlas.dbpath import resolve_db_path
from atlas.neuronpedia.cli import CONTEXT_SETTINGS, db_option  # not atlas.cli: a lazy command must not import it
from atlas.output import dump_json
from atlas.trace import TOKEN_WORDS, Trace, check_traceable, format_percentile, render_tree, trace

OUT_SUFFIXES = (".txt", ".svg", ".png")


@click.command("trace", context_settings=CONTEXT_SETTINGS)
@click.argument("feature")
@db_option
@click.option("--down", "direction", flag_value="down", default=True, help="Follow what FEATURE writes into (default)")
@click.option("--up", "direction", flag_value="up", help="Follow what writes into FEATURE")
@click.option("--depth", type=click.IntRange(1, 12), default=3, show_default=True, help="Hops from FEATURE")
@click.option("--top", type=click.IntRange(1, 50), default=3, show_default=True, help="Strongest edges kept per node")
@click.option(
    "--min-percentile",
    "min_percentile",
    type=click.FloatRange(0, 100),
    default=0.0,
    show_default=True,
    help="Keep edges whose |score| is at least this percentile of the pair's random baseline",
)
@click.option(
    "-k", "--tokens", "n_tokens", type=click.IntRange(0, 50), default=6, show_default=True, help="Tokens shown per node"
)
@click.option("--json", "as_json", is_flag=True, help='Output {"nodes": [...], "edges": [...]} as JSON')
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the tree to FILE: .txt (the text), .svg or .png (a drawing by layer)",
)
def trace_command(
    feature: str,
    db: Path | None,
    direction: str,
    depth: int,
    top: int,
    min_percentile: float,
    n_tokens: int,
    as_json: bool,
    out_file: Path | None,
) -> None:
    """The strongest paths from FEATURE through later (--down) or earlier (--up) layers.

    Follows the virtual edges (the direct residual path between dictionaries,
    written by the build's `virtual` pass), keeping the --top strongest per
    node, strongest by the percentile of their |score| in the random baseline
    of their dictionary pair. Each node shows its layer, the edge's score and
    percentile, and its top tokens: promoted (the direct path to the logits)
    going down, input tokens going up. A feature met twice is expanded once.

    \b
    Example:
        sae-atlas trace L11.tc/540
        sae-atlas trace L11.tc/540 --depth 4 --top 2 --min-percentile 99
        sae-atlas trace L14.res/5 --up --json
        sae-atlas trace L11.tc/540 --out trace.svg
    """
    if out_file is not None and out_file.suffix.lower() not in OUT_SUFFIXES:
        raise click.BadParameter(f"{out_file.name}: write .txt, .svg or .png", param_hint="--out")
    from atlas.db import open_atlas

    with open_atlas(resolve_db_path(db), readonly=True) as atlas:
        check_traceable(atlas.conn)  # an atlas without virtual edges is told so whatever FEATURE is
        fid = atlas.resolve_feature(feature)
        tr = trace(
            atlas.conn, fid, direction=direction, depth=depth, top=top, min_percentile=min_percentile, n_tokens=n_tokens
        )
    text = render_tree(tr)
    if out_file is not None:
        write_trace_file(tr, text, out_file)
    if as_json:
        click.echo(dump_json(tr.as_dict()))
    else:
        click.echo(text)
    if out_file is not None:
        click.echo(f"wrote {out_file}", err=True)


def write_trace_file(tr: Trace, text: str, path: Path) -> None:
    """The tree as text, or drawn by layer (SVG / PNG through matplotlib)."""
    if path.suffix.lower() == ".txt":
        path.write_text(text + "\n", encoding="utf-8")
        return
    fig = draw_trace(tr)
    if path.suffix.lower() == ".svg":
        fig.savefig(path, metadata={"Date": None})
    else:
        fig.savefig(path, dpi=130)


def draw_trace(tr: Trace):  # -> matplotlib Figure
    """One box per node, placed at its layer (x) in tree order (y); edges drawn thicker the higher their
    percentile (p90 and below thinnest), red when the virtual weight is negative; each box holds the
    feature's name, score, percentile and top tokens."""
    from matplotlib.figure import Figure

    kids = tr.children()
    order: list[int] = []

    def walk(n: int) -> None:
        order.append(n)
        for c in kids.get(n, []):
            walk(c.node)

    walk(0)
    row = {n: i for i, n in enumerate(order)}
    by_id = {n.node: n for n in tr.nodes}
    # one column per point of the forward pass a dictionary reads (a transcoder at L14 before L14's resid_post)
    where = {n.node: _read_position(n.site, n.layer) for n in tr.nodes}
    points = sorted(set(where.values()))
    col = {n.node: points.index(where[n.node]) for n in tr.nodes}
    names = {points.index(where[n.node]): f"L{n.layer} {n.site}" for n in tr.nodes}
    height = max(2.0, 0.42 * len(order) + 1.0)
    fig = Figure(figsize=(max(6.0, 3.3 * len(points)), height), layout="constrained")
    ax = fig.add_subplot()
    words = TOKEN_WORDS[tr.direction]
    for n in tr.nodes:
        x, y = col[n.node], -row[n.node]
        if n.parent is not None:
            p = by_id[n.parent]
            pct = n.percentile if n.percentile is not None else 90.0
            width = 0.5 + 3.0 * min(1.0, max(0.0, (pct - 90.0) / 10.0))  # p90 thin .. p100 thick
            colour = "#c44e52" if (n.score or 0.0) < 0 else "#4c72b0"  # red: the edge inhibits
            ax.plot(
                [col[p.node] + 0.12 * (1 if col[p.node] < x else -1), x - 0.12 * (1 if col[p.node] < x else -1)],
                [-row[p.node], y],
                color=colour,
                linewidth=width,
                alpha=0.8,
                zorder=1,
            )
        head = (
            n.name
            if n.score is None
            else f"{n.name}  {n.score:+.3f}"
            + (f"  {format_percentile(n.percentile)}" if n.percentile is not None else "")
        )
        body = ("(seen above)  " if n.seen else "") + " ".join(n.tokens[:5])
        ax.text(
            x,
            y,
            f"{head}\n{body}",
            ha="center",
            va="center",
            fontsize=7,
            zorder=2,
            bbox={
                "boxstyle": "round,pad=0.3",
                "fc": "#fff7e6" if n.node == 0 else "white",
                "ec": "#999999" if n.seen else "#333333",
            },
        )
    ax.set_xticks(range(len(points)), [names[i] for i in range(len(points))])
    ax.set_xlim(-0.6, len(points) - 0.4)
    ax.set_ylim(-len(order) + 0.4, 0.6)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    arrow = "down" if tr.direction == "down" else "up"
    ax.set_title(f"trace {arrow} from {by_id[0].name} (node text: name, score, percentile; {words} tokens)", fontsize=9)
    return fig


def _read_position(site: str, layer: int) -> tuple[int, int]:
    """Where in the forward pass a dictionary reads: sortable, unknown sites after the known ones of a layer."""
    from atlas.domain import stream_position

    try:
        return (stream_position(site, layer), 0)
    except KeyError:
        return (8 * layer + 7, 1)
