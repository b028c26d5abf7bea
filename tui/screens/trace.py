"""Trace view: the strongest paths from one feature through the virtual edges, as a tree that grows on demand.

Opened with `t` on a feature card. Each node is a feature reached by a virtual edge, with the edge's
score and percentile, the feature's layer and its top tokens (promoted going down: the direct path
to the logits; input tokens going up). Expanding a node reads its next level (three indexed
queries, whatever the atlas's size); `x` expands every open leaf at once, one batch for the whole
level. Enter opens a feature's card; `d` turns the trace around (down / up). The view shares the
card's history: back and forward walk through cards and traces alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Header, Static, Tree
from textual.widgets.tree import UnknownNodeID

from atlas.trace import DIRECTIONS, TOKEN_WORDS, Hop, expand, format_percentile, has_virtual_edges, root_stop
from tui.messages import TraceExpanded, TraceLoaded
from tui.screens._base import AtlasScreen
from tui.widgets.key_bar import KeyBar

TOP = 5  # edges per node
N_TOKENS = 5  # tokens per node
PERCENTILE_STEPS = (0.0, 90.0, 99.0, 99.9)  # `p` cycles the lowest percentile an edge needs to be shown


@dataclass(frozen=True)
class TraceStop:
    """A trace in the card's history: which feature, which way."""

    feature_id: int
    direction: str = "down"


@dataclass
class NodeData:
    feature_id: int
    loaded: bool = False  # its children have been read
    seen: bool = False  # the feature appears earlier in the tree
    path: tuple[int, ...] = ()  # feature ids from the root to this node: its place in a TraceMemory


@dataclass
class TraceMemory:
    """What a trace has read and how it was left: back and forward redraw it as it was, without a query."""

    root: Any  # atlas.trace.Stop
    hops: list[Hop]
    note: str | None
    children: dict[tuple[int, ...], list[Hop]] = field(default_factory=dict)  # by node path
    expanded: set[tuple[int, ...]] = field(default_factory=set)


class TraceScreen(AtlasScreen):
    BINDINGS = [
        Binding("backspace,alt+left", "back", "Back", id="trace.back"),
        Binding("alt+right", "forward", "Forward", id="trace.forward"),
        Binding("x", "expand_level", "Expand a level", id="trace.expand_level"),
        Binding("d", "toggle_direction", "Up/down", id="trace.direction"),
        Binding("p", "cycle_percentile", "Min percentile", id="trace.min_percentile"),
        Binding("escape,q", "close", "Close", id="trace.close"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.stop: TraceStop | None = None
        self.generation = 0  # answers to an older stop are dropped
        self.pending: set[int] = set()  # tree node ids whose children are being read
        self.min_percentile = 0.0
        self.memory: dict[tuple[TraceStop, float], TraceMemory] = {}  # every trace seen, by stop and percentile

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Loading…", id="trace-title")
        tree: Tree[NodeData] = Tree("…", id="trace-tree")
        tree.auto_expand = False  # enter opens the card; space / the mouse expand
        yield tree
        yield KeyBar()

    # ------------------------------------------------------------ navigation
    def enter(self, stop: TraceStop) -> None:
        """Show ``stop`` (now, or when mounted)."""
        self.stop = stop
        if self.is_mounted:
            self._load(stop)

    def on_mount(self) -> None:
        self.query_one(Tree).focus()
        if self.stop is not None:
            self._load(self.stop)

    def _load(self, stop: TraceStop) -> None:
        self.generation += 1
        self.pending.clear()
        tree = self.query_one("#trace-tree", Tree)
        tree.clear()
        tree.root.set_label(Text("loading…", style="dim"))
        self.query_one("#trace-title", Static).update(Text("Loading…", style="dim"))
        known = self.memory.get((stop, self.min_percentile))
        if known is not None:
            self._draw(known)
        else:
            self.load_root(self.generation, stop, self.min_percentile)

    @property
    def card_history(self):
        return self.atlas_app.card_screen.history

    def _go(self, item: object) -> None:
        """Show a history item: a trace here, a feature on the card (beneath this screen)."""
        if isinstance(item, TraceStop):
            self.enter(item)
        elif isinstance(item, int):
            card = self.atlas_app.card_screen
            self.app.pop_screen()
            card.show(item, record=False)

    def action_back(self) -> None:
        item = self.card_history.back()
        if item is None:
            self.app.pop_screen()
        else:
            self._go(item)

    def action_forward(self) -> None:
        item = self.card_history.forward()
        if item is not None:
            self._go(item)

    def action_close(self) -> None:
        self.action_back()

    def action_toggle_direction(self) -> None:
        if self.stop is not None:
            other = DIRECTIONS[1 - DIRECTIONS.index(self.stop.direction)]
            stop = TraceStop(self.stop.feature_id, other)
            self.card_history.visit(stop)
            self.enter(stop)

    def action_cycle_percentile(self) -> None:
        """Show only edges at or above the next percentile step (0, 90, 99, 99.9, then 0 again); reread the tree."""
        i = PERCENTILE_STEPS.index(self.min_percentile) if self.min_percentile in PERCENTILE_STEPS else -1
        self.min_percentile = PERCENTILE_STEPS[(i + 1) % len(PERCENTILE_STEPS)]
        self.notify(f"edges at or above percentile {self.min_percentile:g}" if self.min_percentile else "all edges")
        if self.stop is not None:
            self._load(self.stop)

    def open_feature(self, feature_id: int) -> None:
        self.card_history.visit(feature_id)
        self._go(feature_id)

    @on(Tree.NodeSelected, "#trace-tree")
    def node_selected(self, event: Tree.NodeSelected) -> None:
        data = event.node.data
        if isinstance(data, NodeData):
            self.open_feature(data.feature_id)

    # ------------------------------------------------------------ growing the tree
    @on(Tree.NodeExpanded, "#trace-tree")
    def node_expanded(self, event: Tree.NodeExpanded) -> None:
        data = event.node.data
        if not isinstance(data, NodeData):
            return
        mem = self._memory()
        if mem is not None:
            mem.expanded.add(data.path)
        if not data.loaded and event.node.id not in self.pending:
            self._read_under([event.node])

    @on(Tree.NodeCollapsed, "#trace-tree")
    def node_collapsed(self, event: Tree.NodeCollapsed) -> None:
        mem = self._memory()
        if mem is not None and isinstance(event.node.data, NodeData):
            mem.expanded.discard(event.node.data.path)

    def _memory(self) -> TraceMemory | None:
        return None if self.stop is None else self.memory.get((self.stop, self.min_percentile))

    def action_expand_level(self) -> None:
        """Expand every open leaf of the tree: the next level, read in one batch."""
        tree = self.query_one("#trace-tree", Tree)
        leaves, loaded_leaves = [], []
        stack = [tree.root]
        while stack:
            node = stack.pop()
            if node.children and node.is_expanded:
                stack.extend(node.children)
                continue
            data = node.data
            if not isinstance(data, NodeData) or data.seen or not node.allow_expand:
                continue
            if data.loaded:
                loaded_leaves.append(node)
            elif node.id not in self.pending:
                leaves.append(node)
        for node in loaded_leaves:
            node.expand()
        if leaves:
            self._read_under(leaves)

    def _read_under(self, nodes: list) -> None:
        if self.stop is None:
            return
        ids = [n.id for n in nodes]
        self.pending.update(ids)
        fids = {n.id: n.data.feature_id for n in nodes}
        self.load_level(self.generation, self.stop.direction, fids, self.min_percentile)

    @work(thread=True, exclusive=True, group="trace-root")
    def load_root(self, generation: int, stop: TraceStop, min_percentile: float) -> None:
        def read(atlas):
            root = root_stop(atlas.conn, stop.feature_id, stop.direction, N_TOKENS)
            hops = expand(
                atlas.conn, [stop.feature_id], stop.direction, top=TOP, min_percentile=min_percentile, n_tokens=N_TOKENS
            )
            hops = hops.get(stop.feature_id, [])
            note = None
            if not hops and not has_virtual_edges(atlas.conn):
                note = "this atlas has no virtual edges: trace needs a build with the `virtual` pass"
            return root, hops, note

        got = self.read("trace", read)
        if got is not None:
            self.post_message(TraceLoaded(generation, *got))

    @work(thread=True, group="trace-level")
    def load_level(self, generation: int, direction: str, fids: dict[int, int], min_percentile: float) -> None:
        got = self.read(
            "trace",
            lambda atlas: expand(
                atlas.conn, list(fids.values()), direction, top=TOP, min_percentile=min_percentile, n_tokens=N_TOKENS
            ),
        )
        if got is not None:
            self.post_message(TraceExpanded(generation, list(fids), {nid: got.get(f, []) for nid, f in fids.items()}))

    @on(TraceLoaded)
    def trace_loaded(self, msg: TraceLoaded) -> None:
        if msg.generation != self.generation or self.stop is None:
            return
        mem = self.memory[(self.stop, self.min_percentile)] = TraceMemory(msg.root, msg.hops, msg.note)
        self._draw(mem)

    def _draw(self, mem: TraceMemory) -> None:
        """The tree of a trace as its memory has it: the first level, and every level read and left open since."""
        assert self.stop is not None
        root, direction = mem.root, self.stop.direction
        arrow = "what it writes into, later layers" if direction == "down" else "what writes into it, earlier layers"
        words = TOKEN_WORDS[direction]
        cut = f", percentile ≥ {self.min_percentile:g}" if self.min_percentile else ""
        title = Text.assemble(
            ("trace " + direction, "bold"),
            f" from {root.name}: {arrow} (top {TOP}{cut})  ",
            ("enter opens a card · space expands · x a whole level · d turns around", "dim"),
        )
        self.query_one("#trace-title", Static).update(title)
        self.sub_title = f"trace {direction} {root.name}"
        tree = self.query_one("#trace-tree", Tree)
        label = Text.assemble((root.name, "bold"), f"  L{root.layer} {root.site}  ")
        label.append(f"{words}: {' '.join(root.tokens)}" if root.tokens else "", style="green")
        tree.root.set_label(label)
        tree.root.data = NodeData(root.feature_id, loaded=True, path=(root.feature_id,))
        if not mem.hops:
            where = "to later layers" if direction == "down" else "from earlier layers"
            above = f" at or above percentile {self.min_percentile:g}" if self.min_percentile else ""
            text = mem.note or f"no virtual edges {where}{above}; its direct tokens are shown above"
            tree.root.add_leaf(Text(text, style="dim"))
        self._add_children(tree.root, mem.hops, direction)
        stack = list(tree.root.children)
        while stack:  # levels read before: drawn again from memory, in the order they were first drawn
            node = stack.pop(0)
            data = node.data
            if isinstance(data, NodeData) and data.path in mem.children:
                self._fill(node, mem.children[data.path], direction)
                stack.extend(node.children)
                if data.path in mem.expanded:
                    node.expand()
        tree.root.expand()
        tree.move_cursor(tree.root)

    @on(TraceExpanded)
    def trace_expanded(self, msg: TraceExpanded) -> None:
        if msg.generation != self.generation or self.stop is None:
            return
        tree = self.query_one("#trace-tree", Tree)
        for nid in msg.node_ids:
            self.pending.discard(nid)
            try:
                node = tree.get_node_by_id(nid)
            except UnknownNodeID:  # the tree was cleared meanwhile
                continue
            if not isinstance(node.data, NodeData):
                continue
            hops = msg.hops.get(nid, [])
            mem = self._memory()
            if mem is not None:
                mem.children[node.data.path] = hops
            self._fill(node, hops, self.stop.direction)
            if hops:
                node.expand()

    def _fill(self, node, hops: list[Hop], direction: str) -> None:
        """A node's children, now read: added, or the node marked as going no further."""
        node.data.loaded = True
        if not hops:
            node.allow_expand = False
            node.set_label(node.label + Text("  · no further edges", style="dim"))
            return
        self._add_children(node, hops, direction)

    def _add_children(self, node, hops: list[Hop], direction: str) -> None:
        seen = self._features_in_tree()
        for h in hops:
            repeat = h.feature_id in seen
            data = NodeData(h.feature_id, seen=repeat, path=(*node.data.path, h.feature_id))
            node.add(_hop_label(h, repeat, direction), data=data, allow_expand=True)
            seen.add(h.feature_id)

    def _features_in_tree(self) -> set[int]:
        tree = self.query_one("#trace-tree", Tree)
        out, stack = set(), [tree.root]
        while stack:
            n = stack.pop()
            if isinstance(n.data, NodeData):
                out.add(n.data.feature_id)
            stack.extend(n.children)
        return out


def _hop_label(h: Hop, repeat: bool, direction: str) -> Text:
    s = h.step
    pct = format_percentile(s.percentile)
    t = Text.assemble((h.name, "bold"), f"  L{h.layer}  ", (f"{s.score:+.3f}", "cyan"), f"  {pct}  ")
    if repeat:
        t.append("(seen) ", style="dim")
    if h.tokens:
        t.append(f"{TOKEN_WORDS[direction]}: ", style="dim")
        t.append(" ".join(h.tokens), style="green")
    t.append(f"   {h.pair}", style="dim")
    return t
