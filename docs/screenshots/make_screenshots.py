"""Regenerate the SVG screenshots in this folder from the shipped atlas.db.example.

python docs/screenshots/make_screenshots.py              # atlas.db.example (what the README shows)
python docs/screenshots/make_screenshots.py --fixture    # the pinned synthetic fixture atlas instead
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from atlas.listing import FeatureFilter  # noqa: E402
from tui.app import make_app  # noqa: E402
from tui.testing import build_fixture_atlas, settle  # noqa: E402


async def shoot(path: Path, size=(120, 36), search: str = "king", trace: int | None = None) -> None:
    app = make_app(path)
    app.show_timings = False
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        app.save_screenshot(str(HERE / "overview.svg"))
        app.open_list(FeatureFilter(metric="du_top1_z"))
        await settle(pilot)
        app.save_screenshot(str(HERE / "feature_list.svg"))
        await pilot.press("enter")
        await settle(pilot)
        app.save_screenshot(str(HERE / "feature_card.svg"))
        await pilot.press("slash", *search)
        await settle(pilot)
        app.save_screenshot(str(HERE / "search.svg"))
        await pilot.press("escape", "colon", *"SELECT sae, label_kind, COUNT(*) n, AVG(du_top1_z) z FROM features_view GROUP BY 1, 2", "enter")  # fmt: skip
        await settle(pilot)
        app.save_screenshot(str(HERE / "sql_console.svg"))
        await pilot.press("escape", "question_mark")
        await settle(pilot)
        app.save_screenshot(str(HERE / "help.svg"))
        if trace is not None:  # the trace view: a card, then t, then x (expand the next level)
            await pilot.press("escape")
            app.open_feature(trace)
            await settle(pilot)
            await pilot.press("t")
            await settle(pilot)
            await pilot.press("x")
            await settle(pilot)
            app.save_screenshot(str(HERE / "trace.svg"))


if __name__ == "__main__":
    import os

    from atlas.overlay import OVERLAY_DIR_ENV

    # An empty label overlay folder: the pictures show the atlas, not this machine's user labels.
    os.environ[OVERLAY_DIR_ENV] = tempfile.mkdtemp(prefix="sae-atlas-screenshots-")
    example = HERE.parent.parent / "atlas.db.example"
    if "--fixture" in sys.argv or not example.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            db = build_fixture_atlas(Path(tmp) / "example.db", n_features=4000, d_vocab=2000, layers=(2, 4, 6))
            asyncio.run(shoot(db, search="paris"))
    else:
        with tempfile.TemporaryDirectory() as tmp:  # a copy: the browser may write history or labels
            db = Path(tmp) / "atlas.db.example"
            shutil.copyfile(example, db)
            from atlas.db import open_atlas

            with open_atlas(db) as atlas:  # the README's downward trace
                fid = atlas.resolve_feature("L11.tc/540")
            asyncio.run(shoot(db, trace=fid))
    print("wrote", ", ".join(sorted(p.name for p in HERE.glob("*.svg"))))
