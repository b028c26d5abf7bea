"""Snapshot tests (pytest-textual-snapshot) of the main screens on a pinned fixture atlas.

The fixture pins every timestamp (tui.testing) and the file is always named
fixture.db, so the screens are identical run to run. Regenerate after an
intended change with ``python -m pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from tui.app import make_app
from tui.testing import build_fixture_atlas
from tui.testing import settle as _quiet

SIZE = (120, 36)


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory):
    return build_fixture_atlas(tmp_path_factory.mktemp("snap") / "fixture.db")


async def settle(pilot) -> None:
    await _quiet(pilot)
    pilot.app.show_timings = False  # "12 ms" would differ run to run
    for inp in pilot.app.screen.query(Input):
        inp.cursor_blink = False  # no blinking cursor in a snapshot


def test_overview(snap_compare, fixture_db):
    assert snap_compare(make_app(fixture_db), terminal_size=SIZE, run_before=settle)


# The shipped atlas: six SAEs, two at layer 14, so long names that do not all fit. A missing axis
# label, a legend over the bars or a fractional count axis changes these (tests/test_tui_first_screen.py
# asserts each of those on the rendered text as well).
EXAMPLE = Path(__file__).resolve().parent.parent / "atlas.db.example"


def test_overview_of_the_example(snap_compare):
    assert snap_compare(make_app(EXAMPLE), terminal_size=SIZE, run_before=settle)


def test_overview_of_the_example_80x24(snap_compare):
    assert snap_compare(make_app(EXAMPLE), terminal_size=(80, 24), run_before=settle)


def test_feature_card(snap_compare, fixture_db):
    async def open_card(pilot):
        await settle(pilot)
        pilot.app.open_feature(3)  # feature 3 has a heuristic label and predicts tokens
        await settle(pilot)

    assert snap_compare(make_app(fixture_db), terminal_size=SIZE, run_before=open_card)


def test_search_results(snap_compare, fixture_db):
    async def search(pilot):
        await settle(pilot)
        await pilot.press("slash", *"paris")
        await settle(pilot)

    assert snap_compare(make_app(fixture_db), terminal_size=SIZE, run_before=search)


def test_sql_console(snap_compare, fixture_db):
    async def query(pilot):
        await settle(pilot)
        await pilot.press("colon", *"SELECT name, layer, du_top1_z FROM features_view ORDER BY du_top1_z DESC", "enter")
        await settle(pilot)

    assert snap_compare(make_app(fixture_db), terminal_size=SIZE, run_before=query)
