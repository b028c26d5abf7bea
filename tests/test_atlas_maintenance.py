"""validate, export and merge: checked against the files they read and write."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import atlas.merge
from atlas import AtlasError, open_atlas
from atlas.maintenance import ProvenanceConflict, export_atlas, merge_atlases, merge_provenance, validate
from atlas.synthetic import build_synthetic_atlas
from tests.conftest import query, sha256_of


def _failed(path: Path) -> dict[str, str]:
    return {c.name: c.detail for c in validate(path).checks if not c.ok}


def _write(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


# ---------------------------------------------------------------- validate
def test_validate_good_atlas_and_never_writes(synthetic_atlas: Path) -> None:
    before = sha256_of(synthetic_atlas)
    rep = validate(synthetic_atlas)
    assert rep.ok, [c for c in rep.checks if not c.ok]
    assert {"integrity check", "foreign keys", "features match saes.d_sae", "token ids within the vocabulary"} <= {
        c.name for c in rep.checks
    }
    assert sha256_of(synthetic_atlas) == before


def test_validate_feature_count(synthetic_atlas: Path) -> None:
    _write(synthetic_atlas, "UPDATE saes SET d_sae = 201 WHERE name = 'L2.res'")
    assert "d_sae 201 but 200 features" in _failed(synthetic_atlas)["features match saes.d_sae"]


def test_validate_token_outside_vocab(synthetic_atlas: Path) -> None:
    _write(synthetic_atlas, "UPDATE token_scores SET token_id = 5000 WHERE feature_id = 3 AND rank = 0")
    assert "outside the model's vocabulary" in _failed(synthetic_atlas)["token ids within the vocabulary"]


def test_validate_rank_gap(synthetic_atlas: Path) -> None:
    _write(synthetic_atlas, "DELETE FROM token_scores WHERE feature_id = 7 AND phase = 'ee' AND sign = 1 AND rank = 4")
    assert "#7 ee+1" in _failed(synthetic_atlas)["token score ranks contiguous"]


def test_validate_dangling_foreign_key(synthetic_atlas: Path) -> None:
    _write(
        synthetic_atlas,
        "INSERT INTO edges (src_feature, dst_feature, kind, score, rank) VALUES (0, 999999, 'cosine', 1, 0)",
    )
    assert "edges" in _failed(synthetic_atlas)["foreign keys"]


def test_validate_schema_disagreement(synthetic_atlas: Path) -> None:
    _write(synthetic_atlas, "UPDATE atlas_info SET schema_version = 7")
    failed = _failed(synthetic_atlas)
    assert any("atlas_info says version 7" in d for d in failed.values())


# ---------------------------------------------------------------- export
def test_export_subset(synthetic_atlas: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.db"
    counts = export_atlas(synthetic_atlas, out, ["L6.res"])
    assert counts["saes"] == 1 and counts["features"] == 200
    assert validate(out).ok
    src_ids = [
        r[0]
        for r in query(synthetic_atlas, "SELECT feature_id FROM features JOIN saes USING (sae_id) WHERE name='L6.res'")
    ]
    ids = ",".join(map(str, src_ids))
    # every row touching only L6.res comes along, unchanged
    for sql in (
        f"SELECT * FROM token_scores WHERE feature_id IN ({ids}) ORDER BY 1,2,3,4",
        f"SELECT * FROM head_scores WHERE feature_id IN ({ids}) ORDER BY 1,2,3",
        f"SELECT * FROM edges WHERE src_feature IN ({ids}) AND dst_feature IN ({ids}) ORDER BY edge_id",
        f"SELECT feature_id, text, kind, source FROM labels WHERE feature_id IN ({ids}) ORDER BY label_id",
        "SELECT * FROM vocab ORDER BY token_id",
        "SELECT * FROM heads ORDER BY head_pk",
    ):
        assert query(out, sql) == query(synthetic_atlas, sql), sql
    assert (
        query(out, "SELECT COUNT(*) FROM edges")[0][0]
        < query(synthetic_atlas, f"SELECT COUNT(*) FROM edges WHERE src_feature IN ({ids})")[0][0]
    )
    prov = json.loads(query(out, "SELECT provenance FROM atlas_info")[0][0])
    assert prov["synthetic"] == {"seed": 0} and prov["exported"]["saes"] == ["L6.res"]
    with open_atlas(out) as atlas:  # FTS indexes were filled too
        assert atlas.search_labels("punctuation", limit=5)
        assert atlas.find_tokens("par", exact=False)


def test_export_refuses_existing_and_unknown(synthetic_atlas: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.db"
    out.write_text("keep me")
    with pytest.raises(FileExistsError):
        export_atlas(synthetic_atlas, out, ["L2.res"])
    assert out.read_text() == "keep me"
    with pytest.raises(AtlasError, match="no SAE named"):
        export_atlas(synthetic_atlas, tmp_path / "y.db", ["L9.res"])
    assert not (tmp_path / "y.db").exists()


def test_export_failure_leaves_nothing(synthetic_atlas: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(atlas.merge, "finish", boom)
    with pytest.raises(RuntimeError):
        export_atlas(synthetic_atlas, tmp_path / "out.db", ["L2.res"])
    assert list(tmp_path.iterdir()) == [synthetic_atlas]  # no OUT, no temp file, no journal


# ---------------------------------------------------------------- merge
@pytest.fixture
def two_halves(tmp_path: Path) -> tuple[Path, Path]:
    kw = {"n_features": 120, "d_vocab": 300, "seed": 0}
    a = build_synthetic_atlas(tmp_path / "a.db", layers=(1, 2), **kw)
    # same seed (so the same vocabulary and provenance), another shape so the rows differ from a's
    b = build_synthetic_atlas(tmp_path / "b.db", layers=(4,), n_features=90, d_vocab=300, seed=0)
    return a, b


def test_merge_renumbers_and_keeps_everything(two_halves: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_halves
    out = tmp_path / "m.db"
    rep = merge_atlases([a, b], out)
    assert rep["added_saes"] == ["L4.res"] and rep["counts"]["features"] == 210
    assert validate(out).ok
    # a's rows unchanged, b's rows present under new ids
    assert query(out, "SELECT * FROM token_scores WHERE feature_id < 120 ORDER BY 1,2,3,4") == query(
        a, "SELECT * FROM token_scores ORDER BY 1,2,3,4"
    )
    with open_atlas(out) as m, open_atlas(b) as src:
        for name in ("L4.res/0", "L4.res/33", "L4.res/89"):
            cm, cb = m.card(name), src.card(name)
            assert cm.feature.feature_id >= 120
            assert cm.feature.metrics == cb.feature.metrics
            assert [(t.token, t.value) for t in cm.promoted] == [(t.token, t.value) for t in cb.promoted]
            assert [(h.layer, h.head, h.role, h.score) for h in cm.heads] == [
                (h.layer, h.head, h.role, h.score) for h in cb.heads
            ]
            assert [(e.kind, e.dst, e.score) for e in cm.edges_out] == [(e.kind, e.dst, e.score) for e in cb.edges_out]
            assert [lab.text for lab in cm.labels] == [lab.text for lab in cb.labels]
    prov = json.loads(query(out, "SELECT provenance FROM atlas_info")[0][0])
    assert prov["merged"]["inputs"] == ["a.db", "b.db"]


def test_merge_rejects_different_model(two_halves: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_halves
    _write(b, "UPDATE models SET sha256 = 'beef'")
    with pytest.raises(ProvenanceConflict, match="sha256"):
        merge_atlases([a, b], tmp_path / "m.db")
    assert not (tmp_path / "m.db").exists()
    _write(b, "UPDATE models SET sha256 = NULL, source = 'elsewhere'")
    with pytest.raises(ProvenanceConflict, match="source"):
        merge_atlases([a, b], tmp_path / "m.db")


def test_merge_rejects_different_build_parameters(two_halves: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_halves
    _write(b, "UPDATE atlas_info SET provenance = json_set(provenance, '$.synthetic.seed', 5)")
    with pytest.raises(ProvenanceConflict, match="synthetic.seed"):
        merge_atlases([a, b], tmp_path / "m.db")
    assert list(tmp_path.glob("m.db*")) == [] and list(tmp_path.glob(".m.db*")) == []


def test_merge_same_sae_name(two_halves: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = two_halves
    c = build_synthetic_atlas(tmp_path / "c.db", layers=(2,), n_features=60, d_vocab=300, seed=0)
    _write(a, "UPDATE saes SET sha256 = 'aaa'")
    _write(c, "UPDATE saes SET sha256 = 'bbb'")
    with pytest.raises(ProvenanceConflict, match="L2.res"):
        merge_atlases([a, c], tmp_path / "m.db")
    # same weights: kept once, and the later atlas's extra user label comes along
    c2 = build_synthetic_atlas(tmp_path / "c2.db", layers=(2,), n_features=60, d_vocab=300, seed=0)
    _write(c2, "UPDATE saes SET sha256 = 'aaa'")
    with open_atlas(c2, readonly=False) as atlas:
        atlas.add_label(atlas.resolve_feature("L2.res/5"), "only in c2")
    rep = merge_atlases([a, c2], tmp_path / "m2.db")
    assert rep["shared_saes"] == ["L2.res"] and rep["added_saes"] == []
    assert rep["counts"]["features"] == 120
    with open_atlas(tmp_path / "m2.db") as m:
        texts = [lab.text for lab in m.labels(m.resolve_feature("L2.res/5"))]
    assert texts.count("only in c2") == 1
    assert len(texts) == len(set(texts))  # heuristic labels present in both are not doubled


def test_merge_provenance_rules() -> None:
    a = {"params": {"k": 20, "dtype": "fp32"}, "created_at": "x", "sae_files": {"a": "1"}}
    b = {"params": {"k": 20, "chunk": 64}, "created_at": "y", "sae_files": {"b": "2"}}
    merged = merge_provenance(a, b)
    assert merged["params"] == {"k": 20, "dtype": "fp32", "chunk": 64}
    assert merged["sae_files"] == {"a": "1", "b": "2"}
    with pytest.raises(ProvenanceConflict, match="params.k"):
        merge_provenance(a, {"params": {"k": 32}})
    # nothing below a volatile key conflicts, however deep
    e1 = {"exported": {"at": "09:00", "saes": ["L1.res"]}, "timings": {"du": {"seconds": 1}}}
    e2 = {"exported": {"at": "09:01", "saes": ["L2.res"]}, "timings": {"du": {"seconds": 2}}}
    assert merge_provenance(e1, e2) == e1


def test_merge_needs_two(synthetic_atlas: Path, tmp_path: Path) -> None:
    with pytest.raises(AtlasError):
        merge_atlases([synthetic_atlas], tmp_path / "m.db")


# ---------------------------------------------------------------- writing outputs that fail honestly
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_export_and_merge_remove_what_killed_runs_left(two_halves: tuple[Path, Path], tmp_path: Path) -> None:
    """A killed export/merge leaves .OUT.tmp-PID and its journal: the next run removes them, if PID is dead."""
    import os

    a, b = two_halves
    out = tmp_path / "m.db"
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".m.db.tmp-{dead}", tmp_path / f".m.db.tmp-{dead}-journal"]
    live = tmp_path / f".m.db.tmp-{alive}"  # another run, still writing: left alone
    for p in (*stale, live):
        p.write_bytes(b"x" * 1000)
    merge_atlases([a, b], out)
    assert not any(p.exists() for p in stale) and live.exists()
    stale[0].write_bytes(b"x")
    export_atlas(a, tmp_path / "m.db", ["L1.res"], overwrite=True)
    assert not stale[0].exists() and live.exists()


def _small_disk(monkeypatch: pytest.MonkeyPatch, name: str, spare_pages: int = 2) -> None:
    """Every file ``atlas.merge.name`` opens for writing gets only ``spare_pages`` more pages (SQLITE_FULL)."""
    real = getattr(atlas.merge, name)

    def opener(*args: object, **kw: object) -> sqlite3.Connection:
        conn = real(*args, **kw)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + spare_pages}")
        return conn

    monkeypatch.setattr(atlas.merge, name, opener)


def test_a_full_disk_says_disk_full(
    two_halves: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from atlas.cli import cli

    a, b = two_halves
    _small_disk(monkeypatch, "new_copy_target")
    _small_disk(monkeypatch, "page_copy")
    for argv in (
        ["export", "--db", str(a), "--sae", "L1.res", str(tmp_path / "e.db")],
        ["merge", str(a), str(b), "-o", str(tmp_path / "m.db")],
    ):
        r = CliRunner().invoke(cli, argv)
        assert r.exit_code == 1 and r.output.strip().endswith(": disk full"), r.output
        assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "b.db"]


def test_an_output_in_a_missing_folder_says_no_such_folder(two_halves: tuple[Path, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from atlas.cli import cli

    a, b = two_halves
    for argv in (
        ["export", "--db", str(a), "--sae", "L1.res", str(tmp_path / "no" / "e.db")],
        ["merge", str(a), str(b), "-o", str(tmp_path / "no" / "m.db")],
    ):
        r = CliRunner().invoke(cli, argv)
        assert (
            r.exit_code == 1
            and r.output.strip()
            == f"Error: {tmp_path / 'no'}: no such folder (create it first, or write the atlas elsewhere)"
        ), r.output
