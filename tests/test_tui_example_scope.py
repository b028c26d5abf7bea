"""The overview says what an example atlas can and cannot show, when its recipe recorded it (issue 18)."""

from __future__ import annotations

import asyncio

from atlas import open_atlas
from examples.smollm2.build_example import EXAMPLE_SCOPE
from tui.app import make_app
from tui.screens.overview import example_scope
from tui.testing import build_fixture_atlas, settle


def _screen_text(path) -> str:
    async def go() -> str:
        app = make_app(path)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            return "\n".join(s.text for s in app.screen._compositor.render_strips())

    return asyncio.run(go())


def test_overview_shows_the_example_scope(tmp_path):
    path = build_fixture_atlas(tmp_path / "a.db")
    assert "Gemma Scope" not in _screen_text(path)  # nothing recorded: no such row
    with open_atlas(path, readonly=False) as atlas, atlas.transaction():
        atlas.update_provenance(example={"scope": EXAMPLE_SCOPE})
    text = " ".join(_screen_text(path).split())
    assert "example" in text and "~121k tokens per site" in text and "Gemma Scope and Llama Scope" in text


def test_scope_is_read_defensively():
    assert example_scope('{"example": {"scope": "small  SAEs"}}') == "small SAEs"
    for bad in (None, "not json", "[1]", '{"example": 3}', '{"example": {"scope": 5}}', {"example": []}):
        assert example_scope(bad) == ""
