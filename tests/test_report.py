"""`sae-atlas report`: files, numbers, verdicts and errors, on planted atlases."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from atlas import open_atlas, report, stats
from atlas.cli import cli
from tests.planted_atlas import PREDICTS_FRACTIONS, build_planted_atlas

FIGURES = ("exp1_predicts", "exp2_depth", "exp3_semantic")


@pytest.fixture(scope="module")
def planted_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "planted.db"
    build_planted_atlas(path)
    return path


@pytest.fixture(scope="module")
def written(planted_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    result = CliRunner().invoke(cli, ["report", str(planted_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_report_writes_every_file(written):
    out, _ = written
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "report.json", *(f"{f}.png" for f in FIGURES), *(f"{f}.svg" for f in FIGURES)}
    for f in FIGURES:
        png, svg = (out / f"{f}.png").read_bytes(), (out / f"{f}.svg").read_text()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert "<svg" in svg and len(svg) > 10_000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report-")]  # no temporary folder left


def test_markdown_has_each_experiment_its_plots_and_a_verdict(written):
    out, _ = written
    md = (out / "report.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3."):
        assert heading in md
    assert md.count("**Paper.**") == 3 and md.count("**Here.**") == 3 and md.count("**Verdict.**") == 3
    for f in FIGURES:
        assert f"]({f}.png)" in md and f"({f}.svg)" in md
    # Planted: mean predicts fraction 22.5% (within 5 points of 1/4); k rises with depth while q is flat.
    assert "22.5% of 3,200 features predict tokens" in md
    assert "**agrees**: within 5 points" in md
    assert "resid_post: the key side varies significantly more than the query side — **agrees**" in md
    assert "v inverted-U" in md and "k increasing" in md and "q flat" in md
    assert "synthetic" in md  # the planted model is marked synthetic, and the report says what that means
    # Every SAE has its rows in each experiment's tables: no layer silently dropped.
    sections = md.split("\n## ")
    exp1, exp2, exp3 = (next(s for s in sections if s.startswith(f"{i}.")) for i in (1, 2, 3))
    for layer in range(8):
        assert exp1.count(f"| L{layer}.res |") == 1
        # one row in the depth table, 2 attention layers x 3 roles in the attention pass's own table
        assert exp2.count(f"| L{layer}.res | {layer} |") == 1 and exp2.count(f"| L{layer}.res | {layer + 1} |") == 3
        assert exp3.count(f"| L{layer}.res |") == 3  # q, k, v


def test_json_holds_the_numbers_the_stats_compute(written, planted_path):
    out, _ = written
    data = json.loads((out / "report.json").read_text())
    e1 = data["experiment_1"]["predicts"]
    assert e1["saes"]["layer"] == list(range(8))
    np.testing.assert_allclose(e1["frac_predicts"], PREDICTS_FRACTIONS)
    with open_atlas(planted_path) as atlas:
        depth = stats.depth_profiles(atlas)
    e2 = data["experiment_2"]
    np.testing.assert_allclose(e2["depth"]["roles"]["k"]["mean"], depth.roles["k"].mean)
    np.testing.assert_allclose(e2["depth"]["roles"]["q"]["p75"], depth.roles["q"].p75)
    assert e2["qk_variability"][0]["diff"] > 0.3
    assert e2["depth"]["shapes"]["resid_post/k"] == "increasing"
    rows = data["experiment_3"]["rows"]
    assert len(rows) == 3 * 8 and {r["role"] for r in rows} == {"q", "k", "v"}
    assert data["missing"] == {}
    assert set(data["seconds"]) >= {"experiment_1", "token_overlap", "experiment_2", "experiment_3"}


def test_terminal_shows_tables_and_plots(written, planted_path, tmp_path):
    _, result = written
    assert "Experiment 1: features that predict (du) and read (ee) tokens" in result.output
    assert "Does the key side vary more across layers than the query side?" in result.output
    assert "Exp. 2: mean participation by layer" in result.output  # the plotext plot
    assert "wrote 8 files" in result.output
    quiet = CliRunner().invoke(
        cli, ["report", str(planted_path), "-o", str(tmp_path / "q"), "--no-plots", "--no-figures"]
    )
    assert quiet.exit_code == 0 and "Exp. 2" not in quiet.output and "Experiment 3" in quiet.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["report.json", "report.md"]
    assert "![" not in (tmp_path / "q" / "report.md").read_text()


def test_atlas_chosen_by_group_db_and_environment(planted_path, tmp_path):
    fast = ["--no-plots", "--no-figures"]
    r = CliRunner().invoke(cli, ["--db", str(planted_path), "report", "-o", str(tmp_path / "a"), *fast])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["report", "-o", str(tmp_path / "b"), *fast], env={"SAE_ATLAS_DB": str(planted_path)})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "report.md").exists() and (tmp_path / "b" / "report.md").exists()


def test_partial_atlas_reports_what_it_can_and_names_what_is_missing(tmp_path):
    path = tmp_path / "attention_only.db"
    build_planted_atlas(path, n_layers=4, d_sae=40, passes=("attention",))
    r = CliRunner().invoke(cli, ["report", str(path), "-o", str(tmp_path / "out"), "--no-plots"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Skipped experiment 1: experiment 1 needs the du/ee passes" in md
    assert "Skipped experiment 3: experiment 3 needs the semantic-label pass" in md
    assert "Not computed" in md
    assert "exp2_depth.png" in md and (tmp_path / "out" / "exp2_depth.png").exists()
    assert not (tmp_path / "out" / "exp1_predicts.png").exists()


def test_atlas_without_any_needed_pass_is_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "bare.db"
    build_planted_atlas(path, n_layers=2, d_sae=10, passes=("labels",))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["report", str(path), "-o", str(out)])
    assert r.exit_code == 1
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert "nothing to report" in r.output and "du/ee passes" in r.output and "attention pass" in r.output
    assert not out.exists()


def test_bad_inputs_are_one_line(tmp_path, planted_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "missing.db")])
    assert r.exit_code == 1 and "no such file" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(cli, ["report", str(planted_path), "-o", str(blocker), "--no-plots"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"Error: {blocker}: exists and is not a directory; pass another -o"
    ]


def test_swapped_q_and_k_turns_the_verdict_around(tmp_path):
    path = tmp_path / "swapped.db"
    build_planted_atlas(path, swap_qk=True, passes=("attention",))
    with open_atlas(path) as atlas:
        data = report.compute_report(atlas)
    text = report.exp2_paragraph(data)
    assert "varies significantly less than the query side — **disagrees**" in text
    assert "q increasing, k flat" in text


def test_importing_the_report_pulls_in_no_plotting_library():
    code = "import sys, atlas.report, atlas.stats; print(sorted(m for m in ('matplotlib', 'plotext', 'torch', 'textual', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_builders_criterion_is_quoted_from_provenance(tmp_path):
    path = tmp_path / "crit.db"
    build_planted_atlas(path, n_layers=2, d_sae=20, passes=("du", "ee"))
    rule = {"column": "du_top1_z", "tau": 3.5, "how": "random-quantile", "quantile": 0.99, "n_random": 1024,
            "seed": 0, "sql": "du_top1_z >= 3.5", "fraction": {"L0.res": 0.1}}  # fmt: skip
    with open_atlas(path, readonly=False) as atlas:
        atlas.update_provenance(criteria={"predicts_tokens": rule})
    with open_atlas(path) as atlas:
        text = report.exp1_paragraph(report.compute_report(atlas))
    assert "(`du_top1_z >= 3.5`, the 99th percentile of the same statistic over 1024 random directions)" in text


def test_experiment_2_refuses_to_test_five_depths_and_says_how_many_it_needs(tmp_path):
    path = tmp_path / "five.db"
    build_planted_atlas(path, n_layers=5, d_sae=200, passes=("attention",))
    r = CliRunner().invoke(cli, ["report", str(path), "-o", str(tmp_path / "out"), "--no-plots", "--no-figures"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert (
        "resid_post: **cannot be tested** with 5 layers" in md
        and "smallest p a sign-flip test over 5 layers can give is 0.0625" in md
    )
    assert "p < 0.05 needs at least 6 depths" in md
    assert "varies significantly" not in md
    e2 = json.loads((tmp_path / "out" / "report.json").read_text())["experiment_2"]["qk_variability"][0]
    assert e2["min_p"] == 0.0625 and e2["depths_needed"] == 6
    # eight depths (the default planted atlas) can be tested, and the planted difference is significant
    path8 = tmp_path / "eight.db"
    build_planted_atlas(path8, d_sae=200, passes=("attention",))
    r = CliRunner().invoke(cli, ["report", str(path8), "-o", str(tmp_path / "out8"), "--no-plots", "--no-figures"])
    md8 = (tmp_path / "out8" / "report.md").read_text()
    assert "cannot be tested" not in md8 and "varies significantly more than the query side — **agrees**" in md8


def test_report_names_the_baseline_of_each_sae(tmp_path):
    from atlas import open_atlas

    path = tmp_path / "baselines.db"
    build_planted_atlas(path, n_layers=3, d_sae=40, passes=("attention", "depth"))
    with open_atlas(path, readonly=False) as atlas, atlas.transaction():
        atlas.update_provenance(
            criteria={
                "attention_percentile": {
                    "how": "random-baseline per write space",
                    "baseline_by_sae": {
                        "L0.res": "random unit residual-stream directions",
                        "L1.res": "random unit hook_z directions of layer 1 through W_O",
                    },
                }
            }
        )
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["report", str(path), "-o", str(out), "--no-plots", "--no-figures"])
    assert r.exit_code == 0, r.output
    lines = (out / "report.md").read_text().splitlines()
    # the experiment 2 table: its cells hold "mean / median / P75"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| L") and " / " in line}
    assert rows["L0.res"].endswith("| residual |")
    assert rows["L1.res"].endswith("| hook_z through W_O |")
    assert rows["L2.res"].endswith("| residual (old) |")  # not recorded: an atlas from before


def test_exp1_figure_shows_every_curve_whole(planted_path):
    """Token agreement (75% planted) above every predicts/reads fraction: the y axis reaches it, not 0.5."""
    with open_atlas(planted_path) as atlas:
        data = report.compute_report(atlas)
    assert np.nanmax(data.overlap.frac_agree) > 0.5 > np.nanmax(data.predicts.frac_predicts)
    ax = report._fig_exp1(data).axes[0]
    assert ax.get_ylim()[1] >= np.nanmax(data.overlap.frac_agree)
