"""Every SAE format, written in its real on-disk layout, read back exactly; encode/decode against
each format's own formula; bad files refused with one line naming the file."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from builders.errors import CorruptWeights, LoadError, SAEMismatch, UnknownSAEFormat
from builders.hashing import sha256_file
from builders.models import from_hf_model
from builders.saes import check_sae_fits, detect_format, load_sae
from tests.builders_fixtures import (
    tiny_model,
    write_dictionary_learning_sae,
    write_gemma_scope_sae,
    write_kissane_sae,
    write_llama_scope_sae,
    write_saelens_sae,
)

X = torch.randn(7, 32, generator=torch.Generator().manual_seed(5))  # (7, d_in) activations


def same(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- SAELens


@pytest.mark.parametrize("style", ["6.x", "old"])
@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk", "gated"])
def test_saelens_round_trip_and_encode(tmp_path, style, architecture):
    t = write_saelens_sae(tmp_path / "sae", architecture=architecture, style=style, k=5)
    sae = load_sae(str(tmp_path / "sae"))
    assert detect_format(tmp_path / "sae")[0] == "saelens"
    for name, value in t.items():
        same(getattr(sae, name), value, 0)
    assert (sae.hook_name, sae.site, sae.layer) == ("blocks.1.hook_resid_post", "resid_post", 1)
    assert sae.architecture == {"standard": "relu"}.get(architecture, architecture)
    assert sae.apply_b_dec_to_input and sae.source_format == "saelens"
    assert sae.sha256 == sha256_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert (sae.d_in, sae.d_sae) == (32, 64)

    # Direct computation, SAELens conventions.
    xc = X - t["b_dec"]
    if architecture == "gated":
        pre = xc @ t["W_enc"]
        acts = ((pre + t["b_gate"]) > 0) * torch.relu(pre * t["r_mag"].exp() + t["b_mag"])
    else:
        pre = xc @ t["W_enc"] + t["b_enc"]
        if architecture == "jumprelu":
            acts = torch.where(pre > t["threshold"], pre, 0.0)
        elif architecture == "topk":
            acts = torch.relu(pre)
            acts = acts * (acts >= acts.topk(5, dim=-1).values[:, -1:])
        else:
            acts = torch.relu(pre)
    got = sae.encode(X)
    same(got, acts, 1e-5)
    if architecture == "topk":
        assert sae.k == 5 and ((got > 0).sum(-1) <= 5).all()
    same(sae.decode(got), acts @ t["W_dec"] + t["b_dec"], 1e-5)


def test_saelens_5x_style_config(tmp_path):
    """The 4.x/5.x flat config: hook_name + hook_layer + activation_fn, topk k in activation_fn_kwargs,
    log_threshold for JumpReLU, and a finetuning scaling_factor folded into W_dec."""
    from safetensors.torch import save_file

    t = write_saelens_sae(tmp_path / "s", architecture="standard", style="old")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    for old in ("hook_point", "hook_point_layer", "activation_fn_str"):
        cfg.pop(old)
    cfg.update(hook_name="blocks.0.hook_resid_pre", hook_layer=0, activation_fn="topk", activation_fn_kwargs={"k": 3})
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path / "s")
    assert (sae.hook_name, sae.architecture, sae.k, sae.meta["config_style"]) == (
        "blocks.0.hook_resid_pre",
        "topk",
        3,
        "pre-6",
    )

    cfg.update(architecture="jumprelu", activation_fn="relu", activation_fn_kwargs={}, finetuning_scaling_factor=True)
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    threshold = torch.rand(64)
    scaling = 1 + torch.rand(64)
    save_file(
        {**t, "log_threshold": threshold.log(), "scaling_factor": scaling},
        str(tmp_path / "s" / "sae_weights.safetensors"),
    )
    sae = load_sae(tmp_path / "s")
    same(sae.threshold, threshold, 1e-6)
    same(sae.W_dec, t["W_dec"] * scaling[:, None], 1e-6)
    assert sae.meta["folded_finetuning_scaling_factor"]


def test_saelens_hook_z_and_file_paths(tmp_path):
    write_saelens_sae(tmp_path / "z", d_in=64, hook_name="blocks.0.attn.hook_z", apply_b_dec_to_input=False)
    for p in (tmp_path / "z", tmp_path / "z" / "cfg.json", tmp_path / "z" / "sae_weights.safetensors"):
        sae = load_sae(p)
        assert (sae.site, sae.layer, sae.d_in, sae.apply_b_dec_to_input) == ("attn_z", 0, 64, False)
    cfg = json.loads((tmp_path / "z" / "cfg.json").read_text())
    assert cfg["reshape_activations"] == "hook_z"
    assert load_sae(tmp_path / "z").neuronpedia_id == "tiny/1-res"


def test_saelens_overrides_and_unknown_hook(tmp_path):
    write_saelens_sae(tmp_path / "s")
    assert load_sae(tmp_path / "s", layer=0).hook_name == "blocks.0.hook_resid_post"
    assert load_sae(tmp_path / "s", site="resid_pre").hook_name == "blocks.1.hook_resid_pre"
    assert load_sae(tmp_path / "s", hook_name="blocks.1.hook_mlp_out").site == "mlp_out"
    with pytest.raises(SAEMismatch, match="unknown hook") as e:
        load_sae(tmp_path / "s", hook_name="blocks.1.ln2.hook_scale")
    assert "sae_weights.safetensors" in one_line(e)
    # a hook transcoders read, but not a site the atlas stores SAEs at
    with pytest.raises(SAEMismatch, match="an SAE on blocks.1.ln2.hook_normalized; sae-atlas reads SAEs at") as e:
        load_sae(tmp_path / "s", hook_name="blocks.1.ln2.hook_normalized")


# ------------------------------------------------------------------------- Gemma Scope


@pytest.mark.parametrize(
    "release,site,hook",
    [
        ("gemma-scope-2b-pt-res", "resid_post", "blocks.3.hook_resid_post"),
        ("gemma-scope-2b-pt-att", "attn_z", "blocks.3.attn.hook_z"),
        ("gemma-scope-9b-it-mlp-canonical", "mlp_out", "blocks.3.hook_mlp_out"),
    ],
)
def test_gemma_scope_from_path(tmp_path, release, site, hook):
    path, t = write_gemma_scope_sae(tmp_path, release=release, layer=3, width="16k", l0=82)
    for p in (path, path.parent):
        sae = load_sae(p)
        assert (sae.site, sae.layer, sae.hook_name, sae.architecture) == (site, 3, hook, "jumprelu")
    assert sae.release == release and sae.sae_ref == "layer_3/width_16k/average_l0_82"
    assert sae.meta["average_l0"] == 82 and not sae.apply_b_dec_to_input
    for name, value in t.items():
        same(getattr(sae, name), value, 0)
    # The Gemma Scope tutorial's JumpReLU: mask * relu(pre), no b_dec subtraction.
    pre = X @ t["W_enc"] + t["b_enc"]
    acts = (pre > t["threshold"]) * torch.relu(pre)
    same(sae.encode(X), acts, 1e-5)
    same(sae.decode(acts), acts @ t["W_dec"] + t["b_dec"], 1e-5)
    assert sae.sha256 == sha256_file(path)


def test_gemma_scope_needs_site_when_path_is_silent(tmp_path):
    path = tmp_path / "params.npz"
    t = {k: v.numpy() for k, v in write_gemma_scope_sae(tmp_path / "x")[1].items()}
    np.savez(path, **t)
    with pytest.raises(LoadError, match="layer and site") as e:
        load_sae(path)
    assert str(path) in one_line(e)
    assert load_sae(path, layer=2, site="resid_post").hook_name == "blocks.2.hook_resid_post"
    # HF cache layout: the release is in the models--google--... folder name
    cache = tmp_path / "models--google--gemma-scope-2b-pt-mlp" / "snapshots" / "abc"
    path2, _ = write_gemma_scope_sae(cache, release="", layer=4)
    assert load_sae(path2).hook_name == "blocks.4.hook_mlp_out"


# ------------------------------------------------------------------------- Llama Scope


@pytest.mark.parametrize("unit_decoder", [True, False])
def test_llama_scope(tmp_path, unit_decoder):
    folder, t = write_llama_scope_sae(tmp_path, d_model=32, d_sae=64, unit_decoder=unit_decoder)
    sae = load_sae(folder)
    assert detect_format(folder / "checkpoints" / "final.safetensors") == ("llama_scope", folder)
    for name, value in t.items():
        same(getattr(sae, name), value, 0)
    assert (sae.hook_name, sae.architecture, sae.source_format) == (
        "blocks.1.hook_resid_post",
        "jumprelu",
        "llama_scope",
    )
    s = math.sqrt(32) / 12.5
    assert sae.input_scale == pytest.approx(s) and not sae.apply_b_dec_to_input
    assert sae.sha256 == sha256_file(folder / "checkpoints" / "final.safetensors")

    # lm-saes inference: x scaled to norm sqrt(d_model) on average, JumpReLU gate on pre * ||W_dec_i||.
    enc_w, dec_w = t["W_enc"].T, t["W_dec"].T  # nn.Linear layouts as stored
    pre = (X * s) @ enc_w.T + t["b_enc"]
    acts = pre * (pre * dec_w.norm(dim=0) > 0.3)
    same(sae.encode(X), acts, 1e-5)
    same(sae.decode(acts), (acts @ dec_w.T + t["b_dec"]) / s, 1e-5)
    # The folded SAE (input_scale 1) is the same function.
    folded = sae.fold_input_scale()
    assert folded.input_scale == 1.0
    same(folded.encode(X), sae.encode(X), 1e-5)
    same(folded.decode(acts), sae.decode(acts), 1e-5)
    if unit_decoder:
        same(sae.threshold, torch.full((64,), 0.3), 0)


def test_llama_scope_transcoder_refused(tmp_path):
    folder, _ = write_llama_scope_sae(tmp_path, d_model=32, d_sae=64)
    hp = json.loads((folder / "hyperparams.json").read_text())
    hp["hook_point_out"] = "blocks.1.hook_mlp_out"
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(LoadError, match="transcoder"):
        load_sae(folder)


# ---------------------------------------------------------------------------- Kissane


def test_kissane_hook_z(tmp_path):
    path, t = write_kissane_sae(tmp_path, layer=1, d_in=64, d_sae=128)
    for p in (path, tmp_path):
        sae = load_sae(p)
        assert (sae.hook_name, sae.site, sae.layer, sae.source_format) == (
            "blocks.1.attn.hook_z",
            "attn_z",
            1,
            "kissane",
        )
    for name, value in t.items():
        same(getattr(sae, name), value, 0)
    x = torch.randn(4, 64)
    acts = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    same(sae.encode(x), acts, 1e-5)
    same(sae.decode(acts), acts @ t["W_dec"] + t["b_dec"], 1e-5)
    assert sae.sha256 == sha256_file(path)


# ------------------------------------------------------------------ dictionary_learning


def test_dictionary_learning(tmp_path):
    path, t = write_dictionary_learning_sae(tmp_path / "resid_post_layer_1" / "trainer_0", layer=1)
    sae = load_sae(path.parent)
    assert (sae.hook_name, sae.architecture, sae.apply_b_dec_to_input) == ("blocks.1.hook_resid_post", "relu", True)
    for name, value in t.items():
        same(getattr(sae, name), value, 0)
    enc_w, dec_w = t["W_enc"].T, t["W_dec"].T
    acts = torch.relu((X - t["b_dec"]) @ enc_w.T + t["b_enc"])  # relu(encoder(x - bias))
    same(sae.encode(X), acts, 1e-5)
    same(sae.decode(acts), acts @ dec_w.T + t["b_dec"], 1e-5)  # decoder(f) + bias

    bare, _ = write_dictionary_learning_sae(tmp_path / "bare", with_config=False)
    with pytest.raises(LoadError, match="layer and site"):
        load_sae(bare)
    assert load_sae(bare, layer=0, site="mlp_out").hook_name == "blocks.0.hook_mlp_out"


# --------------------------------------------------------------------------- refusals


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _writers(tmp_path):
    yield "saelens", lambda: (write_saelens_sae(tmp_path / "a"), tmp_path / "a" / "sae_weights.safetensors")[1]
    yield "gemma_scope", lambda: write_gemma_scope_sae(tmp_path / "b")[0]
    yield "llama_scope", lambda: write_llama_scope_sae(tmp_path / "c")[0] / "checkpoints" / "final.safetensors"
    yield "kissane", lambda: write_kissane_sae(tmp_path / "d")[0]
    yield "dictionary_learning", lambda: write_dictionary_learning_sae(tmp_path / "e")[0]


@pytest.mark.parametrize("fmt", ["saelens", "gemma_scope", "llama_scope", "kissane", "dictionary_learning"])
def test_truncated_file_refused(tmp_path, fmt):
    weight_file = dict(_writers(tmp_path))[fmt]()
    load_sae(weight_file.parent if fmt != "llama_scope" else weight_file)  # loads before the damage
    _truncate(weight_file)
    with pytest.raises(CorruptWeights) as e:
        load_sae(weight_file.parent if fmt != "llama_scope" else weight_file)
    assert str(weight_file) in one_line(e)


def test_nan_and_bad_shapes_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    t = write_saelens_sae(tmp_path / "n")
    f = tmp_path / "n" / "sae_weights.safetensors"
    t["W_dec"][3, 4] = float("nan")
    save_file(t, str(f))
    with pytest.raises(CorruptWeights, match="W_dec has NaN or inf") as e:
        load_sae(tmp_path / "n")
    assert str(f) in one_line(e)
    t["W_dec"] = torch.randn(32, 64)  # stored transposed by mistake
    save_file(t, str(f))
    with pytest.raises(CorruptWeights, match=r"W_dec is \(32, 64\), expected \(64, 32\)"):
        load_sae(tmp_path / "n")
    assert "W_dec" in load_file(str(f))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"W_enc": torch.zeros(2, 2), "extra": Path("/etc")}, path)  # not a plain tensor dict
    (tmp_path / "evil_cfg.json").write_text(json.dumps({"act_name": "blocks.0.attn.hook_z"}))
    with pytest.raises(CorruptWeights, match="unsafe") as e:
        load_sae(path)
    assert str(path) in one_line(e)


def test_unknown_layout_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownSAEFormat, match="SAELens folder"):
        load_sae(tmp_path / "empty")
    with pytest.raises(LoadError, match="no such SAE"):
        load_sae(tmp_path / "nope")
    with pytest.raises(LoadError, match="no such SAE file or folder"):
        load_sae("nothing-here")
    with pytest.raises(UnknownSAEFormat, match="unknown SAE format"):
        load_sae(tmp_path / "empty", fmt="npz-ish")


# ------------------------------------------------------------------------ fit to model


@functools.cache
def _gemma2():
    # d_model 32, n_heads * d_head = 4 * 16 = 64: hook_z and residual widths differ.
    return from_hf_model(tiny_model("gemma2"), source="tiny-gemma2", source_kind="path")


def test_check_sae_fits(tmp_path):
    model = _gemma2()
    write_saelens_sae(tmp_path / "ok", d_in=32, hook_name="blocks.1.hook_resid_post")
    check_sae_fits(load_sae(tmp_path / "ok"), model)
    path, _ = write_kissane_sae(tmp_path / "z", layer=0, d_in=64)
    check_sae_fits(load_sae(path), model)

    write_saelens_sae(tmp_path / "zbad", d_in=32, hook_name="blocks.0.attn.hook_z")
    with pytest.raises(SAEMismatch, match=r"d_in 32 .* n_heads\*d_head = 4\*16 = 64") as e:
        check_sae_fits(load_sae(tmp_path / "zbad"), model)
    assert "zbad" in one_line(e)
    write_saelens_sae(tmp_path / "wide", d_in=48)
    with pytest.raises(SAEMismatch, match="d_in 48 does not match the model's d_model = 32"):
        check_sae_fits(load_sae(tmp_path / "wide"), model)
    path, _ = write_gemma_scope_sae(tmp_path, layer=7)
    with pytest.raises(SAEMismatch, match=r"layer 7 is past the model's depth \(2 layers") as e:
        check_sae_fits(load_sae(path), model)
    assert str(path.parent) in one_line(e) or "params.npz" in one_line(e)

    neox = from_hf_model(tiny_model("neox"), source="tiny-neox", source_kind="path")
    write_saelens_sae(tmp_path / "mid", d_in=32, hook_name="blocks.0.hook_resid_mid")
    with pytest.raises(SAEMismatch, match="does not exist in GPTNeoXForCausalLM .*parallel"):
        check_sae_fits(load_sae(tmp_path / "mid"), neox)
