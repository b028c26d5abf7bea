"""The pass registry: every pass describes itself, and a new pass is a new module the build runs unchanged."""

from __future__ import annotations

import sys
import textwrap

import pytest

from atlas import domain, open_atlas
from builders.build import BuildConfig, build_atlas, merge_shards, plan_units, sae_names
from builders.passes import base, registry
from tests.passes_fixtures import tiny_model, tiny_sae


def test_every_pass_describes_itself():
    passes = registry()
    assert list(passes) == [
        "du", "spread", "ee", "attn", "attribution", "qk", "ov", "neighbours", "flow", "virtual", "virtual_in", "semantic",
    ]  # fmt: skip
    assert [p.order for p in passes.values()] == sorted(p.order for p in passes.values())
    for p in passes.values():
        assert p.help and p.steps and set(p.writes) <= set(base.ROW_TABLES)
        assert p.edge_kind is None or p.edge_kind in domain.EDGE_KINDS
        assert p.label_source in (None, domain.HEURISTIC_SOURCE)
    kinds = [p.edge_kind for p in passes.values() if p.edge_kind]
    assert len(kinds) == len(set(kinds))  # the shard merge tells units apart by their edge kind
    assert {p.name for p in passes.values() if p.reads == "pair"} == {"qk", "ov", "flow", "virtual", "virtual_in"}


def test_pair_passes_plan_ordered_pairs():
    m = tiny_model(n_layers=3)
    saes = [tiny_sae(m, site="resid_post", layer=0, d_sae=8, seed=1), tiny_sae(m, site="resid_post", layer=1, d_sae=8)]
    names = sae_names(saes)
    cfg = BuildConfig(qk_pairs=(("L0.res", "L1.res"), ("L0.res", "L0.res")), unit_size=8)
    units = plan_units(m, saes, names, cfg)
    assert [(u.key, u.sae, u.other) for u in units if u.pass_name == "qk"] == [("qk:L1.res", 0, 1), ("qk", 0, 0)]
    assert [(u.key, u.sae, u.other) for u in units if u.pass_name == "flow"] == [("flow", 0, 1)]
    assert [(u.key, u.sae, u.other) for u in units if u.pass_name == "ov"] == [("ov", 0, 1)]


MIRROR = '''
"""A pass the build has never heard of: feature i of an SAE -> feature i of the next SAE along the stream."""
import numpy as np

from builders.passes.base import EdgeRows, Pass, Rows, Step, Target


def _targets(ctx):
    order = sorted(range(len(ctx.saes)), key=lambda i: (ctx.saes[i].layer, i))
    return [Target(a, b) for a, b in zip(order[:-1], order[1:])]


def _run(ctx, u):
    n = min(u.end, ctx.saes[u.other].d_sae) - u.start
    i = np.arange(u.start, u.start + max(n, 0))
    return Rows(edges=EdgeRows(src=i, dst=i, head=None, score=i / 100.0, rank=np.zeros(len(i), int)))


PASS = Pass(name="mirror", order=85, help="feature i -> feature i of the next SAE", reads="pair", targets=_targets,
            steps=(Step("mirror", _run),), writes=("edges",), edge_kind="flow")
'''


@pytest.fixture
def mirror_pass(tmp_path, monkeypatch):
    """builders/passes/mirror.py, as a person adding a pass would write it (in a folder of the package path)."""
    import builders.passes

    (tmp_path / "mirror.py").write_text(textwrap.dedent(MIRROR))
    monkeypatch.setattr(builders.passes, "__path__", [*builders.passes.__path__, str(tmp_path)])
    registry.cache_clear()
    yield
    registry.cache_clear()
    sys.modules.pop("builders.passes.mirror", None)


def test_a_new_pass_is_a_new_module(mirror_pass, tmp_path):
    m = tiny_model(n_layers=3)
    saes = [tiny_sae(m, layer=0, d_sae=10, seed=1), tiny_sae(m, layer=1, d_sae=12, seed=2)]
    cfg = BuildConfig(passes=("mirror", "du"), top_k=3, n_random=16, unit_size=4)
    out = build_atlas(m, saes, tmp_path / "a.db", config=cfg, progress=False)
    for i in range(3):
        build_atlas(m, saes, tmp_path / "s.db", config=cfg, progress=False, shard=(i, 3))
    merge_shards(tmp_path / "s.db")
    for path in (out, tmp_path / "s.db"):
        with open_atlas(path) as a:
            rows = a.conn.execute("SELECT src, dst, score, rank FROM edges_view ORDER BY edge_id").fetchall()
            assert [tuple(r) for r in rows] == [(f"L0.res/{i}", f"L1.res/{i}", i / 100.0, 0) for i in range(10)]
            units = a.conn.execute("SELECT COUNT(*) FROM build_units WHERE pass = 'mirror'").fetchone()[0]
            assert units == 3  # 10 features in units of 4
