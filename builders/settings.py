"""BuildConfig: every setting of a build, each default once, with what it means beside it.

The ``build`` command's options are derived from these fields (their type and
the comment after each default become the option and its help), and the
whole config is recorded in the atlas provenance, so two atlases can say why
their numbers differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from builders.errors import BuildError
from builders.passes import pass_names
from builders.passes.ov import OV_TARGETS
from builders.passes.semantic import SemanticSettings

ALL_PASSES = pass_names()


@dataclass
class BuildConfig:
    """Every setting of a build. All of it goes into the atlas provenance."""

    passes: tuple[str, ...] = ALL_PASSES  # passes to run (comma-separated), any subset of all the passes
    top_k: int = 20  # tokens kept per feature, phase (du/ee) and sign
    fold_norms: bool = True  # fold norm gains into directions; False = raw W_U/W_E like Neuronpedia
    predicts_z: float | None = None  # fixed du_top1_z threshold of predicts_tokens; None = set by predicts_quantile
    reads_z: float | None = None  # fixed ee_top1_z threshold of reads_tokens; None = set by predicts_quantile
    predicts_quantile: float = 0.99  # quantile of top1_z over random directions that sets both thresholds
    reach: int = 1  # attention layers scored per SAE: its reading layer and the next reach-1
    percentile: float = 75.0  # head_scores keeps (feature, head) at or above this baseline percentile
    store_percentile: float | None = None  # stricter cut for the stored head_scores rows only; None = percentile
    n_random: int = 1024  # random directions per baseline (attention heads, predicts/reads tau)
    qk_k: int = 10  # key features kept per (query feature, head)
    qk_cap: int | None = None  # at most this many QK edges per query feature across heads; None = all
    qk_exclude_self: bool = False  # drop the (i, i) pair from QK top-k lists
    qk_pairs: tuple[tuple[str, str], ...] | None = None  # (query SAE, key SAE) name pairs; None = each SAE with itself
    ov_k: int = 10  # target features kept per (source feature, head)
    ov_cap: int | None = None  # at most this many OV edges per source feature across heads; None = all
    ov_target: str = "auto"  # auto: nearest later residual SAE, else attn_out/attn_z SAE of the layer; resid; z
    attribution_floor: float = 0.01  # hook_z head shares below this are not stored as head_scores
    neighbour_k: int = 10  # decoder-cosine neighbours per feature (within its SAE)
    flow_k: int = 5  # flow matches per feature into the next SAE
    virtual_k: int = 10  # virtual weights kept per feature and later dictionary (strongest |V| out; kind virtual)
    virtual_in_k: int = 10  # virtual weights kept per feature and earlier dictionary (strongest |V| in; virtual_in)
    virtual_pairs: tuple[tuple[str, str], ...] | None = None  # (source, destination) names; None = all with a path
    virtual_max_layers: int | None = None  # only pairs at most this many layers apart; None = no limit
    virtual_baseline_samples: int = 1 << 22  # |V| values per pair's random baseline (directions x features)
    virtual_sample: int = 1024  # source features (evenly spaced) scored against all for frac_above_p99/p999
    semantic: SemanticSettings = field(default_factory=SemanticSettings)  # the semantic labels' heuristic
    unit_size: int = 4096  # features per unit of work: one committed chunk, the resume granularity
    block_rows: int | None = None  # features per matmul block; None = 256 on CPU, 2048 on GPU (memory-capped)
    vocab_tile: int | None = None  # vocab columns per tile; None = 4096 on CPU (cache), 32768 on GPU
    key_block: int = 8192  # feature columns per block when streaming QK/OV/cosine top-k (memory-capped)
    memory_mb: int = 1024  # scratch memory budget: shrinks block_rows/key_block; caps the column cache
    cache_mb: float | None = None  # cache a QK/OV/cosine "other side" iff it fits; None = memory_mb / 2; 0 = stream
    device: str = "auto"  # device the passes run on (the model's tensors decide; recorded)
    seed: int = 0  # seeds every random baseline
    sae_names: tuple[str | None, ...] | None = None  # atlas name per SAE, in order; None = L12.res style, de-duplicated

    def __post_init__(self) -> None:
        if isinstance(self.passes, str):
            self.passes = tuple(p.strip() for p in self.passes.split(",") if p.strip())
        self.passes = tuple(self.passes)
        known = pass_names()
        unknown = [p for p in self.passes if p not in known]
        if unknown:
            raise BuildError(f"unknown pass(es) {', '.join(unknown)}; choose from {', '.join(known)}")
        if self.ov_target not in OV_TARGETS:
            raise BuildError(
                f"ov_target must be {', '.join(OV_TARGETS[:-1])} or {OV_TARGETS[-1]}, not {self.ov_target!r}"
            )
        for name in (
            "top_k",
            "reach",
            "n_random",
            "qk_k",
            "ov_k",
            "neighbour_k",
            "flow_k",
            "unit_size",
            "virtual_k",
            "virtual_in_k",
            "virtual_baseline_samples",
            "virtual_sample",
        ):
            if getattr(self, name) < 1:
                raise BuildError(f"{name} must be at least 1")
        if self.virtual_max_layers is not None and self.virtual_max_layers < 0:
            raise BuildError("virtual_max_layers must be at least 0")
        if self.virtual_pairs is not None:
            self.virtual_pairs = tuple((str(a), str(b)) for a, b in self.virtual_pairs)
        if self.store_percentile is not None and not self.percentile <= self.store_percentile <= 100:
            raise BuildError("store_percentile must be between percentile and 100")
        if not 0 <= self.percentile <= 100:
            raise BuildError("percentile must be between 0 and 100")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passes"] = list(self.passes)
        return d

    def cache_bytes(self) -> int:
        """Largest QK keys / OV targets / cosine columns kept whole; bigger ones are streamed block by block."""
        mb = self.memory_mb / 2 if self.cache_mb is None else self.cache_mb
        return int(mb * 2**20)

    def key_columns(self, dim: int, block_rows: int) -> int:
        """Columns per streamed block: a block (H*d_head or d_in = ``dim`` rows), the folded directions it is
        made from, and two (block_rows, cols) score tiles stay within half of memory_mb."""
        cap = (self.memory_mb << 19) // (4 * (3 * dim + 2 * block_rows))
        return max(1, min(self.key_block, cap))

    def blocks(self, device: torch.device) -> tuple[int, int]:
        """(block_rows, vocab_tile) for this device, capped by memory_mb (3 fp32 scratch buffers)."""
        gpu = device.type != "cpu"
        tile = self.vocab_tile or (32768 if gpu else 4096)
        rows = self.block_rows or (2048 if gpu else 256)
        cap = max(1, (self.memory_mb << 20) // (3 * 4 * tile))
        return max(1, min(rows, cap)), tile
