"""atlas/domain.py says what atlas/schema.sql says: its CHECK lists, metric columns and table references."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from atlas import domain
from atlas.db import create_atlas
from atlas.migrations import schema_sql


def _check_lists(sql: str) -> dict[tuple[str, str], tuple]:
    """(table, column) -> the values of every ``CHECK (column IN (...))`` in the schema, as written."""
    out = {}
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", sql, re.S):
        for column, values in re.findall(r"CHECK \((\w+) IN \(([^)]*)\)\)", body):
            out[(table, column)] = tuple(ast.literal_eval(v.strip()) for v in values.split(","))
    return out


CHECKED = {
    ("saes", "site"): domain.READ_SITES,
    ("saes", "out_site"): domain.READ_SITES,
    ("saes", "sae_kind"): domain.SAE_KINDS,
    ("saes", "architecture"): domain.SAE_ARCHITECTURES,
    ("models", "source_kind"): domain.MODEL_SOURCE_KINDS,
    ("models", "norm_kind"): domain.NORM_KINDS,
    ("token_scores", "phase"): domain.PHASES,
    ("token_scores", "sign"): domain.SIGNS,
    ("head_scores", "role"): domain.HEAD_ROLES,
    ("depth_profiles", "role"): domain.ATTENTION_ROLES,
    ("edges", "kind"): domain.EDGE_KINDS,
    ("labels", "kind"): domain.LABEL_KINDS,
}


def test_every_check_list_of_the_schema_is_in_the_domain() -> None:
    lists = {k: v for k, v in _check_lists(schema_sql()).items() if k != ("atlas_info", "id")}
    boolean = {k for k, v in lists.items() if set(v) == {0, 1}}  # 0/1 flags, not vocabulary
    assert set(lists) - boolean == set(CHECKED)
    for key, values in CHECKED.items():
        assert set(values) == set(lists[key]) and len(values) == len(set(values)), key


def test_parser_sees_a_changed_list() -> None:
    changed = schema_sql().replace("'qk', 'ov', 'cosine', 'flow'", "'qk', 'ov', 'cosine', 'flow', 'vw'")
    assert _check_lists(changed)[("edges", "kind")] != domain.EDGE_KINDS


@pytest.fixture
def fresh(tmp_path: Path):
    db = create_atlas(tmp_path / "a.db")
    yield db.conn
    db.close()


def test_metric_columns_are_the_features_columns(fresh) -> None:
    cols = [r[1] for r in fresh.execute("PRAGMA table_info(features)")]
    assert tuple(c for c in cols if c not in ("feature_id", "sae_id", "idx")) == domain.METRIC_COLUMNS


def test_tables_are_every_table_of_rows_with_its_references(fresh) -> None:
    names = {r[0] for r in fresh.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    described = {"atlas_info", "schema_migrations"}  # the file, not its rows
    derived = {n for n in names if "_fts" in n}  # FTS5 indexes and their shadow tables
    assert set(domain.TABLE_BY_NAME) == names - described - derived
    seen = []
    for t in domain.TABLES:
        refs = {r[3]: r[2] for r in fresh.execute(f"PRAGMA foreign_key_list({t.name})")}
        assert refs == t.refs, t.name
        assert all(ref in seen for ref in t.refs.values()), f"{t.name} comes before a table it references"
        pk = [r[1] for r in fresh.execute(f"PRAGMA table_info({t.name})") if r[5]]
        assert (t.id is not None) == (pk == [t.id]), t.name
        seen.append(t.name)


def test_site_order_and_stream_position() -> None:
    assert [domain.site_order(s) for s in domain.FORWARD_SITES] == list(range(len(domain.FORWARD_SITES)))
    # the order a writer must precede a reader in: resid_pre L < attn_out L < resid_mid L < mlp_in L < mlp_out L
    # < resid_post L == resid_pre L + 1
    order = ["resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post"]
    assert [domain.stream_position(s, 5) for s in order] == sorted({domain.stream_position(s, 5) for s in order})
    assert domain.stream_position("mlp_in", 5) == domain.stream_position("ln2_normalized", 5)
    assert domain.stream_position("mlp_out", 5) < domain.stream_position("mlp_in", 6)
    assert domain.stream_position("resid_post", 3) == domain.stream_position("resid_pre", 4)
    assert domain.stream_position("attn_z", 2) == domain.stream_position("attn_out", 2)
    for sites in (domain.SITES, domain.FORWARD_SITES):
        positions = [domain.stream_position(s, 5) for s in sites]
        assert positions == sorted(positions)  # SITES is in forward-pass order
    assert set(domain.SITE_SHORT) == set(domain.READ_SITES) == set(domain.FORWARD_SITES)


def test_the_tui_names_only_kinds_the_domain_has() -> None:
    """The TUI's display names for edge and label kinds name kinds that exist (a new kind shows raw until named)."""
    from tui.screens.feature_card import EDGE_KINDS
    from tui.screens.label_editor import KINDS

    assert set(EDGE_KINDS) <= set(domain.EDGE_KINDS)
    assert {kind for _, kind in KINDS} <= set(domain.LABEL_KINDS)
