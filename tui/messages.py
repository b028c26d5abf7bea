"""Messages posted by worker threads back to the UI thread.

Each is a small dataclass. Workers build them off the UI thread and call
``post_message``, which is thread-safe; screens handle them with ``@on``.
A ``generation`` field lets a screen drop answers to a question it has
since replaced (a newer filter, a newer search).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from atlas.listing import FeatureFilter, Page
from atlas.types import FeatureCard, Label


@dataclass
class _Msg(Message):
    """Textual's Message initialises itself in __post_init__, so dataclass messages just work."""


@dataclass
class WorkFailed(_Msg):
    """A worker hit an error; the app shows it with notify(severity="error")."""

    what: str
    error: str


@dataclass
class OverviewLoaded(_Msg):
    info: dict[str, Any]
    models: list[Any]
    saes: list[Any]
    counts: dict[str, int]


@dataclass
class PlotLoaded(_Msg):
    """One overview plot's numbers (a tui.plots.Panel, computed by atlas.stats)."""

    panel: Any


@dataclass
class PageLoaded(_Msg):
    generation: int
    page: Page
    first: bool  # first page of a new filter: replaces the table


@dataclass
class CountLoaded(_Msg):
    generation: int
    flt: FeatureFilter
    count: int


@dataclass
class CardLoaded(_Msg):
    card: FeatureCard
    criteria: dict[str, Any] = field(default_factory=dict)
    neuronpedia: Any = None  # atlas.neuronpedia.NeuronpediaCard: URL, agreement, activation examples


@dataclass
class SearchDone(_Msg):
    generation: int
    query: str
    hits: list[Any]  # tui.search.SearchHit
    seconds: float


@dataclass
class QueryDone(_Msg):
    generation: int
    sql: str
    columns: list[str]
    rows: list[tuple]
    offset: int
    more: bool
    seconds: float


@dataclass
class QueryFailed(_Msg):
    generation: int
    sql: str
    error: str


@dataclass
class LabelSaved(_Msg):
    feature_id: int
    label: Label
    where: str  # "in the atlas file X" / "in your label overlay Y (why)"


@dataclass
class LabelNotSaved(_Msg):
    """Saving failed: the typed text comes back so it can be offered again."""

    feature_id: int
    text: str
    kind: str
    error: str


@dataclass
class TraceLoaded(_Msg):
    """A trace view's root (atlas.trace.Stop) and its first level, read in a worker."""

    generation: int
    root: Any
    hops: list[Any]  # atlas.trace.Hop
    note: str | None = None  # e.g. why there is nothing to show


@dataclass
class TraceExpanded(_Msg):
    """The next level under some tree nodes: {node id: [atlas.trace.Hop]}; node ids not in it have no edges."""

    generation: int
    node_ids: list[int]
    hops: dict[int, list[Any]]
