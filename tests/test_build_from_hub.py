"""`sae-atlas build` end to end from names: a SAELens registry id and hf:// paths, read from a
Hugging Face cache laid out on disk (HF_HUB_OFFLINE=1), with a tiny model saved as a local folder."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from atlas import open_atlas
from atlas.cli import cli
from builders import registry
from tests.builders_fixtures import publish_to_hub_cache, tiny_model, write_gemma_scope_2, write_gemma_scope_sae

COMMIT = "f00d" * 10


@pytest.fixture
def env(tmp_path):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    return cache, {
        "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
        "SAE_ATLAS_CACHE": str(tmp_path / "cache"), registry.ENV_PATH: str(registry.SHIPPED),
    }  # fmt: skip


def build(args, env):
    return CliRunner().invoke(
        cli, ["build", *args, "--top-k", "5", "--n-random", "64", "--device", "cpu", "--no-progress"], env=env
    )


def test_build_from_a_registry_id(tmp_path, env):
    cache, environ = env
    tiny_model("gemma2").save_pretrained(tmp_path / "model")  # d_model 32, 2 layers
    entry = registry.resolve("gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical", registry=registry.SHIPPED)
    path, _ = write_gemma_scope_sae(tmp_path / "w", release="", layer=1, d_in=32, d_sae=40)
    (tmp_path / "repo" / entry.path).mkdir(parents=True)
    shutil.copy(path, tmp_path / "repo" / entry.path / "params.npz")
    publish_to_hub_cache(cache, entry.repo_id, tmp_path / "repo", commit=COMMIT)
    out = tmp_path / "atlas.db"
    r = build(
        [
            "--model",
            str(tmp_path / "model"),
            "--sae",
            "gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical",
            "-o",
            str(out),
        ],
        environ,
    )
    assert r.exit_code == 0, r.output
    with open_atlas(out) as a:
        row = a.conn.execute(
            "SELECT release, sae_ref, neuronpedia_id, source, source_format, hook_name, d_sae, notes FROM saes"
        ).fetchone()
        assert row[:3] == (
            "gemma-scope-2b-pt-res-canonical",
            "layer_1/width_16k/canonical",
            "gemma-2-2b/1-gemmascope-res-16k",
        )
        assert row[3] == f"hf://google/gemma-scope-2b-pt-res/{entry.path}/params.npz@{COMMIT}"
        assert row[4:7] == ("gemma_scope", "blocks.1.hook_resid_post", 40)
        assert row[7].startswith("SAELens registry gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical")
        assert a.conn.execute("SELECT COUNT(*) FROM token_scores").fetchone()[0] > 0
        assert a.provenance()["saes"][0]["release"] == "gemma-scope-2b-pt-res-canonical"
    # not cached: one line, nothing written
    out2 = tmp_path / "none.db"
    r = build(
        [
            "--model",
            str(tmp_path / "model"),
            "--sae",
            "gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical",
            "-o",
            str(out2),
        ],
        environ,
    )
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "not in the Hugging Face cache" in r.output, r.output
    assert not list(tmp_path.glob("none.db*"))
    r = build(
        [
            "--model",
            str(tmp_path / "model"),
            "--sae",
            "gemma-scope-2b-pt-rez/layer_1/width_16k/canonical",
            "-o",
            str(out2),
        ],
        environ,
    )
    assert r.exit_code == 1 and "nearest releases: gemma-scope-2b-pt-res" in r.output and r.output.count("\n") == 1


def test_build_gemma3_from_hf_paths(tmp_path, env):
    cache, environ = env
    tiny_model("gemma3").save_pretrained(tmp_path / "model")  # d_model 32, 2 layers, q/k norms
    repo = tmp_path / "repo"
    res, _ = write_gemma_scope_2(repo, kind="resid_post", layer=1, d_sae=48)
    mlp, _ = write_gemma_scope_2(repo, kind="mlp_out", all_layers=True, layer=0, d_sae=40, seed=1)
    publish_to_hub_cache(cache, "google/gemma-scope-2-270m-pt", repo, commit=COMMIT)
    out = tmp_path / "g3.db"
    uris = [f"hf://google/gemma-scope-2-270m-pt/{p.relative_to(repo).as_posix()}" for p in (res, mlp)]
    r = build(
        [
            "--model",
            str(tmp_path / "model"),
            "--sae",
            uris[0],
            "--sae",
            uris[1] + "/params.safetensors",
            "-o",
            str(out),
        ],
        environ,
    )
    assert r.exit_code == 0, r.output
    with open_atlas(out) as a:
        rows = [
            tuple(r)
            for r in a.conn.execute("SELECT source, source_format, hook_name, sae_ref FROM saes ORDER BY layer")
        ]
        assert rows == [
            (f"hf://google/gemma-scope-2-270m-pt/mlp_out_all/layer_0_width_16k_l0_big@{COMMIT}", "gemma_scope_2",
             "blocks.0.hook_mlp_out", "mlp_out_all/layer_0_width_16k_l0_big"),
            (f"hf://google/gemma-scope-2-270m-pt/resid_post/layer_1_width_16k_l0_big@{COMMIT}", "gemma_scope_2",
             "blocks.1.hook_resid_post", "resid_post/layer_1_width_16k_l0_big"),
        ]  # fmt: skip
        model = a.conn.execute("SELECT architecture, notes FROM models").fetchone()
        assert model[0] == "Gemma3ForCausalLM" and "q/k norms" in model[1]
        assert a.conn.execute("SELECT COUNT(*) FROM edges WHERE kind = 'qk'").fetchone()[0] > 0
    # a dictionary that does not fit this model: one line, nothing written
    wide, _ = write_gemma_scope_2(tmp_path / "repo2", kind="resid_post", layer=1, d_in=48)
    publish_to_hub_cache(cache, "org/wide", tmp_path / "repo2", commit=COMMIT)
    out3 = tmp_path / "wide.db"
    r = build(
        [
            "--model",
            str(tmp_path / "model"),
            "--sae",
            "hf://org/wide/resid_post/layer_1_width_16k_l0_big",
            "-o",
            str(out3),
        ],
        environ,
    )
    assert (
        r.exit_code == 1
        and "SAE d_in 48 does not match the model's d_model = 32" in r.output
        and r.output.count("\n") == 1
    )
    assert not list(tmp_path.glob("wide.db*"))
