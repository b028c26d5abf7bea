"""What a pass declares, what it gets to run one unit, and the rows it hands back.

A pass module ends with ``PASS = Pass(...)``: its name, where it runs in the
build order, which dictionaries it reads (one SAE, or an ordered pair such as
QK's query and key SAEs), how its work splits into units and which rows it
writes. :func:`builders.passes.registry` collects every module that has one; the
runner (:mod:`builders.run`) knows no pass by name. A step's ``run`` is the
glue from a :class:`Unit` to the pure pass function of the module and returns
:class:`Rows` with indices local to the SAEs, which the runner maps to atlas
ids and writes through the atlas write API, with the unit's ``build_units`` row,
in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from builders.passes.common import Columns, reading_attention_layer

if TYPE_CHECKING:
    from builders.settings import BuildConfig
    from builders.weights import ModelWeights, SAEWeights

ROW_TABLES = (
    "features",
    "token_scores",
    "head_scores",
    "edges",
    "labels",
    "depth_profiles",
    "virtual_baselines",
    "decoder_spread",
)


@dataclass(frozen=True)
class Target:
    """What one pass runs on: one SAE (``other`` None), or an ordered pair of SAEs.

    In a pair, ``sae`` is the side whose features are split into units and
    are the edges' sources; ``other`` is read whole (QK keys, OV targets, the
    next SAE of a flow). Indices into the build's SAE list.
    """

    sae: int
    other: int | None = None


@dataclass(frozen=True)
class Unit:
    """One committed piece of work: a step of a pass over features [start, end) of ``sae``."""

    pass_name: str  # the pass (what --passes names)
    step: str  # which of its steps
    key: str  # build_units.pass: the step's name, with the other SAE's name when the pass says so
    sae: int  # index into the SAE list: the features split into units
    other: int | None  # the second dictionary of a pair pass, else None
    start: int
    end: int


@dataclass(frozen=True)
class Step:
    """One kind of unit of a pass, run for every target in order (``attn`` then ``attn_profile``)."""

    name: str  # build_units.pass of its units
    run: Callable[[Context, Unit], Rows]
    whole: bool = False  # one unit over the whole SAE instead of unit_size chunks
    writes: tuple[str, ...] | None = None  # the tables its units fill, when only some of the pass's

    def fills(self, p: Pass, table: str) -> bool:
        """Whether this step's units write rows of ``table`` (of pass ``p``)."""
        return table in (p.writes if self.writes is None else self.writes)


@dataclass(frozen=True)
class Pass:
    """A pass as the build sees it. Unit order (so every id of the atlas) follows ``order``."""

    name: str  # what --passes names
    order: int  # position in the build: passes run by ascending order (du 10 ... semantic 90)
    help: str  # one line for `sae-atlas build --help`
    reads: str  # "one" SAE or an ordered "pair" of SAEs
    targets: Callable[[Context], list[Target]]  # what it runs on, in order
    steps: tuple[Step, ...]
    writes: tuple[str, ...]  # atlas tables its rows go to (of ROW_TABLES)
    edge_kind: str | None = None  # edges.kind of the edges it writes
    label_source: str | None = None  # labels.source of the labels it writes
    key_names_other: bool = False  # an SAE may pair with several others: name the other in build_units.pass
    conventions: Mapping[str, str] = field(default_factory=dict)  # recorded in provenance["conventions"]
    folding: Callable[[bool], dict[str, str]] | None = None  # provenance["folding"] entries, given fold_norms
    criteria: Callable[[Context], dict[str, dict[str, Any]]] | None = None  # provenance["criteria"] entries
    check: Callable[[BuildConfig, list[str]], object] | None = None  # refuse bad settings, given the SAE names
    edges_reversed: bool = False  # its units split the edges' destinations: edges go from ``other`` to the unit's SAE

    def __post_init__(self) -> None:
        unknown = set(self.writes) - set(ROW_TABLES)
        if unknown or self.reads not in ("one", "pair") or not self.steps:
            raise ValueError(f"pass {self.name}: bad declaration ({unknown or self.reads or 'no steps'})")
        if ("edges" in self.writes) != (self.edge_kind is not None):
            raise ValueError(f"pass {self.name}: an edge pass names its edge_kind, and only an edge pass")
        if ("labels" in self.writes) != (self.label_source is not None):
            raise ValueError(f"pass {self.name}: a label pass names its label_source, and only a label pass")

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def unit_key(self, step: Step, target: Target, names: list[str]) -> str:
        if self.key_names_other and target.other is not None and target.other != target.sae:
            return f"{step.name}:{names[target.other]}"
        return step.name


# ---------------------------------------------------------------- rows


@dataclass
class HeadRows:
    """head_scores rows: flat, equal-length arrays (features local to the unit's SAE)."""

    idx: np.ndarray  # (m,) latent index
    layer: np.ndarray  # (m,) attention layer of the head
    head: np.ndarray  # (m,) head index within the layer
    role: str
    score: np.ndarray  # (m,)
    percentile: np.ndarray | None = None  # (m,)


@dataclass
class EdgeRows:
    """Edges between features of two SAEs, indices local to each SAE (src: the unit's, dst: the other's)."""

    src: np.ndarray  # (m,) int
    dst: np.ndarray  # (m,) int
    head: np.ndarray | None  # (m,) head index within ``layer``; None for head-less kinds
    score: np.ndarray  # (m,)
    rank: np.ndarray  # (m,) 0 = strongest within (src, head)
    layer: int | None = None
    percentile: np.ndarray | None = None  # (m,) virtual kinds: |score|'s percentile in the pair's random baseline

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Rows:
    """Everything one unit writes. Only the tables its pass declares in ``writes`` may be filled."""

    features: dict[str, np.ndarray] = field(default_factory=dict)  # metric column -> (end - start,)
    token_scores: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # ^ (phase, sign) -> (token ids, values), each (end - start, k), best first
    head_scores: list[HeadRows] = field(default_factory=list)
    edges: EdgeRows | None = None
    labels: list[tuple[str, str, float | None, Any]] = field(default_factory=list)
    # ^ one (text, kind, score, evidence) per feature of [start, end)
    depth_profiles: list[tuple[int, str, dict[str, float]]] = field(default_factory=list)  # (layer, role, stats)
    virtual_baselines: dict[str, float | int | None] = field(default_factory=dict)  # the unit's pair's baseline
    decoder_spread: tuple[tuple[int, ...], np.ndarray] | None = None  # (out layers, norms (end - start, n_layers))

    def tables(self) -> set[str]:
        """The tables these rows fill."""
        filled = {
            "features": bool(self.features),
            "token_scores": bool(self.token_scores),
            "head_scores": bool(self.head_scores),
            "edges": self.edges is not None,
            "labels": bool(self.labels),
            "depth_profiles": bool(self.depth_profiles),
            "virtual_baselines": bool(self.virtual_baselines),
            "decoder_spread": self.decoder_spread is not None,
        }
        return {t for t, full in filled.items() if full}


# ---------------------------------------------------------------- context


class Context:
    """What every unit of one build shares: weights, settings, block sizes and per-build caches.

    The plan uses it too (``reads``), before any atlas exists. ``stored_top_ids``
    reads token lists earlier units wrote (semantic labels judge them); it is
    None while planning.
    """

    def __init__(
        self,
        model: ModelWeights,
        saes: list[SAEWeights],
        names: list[str],
        cfg: BuildConfig,
        stored_top_ids: Callable[[int, int, int, str, int], np.ndarray | None] | None = None,
    ):
        self.model, self.saes, self.names, self.cfg = model, saes, names, cfg
        self.block_rows, self.vocab_tile = cfg.blocks(model.device)
        self.reads = [reading_attention_layer(s, model.n_layers) for s in saes]  # attention layer reading each
        self._stored_top_ids = stored_top_ids
        self._cache: dict[Any, Any] = {}  # small things only (criteria, baselines)
        self._cols: tuple[Any, Columns] | None = None  # the one QK/OV/cosine "other side" held now

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per build (random baselines, criteria)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def columns(self, key: Any, dim: int, make: Callable[[int, bool], Columns]) -> Columns:
        """The other side of an edge unit (QK keys, OV targets, cosine columns), ``make(block, cache)``.

        Kept whole iff it fits ``cfg.cache_bytes()``, else streamed block by
        block (bit-identical rows either way). Only one is held at a time:
        units run pass by pass, SAE by SAE, so consecutive units share it.
        """
        if self._cols is not None and self._cols[0] == key:
            return self._cols[1]
        self._cols = None  # free the previous one before making the next
        block = self.cfg.key_columns(dim, self.block_rows)
        cols = make(block, False)  # streamed: nothing computed yet
        if cols.nbytes <= self.cfg.cache_bytes():
            cols = make(block, True)
        self._cols = (key, cols)
        return cols

    def stored_top_ids(self, sae: int, start: int, end: int, phase: str, sign: int = 1) -> np.ndarray | None:
        """Promoted (``sign`` -1: suppressed) token ids (end - start, k) an earlier unit stored, or None where it
        has not run here."""
        if self._stored_top_ids is None:
            return None
        return self._stored_top_ids(sae, start, end, phase, sign)


def each_sae(ctx: Context) -> list[Target]:
    """Targets of a pass that runs on every SAE."""
    return [Target(i) for i in range(len(ctx.saes))]


def read_by_attention(ctx: Context) -> list[Target]:
    """Targets of a pass that needs an attention layer reading the SAE's site."""
    return [Target(i) for i in range(len(ctx.saes)) if ctx.reads[i] is not None]
