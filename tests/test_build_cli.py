"""`sae-atlas build` through the CLI: a tiny saved HF model and SAE files written in their on-disk formats."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atlas import open_atlas
from atlas.cli import cli
from tests.builders_fixtures import tiny_model, write_saelens_sae


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama")  # d_model 48, 2 layers, 6 heads over 2 kv heads, head_dim 8
    model.save_pretrained(root / "model")
    write_saelens_sae(root / "res0", d_in=48, d_sae=40, hook_name="blocks.0.hook_resid_pre", seed=1)
    write_saelens_sae(root / "res1", d_in=48, d_sae=30, hook_name="blocks.0.hook_resid_post", seed=2)
    write_saelens_sae(root / "z1", d_in=48, d_sae=24, hook_name="blocks.1.attn.hook_z", seed=3)
    return root


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_build_every_pass_then_validate(files, tmp_path):
    out = tmp_path / "atlas.db"
    args = ["build", "--model", str(files / "model"), "-o", str(out), "--top-k", "5", "--n-random", "64",
            "--unit-size", "16", "--qk-k", "3", "--ov-k", "3", "--device", "cpu", "--no-progress"]  # fmt: skip
    for name in ("res0", "res1", "z1"):
        args += ["--sae", str(files / name)]
    r = run(args)
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("atlas.db")
    v = run(["validate", "--db", str(out)])
    assert v.exit_code == 0, v.output
    with open_atlas(out) as a:
        names = sorted(s.name for s in a.saes())
        assert names == ["L0.res", "L0.res_pre", "L1.z"]
        c = a.conn
        assert c.execute("SELECT COUNT(*) FROM token_scores").fetchone()[0] == 94 * 5 * 4
        kinds = dict(c.execute("SELECT kind, COUNT(*) FROM edges GROUP BY kind").fetchall())
        assert set(kinds) == {"qk", "ov", "cosine", "flow"}
        assert c.execute("SELECT COUNT(*) FROM features WHERE top_head IS NOT NULL").fetchone()[0] == 24
        assert c.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 94
        prov = a.provenance()
        assert prov["model"]["architecture"] == "LlamaForCausalLM"
        assert all(s["sha256"] for s in prov["saes"])
    show = run(["show", "--db", str(out), "L0.res/3"])
    assert show.exit_code == 0 and "L0.res/3" in show.output


def test_cli_shards_then_merge_equal_one_build(files, tmp_path):
    from tests.test_build import dump

    common = ["--model", str(files / "model"), "--sae", str(files / "res0"), "--sae", str(files / "z1"),
              "--top-k", "5", "--n-random", "64", "--unit-size", "16", "--device", "cpu", "--no-progress"]  # fmt: skip
    one, sharded = tmp_path / "one.db", tmp_path / "two.db"
    assert run(["build", *common, "-o", str(one)]).exit_code == 0
    for i in range(2):
        r = run(["build", *common, "-o", str(sharded), "--shard", f"{i}/2"])
        assert r.exit_code == 0 and r.output.strip().endswith(f"two.db.shard{i}-of-2.partial"), r.output
    r = run(["build", "--merge-shards", str(sharded)])
    assert r.exit_code == 0 and r.output.strip() == str(sharded), r.output
    assert dump(one) == dump(sharded)
    r = CliRunner().invoke(cli, ["build", "--merge-shards", str(tmp_path / "none.db")])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "no shard files" in r.output
    r = CliRunner().invoke(cli, ["build", *common, "-o", str(sharded), "--shard", "2"])
    assert r.exit_code == 2 and "use I/N" in r.output
    r = CliRunner().invoke(cli, ["build", "--sae", str(files / "res0"), "-o", str(sharded)])
    assert r.exit_code == 2 and "Missing option '--model'" in r.output


def test_cli_errors_are_one_line(files, tmp_path):
    out = tmp_path / "x.db"
    r = CliRunner().invoke(cli, ["build", "--model", str(files / "model"), "--sae", str(tmp_path / "missing"),
                                 "-o", str(out), "--no-progress"])  # fmt: skip
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [ln for ln in r.output.splitlines() if "Error" in ln]
    assert not out.exists()
    # an SAE whose width does not fit the model
    write_saelens_sae(tmp_path / "bad", d_in=32, d_sae=8, hook_name="blocks.0.hook_resid_post")
    r = CliRunner().invoke(cli, ["build", "--model", str(files / "model"), "--sae", str(tmp_path / "bad"),
                                 "-o", str(out), "--no-progress"])  # fmt: skip
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code != 0 and len(errors) == 1 and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(cli, ["build", "--model", str(files / "model"), "--sae", str(files / "res0"),
                                 "-o", str(out), "--passes", "du,nope", "--no-progress"])  # fmt: skip
    assert r.exit_code != 0 and "unknown pass" in r.output


def test_help_has_example():
    r = run(["build", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output and "--resume" in r.output
    assert "--shard 1/2" in r.output and "--merge-shards gpt2.db" in r.output
    json.dumps(r.output)
