"""`sae-atlas build`: run the weight passes over one model and its SAEs into one atlas file.

The build is split by job, one module each:

* :mod:`builders.settings` -- :class:`BuildConfig`, every setting and its default, once;
* :mod:`builders.plan` -- the SAEs' atlas names and the units of work in the order they run;
* :mod:`builders.run` -- the partial file, resuming it, running the units, the atomic rename;
* :mod:`builders.shards` -- sharded builds and their merge;
* :mod:`builders.provenance` -- what the atlas records about how it was built;
* :mod:`builders.passes` -- the passes, one module each, collected by a registry.

The work is a list of independent *units*, one per (SAE, pass, feature chunk
of ``unit_size``), run in a fixed order. Each unit computes its rows with a
pure pass function and writes them, together with its ``build_units`` row,
in one transaction. The atlas is written to ``OUT.partial`` (SQLite with its
rollback journal on), so a killed build leaves at worst a partial file whose
finished units are all complete; ``resume=True`` skips them and carries on.
At the end the file is ANALYZEd, VACUUMed and renamed to ``OUT`` atomically,
so ``OUT`` is never half written.

Builds are deterministic: seeded random baselines, top-k ties broken by the
smaller index, units in a fixed order (so even autoincrement ids agree), and
no timestamps in provenance (only ``atlas_info.created_at``, the label
``created_at`` and ``build_units.finished_at`` carry the clock).

Everything that decides a number is recorded in provenance: every
BuildConfig field, the model and SAE sources with their sha256, what each pass
folded, the predicts/reads criteria with their fractions per SAE, the
conventions, and the library versions.

Memory: besides the weights, a build holds per-block scratch bounded by
``memory_mb`` (it shrinks ``block_rows`` and ``key_block``) and at most one
QK keys / OV targets / cosine-columns set (the "other side" of an edge pass,
one decoder's worth, d_sae x d_model floats). That set is cached iff it fits
``cache_mb`` (default half of ``memory_mb``), else streamed: recomputed from
the SAE weights one block at a time, once per unit. Both give bit-identical
rows, so extra memory does not grow with d_sae, except for the per-feature
columns and the ``attn_profile`` unit's fp32 scores (exact medians need
them: d_sae x n_heads x (12 x reach + 8) bytes, about 160 MB for 1M features and 8
heads). glibc is told to return freed blocks at once (:func:`release_freed_blocks`),
so RSS follows what is live rather than the allocator's high-water mark.
Measured (``benchmarks/bench_passes.py --features 512 --threads 1``, GPT-2-small
shapes, peak RSS above the weights): d_sae 24,576 -> +217 MB (sides cached),
131,072 -> +555 MB (cached, 402 MB each); with ``--cache-mb 0`` (streamed)
+187 and +172 MB. Before streaming: +480 and +2,092 MB.

This module keeps the names other code imports from it.
"""

from __future__ import annotations

from builders.errors import BuildError
from builders.passes.base import Unit
from builders.plan import plan_units, sae_names
from builders.run import build_atlas, release_freed_blocks
from builders.settings import ALL_PASSES, BuildConfig
from builders.shards import find_shards, merge_shards, shard_path

__all__ = [
    "ALL_PASSES",
    "BuildConfig",
    "BuildError",
    "Unit",
    "build_atlas",
    "find_shards",
    "merge_shards",
    "plan_units",
    "release_freed_blocks",
    "sae_names",
    "shard_path",
]
