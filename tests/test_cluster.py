"""`sae-atlas build --cluster`: shards as tasks on a real Dask LocalCluster (2 CPU worker processes).

The atlas must be the one a single process writes, row for row (tests.test_build.dump),
also when a worker is killed in the middle of a unit: Dask runs its shard again on a
worker that lives, the shard resumes, and the merge gives the same file. The workers use
one torch thread, and so does the one-process build here: BLAS sums in another order with
another thread count, which changes the last bits of the statistics (not the token lists).
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from atlas.cli import cli
from builders.cluster import ClusterSpec, parse_cluster
from builders.errors import BuildError
from tests.builders_fixtures import tiny_model, write_saelens_sae
from tests.test_build import dump
from tests.test_build_cli import save_word_tokenizer

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    model = tiny_model("llama")  # d_model 48, 2 layers
    model.save_pretrained(root / "model")
    save_word_tokenizer(root / "model", model.config.vocab_size)
    write_saelens_sae(root / "res0", d_in=48, d_sae=40, hook_name="blocks.0.hook_resid_pre", seed=1)
    write_saelens_sae(root / "res1", d_in=48, d_sae=30, hook_name="blocks.0.hook_resid_post", seed=2)
    return root


@pytest.fixture(scope="module")
def cluster():
    import logging

    c = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        env={"OMP_NUM_THREADS": "1"}, silence_logs=logging.ERROR,
    )  # fmt: skip
    yield c
    c.close()


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    """The reference: the same build in this process, with one torch thread like each worker."""
    out = tmp_path_factory.mktemp("one") / "one.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(cli, ["build", *common(files), "-o", str(out)], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    return dump(out)


def common(files):
    return [
        "--model", str(files / "model"), "--sae", str(files / "res0"), "--sae", str(files / "res1"),
        "--passes", "du,ee,neighbours,flow,semantic", "--top-k", "5", "--unit-size", "8", "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip


def test_cluster_build_has_the_rows_of_one_process(files, cluster, one_process, tmp_path):
    out = tmp_path / "c.db"
    r = CliRunner().invoke(cli, ["build", *common(files), "-o", str(out), "--cluster", cluster.scheduler_address])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == str(out)
    assert dump(out) == one_process
    assert not list(tmp_path.glob("c.db.shard*"))  # merged, then removed


def test_worker_killed_mid_unit_still_gives_the_same_atlas(files, cluster, one_process, tmp_path):
    from builders.cli import _build, config_from_options
    from builders.cli import build as build_cmd
    from builders.cluster import cluster_build

    params = build_cmd.make_context("build", [*common(files), "-o", str(tmp_path / "k.db")]).params
    settings = {k: v for k, v in params.items() if k not in _NOT_SETTINGS}
    kwargs = dict(
        model_source=params["model_source"], gguf_file=None, no_tokenizer=False, sae_paths=params["sae_paths"],
        sae_format=None, sae_hooks=(), out=str(tmp_path / "k.db"), overwrite=False,
        config=config_from_options(settings),
    )  # fmt: skip
    marker = tmp_path / "killed"
    out = cluster_build(
        _build, kwargs, out=tmp_path / "k.db", cluster=cluster.scheduler_address, progress=True,
        fault=(0, 2, str(marker)),
    )  # fmt: skip
    assert marker.exists()  # the worker of shard 0 did die, with its third unit's rows written, uncommitted
    assert dump(out) == one_process


_NOT_SETTINGS = {
    "model_source", "gguf_file", "no_tokenizer", "sae_paths", "sae_format", "sae_hooks", "out", "resume",
    "overwrite", "shard", "merge_out", "progress", "cluster", "cluster_config",
}  # fmt: skip


def test_cluster_specs():
    assert parse_cluster("local") == ClusterSpec("local", None)
    assert parse_cluster("local:3") == ClusterSpec("local", 3)
    assert parse_cluster("slurm:4") == ClusterSpec("slurm", 4)
    assert parse_cluster("tcp://10.0.0.1:8786") == ClusterSpec("address", None, "tcp://10.0.0.1:8786")
    for bad in ("local:0", "locl", "slurm:x", "http://h:1", ""):
        with pytest.raises(BuildError):
            parse_cluster(bad)


def test_cluster_and_shard_together_is_a_usage_error(files, tmp_path):
    r = CliRunner().invoke(cli, ["build", *common(files), "-o", str(tmp_path / "x.db"), "--cluster", "local:2",
                                 "--shard", "0/2"])  # fmt: skip
    assert r.exit_code == 2 and "drop --shard" in r.output


def test_killed_client_resumes_without_redoing_finished_units(files, cluster, one_process, tmp_path):
    """Shard files as a killed client leaves them (shard 0 complete, shard 1 one unit in): --resume runs
    only what is missing. Finished units are marked with a sentinel time that a redone unit would overwrite."""
    import sqlite3

    from builders.cli import _build, config_from_options
    from builders.cli import build as build_cmd
    from builders.shards import shard_path

    out = tmp_path / "r.db"
    params = build_cmd.make_context("build", [*common(files), "-o", str(out)]).params
    kwargs = dict(
        model_source=params["model_source"], gguf_file=None, no_tokenizer=False, sae_paths=params["sae_paths"],
        sae_format=None, sae_hooks=(), out=str(out), overwrite=False,
        config=config_from_options({k: v for k, v in params.items() if k not in _NOT_SETTINGS}),
    )  # fmt: skip

    class Killed(Exception):
        pass

    def die_after_one(u):
        raise Killed

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _build(**kwargs, resume=False, shard=(0, 2), progress=False)
        with pytest.raises(Killed):
            _build(**kwargs, resume=False, shard=(1, 2), progress=False, after_unit=die_after_one)
    finally:
        torch.set_num_threads(threads)
    sentinel = "2000-01-01T00:00:00+00:00"
    done = 0
    for i in range(2):
        with sqlite3.connect(shard_path(out, i, 2)) as conn:
            done += conn.execute("UPDATE build_units SET finished_at = ?", (sentinel,)).rowcount
    r = CliRunner().invoke(
        cli, ["build", *common(files), "-o", str(out), "--cluster", cluster.scheduler_address, "--resume"]
    )
    assert r.exit_code == 0, r.output
    assert dump(out) == one_process
    with sqlite3.connect(out) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM build_units WHERE finished_at = ?", (sentinel,)).fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM build_units").fetchone()[0]
    assert kept == done and total > done  # every finished unit kept, the rest run now
