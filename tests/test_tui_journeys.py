"""Pilot tests: real key presses through the browser's main journeys, asserting on widget state.

Each test runs the app headless with ``asyncio.run`` (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import pytest
from textual.widgets import DataTable, Input, Select, Static

from atlas import open_atlas
from atlas.errors import NotAnAtlas, SchemaTooNew
from tui.app import make_app
from tui.screens.feature_card import FeatureCardScreen
from tui.screens.feature_list import FeatureListScreen
from tui.screens.help import HelpScreen, binding_rows
from tui.screens.label_editor import LabelEditor
from tui.screens.overview import OverviewScreen
from tui.screens.search import SearchScreen
from tui.screens.sql_console import SqlConsoleScreen
from tui.testing import build_fixture_atlas, settle
from tui.widgets.feature_table import FeatureTable


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory):
    return build_fixture_atlas(tmp_path_factory.mktemp("journeys") / "fixture.db")


@pytest.fixture()
def own_copy(fixture_db, tmp_path):
    """A private copy for tests that write labels."""
    dst = tmp_path / "mine.db"
    shutil.copy(fixture_db, dst)
    return dst


def run(coro) -> None:
    asyncio.run(coro)


def painted_line(screen, selector: str, y: int) -> str:
    """The text of line ``y`` of a widget as it is painted (its strips, not its data)."""
    return "".join(seg.text for seg in screen.query_one(selector).render_line(y))


def rows(table: DataTable) -> list[list]:
    return [table.get_row_at(i) for i in range(table.row_count)]


# ---------------------------------------------------------------- search -> card -> edge -> back
def test_search_token_open_feature_follow_edge_and_go_back(fixture_db):
    with open_atlas(fixture_db) as a:
        expected = a.search_token("paris", phase="du", sign=1, limit=25)

    async def journey():
        app = make_app(fixture_db)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            assert isinstance(app.screen, OverviewScreen)
            assert app.screen.query_one("#sae-table", DataTable).row_count == 2
            await pilot.press("slash")
            assert isinstance(app.screen, SearchScreen)
            await pilot.press(*"paris")
            await settle(pilot)
            results = app.screen.query_one("#search-results", DataTable)
            promoted = [r for r in rows(results) if str(r[0]) == "promotes"]
            assert [r[1] for r in promoted] == [h.feature for h in expected]
            await pilot.press("down", "enter")  # into the results, open the first
            await settle(pilot)
            card = app.screen
            assert isinstance(card, FeatureCardScreen)
            first = card.card.feature
            assert first.feature_id == expected[0].feature_id
            assert "paris" in [t.token.replace("␣", "").lower() for t in card.card.promoted]
            edges = card.query_one("#card-edges", DataTable)
            assert edges.row_count == len(card.card.edges_out) + len(card.card.edges_in) > 0
            target = card.card.edges_out[1].dst_feature
            assert painted_line(card, "#tok-promoted", 1).startswith(f" 0 {card.card.promoted[0].token}")
            await pilot.press("e", "down", "enter")  # follow the second edge
            await settle(pilot)
            assert app.screen is card and card.card.feature.feature_id == target
            # the token lists repaint with the new card's tokens (their strips are cached per card)
            for wid, scores in (("#tok-promoted", card.card.promoted), ("#tok-suppressed", card.card.suppressed)):
                top = scores[0]
                assert painted_line(card, wid, 1).startswith(f" 0 {top.token}") and f"{top.value:.2f}" in painted_line(
                    card, wid, 1
                )
            await pilot.press("backspace")
            await settle(pilot)
            assert card.card.feature.feature_id == first.feature_id
            await pilot.press("alt+right")
            await settle(pilot)
            assert card.card.feature.feature_id == target
            await pilot.press("alt+left", "backspace")  # back to the first, then out of the card
            await settle(pilot)
            assert isinstance(app.screen, SearchScreen)

    run(journey())


def test_down_then_enter_typed_fast_opens_the_result(fixture_db):
    """Keys typed faster than the app handles them: enter right after down reaches the results."""

    async def journey():
        app = make_app(fixture_db)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("slash", *"paris")
            await settle(pilot)
            screen = app.screen
            first = screen.query_one("#search-results", DataTable).get_row_at(0)[1]
            app.simulate_key("down")  # both queued before either is handled
            app.simulate_key("enter")
            await settle(pilot)
            assert isinstance(app.screen, FeatureCardScreen) and app.screen.card.feature.name == str(first)

    run(journey())


# ---------------------------------------------------------------- feature list: sort, filter, page
def test_feature_list_sort_filter_and_lazy_paging(fixture_db):
    with sqlite3.connect(fixture_db) as c:
        by_z = [r[0] for r in c.execute("SELECT name FROM feature_names fn JOIN features f USING (feature_id) "
                                          "ORDER BY f.du_top1_z DESC, f.feature_id DESC")]  # fmt: skip
        l6_semantic_hi = [r[0] for r in c.execute(
            "SELECT fn.name FROM feature_names fn JOIN features f USING (feature_id) WHERE fn.layer = 6 "
            "AND f.du_top1_z >= 5 AND EXISTS (SELECT 1 FROM labels l WHERE l.feature_id = f.feature_id "
            "AND l.kind = 'semantic') ORDER BY f.du_top1_z ASC, f.feature_id ASC")]  # fmt: skip

    async def journey():
        app = make_app(fixture_db)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("a")  # all features
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, FeatureListScreen)
            table = screen.query_one(FeatureTable)
            assert table.row_count == 100  # one page, not the table
            assert "400 match" in str(screen.query_one("#list-status", Static).render())
            # sort by du_top1_z with the keyboard: s focuses the sort select
            await pilot.press("s", "enter")
            await pilot.pause()
            await pilot.press(*["down"] * 12, "enter")  # METRIC_COLUMNS[11] == du_top1_z
            await settle(pilot)
            assert screen.flt.metric == "du_top1_z"
            assert [r[0] for r in rows(table)] == by_z[:100]
            # paging: jump to the bottom, the next page arrives
            table.focus()
            await pilot.press("ctrl+end")
            await settle(pilot)
            assert table.row_count == 200 and [r[0] for r in rows(table)] == by_z[:200]
            # filter: layer 6, semantic labels, du_top1_z >= 5, ascending
            screen.query_one("#f-layer", Select).value = "6"
            screen.query_one("#f-kind", Select).value = "semantic"
            screen.query_one("#f-lo", Input).focus()
            await pilot.press("5", "enter")
            await settle(pilot)
            await pilot.press("r")
            await settle(pilot)
            assert not screen.flt.descending and screen.flt.layer == 6 and screen.flt.lo == 5.0
            assert [r[0] for r in rows(table)] == l6_semantic_hi
            assert f"{len(l6_semantic_hi)} match" in str(screen.query_one("#list-status", Static).render())
            await pilot.press("enter")  # open the highlighted feature
            await settle(pilot)
            assert isinstance(app.screen, FeatureCardScreen)
            assert app.screen.card.feature.name == l6_semantic_hi[0]

    run(journey())


# ---------------------------------------------------------------- SQL console
def test_sql_console_good_bad_paging_and_export(fixture_db, tmp_path):
    out = tmp_path / "features.csv"

    async def journey():
        app = make_app(fixture_db)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("colon")
            screen = app.screen
            assert isinstance(screen, SqlConsoleScreen)
            hint = str(screen.query_one("#sql-status", Static).render())  # how to match a token's raw text
            assert "token_raw = ' king'" in hint and "token_key = 'king'" in hint, hint
            results = screen.query_one("#sql-results", DataTable)
            await pilot.press(*"SELECT feature_id, idx FROM features ORDER BY feature_id", "enter")
            await settle(pilot)
            assert results.row_count == 200 and results.get_row_at(0)[0] == 0
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert results.row_count == 200 and results.get_row_at(0)[0] == 200
            await pilot.press("ctrl+b")
            await settle(pilot)
            assert results.get_row_at(0)[0] == 0
            # a bad query: inline error, the old results stay, the app lives on
            inp = screen.query_one("#sql-input", Input)
            inp.value = ""
            await pilot.press(*"SELEC oops", "enter")
            await settle(pilot)
            err = screen.query_one("#sql-error", Static)
            assert err.display and "syntax error" in str(err.render())
            assert results.row_count == 200
            inp.value = ""
            await pilot.press(*"DELETE FROM labels", "enter")
            await settle(pilot)
            assert "refused" in str(err.render())
            # history: up recalls the previous query
            inp.value = ""
            await pilot.press("up")
            assert inp.value == "DELETE FROM labels"
            await pilot.press("up")
            assert inp.value == "SELEC oops"
            # export the good query (run it again, then ctrl+o)
            inp.value = "SELECT feature_id, idx FROM features ORDER BY feature_id"
            await pilot.press("enter")
            await settle(pilot)
            assert not err.display
            await pilot.press("ctrl+o")
            await pilot.pause()
            app.screen.query_one("#export-path", Input).value = str(out)
            await pilot.press("enter")
            await settle(pilot)
            assert app.sql_history[-1].startswith("SELECT feature_id")

    run(journey())
    lines = out.read_text().splitlines()
    assert lines[0] == "feature_id,idx" and len(lines) == 401 and lines[-1] == "399,199"


# ---------------------------------------------------------------- labels persist
def test_label_is_saved_and_persists_after_reopening(own_copy):
    async def add_label():
        app = make_app(own_copy)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.open_feature(7)
            await settle(pilot)
            await pilot.press("l")
            await settle(pilot)
            assert isinstance(app.screen, LabelEditor)
            await pilot.press(*"talks about rivers")
            await pilot.press("escape")  # unsaved text: the first escape only warns
            assert isinstance(app.screen, LabelEditor)
            await pilot.press("enter")
            await settle(pilot)
            card = app.screen
            assert isinstance(card, FeatureCardScreen)
            assert card.card.labels[0].text == "talks about rivers" and card.card.labels[0].source == "user"

    async def reopen_and_edit():
        app = make_app(own_copy)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.open_feature(7)
            await settle(pilot)
            assert app.screen.card.labels[0].text == "talks about rivers"
            await pilot.press("l")
            await settle(pilot)
            editor = app.screen
            assert editor.query_one("#label-text", Input).value == "talks about rivers"  # editing, not a blank
            editor.query_one("#label-text", Input).value = "rivers and lakes"
            await pilot.press("enter")
            await settle(pilot)

    run(add_label())
    run(reopen_and_edit())
    with open_atlas(own_copy) as a:
        mine = [lab for lab in a.labels(7) if lab.source == "user"]
        assert [lab.text for lab in mine] == ["rivers and lakes"]  # edited in place, not added twice


# ---------------------------------------------------------------- read-only: the label overlay
def test_read_only_atlas_keeps_labels_in_the_overlay(own_copy, own_label_overlays):
    """--read-only: the dialog says where the label goes; it is saved in the overlay, never in the file,
    and the next session (read-only or not) shows it. No copy of the atlas is made."""
    before = own_copy.read_bytes()
    files_before = sorted(own_copy.parent.iterdir())

    async def journey():
        app = make_app(own_copy, readonly=True)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.open_feature(3)
            await settle(pilot)
            await pilot.press("l")
            await settle(pilot)
            editor = app.screen
            assert isinstance(editor, LabelEditor)
            where = str(editor.query_one("#label-where", Static).render())
            assert "your label overlay" in where and "--read-only" in where
            await pilot.press(*"my label")
            await pilot.press("enter")
            await settle(pilot)
            assert app.source.path == own_copy  # still browsing the same file
            card = app.screen
            assert card.card.labels[0].text == "my label" and card.card.labels[0].stored_in == "overlay"

    async def reopen():
        app = make_app(own_copy)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.open_feature(3)
            await settle(pilot)
            assert [(lab.text, lab.stored_in) for lab in app.screen.card.labels if lab.source == "user"] == [
                ("my label", "overlay")
            ]

    run(journey())
    run(reopen())
    assert own_copy.read_bytes() == before  # the atlas was never written
    assert sorted(own_copy.parent.iterdir()) == files_before  # and nothing was copied beside it
    assert len(list(own_label_overlays.iterdir())) == 1


def test_bundled_example_labels_go_to_the_overlay_and_come_back():
    from atlas.bundled import bundled_example

    example = bundled_example()
    before = example.stat().st_mtime_ns, example.stat().st_size

    async def journey(text):
        app = make_app(example)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            app.open_feature(16644)  # L26.res/260
            await settle(pilot)
            labels = [(lab.text, lab.stored_in) for lab in app.screen.card.labels if lab.source == "user"]
            if text:
                await pilot.press("l")
                await settle(pilot)
                assert "bundled example is read-only" in str(app.screen.query_one("#label-where", Static).render())
                await pilot.press(*text, "enter")
                await settle(pilot)
            return labels

    async def both():
        assert await journey("royal words") == []
        assert await journey(None) == [("royal words", "overlay")]

    run(both())
    assert (example.stat().st_mtime_ns, example.stat().st_size) == before


# ---------------------------------------------------------------- help, keymap, small terminal
def test_help_lists_binding_ids_and_keymap_remaps(fixture_db):
    async def journey():
        app = make_app(fixture_db, keymap={"app.search": "f6"})
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            listed = {bid: keys for _, keys, bid, _ in binding_rows(app)}
            for bid in ("card.back", "card.forward", "list.sort", "sql.export", "app.help", "label.cancel"):
                assert bid in listed
            assert listed["app.search"] == "f6"  # the help shows the remapped key
            await pilot.press("escape")
            await pilot.press("slash")
            assert isinstance(app.screen, OverviewScreen)  # / no longer searches
            await pilot.press("f6")
            assert isinstance(app.screen, SearchScreen)

    run(journey())


def test_small_terminal_80x24(fixture_db):
    async def journey():
        app = make_app(fixture_db)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            assert app.screen.has_class("-narrow")
            slots = [s for s in app.screen.query(".plot-slot") if s.display]
            assert len(slots) == 1 and slots[0].id == "slot-predicts"  # one plot at a time; p cycles
            await pilot.press("p")
            assert [s.id for s in app.screen.query(".plot-slot") if s.display] == ["slot-qk"]
            await pilot.press("enter")
            await settle(pilot)
            assert app.screen.query_one(FeatureTable).row_count == 100
            await pilot.press("enter")
            await settle(pilot)
            card = app.screen
            assert isinstance(card, FeatureCardScreen) and card.card is not None
            # three token lists side by side still fit: each painted line is exactly its widget's width
            for wid in ("#tok-promoted", "#tok-suppressed", "#tok-inputs"):
                widget = card.query_one(wid)
                line = widget.render_line(1)
                assert line.cell_length == widget.size.width > 0
                assert painted_line(card, wid, 1).startswith(" 0 ")

    run(journey())


def test_bad_files_fail_before_the_app_starts(tmp_path, fixture_db):
    with pytest.raises(NotAnAtlas, match="no such file"):
        make_app(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, not sqlite" * 100)
    with pytest.raises(NotAnAtlas):
        make_app(junk)
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(NotAnAtlas, match="not an atlas"):
        make_app(plain)
    new = tmp_path / "new.db"
    shutil.copy(fixture_db, new)
    with sqlite3.connect(new) as c:
        c.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew):
        make_app(new)
