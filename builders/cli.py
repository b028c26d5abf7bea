"""`sae-atlas build`: the click command (atlas/cli.py imports it lazily, so torch loads only here).

Its settings options are derived from :class:`builders.settings.BuildConfig`:
one option per field (nested settings such as ``semantic`` get a prefix), its
type and default from the field, its help from the comment after the
default. So a setting is declared and documented once, and every one can be
set here. Enumerations are choices: the passes from the pass registry, the
SAE formats from :data:`builders.saes.SAE_FORMATS`, the OV targets from the
OV pass. Every argument is checked before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import sys
import time
import tokenize
import typing
from pathlib import Path
from typing import Any

import click

from atlas.errors import AtlasError
from builders.passes import registry
from builders.passes.ov import OV_TARGETS
from builders.saes import SAE_FORMATS
from builders.settings import ALL_PASSES, BuildConfig

# Fields whose option is not simply --field-name with the field's type.
_MULTIPLE = {
    "qk_pairs": ("--qk-pair", "QUERY:KEY"),
    "virtual_pairs": ("--virtual-pair", "SOURCE:DEST"),
    "sae_names": ("--sae-name", "NAME"),
}  # one per use, in order


# ---------------------------------------------------------------- parameter types
class PassList(click.Choice):
    """Comma-separated pass names, each one of the registry's."""

    name = "passes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(p.strip() for p in str(value).split(",") if p.strip())
        unknown = [n for n in names if n not in self.choices]
        if unknown or not names:
            self.fail(f"unknown pass(es) {', '.join(unknown) or '(none)'}; choose from {','.join(self.choices)}")
        return names

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "P1,P2,..."


class OptionalNumber(click.ParamType):
    """An int or float, or ``none`` for the field's "not set"."""

    def __init__(self, kind: type):
        self.kind, self.name = kind, f"{kind.__name__} or none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, self.kind):
            return value
        if str(value).strip().lower() in ("", "none"):
            return None
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a {self.kind.__name__} (or none)", param, ctx)


class DeviceSpec(click.ParamType):
    """auto, cpu, cuda, cuda:N or mps, optionally +fp32 or +bf16 (checked without touching a GPU)."""

    name = "device"
    _RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)(\+(fp32|float32|bf16|bfloat16))?$")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not self._RE.match(text):
            self.fail(f"{value!r}: use auto, cpu, cuda, cuda:N or mps, optionally +fp32 or +bf16", param, ctx)
        return text

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[auto|cpu|cuda[:N]|mps][+bf16]"


class Shard(click.ParamType):
    name = "I/N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            self.fail("use I/N, e.g. 0/4", param, ctx)
        return int(parts[0]), int(parts[1])


# ---------------------------------------------------------------- options from BuildConfig
def field_comments(cls: type) -> dict[str, str]:
    """The comment after each field's default in the class body: the field's documentation."""
    out: dict[str, str] = {}
    src = inspect.getsource(cls)
    line_field: dict[int, str] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    for i, tok in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        if tok.type == tokenize.NAME and nxt.type == tokenize.OP and nxt.string == ":" and tok.start[1] == 4:
            line_field[tok.start[0]] = tok.string
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out


def _base(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _option(name: str, tp: Any, default: Any, help_text: str, prefix: str) -> click.Option:
    flag = "--" + (prefix + name).replace("_", "-")
    dest = prefix + name
    base, optional = _base(tp)
    if prefix == "" and name in _MULTIPLE:
        flag, metavar = _MULTIPLE[name]
        return click.Option([flag, dest], multiple=True, metavar=metavar, help=f"{help_text} (repeat the option)")
    if prefix == "" and name == "passes":
        return click.Option(
            [flag, dest], type=PassList(list(ALL_PASSES)), default=",".join(default), show_default=True, help=help_text
        )
    if prefix == "" and name == "ov_target":
        return click.Option(
            [flag, dest], type=click.Choice(OV_TARGETS), default=default, show_default=True, help=help_text
        )
    if prefix == "" and name == "device":
        return click.Option([flag, dest], type=DeviceSpec(), default=default, show_default=True, help=help_text)
    if base is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", dest], default=default, show_default=True, help=help_text)
    if base in (int, float):
        kind = OptionalNumber(base) if optional else base
        return click.Option([flag, dest], type=kind, default=default, show_default=default is not None, help=help_text)
    return click.Option([flag, dest], type=str, default=default, show_default=True, help=help_text)


def config_options(cls: type = BuildConfig, prefix: str = "") -> list[click.Option]:
    """One click option per field of ``cls``; a nested settings dataclass contributes its own, prefixed."""
    hints, comments, out = typing.get_type_hints(cls), field_comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(tp):
            out += config_options(tp, prefix=f"{prefix}{f.name}_")
        else:
            out.append(_option(f.name, tp, default, comments.get(f.name, ""), prefix))
    return out


def config_from_options(values: dict[str, Any], cls: type = BuildConfig, prefix: str = "") -> Any:
    """The ``cls`` the derived options describe (what :func:`config_options` made, read back)."""
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = config_from_options(values, hints[f.name], prefix=f"{prefix}{f.name}_")
        elif prefix == "" and f.name == "qk_pairs":
            kwargs[f.name] = tuple(_qk_pair(p) for p in values[f.name]) or None
        elif prefix == "" and f.name == "virtual_pairs":
            kwargs[f.name] = tuple(_qk_pair(p, "--virtual-pair", "SOURCE:DEST") for p in values[f.name]) or None
        elif prefix == "" and f.name == "sae_names":
            kwargs[f.name] = tuple(values[f.name]) or None
        else:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def _qk_pair(text: str, hint: str = "--qk-pair", form: str = "QUERY_SAE:KEY_SAE") -> tuple[str, str]:
    pair = tuple(text.split(":", 1))
    if len(pair) != 2 or not all(pair):
        raise click.BadParameter(f"{text!r}: use {form}", param_hint=hint)
    return pair  # type: ignore[return-value]


# ---------------------------------------------------------------- the command
_INPUTS = [
    click.Option(["--model", "model_source"], help="Hub id, local model folder, or .gguf file. [required]"),
    click.Option(["--gguf-file"], help="GGUF file name inside the --model folder."),
    click.Option(
        ["--no-tokenizer"], is_flag=True, help="Build although the model has no tokenizer (tokens then show as <id>)."
    ),
    click.Option(["--sae", "sae_paths"], multiple=True, help="SAE file or folder; repeat for several SAEs. [required]"),
    click.Option(["--sae-format"], type=click.Choice(SAE_FORMATS), help="Read every --sae as this format."),
    click.Option(
        ["--sae-hook", "sae_hooks"],
        multiple=True,
        metavar="HOOK",
        help="Hook per --sae, in order, for SAEs whose files do not say where they read "
        "(e.g. blocks.12.hook_resid_post; '' keeps what the files say).",
    ),
    click.Option(["-o", "--out"], type=click.Path(dir_okay=False), help="Atlas file to write. [required]"),
]
_RUN = [
    click.Option(["--resume"], is_flag=True, help="Continue OUT.partial left by a killed build."),
    click.Option(["--overwrite"], is_flag=True, help="Replace OUT if it exists."),
    click.Option(["--shard"], type=Shard(), default=None, help="Run only units I mod N into OUT.shardI-of-N.partial."),
    click.Option(
        ["--merge-shards", "merge_out"],
        type=click.Path(dir_okay=False),
        metavar="OUT",
        help="Combine the finished OUT.shardI-of-N.partial files into OUT (no model or SAE needed).",
    ),
    click.Option(["--progress/--no-progress"], default=True, help="Progress bars on stderr."),
    click.Option(
        ["--cluster"],
        metavar="SPEC",
        help="Run the shards on Dask: local[:N] (one worker per GPU, else N CPU workers), slurm[:N] or "
        "tcp://HOST:PORT; merged into OUT at the end (needs sae-atlas[cluster]).",
    ),
    click.Option(["--cluster-config"], type=click.Path(dir_okay=False), help="SLURMCluster settings (YAML or JSON)."),
]
_PASSES_HELP = "\n".join(f"  {name:<12} {p.help}" for name, p in registry().items())


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def run_build(
    *,
    model_source: str | None,
    gguf_file: str | None,
    no_tokenizer: bool,
    sae_paths: tuple[str, ...],
    sae_format: str | None,
    sae_hooks: tuple[str, ...],
    out: str | None,
    resume: bool,
    overwrite: bool,
    shard: tuple[int, int] | None,
    merge_out: str | None,
    progress: bool,
    cluster: str | None = None,
    cluster_config: str | None = None,
    **settings: Any,
) -> None:
    """Build an atlas from a model and its SAEs, from the weights alone.

    Runs the weight passes over every --sae (all of one model) and writes one
    atlas file. The build goes to OUT.partial and is renamed at the end; a
    killed build can be continued with --resume.

    The work is independent units (SAE x pass x feature chunk). --shard I/N
    runs only every N-th unit, from the I-th (I counts from 0), into its own
    OUT.shardI-of-N.partial, so N processes or machines can share a build
    (same options for all; --resume works per shard). Then --merge-shards OUT
    checks that all N shards are complete and built with the same settings and
    combines them into OUT, row for row what one process would have written.
    """
    if merge_out is not None:
        from builders.shards import merge_shards

        try:
            click.echo(str(merge_shards(merge_out, overwrite=overwrite)))
        except AtlasError as e:
            raise click.ClickException(_one_line(e)) from None
        return
    for value, name in ((model_source, "--model"), (sae_paths, "--sae"), (out, "-o / --out")):
        if not value:
            raise click.UsageError(f"Missing option '{name}'.")
    if sae_hooks and len(sae_hooks) != len(sae_paths):
        raise click.BadParameter(
            f"give one per --sae, in order ({len(sae_paths)} SAEs, {len(sae_hooks)} hooks; '' keeps the file's)",
            param_hint="--sae-hook",
        )
    if len(settings["sae_names"]) > len(sae_paths):
        raise click.BadParameter(
            f"more names ({len(settings['sae_names'])}) than --sae ({len(sae_paths)})", param_hint="--sae-name"
        )
    t0 = time.perf_counter()
    if cluster is not None:
        if shard is not None:
            raise click.UsageError("--cluster makes its own shards: drop --shard")
        _cluster(
            cluster,
            cluster_config,
            model_source,
            gguf_file,
            no_tokenizer,
            sae_paths,
            sae_format,
            sae_hooks,
            out,
            resume,
            overwrite,
            progress,
            settings,
        )
        if progress:
            click.echo(f"built in {time.perf_counter() - t0:.1f}s", err=True)
        return
    try:
        path = _build(
            model_source,
            gguf_file,
            no_tokenizer,
            sae_paths,
            sae_format,
            sae_hooks,
            out,
            resume,
            overwrite,
            shard,
            progress,
            config_from_options(settings),
        )
    except AtlasError as e:
        raise click.ClickException(_one_line(e)) from None
    except (FileNotFoundError, PermissionError) as e:
        raise click.ClickException(f"{e.filename}: {e.strerror}") from None
    click.echo(str(path))
    if progress:
        click.echo(f"built in {time.perf_counter() - t0:.1f}s", err=True)
    sys.stdout.flush()


def _cluster(
    cluster,
    cluster_config,
    model_source,
    gguf_file,
    no_tokenizer,
    sae_paths,
    sae_format,
    sae_hooks,
    out,
    resume,
    overwrite,
    progress,
    settings,
) -> None:
    """--cluster: every shard a Dask task running :func:`_build`, then the merge (builders/cluster.py)."""
    from builders.cluster import cluster_build

    kwargs = dict(
        model_source=model_source,
        gguf_file=gguf_file,
        no_tokenizer=no_tokenizer,
        sae_paths=sae_paths,
        sae_format=sae_format,
        sae_hooks=sae_hooks,
        out=out,
        overwrite=overwrite,
        config=config_from_options(settings),
    )
    try:
        path = cluster_build(
            _build,
            kwargs,
            out=out,
            cluster=cluster,
            cluster_config=cluster_config,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            say=lambda line: click.echo(line, err=True),
        )
    except AtlasError as e:
        raise click.ClickException(_one_line(e)) from None
    except (OSError, TimeoutError) as e:
        raise click.ClickException(f"cluster: {_one_line(e)}") from None
    click.echo(str(path))


def _build(
    model_source,
    gguf_file,
    no_tokenizer,
    sae_paths,
    sae_format,
    sae_hooks,
    out,
    resume,
    overwrite,
    shard,
    progress,
    config,
    after_unit=None,
) -> Path:
    """Check every argument, then load (SAEs first: a bad SAE file fails before the slower model), then build."""
    from builders.device import resolve_device
    from builders.plan import check_settings, check_shard, sae_names
    from builders.run import build_atlas, check_output
    from builders.weights import site_of_hook

    check_shard(shard)
    check_output(out, overwrite=overwrite)
    hooks = [h.strip() or None for h in sae_hooks] or [None] * len(sae_paths)
    for hook in filter(None, hooks):
        try:
            site_of_hook(hook)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--sae-hook") from None
    resolve_device(config.device)  # a GPU asked for and absent fails now
    t0 = time.perf_counter()
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from builders.models import load_model
    from builders.saes import check_sae_fits, load_sae

    saes = [
        load_sae(p, fmt=sae_format, hook_name=h, device=config.device) for p, h in zip(sae_paths, hooks, strict=True)
    ]
    check_settings(config, sae_names(saes, config.sae_names))
    model = load_model(model_source, gguf_file=gguf_file, device=config.device)
    for s in saes:
        check_sae_fits(s, model)
    if model.meta.get("tokens") and not no_tokenizer:
        raise AtlasError(
            f"{model_source}: no tokenizer found, so every token would show as <id>; add the tokenizer files to "
            "the model folder, or pass --no-tokenizer to build with token ids only"
        )
    if progress:
        click.echo(f"loaded model and {len(saes)} SAE(s) in {time.perf_counter() - t0:.1f}s", err=True)
    return build_atlas(
        model,
        saes,
        out,
        config=config,
        resume=resume,
        progress=progress,
        overwrite=overwrite,
        shard=shard,
        after_unit=after_unit,
        say=lambda line: click.echo(line, err=True),
    )


build = click.Command(
    "build",
    callback=run_build,
    params=[*_INPUTS, *config_options(), *_RUN],
    help=inspect.getdoc(run_build)
    + "\n\nPasses (--passes), in the order they run:\n\n\b\n"
    + _PASSES_HELP
    + "\n\n\b\nExample:\n"
    "  sae-atlas build --model ./gpt2 --sae ./saes/L6 --sae ./saes/L8 -o gpt2.db\n"
    "  sae-atlas build --model ./smollm2 --gguf-file model.gguf --sae ./L14 \\\n"
    "      -o smol.db --passes du,ee,semantic --top-k 30 --device cuda\n"
    "  sae-atlas build --model ./gpt2 --sae ./saes/L6 -o gpt2.db --shard 0/2 &\n"
    "  sae-atlas build --model ./gpt2 --sae ./saes/L6 -o gpt2.db --shard 1/2 &\n"
    "  wait; sae-atlas build --merge-shards gpt2.db",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
