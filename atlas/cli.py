"""The `sae-atlas` command line: thin commands over the atlas library.

Conventions after sqlite-utils: ``-h`` everywhere, an example at the end of
every help text, ``--json/--nl/--csv/--tsv`` on every listing with a
readable table by default. A library error (AtlasError) or any unexpected
exception becomes one line on stderr and exit 1, never a traceback
(``SAE_ATLAS_DEBUG=1`` re-raises, for debugging).

``build``, ``browse`` and ``report`` are lazy: their modules (and torch or
textual behind them) are imported only when that command runs.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import atlas as _atlas_pkg
from atlas import db as _db
from atlas.bundled import is_bundled_example
from atlas.dbpath import resolve_db_path
from atlas.domain import EDGE_KINDS, LABEL_KINDS
from atlas.errors import AtlasError, QueryInterrupted, explain_sqlite_error
from atlas.interrupt import sigint_stops_queries
from atlas.output import cell, dump_json, emit, output_options, table
from atlas.provenance import describe_criterion, read_verdict_criteria
from atlas.provenance_facts import facts_text, provenance_facts
from atlas.read import METRIC_COLUMNS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEBUG_ENV = "SAE_ATLAS_DEBUG"

# name -> (module, attribute, short help, what to install when the import fails)
LAZY_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "build": (
        "builders.cli",
        "build",
        "Build an atlas from model and SAE weights.",
        "the build extra: pip install 'sae-atlas[build]'",
    ),
    "browse": ("tui.cli", "browse", "Browse an atlas in the terminal (Textual).", "textual: pip install 'sae-atlas'"),
    "report": (
        "atlas.report",
        "report",
        "Write the paper-style report of an atlas.",
        "matplotlib: pip install 'sae-atlas'",
    ),
    "registry": (
        "builders.registry_cli",
        "registry",
        "Show or update SAELens's registry of pretrained dictionaries.",
        "the build extra: pip install 'sae-atlas[build]'",
    ),
    "import": ("atlas.neuronpedia.cli", "import_group", "Import Neuronpedia's public exports.", "sae-atlas"),
    "serve": (
        "atlas.serve",
        "serve",
        "Serve the atlas read-only in Datasette on 127.0.0.1.",
        "Datasette: pip install 'sae-atlas[web]'",
    ),
    "trace": (
        "atlas.trace_cli",
        "trace_command",
        "Strongest paths from a feature through later or earlier layers.",
        "matplotlib: pip install 'sae-atlas'",
    ),
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"


def one_line_usage(e: click.UsageError) -> click.UsageError:
    """The same usage error, shown as one line: ``Error: ... (see 'sae-atlas top -h')``.

    click prints a usage error as the usage line, a hint and the message (3-4
    lines); without a context it prints the message alone, so the hint joins it.
    """
    hint = f" (see '{e.ctx.command_path} -h')" if e.ctx is not None else ""
    out = click.UsageError(_one_line(e.format_message()) + hint)
    out.exit_code = e.exit_code
    return out


class OneLineUsageGroup(click.Group):
    """A group whose usage errors (bad options, arguments, choices; its own and its commands') are one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `sae-atlas` alone prints its help
        except click.UsageError as e:
            raise one_line_usage(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            if e.ctx is None and "(see '" in str(e):
                raise  # already one line
            raise one_line_usage(e) from None


class LazyGroup(OneLineUsageGroup):
    """A click group that imports some subcommands only when they run, and turns
    every failure into one line on stderr."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            return _load_lazy(name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import the lazy modules (that would pull in torch for --help).
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS and name not in self.commands:
                rows.append((name, LAZY_COMMANDS[name][2]))
            else:
                cmd = self.commands[name]
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - 12)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigint_stops_queries():  # ctrl-c stops a running query too, and says so
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except QueryInterrupted as e:
            raise Interrupted(_one_line(str(e))) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted (ctrl-c)") from None
        except AtlasError as e:
            raise click.ClickException(_one_line(str(e))) from None
        except sqlite3.Error as e:
            # a full disk, another writer, a damaged page met halfway through a read: one named line
            err = explain_sqlite_error(e, what=_missing_folder(ctx, e))
            if isinstance(err, QueryInterrupted):
                raise Interrupted(_one_line(str(err))) from None
            raise click.ClickException(_one_line(str(err))) from None
        except UnicodeDecodeError as e:
            # SQLite stores any bytes as TEXT; a damaged file can hold some that are not UTF-8
            raise click.ClickException(
                _one_line(
                    f"text in the atlas is not valid UTF-8 ({e.reason} at byte {e.start}): "
                    "is the atlas damaged? `sae-atlas validate` checks it"
                )
            ) from None
        except (FileExistsError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            raise click.ClickException(_one_line(str(e))) from None
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise  # click's main() handles a closed pipe (`sae-atlas sql ... | head`)
            if e.errno == errno.ENOSPC:
                raise click.ClickException(_one_line(f"disk full: {e}")) from None
            if os.environ.get(DEBUG_ENV):
                raise
            raise click.ClickException(_one_line(f"{e.__class__.__name__}: {e}")) from None
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            raise click.ClickException(
                _one_line(f"unexpected error: {e.__class__.__name__}: {e} (set {DEBUG_ENV}=1 for a traceback)")
            ) from None


class Interrupted(click.ClickException):
    """Ctrl-c (or another stop) ended the command: one line and the shell's exit status for SIGINT."""

    exit_code = 130


def _missing_folder(ctx: click.Context, e: sqlite3.Error) -> str:
    """For SQLite's "unable to open database file": the file argument whose folder does not exist, if any."""
    if "unable to open database file" not in str(e):
        return ""
    for value in ctx.meta.get(_PARAMS_KEY, {}).values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, Path) and not item.parent.is_dir():
                return f"{item.parent}: no such folder"
    return ""


_PARAMS_KEY = "sae_atlas.params"


class AtlasCommand(click.Command):
    """Keeps the parsed parameters where the group's error mapping can see them (ctx.meta is shared)."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.meta[_PARAMS_KEY] = dict(ctx.params)
        return super().invoke(ctx)


LazyGroup.command_class = AtlasCommand


def _load_lazy(name: str) -> click.Command:
    module, attr, short, install = LAZY_COMMANDS[name]
    try:
        cmd = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            reason = f"sae-atlas {name} is not available in this installation ({module} is missing)"
        else:
            reason = f"sae-atlas {name} needs {install} (missing: {missing or e})"
        return _unavailable(name, short, reason)
    except AttributeError:
        return _unavailable(name, short, f"sae-atlas {name} is not available ({module} has no {attr!r})")
    if not isinstance(cmd, click.Command):
        return _unavailable(name, short, f"sae-atlas {name} is not available ({module}.{attr} is not a command)")
    return cmd


def _unavailable(name: str, short: str, reason: str) -> click.Command:
    def run(args: tuple[str, ...]) -> None:
        raise click.ClickException(reason)

    return click.Command(
        name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=short,
        context_settings={**CONTEXT_SETTINGS, "ignore_unknown_options": True, "allow_extra_args": True},
    )


# ---------------------------------------------------------------- the atlas path
def db_option(fn: Callable) -> Callable:
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Atlas file (default: the group's --db, $SAE_ATLAS_DB, then the bundled atlas.db.example)",
    )(fn)


def open_ro(db: Path | None) -> _db.Atlas:
    return _db.open_atlas(resolve_db_path(db), readonly=True)


# ---------------------------------------------------------------- the group
@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(_atlas_pkg.__version__, "-V", "--version", prog_name="sae-atlas")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SAE_ATLAS_DB",
    default=None,
    help="Atlas file for every command [env SAE_ATLAS_DB; default: the bundled atlas.db.example]",
)
@click.pass_context
def cli(ctx: click.Context, db: Path | None) -> None:
    """What SAE features do, read from the weights alone, in one SQLite atlas.

    Features are named PREFIX/INDEX, e.g. L14.res/1234 (`sae-atlas info` lists
    the prefixes), or #ID by atlas-wide id.

    \b
    Example:
        sae-atlas info
        sae-atlas show L14.res/1234
        sae-atlas --db my.db search --promotes king
    """
    ctx.obj = {"db": db}


# ---------------------------------------------------------------- info
@cli.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Output everything as one JSON object")
@click.option("--provenance", "full_provenance", is_flag=True, help="Print the full build provenance (JSON)")
def info(db: Path | None, as_json: bool, full_provenance: bool) -> None:
    """Models, SAEs (with their feature-name prefixes), how the atlas was built, row counts, where your labels go.

    Row counts of big tables come from the statistics of the last ANALYZE
    (marked ~), so this stays fast on a million-feature atlas.

    \b
    Example:
        sae-atlas info
        sae-atlas info --provenance
        sae-atlas --db my.db info --json
    """
    from atlas.labels import label_target
    from atlas.maintenance import describe

    with open_ro(db) as atlas:
        d = describe(atlas)
        target = label_target(atlas)
        overlay = atlas.overlay_store()
        d["labels"] = {
            "in_overlay": overlay.count(),
            "overlay": str(overlay.path),
            "new_labels_go_to": target.where,
            "why": target.reason,
        }
    if as_json:
        click.echo(dump_json(d))
        return
    if full_provenance:
        click.echo(dump_json(d["provenance"]))
        return
    click.echo(
        f"{d['path']}  ({_size(d['file_bytes'])}, schema {d['schema_version']}, "
        f"written by sae-atlas {d['sae_atlas_version']} on {d['created_at']})"
    )
    for m in d["models"]:
        kv = f" over {m['n_kv_heads']} kv" if m["n_kv_heads"] != m["n_heads"] else ""
        click.echo(
            f"\nmodel {m['name']}: {m['architecture']}, {m['n_layers']} layers, d_model {m['d_model']}, "
            f"{m['n_heads']} heads{kv} of d_head {m['d_head']}, vocab {m['d_vocab']:,}, {m['norm_kind']}"
            f"{', tied embeddings' if m['tied_embeddings'] else ''}\n  source: {m['source']} ({m['source_kind']})"
            + (f"\n  sha256: {m['sha256']}" if m["sha256"] else "")
            + (f"\n  notes: {m['notes']}" if m["notes"] else "")
        )
    click.echo(
        "\nSAEs (a feature is PREFIX/INDEX, e.g. " + (f"{d['saes'][0]['name']}/0)" if d["saes"] else "L0.res/0)")
    )
    rows = [
        (
            s["name"],
            s["layer"],
            s["site"],
            s["d_sae"],
            s["architecture"],
            s["release"] or "",
            s["sae_ref"] or s["source"],
        )
        for s in d["saes"]
    ]
    if rows:
        click.echo(_indent(table(rows, ["prefix", "layer", "site", "features", "arch", "release", "ref / source"])))
    else:
        click.echo("  (none)")
    counts = ", ".join(
        f"{t} {'' if c['exact'] else '~'}{c['rows']:,}" for t, c in d["counts"].items() if t not in ("models", "saes")
    )
    click.echo(f"\nrows: {counts}")
    facts = provenance_facts(d["provenance"], created_at=d["created_at"], sae_atlas_version=d["sae_atlas_version"])
    click.echo("\nhow it was built (all of it as JSON: sae-atlas info --provenance)")
    facts = [f for f in facts if f.label != "model"]  # the model block above says it
    click.echo(facts_text(facts) if facts else "  (no provenance recorded)")
    n_overlay = d["labels"]["in_overlay"]
    mine = f"{n_overlay} label{'s' * (n_overlay != 1)} in your label overlay {overlay.path}; " if n_overlay else ""
    click.echo(f"\nyour labels: {mine}new ones go {target.describe()}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _indent(text: str, pad: str = "  ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


# ---------------------------------------------------------------- show
@cli.command()
@click.argument("feature")
@db_option
@click.option(
    "-k", "--tokens", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Tokens per list"
)
@click.option(
    "--edges",
    "edge_limit",
    type=click.IntRange(0, 10000),
    default=8,
    show_default=True,
    help="Edges per kind and direction",
)
@click.option("--json", "as_json", is_flag=True, help="Output the whole card as JSON")
def show(feature: str, db: Path | None, k: int, edge_limit: int, as_json: bool) -> None:
    """The full card of one FEATURE: metrics, tokens, labels, heads, edges, neighbours.

    FEATURE is PREFIX/INDEX (e.g. L14.res/1234, or <sae_ref>/1234) or #ID.

    \b
    Example:
        sae-atlas show L14.res/1234
        sae-atlas show '#16644' --json
    """
    with open_ro(db) as atlas:
        if as_json:
            card = atlas.card(feature, k=max(k, 20), edge_limit=max(edge_limit, 50))
        else:  # the edge_limit strongest edges of each kind, ranked per kind in SQL
            card = atlas.card(feature, k=k, edge_limit=edge_limit)
        criteria = read_verdict_criteria(atlas.conn)  # only that part of the (kilobytes of) provenance
        from atlas.neuronpedia import card_extras

        np_card = card_extras(atlas, card.feature.feature_id)
    if as_json:
        click.echo(dump_json({**dataclasses.asdict(card), "neuronpedia": np_card.as_dict()}))
        return
    click.echo(render_card(card, k=k, edge_limit=edge_limit, criteria=criteria, neuronpedia=np_card))


def render_card(card: Any, *, k: int = 10, edge_limit: int = 8, criteria: Any = None, neuronpedia: Any = None) -> str:
    f = card.feature
    m = f.metrics
    out = [f"{f.name}  (#{f.feature_id})  layer {f.layer} {f.site}" + _dictionary_kind(card)]
    if card.labels:
        for lab in card.labels:
            score = f" {lab.score:.2f}" if lab.score is not None else ""
            where = ", your overlay" if lab.stored_in == "overlay" else ""
            out.append(f"  label [{lab.source}, {lab.kind}{score}{where}] {lab.text}  (id {lab.label_id})")
    else:
        out.append("  no labels")
    out.append("  " + _verdict("predicts tokens", m.get("predicts_tokens"), "du_top1_z", m.get("du_top1_z")))
    out.append("  " + _verdict("reads tokens", m.get("reads_tokens"), "ee_top1_z", m.get("ee_top1_z")))
    for col in ("predicts_tokens", "reads_tokens"):
        if isinstance(criteria, dict) and col in criteria:
            out.append(f"  {col.replace('_', ' ')} when {describe_criterion(criteria[col], f.sae)}")
    shown = [(name, v) for name, v in m.items() if v is not None and name not in ("predicts_tokens", "reads_tokens")]
    if shown:
        out.append("\nmetrics")
        per_line = 4
        for i in range(0, len(shown), per_line):
            out.append("  " + "   ".join(f"{name} {cell(v)}" for name, v in shown[i : i + per_line]))
    for title, scores in (
        ("promotes (decoder -> unembedding, top +)", card.promoted),
        ("suppresses (decoder -> unembedding, top -)", card.suppressed),
        ("driven by (embedding -> encoder, top +)", card.inputs),
        ("inhibited by (embedding -> encoder, top -)", card.inputs_negative),
    ):
        scores = scores[:k]
        if not scores:
            continue
        out.append(f"\n{title}")
        top = max(abs(t.value) for t in scores) or 1.0
        width = max(len(t.token) for t in scores)
        for t in scores:
            out.append(f"  {t.token:<{min(width, 24)}}  {t.value:+9.4f}  {_bar(abs(t.value) / top)}")
    if getattr(card, "spread", None):  # a CLT feature: where its decoder writes
        out.append("\ndecoder spread (a cross-layer transcoder: ||W_dec[f, layer]|| per layer it writes)")
        top = max(s.norm for s in card.spread) or 1.0
        for s in card.spread:
            out.append(f"  L{s.out_layer:<3} {s.norm:9.4f}  {_bar(s.norm / top)}")
    if neuronpedia is not None:  # its URL, its logit table's agreement with du, activation examples
        from atlas.neuronpedia import card_lines

        out += card_lines(neuronpedia, k=k)
    if card.heads:
        out.append("\nheads (role layer.head score percentile)")
        by_role: dict[str, list] = {}
        for h in card.heads:
            by_role.setdefault(h.role, []).append(h)
        for role, hs in by_role.items():
            items = "  ".join(
                f"L{h.layer}.H{h.head} {h.score:.3f}" + (f" ({h.percentile:.0f}%)" if h.percentile is not None else "")
                for h in hs[:6]
            )
            more = f"  +{len(hs) - 6}" if len(hs) > 6 else ""
            out.append(f"  {role:<11} {items}{more}")
    for direction, edges in (("out", card.edges_out), ("in", card.edges_in)):
        by_kind: dict[str, list] = {}
        for e in edges:
            by_kind.setdefault(e.kind, []).append(e)
        for kind in EDGE_KINDS:
            es = by_kind.get(kind, [])[:edge_limit]
            if not es or (kind, direction) in _MIRRORED:
                continue
            title = _EDGE_TITLES.get(kind, "neighbours" if kind == "cosine" else f"{kind} edges")
            arrow = "->" if direction == "out" else "<-"
            out.append(f"\n{title} {direction}")
            for e in es:
                other = e.dst if direction == "out" else e.src
                head = f"  via L{e.head_layer}.H{e.head}" if e.head is not None else ""
                pct = f"  ({e.percentile:.1f}%)" if getattr(e, "percentile", None) is not None else ""
                out.append(f"  {arrow} {other:<16} {e.score:+9.4f}{head}{pct}")
    return "\n".join(out)


# Virtual weights are ranked per source (virtual) or per destination (virtual_in): a card shows each from the
# side it was ranked for (the strongest into later dictionaries out, from earlier ones in); --json has all.
_MIRRORED = {("virtual", "in"), ("virtual_in", "out")}
_EDGE_TITLES = {"virtual": "virtual weights (percentile)", "virtual_in": "virtual weights (percentile)"}

_KIND_WORDS = {"transcoder": "transcoder", "skip_transcoder": "skip transcoder", "clt": "cross-layer transcoder"}


def _dictionary_kind(card: Any) -> str:
    """`` · transcoder -> blocks.11.hook_mlp_out`` for a feature of a transcoder or CLT; empty for an SAE's."""
    kind = getattr(card, "sae_kind", "sae")
    if kind == "sae":
        return ""
    writes = getattr(card, "writes", None)
    return f"  · {_KIND_WORDS.get(kind, kind)}" + (f" -> {writes}" if writes else "")


def _verdict(what: str, flag: Any, metric: str, value: Any) -> str:
    v = "not computed" if flag is None else ("yes" if flag else "no")
    return f"{what}: {v}" + (f" ({metric} {value:.2f})" if value is not None else "")


_BLOCKS = " ▏▎▍▌▋▊▉█"


def _bar(frac: float, width: int = 12) -> str:
    """A horizontal bar of ``frac`` (0..1) of ``width`` cells, in eighths."""
    eighths = max(0, min(width * 8, round(frac * width * 8)))
    return "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")


# ---------------------------------------------------------------- search
@cli.command()
@db_option
@click.option("--promotes", metavar="TOKEN", help="Features whose decoder promotes TOKEN (du, +)")
@click.option("--suppresses", metavar="TOKEN", help="Features whose decoder suppresses TOKEN (du, -)")
@click.option("--driven-by", "driven_by", metavar="TOKEN", help="Features driven by input TOKEN (ee, +)")
@click.option("--token", metavar="TOKEN", help="Token search with --phase and --sign")
@click.option("--phase", type=click.Choice(["du", "ee"]), default="du", show_default=True, help="With --token")
@click.option("--sign", type=click.Choice(["+1", "-1", "1"]), default="+1", show_default=True, help="With --token")
@click.option("--exact", "exact_only", is_flag=True, help="Only tokens equal to TOKEN (no partial matches)")
@click.option("--max-rank", type=click.IntRange(0), default=None, help="Only hits at rank <= N in a feature's list")
@click.option("--label", "label_query", metavar="QUERY", help="Full-text search over labels (FTS5 syntax)")
@click.option("--metric", type=click.Choice(METRIC_COLUMNS), help="Features with --min <= METRIC <= --max")
@click.option("--min", "lo", type=float, default=None, help="With --metric")
@click.option("--max", "hi", type=float, default=None, help="With --metric")
@click.option("--sae", default=None, help="Only this SAE (prefix)")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@output_options
def search(
    db: Path | None,
    promotes: str | None,
    suppresses: str | None,
    driven_by: str | None,
    token: str | None,
    phase: str,
    sign: str,
    exact_only: bool,
    max_rank: int | None,
    label_query: str | None,
    metric: str | None,
    lo: float | None,
    hi: float | None,
    sae: str | None,
    limit: int,
    fmt: str,
) -> None:
    """Find features by token (promotes / suppresses / driven by), by label text, or by metric range.

    Token text matches the way you type it: exact matches first (case and
    surrounding spaces ignored, so `king` finds "king", " King" and " king"),
    then partial matches (tokens containing the text), each marked in the
    match column; --exact keeps only the exact ones. Label search covers the
    atlas's labels and your overlay labels (FTS5 syntax).

    \b
    Example:
        sae-atlas search --promotes king
        sae-atlas search --driven-by the --sae L2.res --limit 10
        sae-atlas search --label 'king'
        sae-atlas search --metric du_top1_z --min 8 --csv
    """
    token_modes = [(promotes, "du", 1), (suppresses, "du", -1), (driven_by, "ee", 1)]
    if token is not None:
        token_modes.append((token, phase, int(sign)))
    chosen = [t for t in token_modes if t[0] is not None]
    n_modes = len(chosen) + (label_query is not None) + (metric is not None)
    if n_modes != 1:
        raise click.UsageError("give exactly one of --promotes, --suppresses, --driven-by, --token, --label, --metric")
    if (lo is not None or hi is not None) and metric is None:
        raise click.UsageError("--min/--max go with --metric")
    with open_ro(db) as atlas:
        if chosen:
            from atlas.search import match_tokens, search_tokens

            text, ph, sg = chosen[0]
            matches = match_tokens(atlas, text, partial=not exact_only)
            hits = search_tokens(
                atlas, text, phase=ph, sign=sg, sae=sae, max_rank=max_rank, limit=limit, matches=matches
            )
            emit(
                [(h.feature, h.token, h.match, h.phase, h.sign, h.rank, h.value) for h in hits],
                ["feature", "token", "match", "phase", "sign", "rank", "value"],
                fmt,
                empty=_no_token_hits(text, matches, exact_only),
            )
        elif label_query is not None:
            found = atlas.search_labels(label_query, limit=limit)
            if sae is not None:
                prefix = atlas.sae(sae).name + "/"
                found = [(name, lab) for name, lab in found if name.startswith(prefix)]
            emit(
                [(name, lab.kind, lab.source, lab.stored_in, lab.text, lab.label_id) for name, lab in found],
                ["feature", "kind", "source", "stored_in", "label", "label_id"],
                fmt,
                empty=f"no label matches {label_query!r}",
            )
        else:
            feats = atlas.search_metric(metric, lo, hi, sae=sae, limit=limit)
            emit(
                [(f.name, f.layer, f.site, f.metrics.get(metric)) for f in feats],
                ["feature", "layer", "site", metric],
                fmt,
                empty=f"no feature has {metric} in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]",
            )


def _no_token_hits(text: str, matches: Any, exact_only: bool) -> str:
    if not matches.exact and not matches.partial:
        how = "exactly" if exact_only else "exactly or in part"
        return f"no token in the vocabulary matches {text!r} ({how})"
    return f"no feature has a token matching {text!r} in that list"


# ---------------------------------------------------------------- top
@cli.command()
@click.argument("metric", type=click.Choice(METRIC_COLUMNS), metavar="METRIC")
@db_option
@click.option("--sae", default=None, help="Only this SAE (prefix)")
@click.option("--layer", type=int, default=None, help="Only SAEs at this layer")
@click.option("--asc", "ascending", is_flag=True, help="Lowest first")
@click.option("--min", "lo", type=float, default=None, help="Only METRIC >= this")
@click.option("--max", "hi", type=float, default=None, help="Only METRIC <= this")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@output_options
def top(
    metric: str,
    db: Path | None,
    sae: str | None,
    layer: int | None,
    ascending: bool,
    lo: float | None,
    hi: float | None,
    limit: int,
    fmt: str,
) -> None:
    """Features ranked by METRIC, a column of the features table (du_top1_z, attn_q_mean, ...).

    \b
    Example:
        sae-atlas top du_top1_z --limit 10
        sae-atlas top attn_k_mean --layer 14 --json
    """
    with open_ro(db) as atlas:
        feats = atlas.top(metric, sae=sae, layer=layer, lo=lo, hi=hi, ascending=ascending, limit=limit)
    emit(
        [(i + 1, f.name, f.feature_id, f.layer, f.site, f.metrics.get(metric)) for i, f in enumerate(feats)],
        ["rank", "feature", "feature_id", "layer", "site", metric],
        fmt,
        empty=f"no feature has a value for {metric}",
    )


# ---------------------------------------------------------------- edges
@cli.command()
@click.argument("feature")
@db_option
@click.option("--kind", type=click.Choice(EDGE_KINDS), default=None, help="Only this kind")
@click.option("--in", "incoming", is_flag=True, help="Only edges into FEATURE")
@click.option("--out", "outgoing", is_flag=True, help="Only edges out of FEATURE")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="Per direction")
@output_options
def edges(
    feature: str, db: Path | None, kind: str | None, incoming: bool, outgoing: bool, limit: int, fmt: str
) -> None:
    """Edges into and out of FEATURE, with their kinds (qk, ov, cosine, flow) and heads.

    \b
    Example:
        sae-atlas edges L14.res/1234
        sae-atlas edges L14.res/1336 --kind qk --in --csv
    """
    directions = [d for d, on in (("out", outgoing), ("in", incoming)) if on] or ["out", "in"]
    rows = []
    with open_ro(db) as atlas:
        fid = atlas.resolve_feature(feature)
        for direction in directions:
            for e in atlas.edges(fid, direction, kind=kind, limit=limit):
                head = f"L{e.head_layer}.H{e.head}" if e.head is not None else None
                rows.append((direction, e.kind, e.src, e.dst, head, e.score, e.rank))
    emit(rows, ["direction", "kind", "src", "dst", "head", "score", "rank"], fmt, empty="no edges")


# ---------------------------------------------------------------- sql
@cli.command()
@click.argument("query")
@db_option
@click.option("-p", "--param", "params", type=(str, str), multiple=True, help="Named parameter: -p name value")
@click.option("--limit", type=click.IntRange(0), default=1000, show_default=True, help="Most rows to print (0 = all)")
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds before the query is stopped (0 = none)",
)
@output_options
def sql(query: str, db: Path | None, params: tuple[tuple[str, str], ...], limit: int, timeout: float, fmt: str) -> None:
    """Run a read-only SQL query on the atlas.

    The connection cannot write: the file is opened read-only, with
    query_only and an authorizer that allows only reads. See the views
    (features_view, token_scores_view, edges_view, labels_view, sae_summary);
    if the file changed one of them, sae-atlas's own definition is read and a
    note says so. In token_scores_view, token is the shown form ('␣king'),
    token_raw the text itself (' king') and token_key what search matches
    ('king'); an atlas of schema 1 has only token (`sae-atlas migrate -o`
    adds the others). --limit 0 with --csv/--tsv/--nl/--json writes every
    row as it is read (any number of rows in constant memory); ctrl-c stops a query.

    \b
    Example:
        sae-atlas sql "SELECT name, d_sae FROM saes"
        sae-atlas sql "SELECT * FROM token_scores_view WHERE feature = :f" -p f L26.res/260 --json
    """
    from atlas.query import run_sql, stream_sql, write_rows

    path = resolve_db_path(db)
    if limit == 0 and fmt != "table":  # every row, written as it is read: constant memory
        with stream_sql(path, query, dict(params), timeout_s=timeout or None, hint=" (see --timeout)") as (
            columns,
            rows,
            notes,
        ):
            for note in notes:
                click.echo(f"note: {note}", err=True)
            write_rows(click.get_text_stream("stdout"), columns, rows, fmt)
        return
    result = run_sql(path, query, dict(params), limit=limit, timeout_s=timeout or None)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    emit(result.rows, result.columns, fmt, empty="(no rows)" if result.columns else "(done, no result)")
    if result.truncated:
        click.echo(f"(showing the first {limit:,} rows; more exist: raise --limit or add LIMIT/OFFSET)", err=True)


# ---------------------------------------------------------------- label
@cli.command()
@click.argument("feature", required=False)
@click.argument("text", required=False)
@db_option
@click.option("--kind", type=click.Choice(LABEL_KINDS), default="free", show_default=True)
@click.option("--list", "list_labels", is_flag=True, help="List FEATURE's labels (the file's and your overlay's)")
@click.option("--delete", "delete_id", type=int, default=None, metavar="ID", help="Delete your label with this id")
@click.option(
    "--overlay",
    "use_overlay",
    is_flag=True,
    help="Write to (or delete from) your label overlay even if the file is writable",
)
@click.option("--where", "where", is_flag=True, help="Say where your labels of this atlas go, and why")
@output_options
def label(
    feature: str | None,
    text: str | None,
    db: Path | None,
    kind: str,
    list_labels: bool,
    delete_id: int | None,
    use_overlay: bool,
    where: bool,
    fmt: str,
) -> None:
    """Add your own label TEXT to FEATURE, list a feature's labels, or delete one of yours.

    Your labels go into the atlas file when you can write it (your own,
    writable file at the current schema); otherwise (the bundled example, a
    read-only or older atlas, --overlay) into your label overlay, a small file
    of your own found again by the atlas's identity, read with the atlas's
    labels everywhere. `export`/`merge --with-overlay` fold it into a new atlas.
    Every label written says where it went.

    \b
    Example:
        sae-atlas label L26.res/260 "kings and royalty" --kind semantic
        sae-atlas label --list L26.res/260
        sae-atlas label --where
    """
    from atlas.labels import add_user_label, delete_user_label, label_target

    force = "--overlay" if use_overlay else None
    if where:
        if feature or text or list_labels or delete_id is not None:
            raise click.UsageError("--where takes no FEATURE, TEXT, --list or --delete")
        with open_ro(db) as atlas:
            target = label_target(atlas, force_overlay=force)
        click.echo(f"your labels of {atlas.path} go {target.describe()}")
        return
    if delete_id is not None:
        if feature or text or list_labels:
            raise click.UsageError("--delete ID takes no FEATURE or TEXT")
        with open_ro(db) as atlas:
            name, old, target = delete_user_label(atlas, delete_id, force_overlay=force)
        click.echo(f"deleted label {delete_id} of {name} from {target.short()}: {old}")
        return
    if list_labels:
        if not feature or text:
            raise click.UsageError("--list takes one FEATURE and no TEXT")
        with open_ro(db) as atlas:
            labs = atlas.labels(atlas.resolve_feature(feature))
        emit(
            [(lab.label_id, lab.stored_in, lab.source, lab.kind, lab.score, lab.text, lab.created_at) for lab in labs],
            ["id", "stored_in", "source", "kind", "score", "text", "created_at"],
            fmt,
            empty="no labels",
        )
        return
    if not feature or text is None:
        raise click.UsageError("give FEATURE and TEXT (or --list FEATURE, --delete ID, --where)")
    if not text.strip():
        raise click.UsageError("TEXT is empty")
    with open_ro(db) as atlas:
        lab, name, target = add_user_label(atlas, feature, text, kind, force_overlay=force)
    click.echo(f"label {lab.label_id} added to {name} {target.describe()}")


# ---------------------------------------------------------------- validate
@cli.command()
@db_option
@click.option("--quick", is_flag=True, help="PRAGMA quick_check instead of the full integrity_check")
@click.option("--json", "as_json", is_flag=True, help="Output the checks as JSON")
@click.pass_context
def validate(ctx: click.Context, db: Path | None, quick: bool, as_json: bool) -> None:
    """Check an atlas: SQLite integrity, foreign keys, counts against saes.d_sae,
    token ids within the vocabulary, contiguous ranks, schema version. Exit 1 if any fails.

    \b
    Example:
        sae-atlas validate
        sae-atlas validate --db my.db --quick
    """
    from atlas.maintenance import validate as run_validate

    rep = run_validate(resolve_db_path(db), quick=quick)
    if as_json:
        click.echo(dump_json({"path": rep.path, "ok": rep.ok, "checks": [dataclasses.asdict(c) for c in rep.checks]}))
    else:
        for c in rep.checks:
            mark = "FAIL" if not c.ok else "warn" if c.warn else "ok  "
            click.echo(f"{mark}  {c.name}" + (f": {c.detail}" if c.detail else ""))
        n_bad = sum(not c.ok for c in rep.checks)
        n_warn = sum(c.warn for c in rep.checks)
        warned = f" ({n_warn} warning{'s' * (n_warn > 1)})" if n_warn else ""
        click.echo(
            f"{rep.path}: " + ("valid" + warned if rep.ok else f"INVALID ({n_bad} failed check{'s' * (n_bad > 1)})")
        )
    if not rep.ok:
        ctx.exit(1)


# ---------------------------------------------------------------- export / merge / migrate
WITH_OVERLAY_HELP = "Also copy your label overlay's labels (see `sae-atlas label`) into the new atlas"


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@db_option
@click.option("--sae", "saes", multiple=True, help="SAE to keep (repeat for several; default: every SAE)")
@click.option("--with-overlay", is_flag=True, help=WITH_OVERLAY_HELP)
@click.option("--force", is_flag=True, help="Replace OUT if it exists")
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["atlas", "neuronpedia"]),
    default="atlas",
    show_default=True,
    help="atlas: a new atlas file; neuronpedia: folders OUT/<model>/<source>/ in Neuronpedia's export layout",
)
@click.option("--model-id", default=None, help="neuronpedia: the model id (default: the model's name, URL-safe)")
@click.option(
    "--source-set", default=None, help="neuronpedia: sources are <layer>-<set> (default set: sae-atlas-<site>)"
)
@click.option("--labels", "np_labels", is_flag=True, help="neuronpedia: also write the labels as explanations")
@click.option("--plain", is_flag=True, help="neuronpedia: write .jsonl files, not .jsonl.gz")
def export(
    out: Path,
    db: Path | None,
    saes: tuple[str, ...],
    with_overlay: bool,
    force: bool,
    out_format: str,
    model_id: str | None,
    source_set: str | None,
    np_labels: bool,
    plain: bool,
) -> None:
    """Write OUT, a self-contained atlas with only the SAEs named by --sae (all of them by default).

    It keeps the model, vocabulary and heads, those SAEs' features and every
    row that touches only them, and the provenance. OUT is a new atlas (its
    own identity) at the current schema, yours to write; --with-overlay folds
    your overlay labels into it. OUT appears only when complete.

    --format neuronpedia writes the SAEs' features the way Neuronpedia's
    exports lay them out (features/batch-N.jsonl.gz: the du lists as
    pos_str/neg_str, decoder-cosine neighbours as topkCosSimIndices), ready to
    load into a Neuronpedia instance; `import neuronpedia` reads them back.

    \b
    Example:
        sae-atlas export --sae L2.res --sae L8.res early.db
        sae-atlas export --with-overlay mine.db
        sae-atlas export --format neuronpedia --sae L26.res np-export
    """
    from atlas.maintenance import export_atlas

    src = resolve_db_path(db)
    if out_format == "neuronpedia":
        if with_overlay:
            raise click.UsageError("--with-overlay goes with --format atlas")
        _export_neuronpedia(src, out, saes, force, model_id, source_set, np_labels, plain)
        return
    if model_id or source_set or np_labels or plain:
        raise click.UsageError("--model-id, --source-set, --labels and --plain go with --format neuronpedia")
    if out.is_dir():
        raise click.ClickException(f"{out}: is a folder; give the atlas file to write")
    _refuse_bundled_output(out)
    with open_ro(src) as atlas:
        names = list(saes) or [s.name for s in atlas.saes()]
        folding = atlas.overlay_store().all_labels() if with_overlay else None
    counts, note = _with_folded(out, force, folding, lambda tmp: export_atlas(src, tmp, names, overwrite=True))
    click.echo(f"wrote {out}: {counts['saes']} SAEs, {counts['features']:,} features, {counts['edges']:,} edges{note}")


def _export_neuronpedia(
    src: Path,
    out: Path,
    saes: tuple[str, ...],
    force: bool,
    model_id: str | None,
    source_set: str | None,
    labels: bool,
    plain: bool,
) -> None:
    from atlas.neuronpedia.exporter import export_neuronpedia

    _refuse_bundled_output(out)
    with open_ro(src) as atlas:
        written = export_neuronpedia(
            atlas,
            out,
            list(saes),
            model_id=model_id,
            set_name=source_set,
            labels=labels,
            compress=not plain,
            force=force,
        )
    for w in written:
        expl = f", {w.explanations:,} explanations" if labels else ""
        click.echo(f"wrote {w.folder}: {w.sae} as {w.neuronpedia_id}, {w.features:,} features{expl}")


@cli.command()
@click.argument("atlases", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Atlas to write"
)
@click.option("--with-overlay", is_flag=True, help=WITH_OVERLAY_HELP)
@click.option("--force", is_flag=True, help="Replace the output if it exists")
def merge(atlases: tuple[Path, ...], out: Path, with_overlay: bool, force: bool) -> None:
    """Combine ATLASES of the same model, built separately, into one (feature ids renumbered).

    Refused when they disagree: another model or vocabulary, other build
    parameters, or one SAE name with different weights (sha256).
    --with-overlay folds each atlas's overlay labels into the result.

    \b
    Example:
        sae-atlas merge early.db late.db -o both.db
    """
    from atlas.maintenance import merge_atlases

    if len(atlases) < 2:
        raise click.UsageError("merge needs at least two atlases")
    _refuse_bundled_output(out)
    folding = None
    if with_overlay:
        folding = []
        for path in atlases:
            with _db.open_atlas(path) as atlas:
                folding += atlas.overlay_store().all_labels()
    rep, note = _with_folded(out, force, folding, lambda tmp: merge_atlases(list(atlases), tmp, overwrite=True))
    shared = f"; kept once: {', '.join(rep['shared_saes'])}" if rep["shared_saes"] else ""
    click.echo(
        f"wrote {out}: {rep['counts']['saes']} SAEs, {rep['counts']['features']:,} features "
        f"(added {', '.join(rep['added_saes']) or 'none'}{shared}){note}"
    )


def _refuse_bundled_output(out: Path) -> None:
    if is_bundled_example(out):
        raise click.ClickException(f"{out} is the bundled example, which is read-only: choose another output")


def _with_folded(out: Path, force: bool, folding: list | None, write: Callable[[Path], Any]) -> tuple[Any, str]:
    """Run ``write`` (export or merge) into ``out``; with overlay labels, fold them in before ``out`` appears."""
    if folding is None:
        if out.exists() and not force:
            raise FileExistsError(f"{out}: already exists (use --force to replace it)")
        return write(out), ""
    from atlas.labels import fold_overlay
    from atlas.maintenance import atomic_output

    with atomic_output(out, overwrite=force) as tmp:
        result = write(tmp)
        folded, skipped = fold_overlay(tmp, folding)
    left = f" ({skipped} of features not in it left out)" if skipped else ""
    return result, f"; folded {folded} overlay label{'s' * (folded != 1)} in{left}"


@cli.command()
@db_option
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write an upgraded copy to OUT and leave the atlas as it is",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists")
def migrate(db: Path | None, out: Path | None, force: bool) -> None:
    """Upgrade an atlas written by an older sae-atlas to this schema version, in place or into a copy (-o).

    Older atlases otherwise open read-only. The upgrade is one transaction;
    a copy appears only when complete. The bundled example is never changed:
    -o makes an upgraded copy of it.

    \b
    Example:
        sae-atlas migrate -o mine.db
        sae-atlas migrate --db old.db
    """
    path = resolve_db_path(db)
    if out is None:
        if is_bundled_example(path):
            raise click.ClickException(
                f"{path} is the bundled example, which is read-only: `sae-atlas migrate -o COPY.db` upgrades a copy"
            )
        applied = _db.migrate(path)
        where = str(path)
    else:
        from atlas.maintenance import atomic_output

        if is_bundled_example(out):
            raise click.ClickException(f"{out} is the bundled example, which is read-only")
        with _db.open_atlas(path) as src, atomic_output(out, overwrite=force) as tmp:
            copy = sqlite3.connect(tmp)
            try:
                src.conn.backup(copy)  # a consistent copy, page by page
            finally:
                copy.close()
            applied = _db.migrate(tmp)
        where = f"{out} (a copy of {path})"
    if not applied:
        click.echo(f"{where}: already at schema version {_db.SCHEMA_VERSION}")
    else:
        steps = ", ".join(f"{v} ({name})" for v, name in applied)
        click.echo(f"{where}: migrated to schema version {_db.SCHEMA_VERSION}: applied {steps}")


# ---------------------------------------------------------------- stats
@cli.command()
@db_option
@output_options
def stats(db: Path | None, fmt: str) -> None:
    """Per-SAE summary: fraction of features predicting / reading tokens, mean
    attention participation, and how many features carry each kind of label.

    \b
    Example:
        sae-atlas stats
        sae-atlas stats --csv
    """
    with open_ro(db) as atlas:
        atlas.saes()  # the SAE rows typed and checked: damage there is named, not printed
        # sae_summary's query, not the view: a file's own view may say anything (sae-atlas reads no view)
        rows = atlas.conn.execute(
            "SELECT s.sae_id, s.name, s.layer, s.site, s.d_sae, COUNT(f.feature_id), AVG(f.predicts_tokens), "
            "AVG(f.reads_tokens), AVG(f.attn_q_mean), AVG(f.attn_k_mean), AVG(f.attn_v_mean) "
            "FROM saes s LEFT JOIN features f USING (sae_id) GROUP BY s.sae_id ORDER BY s.layer, s.name"
        ).fetchall()
        kinds: dict[tuple[int, str], int] = {}
        for sae_id, kind, n in atlas.conn.execute(
            "SELECT f.sae_id, l.kind, COUNT(DISTINCT l.feature_id) FROM labels l "
            "JOIN features f ON f.feature_id = l.feature_id GROUP BY f.sae_id, l.kind"
        ):
            kinds[(sae_id, kind)] = n
    emit(
        [(*tuple(r)[1:], *(kinds.get((r[0], k), 0) for k in LABEL_KINDS)) for r in rows],
        [
            "sae",
            "layer",
            "site",
            "d_sae",
            "features",
            "predicts_tokens",
            "reads_tokens",
            "attn_q_mean",
            "attn_k_mean",
            "attn_v_mean",
            *LABEL_KINDS,
        ],
        fmt,
        empty="no SAEs in this atlas",
    )
