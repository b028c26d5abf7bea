"""The trace view with Textual's pilot: `t` on a card, expanding the tree, Enter to a card, back and forward.

Runs on the planted atlas of tests/trace_fixtures.py, so every node the tree shows is known.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import Tree

from atlas import open_atlas
from tests.trace_fixtures import build_trace_atlas
from tui.app import make_app
from tui.screens.feature_card import FeatureCardScreen
from tui.screens.trace import TraceScreen, TraceStop
from tui.testing import settle


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return build_trace_atlas(tmp_path_factory.mktemp("tui_trace") / "planted.db")


def names(node) -> list[str]:
    return [str(c.label).split()[0] for c in node.children]


def fid(path: Path, name: str) -> int:
    with open_atlas(path) as a:
        return a.resolve_feature(name)


def test_t_opens_a_trace_that_expands_and_shares_the_card_history(planted: Path) -> None:
    root_id, l3_2, l5_7 = fid(planted, "L1.res/0"), fid(planted, "L3.res/2"), fid(planted, "L5.res/7")

    async def journey() -> None:
        app = make_app(planted)
        async with app.run_test(size=(140, 36)) as pilot:
            await settle(pilot)
            app.open_feature(root_id)
            await settle(pilot)
            card = app.screen
            assert isinstance(card, FeatureCardScreen) and card.card.feature.name == "L1.res/0"
            await pilot.press("t")
            await settle(pilot)
            trace = app.screen
            assert isinstance(trace, TraceScreen)
            tree = trace.query_one("#trace-tree", Tree)
            assert str(tree.root.label).startswith("L1.res/0")
            assert "promotes: p1_0a p1_0b p1_0c" in str(tree.root.label)
            # all five of the root's edges (TOP = 5), strongest by percentile
            assert names(tree.root) == ["L5.res/4", "L3.res/2", "L3.res/5", "L3.res/1", "L5.res/6"]
            first = str(tree.root.children[1].label)
            assert (
                "+0.900" in first and "p99.5" in first and "p3_2a p3_2b p3_2c" in first and "L1.res -> L3.res" in first
            )
            # space on L3.res/2 reads its level: L5/4 again (seen), then L5/7
            await pilot.press("down", "down", "space")
            await settle(pilot)
            l32 = tree.root.children[1]
            assert tree.cursor_node is l32 and l32.is_expanded
            assert names(l32) == ["L5.res/4", "L5.res/7"]
            assert "(seen)" in str(l32.children[0].label) and "(seen)" not in str(l32.children[1].label)
            # x expands every open leaf at once: L5/4 (first level) has no further edges, L3/5 reaches L5/3
            await pilot.press("x")
            await settle(pilot)
            assert names(tree.root.children[2]) == ["L5.res/3"]
            assert "no further edges" in str(tree.root.children[0].label)
            # enter on L5.res/7 opens its card
            tree.move_cursor(l32.children[1])
            await pilot.press("enter")
            await settle(pilot)
            assert app.screen is card and card.card.feature.feature_id == l5_7
            # back: the trace again; back: the card it was opened from
            await pilot.press("backspace")
            await settle(pilot)
            assert app.screen is trace and trace.stop == TraceStop(root_id, "down")
            again = trace.query_one("#trace-tree", Tree)  # as it was left, from memory
            assert names(again.root) == ["L5.res/4", "L3.res/2", "L3.res/5", "L3.res/1", "L5.res/6"]
            assert again.root.children[1].is_expanded and names(again.root.children[1]) == ["L5.res/4", "L5.res/7"]
            assert "(seen)" in str(again.root.children[1].children[0].label)
            assert names(again.root.children[2]) == ["L5.res/3"] and again.root.children[2].is_expanded
            assert "no further edges" in str(again.root.children[0].label)
            await pilot.press("backspace")
            await settle(pilot)
            assert app.screen is card and card.card.feature.feature_id == root_id
            # forward twice: the trace, then L5.res/7's card
            await pilot.press("alt+right")
            await settle(pilot)
            assert app.screen is trace
            await pilot.press("alt+right")
            await settle(pilot)
            assert app.screen is card and card.card.feature.feature_id == l5_7
            # `d` turns a trace around: up from L3.res/2 reaches L1.res/0
            app.open_feature(l3_2)
            await settle(pilot)
            await pilot.press("t")
            await settle(pilot)
            await pilot.press("d")
            await settle(pilot)
            assert trace.stop == TraceStop(l3_2, "up")
            up = trace.query_one("#trace-tree", Tree)
            assert names(up.root) == ["L1.res/0"] and "driven by: e1_0a e1_0b" in str(up.root.children[0].label)

    asyncio.run(journey())


def test_a_feature_without_edges_says_so(planted: Path) -> None:
    async def journey() -> None:
        app = make_app(planted)
        async with app.run_test(size=(140, 36)) as pilot:
            await settle(pilot)
            app.open_feature(fid(planted, "L1.res/7"))
            await settle(pilot)
            await pilot.press("t")
            await settle(pilot)
            tree = app.screen.query_one("#trace-tree", Tree)
            assert "promotes: p1_7a p1_7b p1_7c" in str(tree.root.label)
            assert [str(c.label) for c in tree.root.children] == [
                "no virtual edges to later layers; its direct tokens are shown above"
            ]

    asyncio.run(journey())


def test_p_raises_the_percentile_an_edge_needs(planted: Path) -> None:
    async def journey() -> None:
        app = make_app(planted)
        async with app.run_test(size=(140, 36)) as pilot:
            await settle(pilot)
            app.open_feature(fid(planted, "L1.res/0"))
            await settle(pilot)
            await pilot.press("t")
            await settle(pilot)
            tree = app.screen.query_one("#trace-tree", Tree)
            assert len(tree.root.children) == 5
            await pilot.press("p", "p")  # 90, then 99
            await settle(pilot)
            assert app.screen.min_percentile == 99.0
            assert names(tree.root) == ["L5.res/4", "L3.res/2", "L3.res/5"]
            await pilot.press("down", "down", "space")  # L3.res/2's edges are at 98 and 97: none left
            await settle(pilot)
            assert "no further edges" in str(tree.root.children[1].label)
            await pilot.press("p", "p")  # 99.9, then all again
            await settle(pilot)
            assert len(tree.root.children) == 5

    asyncio.run(journey())
