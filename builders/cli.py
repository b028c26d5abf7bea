"""`sae-atlas build`: the click command (atlas/cli.py imports it lazily, so torch loads only here)."""

from __future__ import annotations

import sys
import time

import click

from atlas.errors import AtlasError

PASSES_HELP = "du,ee,attn,attribution,qk,ov,neighbours,flow,semantic"


def _opt_int(value: str | None) -> int | None:
    return None if value in (None, "", "none", "None") else int(value)


@click.command("build")
@click.option("--model", "model_source", default=None, help="Hub id, local model folder, or .gguf file. [required]")
@click.option("--gguf-file", default=None, help="GGUF file name inside the --model folder.")
@click.option("--sae", "sae_paths", multiple=True, help="SAE file or folder; repeat for several SAEs. [required]")
@click.option("--sae-format", default=None, help="Force the SAE format (saelens, gemma_scope, llama_scope, ...).")
@click.option("--sae-name", "sae_name_list", multiple=True, help="Atlas name per --sae, in order (default L12.res).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Atlas file to write. [required]")
@click.option("--passes", default=PASSES_HELP, show_default=True, help="Comma-separated passes to run.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N (optionally +bf16).")
@click.option("--top-k", default=20, show_default=True, help="Tokens kept per feature, phase and sign.")
@click.option("--reach", default=1, show_default=True, help="Attention layers scored after the reading one.")
@click.option("--percentile", default=75.0, show_default=True, help="Store heads at or above this percentile.")
@click.option(
    "--store-percentile", type=float, default=None,
    help="Stricter cut for the stored head rows only (depth profiles keep --percentile).",
)  # fmt: skip
@click.option("--n-random", default=1024, show_default=True, help="Random directions per baseline.")
@click.option("--qk-k", default=10, show_default=True, help="QK edges per (feature, head).")
@click.option("--qk-cap", default=None, help="At most this many QK edges per feature across heads.")
@click.option("--qk-pair", "qk_pairs", multiple=True, help="QUERY_SAE:KEY_SAE names (default: each SAE with itself).")
@click.option("--ov-k", default=10, show_default=True, help="OV edges per (feature, head).")
@click.option("--ov-cap", default=None, help="At most this many OV edges per feature across heads.")
@click.option("--ov-target", type=click.Choice(["auto", "resid", "z"]), default="auto", show_default=True)
@click.option("--neighbour-k", default=10, show_default=True, help="Decoder-cosine neighbours per feature.")
@click.option("--flow-k", default=5, show_default=True, help="Flow matches per feature into the next SAE.")
@click.option("--fold-norms/--no-fold-norms", default=True, show_default=True, help="Fold norm gains (off = raw W_U).")
@click.option("--predicts-z", type=float, default=None, help="Fixed du_top1_z threshold (default: random baseline).")
@click.option("--reads-z", type=float, default=None, help="Fixed ee_top1_z threshold (default: random baseline).")
@click.option("--unit-size", default=4096, show_default=True, help="Features per committed unit of work.")
@click.option("--memory-mb", default=1024, show_default=True, help="Scratch memory cap per block.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random baseline.")
@click.option("--resume", is_flag=True, help="Continue OUT.partial left by a killed build.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--shard", default=None, metavar="I/N", help="Run only units I mod N into OUT.shardI-of-N.partial.")
@click.option(
    "--merge-shards", "merge_out", default=None, type=click.Path(dir_okay=False), metavar="OUT",
    help="Combine the finished OUT.shardI-of-N.partial files into OUT (no model or SAE needed).",
)  # fmt: skip
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
def build(
    model_source, gguf_file, sae_paths, sae_format, sae_name_list, out, passes, device, top_k, reach, percentile,
    store_percentile, n_random, qk_k, qk_cap, qk_pairs, ov_k, ov_cap, ov_target, neighbour_k, flow_k, fold_norms, predicts_z,
    reads_z, unit_size, memory_mb, seed, resume, overwrite, shard, merge_out, progress,
) -> None:  # fmt: skip
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

    \b
    Example:
      sae-atlas build --model ./gpt2 --sae ./saes/L6 --sae ./saes/L8 -o gpt2.db
      sae-atlas build --model ./smollm2 --gguf-file model.gguf --sae ./L14 \\
          -o smol.db --passes du,ee,semantic --top-k 30 --device cuda
      sae-atlas build --model ./gpt2 --sae ./saes/L6 -o gpt2.db --shard 0/2 &
      sae-atlas build --model ./gpt2 --sae ./saes/L6 -o gpt2.db --shard 1/2 &
      wait; sae-atlas build --merge-shards gpt2.db
    """
    if merge_out is not None:
        try:
            from builders.build import merge_shards

            click.echo(str(merge_shards(merge_out, overwrite=overwrite)))
        except AtlasError as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        return
    for value, name in ((model_source, "--model"), (sae_paths, "--sae"), (out, "-o / --out")):
        if not value:
            raise click.UsageError(f"Missing option '{name}'.")
    shard_tuple = None
    if shard is not None:
        parts = shard.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise click.BadParameter("use I/N, e.g. 0/4", param_hint="--shard")
        shard_tuple = (int(parts[0]), int(parts[1]))
    try:
        from builders.build import BuildConfig, build_atlas
        from builders.models import load_model
        from builders.saes import check_sae_fits, load_sae

        pairs = tuple(tuple(p.split(":", 1)) for p in qk_pairs) or None
        if pairs and any(len(p) != 2 for p in pairs):
            raise click.BadParameter("use QUERY_SAE:KEY_SAE", param_hint="--qk-pair")
        config = BuildConfig(
            passes=passes, top_k=top_k, reach=reach, percentile=percentile, store_percentile=store_percentile, n_random=n_random, qk_k=qk_k,
            qk_cap=_opt_int(qk_cap), qk_pairs=pairs, ov_k=ov_k, ov_cap=_opt_int(ov_cap), ov_target=ov_target,
            neighbour_k=neighbour_k, flow_k=flow_k, fold_norms=fold_norms, predicts_z=predicts_z, reads_z=reads_z,
            unit_size=unit_size, memory_mb=memory_mb, device=device, seed=seed,
            sae_names=tuple(sae_name_list) or None,
        )  # fmt: skip
        t0 = time.perf_counter()
        if not progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        # SAEs first: a missing or corrupt SAE file fails before the (slower) model load.
        saes = [load_sae(p, fmt=sae_format, device=device) for p in sae_paths]
        model = load_model(model_source, gguf_file=gguf_file, device=device)
        for s in saes:
            check_sae_fits(s, model)
        if progress:
            click.echo(f"loaded model and {len(saes)} SAE(s) in {time.perf_counter() - t0:.1f}s", err=True)
        path = build_atlas(
            model, saes, out, config=config, resume=resume, progress=progress, overwrite=overwrite, shard=shard_tuple
        )
    except AtlasError as e:
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    except (FileNotFoundError, PermissionError) as e:
        raise click.ClickException(f"{e.filename}: {e.strerror}") from None
    click.echo(str(path))
    if progress:
        click.echo(f"built in {time.perf_counter() - t0:.1f}s", err=True)
    sys.stdout.flush()
