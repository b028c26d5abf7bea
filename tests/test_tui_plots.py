"""The overview plots show atlas.stats' numbers (the report's), not an aggregation of their own (issue 7).

The fixture atlas is doctored so that the plausible other ways of
aggregating give other numbers: NULL flags (fraction over all features vs
over the features the pass scored), user labels and relabelled features
(every label vs the latest heuristic one), and a builder depth_profiles table
whose means disagree with the per-feature scores. Each number is checked
against atlas.stats and against a brute-force oracle from raw rows, and the
bars plotext was given are checked against the numbers.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sqlite3

import numpy as np
import pytest

from atlas import stats
from tui.app import make_app
from tui.plots import PLOTS, compute_panel
from tui.testing import build_fixture_atlas
from tui.widgets.layer_plots import LayerPlots

LAYERS = (1, 3, 5)


@pytest.fixture(scope="module")
def doctored_db(tmp_path_factory):
    path = build_fixture_atlas(tmp_path_factory.mktemp("plots") / "fixture.db", n_features=600, layers=LAYERS)
    conn = sqlite3.connect(path)
    with conn:
        sae1, sae3 = (r[0] for r in conn.execute("SELECT sae_id FROM saes WHERE layer IN (1, 3) ORDER BY layer"))
        # du not scored for a third of the first SAE: the fraction is over the scored ones.
        conn.execute("UPDATE features SET predicts_tokens = NULL WHERE sae_id = ? AND idx % 3 = 0", (sae1,))
        # User labels are not experiment 3's groups; a later heuristic label overrides an earlier one.
        conn.execute(
            "INSERT INTO labels (feature_id, text, kind, source, created_at) "
            "SELECT feature_id, 'mine', 'semantic', 'user', '2026-01-01' FROM features WHERE sae_id = ? AND idx < 40",
            (sae3,),
        )
        conn.execute(
            "INSERT INTO labels (feature_id, text, kind, source, created_at) "
            "SELECT l.feature_id, 'relabelled', CASE l.kind WHEN 'semantic' THEN 'non_semantic' ELSE 'semantic' END, "
            "'heuristic', '2026-01-01' FROM labels l JOIN features f USING (feature_id) "
            "WHERE f.sae_id = ? AND l.source = 'heuristic' AND f.idx < 60",
            (sae1,),
        )
        # A builder table that disagrees with the features' own scores.
        conn.execute("DELETE FROM depth_profiles")
        for sid in (r[0] for r in conn.execute("SELECT sae_id FROM saes")):
            for role in ("q", "k", "v"):
                conn.execute(
                    "INSERT INTO depth_profiles (sae_id, layer, role, n, mean, median, p75, frac_above) "
                    "VALUES (?, 7, ?, 10, 99.0, 99.0, 99.0, 0.5)",
                    (sid, role),
                )
    conn.close()
    return path


async def _settle(pilot) -> None:
    quiet = 0
    for _ in range(300):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.02)
        quiet = 0 if [w for w in pilot.app.workers if not w.is_finished] else quiet + 1
        if quiet >= 2:
            break


def _overview_plots(path, size=(120, 36)) -> tuple[dict, dict, dict, list]:
    """The panels the overview received, the bar heights plotext drew, and any notifications."""

    async def go():
        app = make_app(path)
        async with app.run_test(size=size) as pilot:
            await _settle(pilot)
            plots = app.screen.query_one(LayerPlots)
            drawn = {}
            for name in PLOTS:
                monitor = plots.query_one(f"#plot-{name}").plt._active.monitor
                drawn[name] = [ys[1] for ys in monitor.y]  # each bar is a closed outline; [1] is its top
            missing = {name: str(plots.query_one(f"#missing-{name}").render()) for name in PLOTS}
            return dict(plots.panels), drawn, missing, list(app._notifications)

    return asyncio.run(go())


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, equal_nan=True))


def test_overview_plots_are_the_reports_numbers(doctored_db):
    panels, drawn, _missing, notes = _overview_plots(doctored_db)
    assert not notes  # nothing failed
    conn = sqlite3.connect(doctored_db)
    t, d, s = stats.predicts_by_layer(conn), stats.depth_profiles(conn), stats.semantic_split(conn)
    sae_ids = t.saes.sae_id.tolist()
    assert all(p.x == [f"L{x}" for x in LAYERS] for p in panels.values())  # depth order, one bar per SAE

    # Experiment 1, both phases: stats' fractions, and the oracle's (mean over the features the pass scored).
    pred = panels["predicts"].series
    assert _same(pred["predicts (du)"], t.frac_predicts) and _same(pred["reads (ee)"], t.frac_reads)
    for i, sid in enumerate(sae_ids):
        flags = [r[0] for r in conn.execute("SELECT predicts_tokens FROM features WHERE sae_id = ?", (sid,))]
        scored = [f for f in flags if f is not None]
        assert pred["predicts (du)"][i] == pytest.approx(sum(scored) / len(scored))
    assert pred["predicts (du)"][0] != pytest.approx(sum(f or 0 for f in flags) / len(flags))  # not over all

    # Experiment 2: per-SAE mean of the features' q/k scores, not the builder table's 99.
    qk = panels["qk"].series
    assert _same(qk["q"], d.roles["q"].mean) and _same(qk["k"], d.roles["k"].mean)
    for i, sid in enumerate(sae_ids):
        q, k = np.array(
            conn.execute("SELECT attn_q_mean, attn_k_mean FROM features WHERE sae_id = ?", (sid,)).fetchall()
        ).T
        assert (qk["q"][i], qk["k"][i]) == pytest.approx((q.mean(), k.mean()))
    assert qk["q"] != qk["k"]  # a swap of query and key would show

    # Experiment 3: the groups semantic_split compares (latest heuristic label per feature).
    sem = panels["semantic"].series
    rows = {r.sae: r for r in s.rows if r.role == "q"}
    assert sem["semantic"] == [rows[n].n_sem for n in t.saes.name]
    assert sem["non-semantic"] == [rows[n].n_non for n in t.saes.name]
    for i, sid in enumerate(sae_ids):
        latest = dict(
            conn.execute(
                "SELECT l.feature_id, l.kind FROM labels l JOIN features f USING (feature_id) "
                "WHERE f.sae_id = ? AND l.source = 'heuristic' ORDER BY l.label_id",
                (sid,),
            ).fetchall()
        )
        assert sem["semantic"][i] == sum(k == "semantic" for k in latest.values()) > 0
        assert sem["non-semantic"][i] == sum(k == "non_semantic" for k in latest.values()) > 0

    # What plotext was asked to draw is those numbers, series after series.
    for name in PLOTS:
        want = [0.0 if math.isnan(v) else v for vals in panels[name].series.values() for v in vals]
        assert drawn[name] == pytest.approx(want)
    conn.close()


@pytest.fixture()
def bare_copy(doctored_db, tmp_path):
    """The fixture with no du/ee flags and no attention pass: every plot lacks its pass."""
    path = tmp_path / "fixture.db"
    shutil.copy(doctored_db, path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE features SET predicts_tokens = NULL, reads_tokens = NULL")
        conn.execute("UPDATE features SET attn_q_mean = NULL, attn_k_mean = NULL, attn_v_mean = NULL")
        conn.execute("DELETE FROM depth_profiles")
    conn.close()
    return path


def test_missing_passes_say_what_to_build(bare_copy):
    panels, _drawn, missing, notes = _overview_plots(bare_copy)
    assert not notes  # a missing pass is not an error
    assert panels["predicts"].missing == "not built: run sae-atlas build --passes du,ee"
    assert panels["qk"].missing == "not built: run sae-atlas build --passes attn"
    assert panels["semantic"].missing == "not built: run sae-atlas build --passes attn"  # exp. 3 needs the scores
    for name in PLOTS:
        assert panels[name].missing in missing[name]


def test_missing_phase_or_labels(doctored_db, tmp_path):
    path = tmp_path / "fixture.db"
    shutil.copy(doctored_db, path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE features SET reads_tokens = NULL")  # ee not run, du run
        conn.execute("DELETE FROM labels WHERE source = 'heuristic'")
    assert list(compute_panel(conn, "predicts").series) == ["predicts (du)"]  # no empty ee bars
    assert compute_panel(conn, "semantic").missing == "not built: run sae-atlas build --passes semantic"
    conn.close()


def test_narrow_terminal_shows_missing_line(bare_copy):
    _panels, _drawn, missing, notes = _overview_plots(bare_copy, size=(80, 24))
    assert not notes and "--passes du,ee" in missing["predicts"]
