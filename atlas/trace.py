"""The strongest paths from one feature through later (or earlier) layers, read off the virtual edges.

The ``virtual`` pass stores two edge kinds between the dictionaries of one model
(see docs/graph.md): ``virtual`` (src -> dst, ranked within the source feature's
edges into one destination dictionary) and ``virtual_in`` (src -> dst, ranked
within the destination feature's edges from one source dictionary), each with
the percentile of its |score| in a random baseline of that dictionary pair.

A downward trace follows ``virtual`` edges by source (what a feature writes
into, layer after layer); an upward one follows ``virtual_in`` edges by
destination (what writes into it). Each level of the tree is one batch of
indexed queries however wide it is: the edges of the whole frontier, then the
names and top tokens of the features they reach. A feature met twice (two
paths into it) is expanded where it first appears and marked ``seen`` after.
A downward trace ends at the logits: every node carries its top promoted
tokens (the du lists), so a leaf's tokens are the direct path out.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from atlas.errors import AtlasError, DamagedAtlas
from atlas.rows import damage

DIRECTIONS = ("down", "up")
EDGE_KIND = {"down": "virtual", "up": "virtual_in"}  # the kind each direction follows
TOKEN_LIST = {"down": ("du", 1), "up": ("ee", 1)}  # promoted tokens going down, input tokens going up
TOKEN_WORDS = {"down": "promotes", "up": "driven by"}
MAX_NODES = 5000  # a tree wider than this is cut (and says so): bounded work whatever --top and --depth
_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit on any build
MIN_SCHEMA = 4  # the schema that added edges.percentile and the virtual kinds


class NeedsVirtualEdges(AtlasError):
    """The atlas has no virtual edges to trace (built before schema 4, or without the virtual pass)."""


@dataclass(frozen=True)
class TraceNode:
    node: int  # position in the tree, preorder-free: breadth first, 0 = the root
    parent: int | None  # the node it hangs from (None for the root)
    depth: int  # hops from the root
    feature_id: int
    name: str  # SAE/INDEX
    sae: str
    layer: int
    site: str
    score: float | None  # the edge's virtual weight (None for the root)
    percentile: float | None  # |score|'s percentile in the pair's random baseline
    rank: int | None  # the edge's rank as stored (within one dictionary pair)
    pair: str | None  # the edge's dictionaries, "SRC_SAE -> DST_SAE" in the forward direction
    tokens: tuple[str, ...] = ()  # top promoted tokens going down, top input tokens going up
    seen: bool = False  # met earlier in the tree: not expanded again here
    cut: str | None = None  # why a node has no children: "depth", "no edges", "seen", "nodes"


@dataclass(frozen=True)
class TraceEdge:
    src_feature: int  # in the model's forward direction (src writes, dst reads)
    dst_feature: int
    kind: str
    score: float
    percentile: float | None
    rank: int
    pair: str
    parent_node: int  # tree nodes it joins (parent -> child, whichever the direction)
    child_node: int


@dataclass
class Trace:
    root: int  # feature id
    direction: str
    depth: int
    top: int
    min_percentile: float
    nodes: list[TraceNode] = field(default_factory=list)
    edges: list[TraceEdge] = field(default_factory=list)
    note: str | None = None  # e.g. the root has no edges; the tree was cut at MAX_NODES
    token_list: str = "du+"  # which token list ``tokens`` holds

    def children(self) -> dict[int, list[TraceNode]]:
        out: dict[int, list[TraceNode]] = {}
        for n in self.nodes:
            if n.parent is not None:
                out.setdefault(n.parent, []).append(n)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "direction": self.direction,
            "edge_kind": EDGE_KIND[self.direction],
            "depth": self.depth,
            "top": self.top,
            "min_percentile": self.min_percentile,
            "token_list": self.token_list,
            "note": self.note,
            "nodes": [{**asdict(n), "tokens": list(n.tokens)} for n in self.nodes],
            "edges": [asdict(e) for e in self.edges],
        }


@dataclass(frozen=True)
class Step:
    """One candidate edge out of a frontier feature, as read (before the tree takes it)."""

    src_feature: int
    dst_feature: int
    score: float
    percentile: float | None
    rank: int

    def other(self, direction: str) -> int:
        return self.dst_feature if direction == "down" else self.src_feature

    def strength(self) -> tuple[float, float]:
        """Sort key, strongest first: the percentile (comparable across dictionary pairs), then |score|."""
        p = self.percentile if self.percentile is not None else -1.0
        return (-p, -abs(self.score))


# ---------------------------------------------------------------- checks
def check_traceable(conn: sqlite3.Connection) -> None:
    """Raise NeedsVirtualEdges unless the atlas has the schema and the rows a trace reads."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(edges)")}
    if not cols:
        raise DamagedAtlas("the atlas has no edges table; is it an sae-atlas file? `sae-atlas validate` checks it")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if "percentile" not in cols or (isinstance(version, int) and version < MIN_SCHEMA):
        raise NeedsVirtualEdges(
            f"trace needs an atlas built with the `virtual` pass (schema {MIN_SCHEMA} or later; this one is schema "
            f"{version}): rebuild it with `sae-atlas build` (its default passes include virtual and virtual_in)"
        )


def has_virtual_edges(conn: sqlite3.Connection) -> bool:
    """Whether any virtual edge exists, without scanning the edges table (its indexes lead with a feature id).

    Reads the baseline table the virtual pass writes (one row per dictionary pair);
    falls back to the build log, then to a bounded probe of the edges index.
    """
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    if "virtual_baselines" in tables:
        if conn.execute("SELECT 1 FROM virtual_baselines LIMIT 1").fetchone() is not None:
            return True
    if "build_units" in tables:
        if conn.execute("SELECT 1 FROM build_units WHERE pass = 'virtual' LIMIT 1").fetchone() is not None:
            return True
    # the first few thousand edges by source: enough to find one in a built atlas, bounded in an empty one
    row = conn.execute(
        "SELECT 1 FROM (SELECT kind FROM edges ORDER BY src_feature LIMIT 20000) WHERE kind = 'virtual' LIMIT 1"
    ).fetchone()
    return row is not None


# ---------------------------------------------------------------- batched reads
def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    ids = list(ids)
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i : i + _IN_CHUNK]


def _number(value: Any, where: str, column: str, *, null: bool = False) -> float | None:
    if value is None and null:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise damage(where, column, value, "a number" + (" or NULL" if null else ""))
    return float(value)


def _integer(value: Any, where: str, column: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise damage(where, column, value, "an integer")
    return value


def read_steps(
    conn: sqlite3.Connection, feature_ids: Sequence[int], direction: str, top: int, min_percentile: float
) -> dict[int, list[Step]]:
    """The ``top`` strongest edges of each feature in the given direction, at or above ``min_percentile``.

    One indexed query per 500 features. Ranks are stored within one dictionary
    pair, so ``rank < top`` keeps every edge that can be among a feature's
    ``top`` over all pairs; they are then merged by strength.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    kind = EDGE_KIND[direction]
    by = "src_feature" if direction == "down" else "dst_feature"
    out: dict[int, list[Step]] = {}
    for chunk in _chunks(sorted(set(feature_ids))):
        sql = (
            f"SELECT e.edge_id, e.src_feature, e.dst_feature, e.score, e.percentile, e.rank FROM edges e "
            f"WHERE e.{by} IN ({','.join('?' * len(chunk))}) AND e.kind = ? AND e.rank < ?"
        )
        for edge_id, src, dst, score, pct, rank in conn.execute(sql, [*chunk, kind, top]):
            where = f"edges row {edge_id}"
            step = Step(
                _integer(src, where, "src_feature"),
                _integer(dst, where, "dst_feature"),
                _number(score, where, "score"),  # type: ignore[arg-type]
                _number(pct, where, "percentile", null=True),
                _integer(rank, where, "rank"),
            )
            if step.percentile is not None and not 0 <= step.percentile <= 100:
                raise damage(where, "percentile", pct, "a percentile between 0 and 100")
            if min_percentile > 0 and (step.percentile is None or step.percentile < min_percentile):
                continue
            key = step.src_feature if direction == "down" else step.dst_feature
            out.setdefault(key, []).append(step)
    for key, steps in out.items():
        steps.sort(key=lambda s: (*s.strength(), s.other(direction)))
        out[key] = steps[:top]
    return out


@dataclass(frozen=True)
class _Info:
    name: str
    sae: str
    layer: int
    site: str


def read_infos(conn: sqlite3.Connection, feature_ids: Sequence[int]) -> dict[int, _Info]:
    """Name, SAE, layer and site of each feature, one query per 500."""
    out: dict[int, _Info] = {}
    for chunk in _chunks(sorted(set(feature_ids))):
        sql = (
            "SELECT f.feature_id, s.name, f.idx, s.layer, s.site FROM features f JOIN saes s ON s.sae_id = f.sae_id "
            f"WHERE f.feature_id IN ({','.join('?' * len(chunk))})"
        )
        for fid, sae, idx, layer, site in conn.execute(sql, chunk):
            where = f"features row {fid}"
            for what, value in (("its SAE's name", sae), ("its SAE's site", site)):
                if not isinstance(value, str):
                    raise damage(where, what, value, "text")
            out[fid] = _Info(f"{sae}/{_integer(idx, where, 'idx')}", sae, _integer(layer, where, "layer"), site)
    return out


def read_tokens(
    conn: sqlite3.Connection, feature_ids: Sequence[int], phase: str, sign: int, n: int
) -> dict[int, tuple[str, ...]]:
    """The top ``n`` tokens of each feature's (phase, sign) list, printable, one query per 500 features."""
    out: dict[int, list[tuple[int, str]]] = {}
    if n <= 0:
        return {}
    for chunk in _chunks(sorted(set(feature_ids))):
        sql = (
            "SELECT ts.feature_id, ts.rank, COALESCE(v.display, '#' || ts.token_id) FROM token_scores ts "
            "JOIN features f ON f.feature_id = ts.feature_id JOIN saes s ON s.sae_id = f.sae_id "
            "LEFT JOIN vocab v ON v.model_id = s.model_id AND v.token_id = ts.token_id "
            f"WHERE ts.feature_id IN ({','.join('?' * len(chunk))}) AND ts.phase = ? AND ts.sign = ? AND ts.rank < ?"
        )
        for fid, rank, token in conn.execute(sql, [*chunk, phase, sign, n]):
            if not isinstance(token, str) or not isinstance(rank, int):
                raise damage(f"token_scores of #{fid}", "token", token, "text")
            out.setdefault(fid, []).append((rank, token))
    return {fid: tuple(t for _, t in sorted(toks)) for fid, toks in out.items()}


# ---------------------------------------------------------------- one level at a time (the browser)
@dataclass(frozen=True)
class Hop:
    """One edge out of a frontier feature with what a tree node shows of the feature it reaches."""

    step: Step
    feature_id: int  # the feature reached
    name: str
    layer: int
    pair: str  # "SRC_SAE -> DST_SAE", forward direction
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    """A feature as a tree's root shows it."""

    feature_id: int
    name: str
    layer: int
    site: str
    tokens: tuple[str, ...]


def root_stop(conn: sqlite3.Connection, feature_id: int, direction: str, n_tokens: int = 6) -> Stop:
    check_traceable(conn)
    info = read_infos(conn, [feature_id])
    if feature_id not in info:
        raise DamagedAtlas(f"feature #{feature_id} has no readable SAE row; `sae-atlas validate` checks the atlas")
    i = info[feature_id]
    phase, sign = TOKEN_LIST[direction]
    tokens = read_tokens(conn, [feature_id], phase, sign, n_tokens).get(feature_id, ())
    return Stop(feature_id, i.name, i.layer, i.site, tokens)


def expand(
    conn: sqlite3.Connection,
    feature_ids: Sequence[int],
    direction: str,
    *,
    top: int = 5,
    min_percentile: float = 0.0,
    n_tokens: int = 6,
) -> dict[int, list[Hop]]:
    """The next level under every feature of a frontier, in one batch of queries (edges, names, tokens)."""
    steps = read_steps(conn, feature_ids, direction, top, min_percentile)
    ends = {f for ss in steps.values() for s in ss for f in (s.src_feature, s.dst_feature)}
    info = read_infos(conn, sorted(ends))
    phase, sign = TOKEN_LIST[direction]
    reached = sorted({s.other(direction) for ss in steps.values() for s in ss})
    tokens = read_tokens(conn, reached, phase, sign, n_tokens)
    out: dict[int, list[Hop]] = {}
    for fid, ss in steps.items():
        for s in ss:
            other = s.other(direction)
            if other not in info or s.src_feature not in info or s.dst_feature not in info:
                raise DamagedAtlas(
                    f"an edge #{s.src_feature} -> #{s.dst_feature} names a feature with no readable row; "
                    "`sae-atlas validate` checks the atlas"
                )
            pair = f"{info[s.src_feature].sae} -> {info[s.dst_feature].sae}"
            out.setdefault(fid, []).append(
                Hop(s, other, info[other].name, info[other].layer, pair, tokens.get(other, ()))
            )
    return out


# ---------------------------------------------------------------- the tree
def trace(
    conn: sqlite3.Connection,
    root: int,
    *,
    direction: str = "down",
    depth: int = 3,
    top: int = 3,
    min_percentile: float = 0.0,
    n_tokens: int = 6,
    max_nodes: int = MAX_NODES,
) -> Trace:
    """The tree of the strongest paths from feature ``root``, breadth first, ``depth`` hops deep.

    Each node keeps its ``top`` strongest edges at or above ``min_percentile``;
    a feature already in the tree is shown again (marked ``seen``) but not
    expanded twice, so cycles and diamonds end. Raises NeedsVirtualEdges when
    the atlas has no virtual edges at all.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    check_traceable(conn)
    phase, sign = TOKEN_LIST[direction]
    tr = Trace(root, direction, depth, top, min_percentile, token_list=f"{phase}{'+' if sign > 0 else '-'}")
    info = read_infos(conn, [root])
    if root not in info:
        raise DamagedAtlas(f"feature #{root} has no readable SAE row; `sae-atlas validate` checks the atlas")
    nodes: list[dict[str, Any]] = [_node_fields(0, None, 0, root, info[root], None)]
    expanded: set[int] = {root}
    frontier = [0]  # node positions to expand at this level
    for level in range(depth):
        fids = [nodes[i]["feature_id"] for i in frontier]
        steps = read_steps(conn, fids, direction, top, min_percentile)
        wanted = {s.other(direction) for i in frontier for s in steps.get(nodes[i]["feature_id"], [])}
        info.update(read_infos(conn, sorted(wanted - info.keys())))
        next_frontier = []
        for i in frontier:
            fid = nodes[i]["feature_id"]
            found = steps.get(fid, [])
            if not found:
                nodes[i]["cut"] = "no edges"
                continue
            for s in found:
                if len(nodes) >= max_nodes:
                    tr.note = f"the tree was cut at {max_nodes:,} nodes: lower --top or --depth"
                    nodes[i]["cut"] = "nodes"
                    break
                other = s.other(direction)
                if other not in info:
                    raise DamagedAtlas(
                        f"edges row of #{s.src_feature} -> #{s.dst_feature} names feature #{other}, "
                        "which has no readable row; `sae-atlas validate` checks the atlas"
                    )
                src_sae = info[s.src_feature].sae if s.src_feature in info else "?"
                dst_sae = info[s.dst_feature].sae if s.dst_feature in info else "?"
                child = _node_fields(len(nodes), i, level + 1, other, info[other], s, f"{src_sae} -> {dst_sae}")
                if other in expanded:
                    child["seen"], child["cut"] = True, "seen"
                else:
                    expanded.add(other)
                    next_frontier.append(child["node"])
                nodes.append(child)
                tr.edges.append(
                    TraceEdge(
                        s.src_feature,
                        s.dst_feature,
                        EDGE_KIND[direction],
                        s.score,
                        s.percentile,
                        s.rank,
                        child["pair"],
                        i,
                        child["node"],
                    )
                )
        frontier = next_frontier
        if not frontier:
            break
    for i in frontier:  # still open when the depth ran out
        nodes[i]["cut"] = nodes[i]["cut"] or "depth"
    tokens = read_tokens(conn, [n["feature_id"] for n in nodes], phase, sign, n_tokens)
    tr.nodes = [TraceNode(**{**n, "tokens": tokens.get(n["feature_id"], ())}) for n in nodes]
    if len(tr.nodes) == 1:
        tr.note = _no_edges_note(conn, tr)
    return tr


def _node_fields(
    node: int, parent: int | None, depth: int, fid: int, info: _Info, step: Step | None, pair: str | None = None
) -> dict[str, Any]:
    return {
        "node": node,
        "parent": parent,
        "depth": depth,
        "feature_id": fid,
        "name": info.name,
        "sae": info.sae,
        "layer": info.layer,
        "site": info.site,
        "score": step.score if step else None,
        "percentile": step.percentile if step else None,
        "rank": step.rank if step else None,
        "pair": pair,
        "seen": False,
        "cut": None,
    }


def _no_edges_note(conn: sqlite3.Connection, tr: Trace) -> str:
    root = tr.nodes[0]
    if not has_virtual_edges(conn):
        raise NeedsVirtualEdges(
            "trace needs an atlas built with the `virtual` pass, and this one has no virtual edges: "
            "rebuild it with `sae-atlas build --passes ...,virtual,virtual_in`"
        )
    where = "to later layers" if tr.direction == "down" else "from earlier layers"
    above = f" at or above percentile {tr.min_percentile:g}" if tr.min_percentile > 0 else ""
    return f"{root.name} has no virtual edges {where}{above}; its direct tokens are shown"


# ---------------------------------------------------------------- text
def render_tree(tr: Trace, *, color: bool = False) -> str:
    """The trace as an indented tree (box-drawing branches), one node a line."""
    kids = tr.children()
    words = TOKEN_WORDS[tr.direction]
    root = tr.nodes[0]
    arrow = "down: what it writes into, layer by layer" if tr.direction == "down" else "up: what writes into it"
    head = [
        f"{root.name}  (#{root.feature_id})  layer {root.layer} {root.site}  — trace {arrow}",
        f"  {words}: {_tokens(root.tokens)}" if root.tokens else f"  {words}: (no tokens stored)",
    ]
    if tr.note:
        head.append(f"  {tr.note}")
    lines: list[str] = []

    def walk(node: TraceNode, prefix: str) -> None:
        children = kids.get(node.node, [])
        for j, c in enumerate(children):
            last = j == len(children) - 1
            lines.append(prefix + ("└─ " if last else "├─ ") + _node_line(c, words))
            walk(c, prefix + ("   " if last else "│  "))

    walk(root, "  ")
    leaves = "logits" if tr.direction == "down" else "embeddings"
    foot = [
        f"  (depth {tr.depth}, top {tr.top} per node"
        + (f", percentile >= {tr.min_percentile:g}" if tr.min_percentile > 0 else "")
        + f"; a leaf's tokens are its direct path to the {leaves}; (seen) = expanded elsewhere in this tree)"
    ]
    return "\n".join(head + lines + (foot if lines else []))


def format_percentile(p: float | None) -> str:
    """``p99.5``, ``p99.98``, ``p99.9996``: enough decimals that a percentile short of 100 never shows as 100."""
    if p is None:
        return "p?"
    if p >= 100.0:
        return "p100"
    decimals = min(6, max(1, math.ceil(-math.log10(100.0 - p) - 1e-9)))
    text = f"{p:.{decimals}f}"
    return f"p>{100 - 10**-decimals:.{decimals}f}" if float(text) >= 100.0 else f"p{text}"


def _node_line(n: TraceNode, words: str) -> str:
    pct = format_percentile(n.percentile)
    seen = "  (seen)" if n.seen else ""
    toks = f"  {words}: {_tokens(n.tokens)}" if n.tokens else ""
    return f"{n.name}  L{n.layer}  {n.score:+.4f}  {pct}{seen}{toks}"


def _tokens(tokens: Sequence[str]) -> str:
    return " ".join(tokens)
