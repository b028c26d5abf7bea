"""`sae-atlas build` through the CLI: a tiny saved HF model and SAE files written in their on-disk formats."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from atlas import open_atlas
from atlas.cli import cli
from tests.builders_fixtures import tiny_model, write_saelens_sae


def save_word_tokenizer(folder, d_vocab: int) -> None:
    """A word-level tokenizer whose token i is ``w<i>``, saved as transformers saves one (built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(d_vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama")  # d_model 48, 2 layers, 6 heads over 2 kv heads, head_dim 8
    model.save_pretrained(root / "model")
    save_word_tokenizer(root / "model", model.config.vocab_size)
    model.save_pretrained(root / "bare")  # the same model without a tokenizer
    write_saelens_sae(root / "res0", d_in=48, d_sae=40, hook_name="blocks.0.hook_resid_pre", seed=1)
    write_saelens_sae(root / "res1", d_in=48, d_sae=30, hook_name="blocks.0.hook_resid_post", seed=2)
    write_saelens_sae(root / "z1", d_in=48, d_sae=24, hook_name="blocks.1.attn.hook_z", seed=3)
    return root


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_build_every_pass_then_validate(files, tmp_path):
    out = tmp_path / "atlas.db"
    args = [
        "build",
        "--model",
        str(files / "model"),
        "-o",
        str(out),
        "--top-k",
        "5",
        "--n-random",
        "64",
        "--unit-size",
        "16",
        "--qk-k",
        "3",
        "--ov-k",
        "3",
        "--device",
        "cpu",
        "--no-progress",
    ]
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
        assert set(kinds) == {"qk", "ov", "cosine", "flow", "virtual", "virtual_in"}
        assert c.execute("SELECT COUNT(*) FROM features WHERE top_head IS NOT NULL").fetchone()[0] == 24
        assert c.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 94
        prov = a.provenance()
        assert prov["model"]["architecture"] == "LlamaForCausalLM"
        assert all(s["sha256"] for s in prov["saes"])
    show = run(["show", "--db", str(out), "L0.res/3"])
    assert show.exit_code == 0 and "L0.res/3" in show.output


def test_cli_shards_then_merge_equal_one_build(files, tmp_path):
    from tests.test_build import dump

    common = [
        "--model",
        str(files / "model"),
        "--sae",
        str(files / "res0"),
        "--sae",
        str(files / "z1"),
        "--top-k",
        "5",
        "--n-random",
        "64",
        "--unit-size",
        "16",
        "--device",
        "cpu",
        "--no-progress",
    ]
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
    r = CliRunner().invoke(
        cli,
        ["build", "--model", str(files / "model"), "--sae", str(tmp_path / "missing"), "-o", str(out), "--no-progress"],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [ln for ln in r.output.splitlines() if "Error" in ln]
    assert not out.exists()
    # an SAE whose width does not fit the model
    write_saelens_sae(tmp_path / "bad", d_in=32, d_sae=8, hook_name="blocks.0.hook_resid_post")
    r = CliRunner().invoke(
        cli, ["build", "--model", str(files / "model"), "--sae", str(tmp_path / "bad"), "-o", str(out), "--no-progress"]
    )
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code != 0 and len(errors) == 1 and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(
        cli,
        [
            "build",
            "--model",
            str(files / "model"),
            "--sae",
            str(files / "res0"),
            "-o",
            str(out),
            "--passes",
            "du,nope",
            "--no-progress",
        ],
    )
    assert r.exit_code != 0 and "unknown pass" in r.output


def test_help_has_example():
    r = run(["build", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output and "--resume" in r.output
    assert "--shard 1/2" in r.output and "--merge-shards gpt2.db" in r.output
    json.dumps(r.output)


def test_tokens_come_from_the_tokenizer(files, tmp_path):
    out = tmp_path / "t.db"
    r = run(
        [
            "build",
            "--model",
            str(files / "model"),
            "--sae",
            str(files / "res0"),
            "-o",
            str(out),
            "--passes",
            "du",
            "--top-k",
            "3",
            "--n-random",
            "16",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert r.exit_code == 0, r.output
    with open_atlas(out) as a:
        assert a.conn.execute("SELECT raw FROM vocab WHERE token_id = 5").fetchone()[0] == "w5"


def test_model_without_tokenizer_is_refused_unless_asked(files, tmp_path):
    out = tmp_path / "bare.db"
    args = [
        "build",
        "--model",
        str(files / "bare"),
        "--sae",
        str(files / "res0"),
        "-o",
        str(out),
        "--passes",
        "du",
        "--top-k",
        "3",
        "--n-random",
        "16",
        "--device",
        "cpu",
        "--no-progress",
    ]
    r = CliRunner().invoke(cli, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "no tokenizer" in lines[0] and "--no-tokenizer" in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())
    r = run([*args, "--no-tokenizer"])
    assert r.exit_code == 0, r.output
    with open_atlas(out) as a:
        assert a.conn.execute("SELECT raw FROM vocab WHERE token_id = 5").fetchone()[0] == "<5>"


def test_sae_hook_places_an_sae_whose_files_do_not_say(files, tmp_path):
    """A bare Gemma Scope params.npz says neither layer nor site: --sae-hook (one per --sae, in order) does."""
    import numpy as np

    g = np.random.default_rng(0)
    (tmp_path / "mine").mkdir()
    np.savez(
        tmp_path / "mine" / "params.npz",
        W_enc=g.normal(size=(48, 16)).astype(np.float32),
        W_dec=g.normal(size=(16, 48)).astype(np.float32),
        b_enc=np.zeros(16, np.float32),
        b_dec=np.zeros(48, np.float32),
        threshold=np.full(16, 0.1, np.float32),
    )
    out = tmp_path / "h.db"
    base = [
        "build",
        "--model",
        str(files / "model"),
        "--sae",
        str(files / "res0"),
        "--sae",
        str(tmp_path / "mine"),
        "-o",
        str(out),
        "--passes",
        "du",
        "--top-k",
        "3",
        "--n-random",
        "16",
        "--device",
        "cpu",
        "--no-progress",
    ]
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 1 and "do not say" in r.output and not out.exists()
    r = CliRunner().invoke(cli, [*base, "--sae-hook", "blocks.1.hook_resid_post"])  # one hook for two SAEs
    assert r.exit_code == 2 and "one per --sae" in r.output
    r = CliRunner().invoke(cli, [*base, "--sae-hook", "", "--sae-hook", "blocks.1.nowhere"])
    assert r.exit_code == 2 and "unknown hook" in r.output
    r = run([*base, "--sae-hook", "", "--sae-hook", "blocks.1.hook_resid_post"])
    assert r.exit_code == 0, r.output
    with open_atlas(out) as a:
        assert {(s.name, s.hook_name) for s in a.saes()} == {
            ("L0.res_pre", "blocks.0.hook_resid_pre"),
            ("L1.res", "blocks.1.hook_resid_post"),
        }


def test_arguments_are_checked_before_anything_loads(files, tmp_path):
    """-o EXISTING, a missing folder and bad settings are refused even with a model and SAE that do not exist."""
    existing = tmp_path / "there.db"
    existing.write_text("keep")
    nothing = ["--model", str(tmp_path / "no-model"), "--sae", str(tmp_path / "no-sae"), "--no-progress"]
    r = CliRunner().invoke(cli, ["build", *nothing, "-o", str(existing)])
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    assert existing.read_text() == "keep"
    r = CliRunner().invoke(cli, ["build", *nothing, "-o", str(tmp_path / "missing" / "a.db")])
    assert r.exit_code == 1 and "no such folder" in r.output
    r = CliRunner().invoke(cli, ["build", *nothing, "-o", str(tmp_path / "a.db"), "--top-k", "0"])
    assert r.exit_code == 1 and "top_k must be at least 1" in r.output
    r = CliRunner().invoke(cli, ["build", *nothing, "-o", str(tmp_path / "a.db"), "--device", "gpu"])
    assert r.exit_code == 2 and "--device" in r.output
    r = CliRunner().invoke(cli, ["build", *nothing, "-o", str(tmp_path / "a.db"), "--sae-format", "nope"])
    assert r.exit_code == 2 and "saelens" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.db"]


def test_every_setting_is_an_option(monkeypatch, tmp_path):
    """Each BuildConfig field (nested ones too) has an option with its comment as help, and reads back."""
    import dataclasses

    import builders.cli as bcli
    from builders.passes.semantic import SemanticSettings
    from builders.saes import SAE_FORMATS
    from builders.settings import BuildConfig

    opts = {o.name: o for o in bcli.build.params}
    fields = [f.name for f in dataclasses.fields(BuildConfig) if f.name != "semantic"]
    fields += [f"semantic_{f.name}" for f in dataclasses.fields(SemanticSettings)]
    assert all(f in opts and opts[f].help for f in fields), [f for f in fields if f not in opts or not opts[f].help]
    assert tuple(opts["sae_format"].type.choices) == tuple(SAE_FORMATS)
    seen = {}
    monkeypatch.setattr(bcli, "_build", lambda *a: seen.setdefault("config", a[-1]) and tmp_path / "x.db")
    args = [
        "build",
        "--model",
        "m",
        "--sae",
        "a",
        "--sae",
        "b",
        "-o",
        str(tmp_path / "x.db"),
        "--passes",
        "du,qk",
        "--top-k",
        "7",
        "--no-fold-norms",
        "--predicts-z",
        "3.5",
        "--store-percentile",
        "90",
        "--qk-cap",
        "2",
        "--qk-exclude-self",
        "--qk-pair",
        "A:B",
        "--qk-pair",
        "B:A",
        "--ov-target",
        "z",
        "--cache-mb",
        "0",
        "--block-rows",
        "none",
        "--vocab-tile",
        "64",
        "--key-block",
        "32",
        "--semantic-n-tokens",
        "6",
        "--semantic-min-embed-z",
        "1.5",
        "--sae-name",
        "A",
        "--device",
        "cpu+fp32",
    ]
    r = run(args)
    assert r.exit_code == 0, r.output
    want = BuildConfig(
        passes=("du", "qk"),
        top_k=7,
        fold_norms=False,
        predicts_z=3.5,
        store_percentile=90.0,
        qk_cap=2,
        qk_exclude_self=True,
        qk_pairs=(("A", "B"), ("B", "A")),
        ov_target="z",
        cache_mb=0.0,
        block_rows=None,
        vocab_tile=64,
        key_block=32,
        semantic=SemanticSettings(n_tokens=6, min_embed_z=1.5),
        sae_names=("A",),
        device="cpu+fp32",
    )
    assert seen["config"] == want


@pytest.mark.parametrize(
    ("pair", "why"),
    [
        ("L0.res:L0.res_pre", "no path from L0.res (writes blocks.0.hook_resid_post) to L0.res_pre"),
        ("L0.res_pre:L1.z", "L1.z reads blocks.1.attn.hook_z, a sublayer's output, not the residual stream"),
        ("L0.res_pre:L9.res", "virtual pair names a dictionary not in this build: L9.res"),
        ("L0.res_pre", "'L0.res_pre': use SOURCE:DEST"),
    ],
)
def test_cli_refuses_a_virtual_pair_without_a_path_in_one_line(files, tmp_path, pair, why):
    out = tmp_path / "v.db"
    args = ["build", "--model", str(files / "model"), "-o", str(out), "--passes", "virtual", "--virtual-pair", pair,
            "--device", "cpu", "--no-progress"]  # fmt: skip
    for name in ("res0", "res1", "z1"):
        args += ["--sae", str(files / name)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0 and why in r.output, r.output
    if "SOURCE:DEST" not in why:  # a usage error shows click's usage line too
        assert r.output.strip().count("\n") == 0, r.output
    assert not list(tmp_path.glob("v.db*"))
