"""Benchmark the Textual browser on a large synthetic atlas (headless, real key presses).

    python benchmarks/bench_tui.py                         # /tmp/bench/atlas_1m.db if present, else builds 100k
    python benchmarks/bench_tui.py --atlas some.db --repeat 10

Measures, with the targets of issue 5:
  launch -> first screen drawn (overview with its SAE table)   < 1 s
  Enter on a feature in the list -> its card drawn             < 100 ms
  typing a search -> results drawn                             < 300 ms
"Card drawn" is the first frame the app composes that shows the new card
(frames are recorded as Textual hands them to its driver). A second, more
conservative figure waits for that, then asks for one more full repaint and
waits for it: the card's frame plus up to one frame interval and a repaint.
plus the launch time of a fresh process (Python start and imports included),
when the overview's plots arrive (they aggregate every feature, in a worker),
and raw atlas.listing page times (first and deep pages). On an atlas with
virtual edges (the build below adds them between adjacent SAEs), the trace
view too: `t` on a card -> the tree's first level drawn, space on a node ->
its level drawn, `x` -> a whole level drawn, and atlas.trace.trace() alone
(depth 3, top 5). Figures go to stdout and benchmarks/out/tui.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atlas import open_atlas  # noqa: E402
from atlas.listing import FeatureFilter, feature_page  # noqa: E402

TARGETS_MS = {"launch_to_overview": 1000.0, "enter_to_card": 100.0, "search_to_results": 300.0}
DEFAULT_1M = Path("/tmp/bench/atlas_1m.db")
SIZE = (120, 36)


async def wait_until(pilot, cond, timeout: float = 60.0) -> float:
    """Poll ``cond`` on the UI loop, then wait for the next frame to be painted; returns that moment.

    ``call_after_refresh`` runs once the screen has been refreshed, so the
    time returned is when the change was on screen (not when the app next
    went idle, which with a background worker still running can be much later).
    """
    end = time.perf_counter() + timeout

    def ok() -> bool:
        try:
            return bool(cond())
        except Exception:  # the screen may not be composed yet
            return False

    while not ok():
        if time.perf_counter() > end:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)
    painted = asyncio.get_running_loop().create_future()
    pilot.app.screen.refresh()
    pilot.app.screen.call_after_refresh(lambda: painted.done() or painted.set_result(time.perf_counter()))
    return await asyncio.wait_for(painted, timeout)


async def measure_launch(path: Path) -> dict:
    from textual.widgets import DataTable

    from tui.app import make_app
    from tui.widgets.layer_plots import LayerPlots

    t0 = time.perf_counter()
    app = make_app(path)
    async with app.run_test(size=SIZE) as pilot:

        def drawn() -> bool:
            try:
                return app.screen.query_one("#sae-table", DataTable).row_count > 0
            except Exception:
                return False

        t_overview = await wait_until(pilot, drawn) - t0
        t_plots = await wait_until(pilot, lambda: app.screen.query_one(LayerPlots).data is not None, timeout=600) - t0
    return {"launch_to_overview_ms": t_overview * 1e3, "launch_to_plots_ms": t_plots * 1e3}


def measure_cold_launch(path: Path) -> float:
    """A fresh interpreter: python start + imports + app start, until the overview is drawn."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child-launch", str(path)], capture_output=True, text=True,
                         check=True, cwd=REPO)  # fmt: skip
    assert "drawn" in out.stdout, out.stdout + out.stderr
    return (time.perf_counter() - t0) * 1e3


async def child_launch(path: Path) -> None:
    from textual.widgets import DataTable

    from tui.app import make_app

    app = make_app(path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(
            pilot,
            lambda: app.screen.query("#sae-table") and app.screen.query_one("#sae-table", DataTable).row_count > 0,
        )
        print("drawn", flush=True)
        app.exit()


async def measure_card_and_search(path: Path, repeat: int, queries: list[str]) -> dict:
    from textual.widgets import DataTable

    from tui.app import make_app
    from tui.screens.feature_card import FeatureCardScreen
    from tui.screens.feature_list import FeatureListScreen
    from tui.screens.search import SearchScreen
    from tui.widgets.feature_table import FeatureTable

    app = make_app(path)
    card_ms, first_frame_ms, search_ms, search_worker_ms, page_ms = [], [], {}, {}, []
    # Every frame the app composes (headless: composed, not written to a terminal), with what it showed.
    frames: list[tuple[float, int | None]] = []
    display = app._display

    def recording_display(screen, renderable):
        display(screen, renderable)
        if renderable is not None:
            shown = screen.card.feature.feature_id if isinstance(screen, FeatureCardScreen) and screen.card else None
            frames.append((time.perf_counter(), shown))

    app._display = recording_display
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.screen.query_one("#sae-table", DataTable).row_count > 0)
        t0 = time.perf_counter()
        app.open_list(FeatureFilter(metric="du_top1_z"))
        t1 = await wait_until(pilot, lambda: isinstance(app.screen, FeatureListScreen)
                              and app.screen.query_one(FeatureTable).row_count > 0)  # fmt: skip
        page_ms.append((t1 - t0) * 1e3)
        listing = app.screen
        table = listing.query_one(FeatureTable)
        table.focus()
        for _ in range(repeat):
            await pilot.press("down")
            want = table.feature_id_at_cursor()
            frames.clear()
            t0 = time.perf_counter()
            app.simulate_key("enter")  # the real key path (App -> focused table), without pilot's wait for idle
            t1 = await wait_until(pilot, lambda: isinstance(app.screen, FeatureCardScreen) and app.screen.card is not None
                                  and app.screen.card.feature.feature_id == want)  # noqa: B023 (awaited at once)  # fmt: skip
            card_ms.append((t1 - t0) * 1e3)
            first_frame_ms.append((next(t for t, shown in frames if shown == want) - t0) * 1e3)
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is listing)
        await pilot.press("slash")
        screen = app.screen
        assert isinstance(screen, SearchScreen)
        for q in queries:
            times, worker = [], []
            for _ in range(max(1, repeat // 3)):
                screen.query_one("#search-input").value = ""
                await wait_until(pilot, lambda: screen.query_one("#search-results", DataTable).row_count == 0)
                await pilot.press(*q[:-1])
                gen_before = screen.generation
                t0 = time.perf_counter()
                app.simulate_key(q[-1])
                target = gen_before + 1
                t1 = await wait_until(pilot, lambda: screen.generation == target and screen.last_query == q)  # noqa: B023
                times.append((t1 - t0) * 1e3)
                worker.append(screen.last_seconds * 1e3)
            search_ms[q] = statistics.median(times)
            search_worker_ms[q] = statistics.median(worker)
    return {
        "first_list_page_ms": page_ms[0],
        "enter_to_card_ms": {"median": statistics.median(first_frame_ms), "max": max(first_frame_ms),
                             "n": len(first_frame_ms)},  # fmt: skip
        "enter_to_card_then_forced_frame_ms": {"median": statistics.median(card_ms), "max": max(card_ms)},
        "search_to_results_ms": search_ms,
        "search_query_in_worker_ms": search_worker_ms,
    }


async def measure_trace(path: Path, repeat: int) -> dict:
    """`t` on a card -> first level drawn; space -> one node's level; `x` -> the next level under every leaf."""
    from textual.widgets import Tree

    from tui.app import make_app
    from tui.screens.feature_card import FeatureCardScreen
    from tui.screens.trace import TraceScreen

    with open_atlas(path) as a:  # roots spread over the first SAE (the one with edges into the next)
        sae_id, d_sae = a.conn.execute("SELECT sae_id, d_sae FROM saes ORDER BY layer, sae_id LIMIT 1").fetchone()
        base = a.conn.execute("SELECT MIN(feature_id) FROM features WHERE sae_id = ?", (sae_id,)).fetchone()[0]
    roots = [base + (i * 7919) % d_sae for i in range(repeat)]
    app = make_app(path)
    open_ms, node_ms, level_ms, level_nodes = [], [], [], []
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.screen.query_one("#sae-table").row_count > 0)
        for fid in roots:
            app.open_feature(fid)
            await wait_until(pilot, lambda: isinstance(app.screen, FeatureCardScreen) and app.screen.card is not None
                             and app.screen.card.feature.feature_id == fid)  # noqa: B023  # fmt: skip
            t0 = time.perf_counter()
            app.simulate_key("t")

            def tree() -> Tree:
                return app.screen.query_one("#trace-tree", Tree)

            t1 = await wait_until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.stop.feature_id == fid  # noqa: B023
                                  and len(tree().root.children) > 0 and tree().root.data is not None
                                  and tree().root.data.feature_id == fid)  # noqa: B023  # fmt: skip
            open_ms.append((t1 - t0) * 1e3)
            first = tree().root.children[0]
            tree().move_cursor(first)
            t0 = time.perf_counter()
            app.simulate_key("space")
            t1 = await wait_until(pilot, lambda: first.data.loaded)  # noqa: B023
            node_ms.append((t1 - t0) * 1e3)
            t0 = time.perf_counter()
            app.simulate_key("x")
            t1 = await wait_until(pilot, lambda: not app.screen.pending and all(
                c.data.loaded for c in tree().root.children if not c.data.seen))  # fmt: skip
            level_ms.append((t1 - t0) * 1e3)
            level_nodes.append(sum(len(c.children) for c in tree().root.children))
            await pilot.press("escape")  # back to the card
            await wait_until(pilot, lambda: isinstance(app.screen, FeatureCardScreen))
            await pilot.press("escape")
    lib_ms = []
    from atlas.trace import trace

    with open_atlas(path) as a:
        for fid in roots:
            t0 = time.perf_counter()
            tr = trace(a.conn, fid, depth=3, top=5)
            lib_ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "t_to_first_level_ms": {"median": statistics.median(open_ms), "max": max(open_ms), "n": len(open_ms)},
        "space_to_node_level_ms": {"median": statistics.median(node_ms), "max": max(node_ms)},
        "x_to_whole_level_ms": {
            "median": statistics.median(level_ms),
            "max": max(level_ms),
            "nodes_added_median": statistics.median(level_nodes),
        },  # fmt: skip
        "library_trace_depth3_top5_ms": {
            "median": statistics.median(lib_ms),
            "max": max(lib_ms),
            "nodes": len(tr.nodes),
        },  # fmt: skip
    }


def measure_pages(path: Path) -> dict:
    """atlas.listing alone: first page, next pages, and a page from the middle of the first SAE's ordering."""
    out = {}
    with open_atlas(path) as a:
        sae_id, d_sae = a.conn.execute("SELECT sae_id, d_sae FROM saes ORDER BY sae_id LIMIT 1").fetchone()
        for label, flt in (("by_id", FeatureFilter()), ("du_top1_z_all_saes", FeatureFilter(metric="du_top1_z")),
                           ("du_entropy_unindexed_one_sae", FeatureFilter(metric="du_entropy", sae_ids=(sae_id,))),
                           ("semantic_label_filter", FeatureFilter(metric="du_top1_z", label_kind="semantic"))):  # fmt: skip
            t0 = time.perf_counter()
            page = feature_page(a.conn, flt, limit=100)
            out[f"{label}_first_ms"] = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            cursor = page.cursor
            for _ in range(3):
                cursor = feature_page(a.conn, flt, limit=100, after=cursor).cursor
            out[f"{label}_next_page_ms"] = (time.perf_counter() - t0) * 1e3 / 3
        # deep keyset: a cursor from the middle of the ordering
        mid = a.conn.execute("SELECT du_top1_z, feature_id FROM features WHERE sae_id = ? AND du_top1_z IS NOT NULL "
                             "ORDER BY du_top1_z DESC LIMIT 1 OFFSET ?", (sae_id, d_sae // 2)).fetchone()  # fmt: skip
        t0 = time.perf_counter()
        feature_page(a.conn, FeatureFilter(metric="du_top1_z"), limit=100, after=(mid[0], mid[1]))
        out["du_top1_z_deep_page_ms"] = (time.perf_counter() - t0) * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atlas", type=Path, default=None)
    ap.add_argument("--build-features", type=int, default=100_000, help="size to build when no atlas is given/found")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--queries", default="paris,city,the,L3.res/17,#123456,punctuation")
    ap.add_argument("--skip-trace", action="store_true", help="skip the trace view's figures")
    ap.add_argument("--trace-only", action="store_true", help="measure the trace view only")
    ap.add_argument("--child-launch", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_launch:
        asyncio.run(child_launch(args.child_launch))
        return
    path = args.atlas or (DEFAULT_1M if DEFAULT_1M.exists() else None)
    if path is None:
        from atlas.synthetic import build_synthetic_atlas

        path = Path(f"/tmp/bench_tui_{args.build_features // 1000}k.db")
        if not path.exists():
            print(f"building {path} ({args.build_features:,} features) ...", flush=True)
            build_synthetic_atlas(path, n_features=args.build_features, layers=tuple(range(10)), n_layers=12,
                                  d_vocab=49152, progress=True, n_virtual=6, virtual_span=1)  # fmt: skip
    with open_atlas(path) as a:
        n = a.conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    print(f"atlas {path}: {n:,} features")
    res: dict = {"atlas": str(path), "n_features": n}
    if args.trace_only:
        res["trace"] = asyncio.run(measure_trace(path, args.repeat))
        print(json.dumps(res, indent=2))
        return
    res.update(asyncio.run(measure_launch(path)))
    res["cold_process_launch_to_overview_ms"] = measure_cold_launch(path)
    res.update(asyncio.run(measure_card_and_search(path, args.repeat, args.queries.split(","))))
    res["listing"] = measure_pages(path)
    with open_atlas(path) as a:
        from atlas.trace import has_virtual_edges

        traceable = a.schema_version >= 4 and has_virtual_edges(a.conn)
    if traceable and not args.skip_trace:
        res["trace"] = asyncio.run(measure_trace(path, args.repeat))
    print(json.dumps(res, indent=2))
    checks = {
        "launch_to_overview": res["launch_to_overview_ms"],
        "enter_to_card": res["enter_to_card_ms"]["median"],
        "search_to_results": max(res["search_to_results_ms"].values()),
    }
    for k, v in checks.items():
        print(f"{k:22s} {v:9.1f} ms   target < {TARGETS_MS[k]:.0f} ms   {'ok' if v < TARGETS_MS[k] else 'MISSED'}")
    print(f"{'  + one forced repaint':22s} {res['enter_to_card_then_forced_frame_ms']['median']:9.1f} ms   (conservative)")
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "tui.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
