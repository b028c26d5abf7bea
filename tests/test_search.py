"""One search for the CLI and the browser: exact token matches first, then partial ones, each marked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner
from textual.widgets import DataTable, Static

from atlas import open_atlas
from atlas.cli import cli
from atlas.search import search_features, search_tokens
from tests.conftest import query
from tui.app import make_app
from tui.screens.search import SearchScreen
from tui.testing import settle

EXAMPLE = Path(__file__).resolve().parent.parent / "atlas.db.example"


def _key(token: str) -> str:
    return token.replace("␣", " ").strip().casefold()


def test_exact_then_partial_against_a_scan_of_the_vocabulary() -> None:
    """`king` on the example: every list holding king / King / ␣king (exact), then ␣kings, walking ... (partial)."""
    with open_atlas(EXAMPLE) as atlas:
        hits = search_tokens(atlas, "king", limit=100_000)
    matches = [h.match for h in hits]
    assert matches == sorted(matches) and set(matches) == {"exact", "partial"}  # "exact" < "partial"
    for h in hits:
        assert (_key(h.token) == "king") == (h.match == "exact") and "king" in _key(h.token)
    # the oracle: every (feature, token) whose key is king, and at most 64 tokens containing it
    exact = query(
        EXAMPLE,
        "SELECT COUNT(*) FROM token_scores ts JOIN vocab v USING (token_id) WHERE v.key = 'king' "
        "AND ts.phase = 'du' AND ts.sign = 1",
    )[0][0]
    assert matches.count("exact") == exact > 0
    within = [h for h in hits if h.match == "exact"]
    assert [h.rank for h in within] == sorted(h.rank for h in within)


def test_cli_and_browser_give_the_same_token_hits(runner: CliRunner) -> None:
    cli_rows = json.loads(runner.invoke(cli, ["search", "--promotes", "Paris", "--json", "--limit", "25"]).stdout)
    with open_atlas(EXAMPLE) as atlas:
        box = [h for h in search_features(atlas, "Paris") if h.kind == "promotes"]
    assert [(r["feature"], r["token"], r["match"]) for r in cli_rows] == [(h.feature, h.match, h.how) for h in box]
    assert cli_rows and {r["match"] for r in cli_rows} == {"partial"}  # the example keeps no "Paris"


def test_the_search_screen_marks_partial_matches_and_says_nothing_matched_exactly() -> None:
    async def journey() -> tuple[list, str]:
        app = make_app(EXAMPLE)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.show_timings = False
            await pilot.press("slash", *"Paris")
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, SearchScreen)
            table = screen.query_one("#search-results", DataTable)
            hows = [str(table.get_row_at(i)[3]) for i in range(table.row_count)]
            return hows, str(screen.query_one("#search-status", Static).render())

    hows, status = asyncio.run(journey())
    assert hows and set(hows) <= {"partial", "label", "your label"} and "partial" in hows
    assert "no token is exactly that: partial matches" in status
