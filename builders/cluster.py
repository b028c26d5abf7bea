"""Builds on a Dask cluster: ``sae-atlas build ... --cluster local[:N] | slurm[:N] | tcp://HOST:PORT``.

The build is cut into N shards (``--shard I/N``, :mod:`builders.shards`), one
Dask task each. A task loads the model and SAEs on its worker and runs its
shard with ``resume`` on, into ``OUT.shardI-of-N.partial`` beside ``OUT`` (a
folder every worker can write: the local disk for ``local``, a shared file
system on SLURM). The client then merges the shards into ``OUT``, row for
row the atlas one process would have written.

Failures: a task whose worker dies is run again by Dask on another worker
(up to ``distributed.scheduler.allowed-failures`` times); it resumes its
shard, so only the unit that was in flight is redone (a unit's rows and its
``build_units`` row are one transaction). A killed client is rerun with
``--resume``: finished units of every shard are skipped. Without
``--resume`` stale shard files of an earlier run are started over.

Devices: ``local`` starts one worker per visible GPU, each pinned to its own
(``CUDA_VISIBLE_DEVICES``) so every shard sees ``cuda:0`` and the shards'
settings stay identical; without a GPU, N CPU worker processes that share
the cores (cores / N torch threads each). Progress is one bar on the client,
fed by every worker after each committed unit.

``slurm`` takes dask-jobqueue's ``SLURMCluster`` settings from
``--cluster-config FILE`` (YAML or JSON: ``cores``, ``memory``,
``job_extra_directives``, ...); see docs/scale.md for a 4-GPU job.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builders.errors import BuildError

_SPEC = re.compile(r"^(local|slurm)(?::(\d+))?$|^(tcp|tls)://\S+$")


@dataclass(frozen=True)
class ClusterSpec:
    kind: str  # local, slurm or address
    workers: int | None  # N, or None: one per GPU (local), 1 job (slurm), what is there (address)
    address: str | None = None


def parse_cluster(text: str) -> ClusterSpec:
    """``local``, ``local:N``, ``slurm``, ``slurm:N`` or ``tcp://HOST:PORT``."""
    m = _SPEC.match(text.strip())
    if m is None:
        raise BuildError(f"--cluster {text!r}: use local, local:N, slurm, slurm:N or tcp://HOST:PORT")
    if m.group(1) is None:
        return ClusterSpec("address", None, text.strip())
    n = int(m.group(2)) if m.group(2) else None
    if n is not None and n < 1:
        raise BuildError(f"--cluster {text!r}: N must be at least 1")
    return ClusterSpec(m.group(1), n)


def require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise BuildError("--cluster needs Dask: pip install 'sae-atlas[cluster]'") from None


def _read_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    text = Path(path).read_text()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise BuildError(f"{path}: not a cluster settings file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: cluster settings must be a mapping of SLURMCluster options")
    return data


def start_cluster(spec: ClusterSpec, config_file: str | None = None, *, threads: int | None = None) -> tuple[Any, Any]:
    """(cluster or None, client). The caller closes both."""
    from distributed import Client

    if spec.kind == "address":
        return None, Client(spec.address)
    if spec.kind == "slurm":
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(**_read_config(config_file))
        cluster.scale(jobs=spec.workers or 1)
        return cluster, Client(cluster)
    gpus = _visible_gpus()
    if gpus and spec.workers is None:
        from distributed import Nanny, Scheduler, SpecCluster

        workers = {
            f"gpu{g}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": g}}} for g in gpus
        }
        cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})
        return cluster, Client(cluster)
    from distributed import LocalCluster

    n = spec.workers or max(1, (os.cpu_count() or 1) // 2)
    per = threads or max(1, (os.cpu_count() or 1) // n)
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per)},
    )
    return cluster, Client(cluster)


def _visible_gpus() -> list[str]:
    """CUDA device ids this client sees (honouring CUDA_VISIBLE_DEVICES); [] without torch CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _n_workers(client: Any, wanted: int | None, timeout: float = 600.0) -> int:
    """Wait for workers to join; the shard count is the number there (at least 1)."""
    if wanted:
        client.wait_for_workers(wanted, timeout=timeout)
        return wanted
    client.wait_for_workers(1, timeout=timeout)
    return max(1, len(client.scheduler_info()["workers"]))


def run_shard(
    build: Callable[..., Any],
    kwargs: dict[str, Any],
    index: int,
    count: int,
    queue: str | None,
    fault: tuple[int, int, str] | None = None,
) -> str:
    """The task: ``build(**kwargs)`` on shard index/count with resume, reporting each finished unit."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    q = None
    if queue:
        from distributed import Queue

        q = Queue(queue)

    def after_unit(u: Any) -> None:
        if q is not None:
            q.put(u.end - u.start)

    restore = _arm_fault(fault, index) if fault else None
    try:
        return str(build(**kwargs, shard=(index, count), resume=True, progress=False, after_unit=after_unit))
    finally:
        if restore is not None:
            restore()


def _arm_fault(fault: tuple[int, int, str], index: int) -> Callable[[], None] | None:
    """Tests only: on shard ``fault[0]``, kill this worker process in the middle of its unit number
    ``fault[1]`` (rows written, transaction not committed), once (the marker file ``fault[2]`` says it happened)."""
    shard, after, marker = fault
    if shard != index or Path(marker).exists():
        return None
    from builders import run

    original = run.Writer.write
    seen = [0]

    def write(self: Any, p: Any, u: Any, rows: Any) -> None:
        original(self, p, u, rows)
        seen[0] += 1
        if seen[0] > after:
            Path(marker).write_text(str(os.getpid()))
            os._exit(17)  # no cleanup, no commit: as a killed worker

    run.Writer.write = write

    def restore() -> None:
        run.Writer.write = original

    return restore


def cluster_build(
    build: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    out: str | Path,
    cluster: str,
    cluster_config: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    total_features: int | None = None,
    say: Callable[[str], None] | None = None,
    fault: tuple[int, int, str] | None = None,
) -> Path:
    """Run a build's shards as Dask tasks and merge them into ``out``; returns its path.

    ``build`` is called on the workers as ``build(**kwargs, shard=(I, N), resume=True, progress=False,
    after_unit=...)`` and must write ``OUT.shardI-of-N.partial`` (``builders.cli._build``).
    """
    from builders.run import check_output
    from builders.shards import merge_shards, shard_path

    require_dask()
    spec = parse_cluster(cluster)
    out = Path(out)
    check_output(out, overwrite=overwrite)
    cl, client = start_cluster(spec, cluster_config)
    try:
        n = _n_workers(client, spec.workers)
        stale = [
            p
            for p in out.parent.glob(out.name + ".shard*-of-*.partial")
            if p.name.split(".shard")[-1] and not p.name.endswith(f"-of-{n}.partial")
        ]
        if stale and resume:
            raise BuildError(
                f"{out}: shard files of another count ({stale[0].name}); resume with the same number of workers"
            )
        for p in stale + ([] if resume else [shard_path(out, i, n) for i in range(n)]):
            for f in (p, p.with_name(p.name + "-journal")):
                f.unlink(missing_ok=True)
        if say is not None:
            say(f"cluster: {n} worker(s), {n} shard(s) beside {out}")
        queue = f"sae-atlas-progress-{uuid.uuid4().hex}" if progress else None
        futures = [
            client.submit(
                run_shard,
                build,
                kwargs,
                i,
                n,
                queue,
                fault,
                key=f"sae-atlas-shard-{i}-of-{n}-{uuid.uuid4().hex}",
                pure=False,
            )
            for i in range(n)
        ]
        _wait(client, futures, queue, total_features)
        for f in futures:
            f.result()  # a task that failed every retry raises here
    finally:
        client.close()
        if cl is not None:
            cl.close()
    return merge_shards(out, n, overwrite=overwrite)


def _wait(client: Any, futures: list[Any], queue: str | None, total: int | None) -> None:
    """Until every task is done; with a queue, one tqdm bar of features over all workers."""
    from distributed import wait

    if queue is None:
        wait(futures)
        return
    import sys

    from distributed import Queue
    from tqdm.auto import tqdm

    q = Queue(queue, client=client)
    bar = tqdm(total=total, desc="     cluster", unit="feat", file=sys.stderr)
    try:
        while True:
            done = all(f.done() for f in futures)  # read before draining: nothing is reported after done
            for n in q.get(batch=True) or []:
                bar.update(n)
            if done:
                break
            time.sleep(0.3)
    finally:
        bar.close()
