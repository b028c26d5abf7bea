"""atlas.provenance: the one parser of atlas_info.provenance, strict about damage, never crashing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from atlas import open_atlas
from atlas.errors import BadProvenance, DamagedAtlas
from atlas.provenance import (
    describe_criterion,
    parse_provenance,
    read_provenance,
    read_verdict_criteria,
    verdict_criteria,
)

RULE = {"column": "du_top1_z", "tau": 6.27, "how": "random-quantile", "quantile": 0.99, "n_random": 1024}


def test_parses_objects_and_bytes():
    assert parse_provenance('{"a": {"b": [1, 2]}}') == {"a": {"b": [1, 2]}}
    assert parse_provenance(b'{"a": 1}') == {"a": 1}
    assert parse_provenance({"already": "parsed"}) == {"already": "parsed"}


@pytest.mark.parametrize(
    "raw, phrase",
    [
        (None, "is NULL"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON array, not an object"),
        ('"text"', "JSON string, not an object"),
        ("42", "JSON number, not an object"),
        (b'{"x": "\x80"}', "not UTF-8"),
        (3.5, "float, not JSON text"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_damage_is_named(raw, phrase):
    with pytest.raises(BadProvenance, match=phrase) as e:
        parse_provenance(raw)
    assert isinstance(e.value, DamagedAtlas) and "\n" not in str(e.value) and "validate" in str(e.value)


def test_verdict_criteria_checks_shapes():
    assert verdict_criteria({}) == {}
    assert verdict_criteria({"criteria": {"predicts_tokens": RULE}}) == {"predicts_tokens": RULE}
    for bad, phrase in (
        ({"criteria": [1]}, "criteria is a JSON array"),
        ({"criteria": {"predicts_tokens": "x"}}, "predicts_tokens is a JSON string"),
        ({"criteria": {"predicts_tokens": {**RULE, "tau": "big"}}}, "tau is a JSON string, not a number"),
        ({"criteria": {"predicts_tokens": {**RULE, "n_random": 1.5}}}, "n_random is a JSON number, not a integer"),
        ({"criteria": {"predicts_tokens": {**RULE, "tau": True}}}, "tau is a JSON boolean"),
    ):
        with pytest.raises(BadProvenance, match=phrase):
            verdict_criteria(bad)


def test_describe_criterion_never_raises():
    assert describe_criterion(RULE) == "du_top1_z >= 6.27 (99th percentile over 1024 random directions)"
    assert describe_criterion({"column": "x", "tau": "big"}) == "x >= big"
    assert describe_criterion({"column": "x", "tau": 1, "how": "random-quantile", "quantile": "q"}) == "x >= 1"
    assert describe_criterion([1, 2]) == "[1, 2]"


def _with_provenance(src: Path, dst: Path, value) -> Path:
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as c:
        c.execute("PRAGMA ignore_check_constraints = ON")
        c.execute("UPDATE atlas_info SET provenance = ?", (value,))
    return dst


def test_read_from_the_file(synthetic_atlas_master: Path, tmp_path: Path):
    good = _with_provenance(
        synthetic_atlas_master, tmp_path / "good.db", '{"criteria": {"predicts_tokens": {"column": "c", "tau": 2}}}'
    )
    with open_atlas(good) as a:
        assert read_provenance(a.conn)["criteria"]["predicts_tokens"]["tau"] == 2
        assert read_verdict_criteria(a.conn) == {"predicts_tokens": {"column": "c", "tau": 2}}
    for name, value, phrase in (
        ("broken", "{oops", "not valid JSON"),
        ("array", "[1]", "JSON array"),
        ("crit", '{"criteria": 5}', "criteria is a JSON number"),
        ("tau", '{"criteria": {"reads_tokens": {"column": "c", "tau": "x"}}}', "tau is a JSON string"),
    ):
        path = _with_provenance(synthetic_atlas_master, tmp_path / f"{name}.db", value)
        with open_atlas(path) as a:
            with pytest.raises(BadProvenance, match=phrase):
                read_verdict_criteria(a.conn)
            if name in ("broken", "array"):
                with pytest.raises(BadProvenance, match=phrase):
                    read_provenance(a.conn)
