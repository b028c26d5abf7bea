"""The dictionary formats of 2025-26, each written in its real on-disk layout, read back exactly,
and run against that format's own forward (written here from its public definition, not from
the loader): Gemma Scope 2 (SAEs, transcoders, skip transcoders, CLTs), SAELens transcoders,
BatchTopK/Matryoshka SAEs saved as JumpReLU, circuit-tracer per-layer and cross-layer
transcoders, sparsify, Goodfire; and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from builders.errors import CorruptWeights, LoadError, SAEMismatch, UnknownSAEFormat
from builders.models import from_hf_model
from builders.sae_io import StoredTensor
from builders.saes import SAE_FORMATS, check_sae_fits, detect_format, load_sae
from tests.builders_fixtures import (
    tiny_model,
    write_circuit_tracer_clt,
    write_circuit_tracer_transcoders,
    write_dictionary_learning_batchtopk,
    write_gemma_scope_2,
    write_gemma_scope_sae,
    write_goodfire,
    write_saelens_batchtopk_as_jumprelu,
    write_saelens_transcoder,
    write_sparsify,
)

GEN = torch.Generator().manual_seed(7)
X = torch.randn(6, 32, generator=GEN)  # (6, d_in) activations


def same(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return pre * (pre > threshold)


# ------------------------------------------------------------------------ SAELens transcoders


@pytest.mark.parametrize(
    "architecture", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]
)
def test_saelens_transcoders(tmp_path, architecture):
    t = write_saelens_transcoder(tmp_path / "tc", d_in=32, d_out=40, architecture=architecture)
    tc = load_sae(tmp_path / "tc")
    assert detect_format(tmp_path / "tc")[0] == "saelens"
    assert (tc.kind, tc.hook_name, tc.site, tc.out_hook_name) == (
        "transcoder",
        "blocks.1.mlp.hook_in",
        "mlp_in",
        "blocks.1.hook_mlp_out",
    )
    assert (tc.d_in, tc.d_sae, tc.d_out, tc.write_hooks, tc.write_layers) == (
        32,
        64,
        40,
        ("blocks.1.hook_mlp_out",),
        (1,),
    )
    assert not tc.apply_b_dec_to_input and tc.out_site == "mlp_out"
    same(tc.W_enc, t["W_enc"], 0)
    same(tc.W_dec, t["W_dec"], 0)
    # SAELens: encode reads x as is (no b_dec: it has the output's width); skip adds x @ W_skip.T
    pre = X @ t["W_enc"] + t["b_enc"]
    acts = jumprelu(pre, t["threshold"]) if "jumprelu" in architecture else torch.relu(pre)
    same(tc.encode(X), acts)
    want = acts @ t["W_dec"] + t["b_dec"] + (X @ t["W_skip"].T if "skip" in architecture else 0)
    same(tc.forward(X), want)
    if "skip" in architecture:
        same(tc.W_skip, t["W_skip"].T, 0)


def test_saelens_batchtopk_and_matryoshka_saved_as_jumprelu(tmp_path):
    t = write_saelens_batchtopk_as_jumprelu(tmp_path / "b", threshold=0.07)
    sae = load_sae(tmp_path / "b")
    assert (sae.architecture, sae.kind, sae.apply_b_dec_to_input) == ("jumprelu", "sae", True)
    pre = (X - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    same(sae.encode(X), jumprelu(pre, torch.tensor(0.07)))
    same(sae.threshold, torch.full((64,), 0.07), 0)


@pytest.mark.parametrize("matryoshka", [False, True])
def test_dictionary_learning_batchtopk_and_matryoshka(tmp_path, matryoshka):
    """dictionary_learning's BatchTopKSAE / MatryoshkaBatchTopKSAE run, by default, as JumpReLU with
    the learned global threshold: relu(encode(x - b_dec)) * (> threshold)."""
    path, t = write_dictionary_learning_batchtopk(tmp_path / "dl", matryoshka=matryoshka, threshold=0.07)
    sae = load_sae(path.parent)
    assert (sae.architecture, sae.apply_b_dec_to_input, sae.hook_name) == ("jumprelu", True, "blocks.1.hook_resid_post")
    post_relu = torch.relu((X - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    same(sae.encode(X), post_relu * (post_relu > 0.07))
    same(sae.decode(sae.encode(X)), sae.encode(X) @ t["W_dec"] + t["b_dec"])
    # a threshold never learned (-1): the top-k it was trained with
    state = torch.load(path, weights_only=True)
    state["threshold"] = torch.tensor(-1.0)
    torch.save(state, path)
    sae = load_sae(path.parent)
    assert (sae.architecture, sae.k) == ("topk", 8)


# ------------------------------------------------------------------------ Gemma Scope 2


@pytest.mark.parametrize("kind,hook,out_hook", [
    ("resid_post", "blocks.1.hook_resid_post", None),
    ("mlp_out", "blocks.1.hook_mlp_out", None),
    ("attn_out", "blocks.1.attn.hook_z", None),
    ("transcoder", "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"),
])  # fmt: skip
@pytest.mark.parametrize("all_layers", [False, True])
@pytest.mark.parametrize("with_config", [True, False])
def test_gemma_scope_2_single_layer(tmp_path, kind, hook, out_hook, all_layers, with_config):
    affine = kind == "transcoder"
    folder, t = write_gemma_scope_2(tmp_path, kind=kind, all_layers=all_layers, affine=affine, with_config=with_config)
    for p in (folder, folder / "params.safetensors", folder / "config.json"):
        if p.exists():
            assert detect_format(p)[0] == "gemma_scope_2"
    d = load_sae(folder)
    assert (d.hook_name, d.out_hook_name, d.kind) == (hook, out_hook, "transcoder" if out_hook else "sae")
    assert d.sae_ref == f"{kind}{'_all' if all_layers else ''}/layer_1_width_16k_l0_big{'_affine' if affine else ''}"
    assert (d.architecture, d.apply_b_dec_to_input, d.source_format) == ("jumprelu", False, "gemma_scope_2")
    same(d.W_enc, t["w_enc"], 0)
    same(d.W_dec, t["w_dec"], 0)
    # Gemma Scope 2's JumpReLUSAE: mask * relu(pre); recon + x @ affine_skip_connection
    pre = X @ t["w_enc"] + t["b_enc"]
    acts = (pre > t["threshold"]) * torch.relu(pre)
    same(d.encode(X), acts)
    want = acts @ t["w_dec"] + t["b_dec"] + (X @ t["affine_skip_connection"] if affine else 0)
    same(d.forward(X), want)


def test_gemma_scope_2_wide_and_1m_names(tmp_path):
    folder, _ = write_gemma_scope_2(tmp_path, kind="resid_post", width="1m", l0="medium", d_sae=96)
    d = load_sae(folder)
    assert d.meta["width"] == "1m" and d.d_sae == 96 and d.sae_ref.endswith("layer_1_width_1m_l0_medium")


@pytest.mark.parametrize("layer", [0, 2])
def test_gemma_scope_2_clt(tmp_path, layer):
    folder, t = write_gemma_scope_2(tmp_path, kind="clt", layer=layer, n_layers=4, d_sae=24)
    d = load_sae(folder)
    assert (d.kind, d.hook_name, d.out_hook_name) == (
        "clt",
        f"blocks.{layer}.mlp.hook_in",
        f"blocks.{layer}.hook_mlp_out",
    )
    assert d.write_layers == tuple(range(layer, 4))
    assert d.write_hooks == tuple(f"blocks.{i}.hook_mlp_out" for i in range(layer, 4))
    assert isinstance(d.W_dec_layers, StoredTensor)  # left in its file
    per_layer = t["w_dec"][:, layer:]  # (d_sae, n_out, d_in)
    same(d.decoder_layers(), per_layer, 0)
    same(d.decoder_layers(5, 9), per_layer[5:9], 0)
    same(d.W_dec, per_layer.sum(1))  # the direct effect: the sum of its decoders
    acts = d.encode(X)
    pre = X @ t["w_enc"] + t["b_enc"]
    same(acts, (pre > t["threshold"]) * torch.relu(pre))
    # what it writes at each output layer
    per_out = torch.einsum("bf,fld->bld", acts, d.decoder_layers())
    same(per_out, torch.einsum("bf,fld->bld", acts, per_layer))


def test_gemma_scope_2_refusals(tmp_path):
    folder, _ = write_gemma_scope_2(tmp_path / "a", kind="resid_post")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "width": 16384}))
    with pytest.raises(CorruptWeights, match=r"width 16384 but w_enc is \(32, 64\)") as e:
        load_sae(folder)
    assert "config.json" in one_line(e)
    (folder / "config.json").write_text(json.dumps({**cfg, "hf_hook_point_in": "model.layers.3.output"}))
    with pytest.raises(CorruptWeights, match="at layer 3, the folder says layer 1"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "hf_hook_point_in": "model.layers.1.mlp.down_proj.output"}))
    with pytest.raises(LoadError, match="hook point 'model.layers.1.mlp.down_proj.output' is not one sae-atlas reads"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "architecture": "topk"}))
    with pytest.raises(LoadError, match="jump_relu"):
        load_sae(folder)
    # a crosscoder reads several layers: refused by name
    cc = tmp_path / "b" / "crosscoder" / "layer_1_5_7_width_16k_l0_medium"
    cc.mkdir(parents=True)
    (cc / "params.safetensors").write_bytes((folder / "params.safetensors").read_bytes())
    with pytest.raises(LoadError, match="crosscoder reads several layers"):
        load_sae(cc)
    # affine_connection promised but absent
    f2, _ = write_gemma_scope_2(tmp_path / "c", kind="transcoder")
    cfg2 = json.loads((f2 / "config.json").read_text())
    (f2 / "config.json").write_text(json.dumps({**cfg2, "affine_connection": True}))
    with pytest.raises(CorruptWeights, match="no affine_skip_connection"):
        load_sae(f2)


# ------------------------------------------------------------------------ Gemma Scope 1 transcoders


def test_gemma_scope_1_transcoder(tmp_path):
    path, t = write_gemma_scope_sae(tmp_path, release="gemma-scope-2b-pt-transcoders", layer=1, l0=76)
    tc = load_sae(path.parent)
    assert (tc.kind, tc.hook_name, tc.site, tc.out_hook_name) == (
        "transcoder", "blocks.1.ln2.hook_normalized", "ln2_normalized", "blocks.1.hook_mlp_out")  # fmt: skip
    pre = X @ t["W_enc"] + t["b_enc"]
    acts = (pre > t["threshold"]) * torch.relu(pre)
    same(tc.forward(X), acts @ t["W_dec"] + t["b_dec"])


# ------------------------------------------------------------------------ circuit-tracer


@pytest.mark.parametrize("activation,skip", [("jump_relu", False), ("relu", True)])
def test_circuit_tracer_per_layer(tmp_path, activation, skip):
    ts = write_circuit_tracer_transcoders(tmp_path / "ct", n_layers=2, activation=activation, skip=skip)
    for layer, t in enumerate(ts):
        tc = load_sae(tmp_path / "ct" / f"layer_{layer}.safetensors")
        assert tc.source_format == "circuit_tracer" and tc.kind == "transcoder"
        assert (tc.hook_name, tc.out_hook_name) == (f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out")
        assert tc.architecture == ("jumprelu" if activation == "jump_relu" else "relu")
        same(tc.W_enc, t["W_enc"].T, 0)
        # circuit-tracer: F.linear(x, W_enc, b_enc); JumpReLU (x > threshold) * x; decode + x @ W_skip.T
        pre = torch.nn.functional.linear(X, t["W_enc"], t["b_enc"])
        acts = jumprelu(pre, t["activation_function.threshold"]) if activation == "jump_relu" else torch.relu(pre)
        same(tc.encode(X), acts)
        same(tc.forward(X), acts @ t["W_dec"] + t["b_dec"] + (X @ t["W_skip"].T if skip else 0))
    # a folder of per-layer files: name one layer (or pass layer=)
    with pytest.raises(LoadError, match=r"transcoders for layers 0\.\.1: name one") as e:
        load_sae(tmp_path / "ct")
    assert "layer_0.safetensors" in one_line(e)
    assert load_sae(tmp_path / "ct", layer=1).hook_name == "blocks.1.mlp.hook_in"


def test_circuit_tracer_needs_its_hooks(tmp_path):
    write_circuit_tracer_transcoders(tmp_path / "ct", n_layers=1, config={})
    with pytest.raises(LoadError, match="no config.yaml says which hooks") as e:
        load_sae(tmp_path / "ct" / "layer_0.safetensors")
    assert "layer_0.safetensors" in one_line(e)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_circuit_tracer_clt(tmp_path, layer):
    ts = write_circuit_tracer_clt(tmp_path / "clt", n_layers=3, d_sae=16)
    t = ts[layer]
    for p in (tmp_path / "clt" / f"W_enc_{layer}.safetensors", tmp_path / "clt" / f"W_dec_{layer}.safetensors"):
        d = load_sae(p)
        assert (d.kind, d.source_format, d.hook_name) == ("clt", "circuit_tracer_clt", f"blocks.{layer}.hook_resid_mid")
        assert d.write_layers == tuple(range(layer, 3)) and d.site == "resid_mid"
    assert load_sae(tmp_path / "clt", layer=layer).write_layers == tuple(range(layer, 3))
    W_dec = t[f"W_dec_{layer}"]  # (d_sae, 3 - layer, d_model)
    same(d.decoder_layers(), W_dec, 0)
    same(d.W_dec, W_dec.sum(1))
    # circuit-tracer: einsum(x, W_enc) + b_enc, then features * (features > threshold)
    pre = X @ t[f"W_enc_{layer}"].T + t[f"b_enc_{layer}"]
    same(d.encode(X), jumprelu(pre, t[f"threshold_{layer}"]))
    with pytest.raises(LoadError, match=r"a cross-layer transcoder \(layers 0\.\.2\): name one layer"):
        load_sae(tmp_path / "clt")


def test_circuit_tracer_clt_default_hooks(tmp_path):
    """Without config.yaml, circuit-tracer's own defaults: hook_resid_mid -> hook_mlp_out."""
    write_circuit_tracer_clt(tmp_path / "clt", n_layers=2, feature_input_hook=None, jump_relu=False)
    d = load_sae(tmp_path / "clt" / "W_enc_1.safetensors")
    assert (d.hook_name, d.write_hooks, d.architecture) == (
        "blocks.1.hook_resid_mid",
        ("blocks.1.hook_mlp_out",),
        "relu",
    )


# ------------------------------------------------------------------------ sparsify


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, False), (True, True)])
def test_sparsify(tmp_path, transcode, skip):
    hookpoint = "layers.1.mlp" if transcode else "layers.1"
    folder, t = write_sparsify(tmp_path / "sp", hookpoint=hookpoint, k=6, transcode=transcode, skip=skip)
    for p in (folder, folder / "cfg.json", folder / "sae.safetensors"):
        assert detect_format(p) == ("sparsify", folder)
    d = load_sae(folder)
    assert (d.architecture, d.k, d.apply_b_dec_to_input) == ("topk", 6, not transcode)
    if transcode:
        assert (d.kind, d.hook_name, d.out_hook_name) == ("transcoder", "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out")
    else:
        assert (d.kind, d.hook_name) == ("sae", "blocks.1.hook_resid_post")
    # sparsify: x - b_dec unless transcode; relu(encoder(x)); top-k; W_dec rows; + x @ W_skip.mT
    x_in = X if transcode else X - t["b_dec"]
    pre = torch.relu(x_in @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(6, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals)
    same(d.encode(X), acts)
    same(d.forward(X), acts @ t["W_dec"] + t["b_dec"] + (X @ t["W_skip"].mT if skip else 0))


def test_sparsify_refusals(tmp_path):
    folder, _ = write_sparsify(tmp_path / "sp", hookpoint="layers.1.self_attn")
    with pytest.raises(LoadError, match="hookpoint 'layers.1.self_attn' is not one sae-atlas reads"):
        load_sae(folder)
    folder, _ = write_sparsify(tmp_path / "sp2", hookpoint="layers.0")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "num_latents": 128}))
    with pytest.raises(CorruptWeights, match=r"config says d_sae=128") as e:
        load_sae(folder)
    assert "sae.safetensors" in one_line(e)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(LoadError, match="groupmax"):
        load_sae(folder)


# ------------------------------------------------------------------------ Goodfire


def test_goodfire(tmp_path):
    path, t = write_goodfire(tmp_path / "gf", name="Llama-3.1-8B-Instruct-SAE-l19.pth")
    assert detect_format(path) == ("goodfire", path) and detect_format(path.parent) == ("goodfire", path)
    d = load_sae(path)
    assert (d.hook_name, d.architecture, d.apply_b_dec_to_input) == ("blocks.19.hook_resid_post", "relu", False)
    # Goodfire's SAE: relu(encoder_linear(x)); decoder_linear(f)
    acts = torch.relu(X @ t["encoder_linear.weight"].T + t["encoder_linear.bias"])
    same(d.encode(X), acts)
    same(d.decode(acts), acts @ t["decoder_linear.weight"].T + t["decoder_linear.bias"])


def test_pth_that_is_not_a_plain_state_dict(tmp_path):
    path = tmp_path / "Llama-SAE-l3.pth"
    torch.save(torch.nn.Linear(4, 8), path)  # a pickled module: weights_only refuses it
    with pytest.raises(CorruptWeights, match="unsafe") as e:
        load_sae(path)
    assert str(path) in one_line(e)
    torch.save({"encoder_linear.weight": torch.zeros(8, 4), "cfg": {"layer": 3}}, path)  # tensors and a dict
    with pytest.raises(CorruptWeights, match="not a plain state dict of tensors") as e:
        load_sae(path)
    assert str(path) in one_line(e)


# ------------------------------------------------------------------------ refusals shared by all


def test_unrecognised_files_name_the_formats(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnknownSAEFormat, match="no known dictionary format; expected a SAELens folder") as e:
        load_sae(tmp_path / "model.safetensors")
    msg = one_line(e)
    assert "Gemma Scope 2" in msg and "circuit-tracer" in msg and "sparsify" in msg and "Goodfire" in msg
    with pytest.raises(UnknownSAEFormat, match="formats: saelens, gemma_scope, .*goodfire"):
        load_sae(tmp_path / "model.safetensors", fmt="sae-lens-ish")
    assert set(SAE_FORMATS) >= {"gemma_scope_2", "circuit_tracer", "circuit_tracer_clt", "sparsify", "goodfire"}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize(
    "fmt", ["gemma_scope_2", "circuit_tracer", "circuit_tracer_clt", "sparsify", "saelens_transcoder"]
)
def test_truncated_new_formats(tmp_path, fmt):
    if fmt == "gemma_scope_2":
        folder, _ = write_gemma_scope_2(tmp_path, kind="transcoder")
        src, wfile = folder, folder / "params.safetensors"
    elif fmt == "circuit_tracer":
        write_circuit_tracer_transcoders(tmp_path / "ct", n_layers=1)
        src = wfile = tmp_path / "ct" / "layer_0.safetensors"
    elif fmt == "circuit_tracer_clt":
        write_circuit_tracer_clt(tmp_path / "clt", n_layers=2)
        src, wfile = tmp_path / "clt" / "W_enc_0.safetensors", tmp_path / "clt" / "W_dec_0.safetensors"
    elif fmt == "sparsify":
        folder, _ = write_sparsify(tmp_path / "sp")
        src, wfile = folder, folder / "sae.safetensors"
    else:
        write_saelens_transcoder(tmp_path / "tc")
        src, wfile = tmp_path / "tc", tmp_path / "tc" / "sae_weights.safetensors"
    load_sae(src)
    _truncate(wfile)
    with pytest.raises(CorruptWeights, match="truncated") as e:
        load_sae(src)
    assert str(wfile) in one_line(e)


def test_nan_in_a_transcoder_is_refused(tmp_path):
    from safetensors.torch import save_file

    t = write_saelens_transcoder(tmp_path / "tc", architecture="skip_transcoder")
    t["W_skip"][2, 3] = float("inf")
    save_file(t, str(tmp_path / "tc" / "sae_weights.safetensors"))
    with pytest.raises(CorruptWeights, match="W_skip has NaN or inf"):
        load_sae(tmp_path / "tc")


# ------------------------------------------------------------------------ fit to a model


def test_transcoders_fit_the_model(tmp_path):
    gemma2 = from_hf_model(tiny_model("gemma2"), source="tiny-gemma2", source_kind="path")  # 2 layers, d_model 32
    llama = from_hf_model(tiny_model("llama"), source="tiny-llama", source_kind="path")  # d_model 48
    folder, _ = write_gemma_scope_2(tmp_path / "gs2", kind="transcoder", affine=True)
    check_sae_fits(load_sae(folder), gemma2)
    folder, _ = write_gemma_scope_2(tmp_path / "clt", kind="clt", layer=0, n_layers=2)
    check_sae_fits(load_sae(folder), gemma2)

    write_saelens_transcoder(tmp_path / "wide", d_out=40)
    with pytest.raises(SAEMismatch, match="d_out 40 does not match the model's width 32 at blocks.1.hook_mlp_out") as e:
        check_sae_fits(load_sae(tmp_path / "wide"), gemma2)
    assert "wide" in one_line(e)
    write_saelens_transcoder(tmp_path / "deep", hook_name="blocks.1.mlp.hook_in", hook_name_out="blocks.5.hook_mlp_out")
    with pytest.raises(
        SAEMismatch, match=r"layer 5 is past the model's depth \(2 layers: 0\.\.1\); it writes blocks.5"
    ):
        check_sae_fits(load_sae(tmp_path / "deep"), gemma2)
    # circuit-tracer's mlp.hook_out is hook_mlp_out on Llama, not on Gemma (post-feedforward norm)
    write_circuit_tracer_transcoders(tmp_path / "ct", n_layers=2, d_model=48)
    check_sae_fits(load_sae(tmp_path / "ct" / "layer_1.safetensors"), llama)
    write_circuit_tracer_transcoders(tmp_path / "ct32", n_layers=2, d_model=32)
    with pytest.raises(
        SAEMismatch,
        match="writes blocks.1.mlp.hook_out, the MLP's output before Gemma2ForCausalLM's post-feedforward norm",
    ):
        check_sae_fits(load_sae(tmp_path / "ct32" / "layer_1.safetensors"), gemma2)
    # a CLT made for a deeper model
    write_circuit_tracer_clt(tmp_path / "clt3", n_layers=3)
    with pytest.raises(
        SAEMismatch, match=r"writing layers 1\.\.2; this model's last layer is 1|past the model's depth"
    ):
        check_sae_fits(load_sae(tmp_path / "clt3" / "W_enc_1.safetensors"), gemma2)
    # a transcoder reading resid_mid of a parallel-attention model (no such hook)
    neox = from_hf_model(tiny_model("neox"), source="tiny-neox", source_kind="path")
    write_saelens_transcoder(
        tmp_path / "mid", hook_name="blocks.0.hook_resid_mid", hook_name_out="blocks.0.hook_mlp_out"
    )
    with pytest.raises(SAEMismatch, match="blocks.0.hook_resid_mid does not exist in GPTNeoXForCausalLM"):
        check_sae_fits(load_sae(tmp_path / "mid"), neox)


def test_transcoders_are_stored_in_an_atlas(tmp_path):
    from click.testing import CliRunner

    from atlas.cli import cli

    write_saelens_transcoder(tmp_path / "tc", d_in=48, d_out=48)
    tc = load_sae(tmp_path / "tc")
    row = tc.atlas_sae_fields(1)
    assert (row["sae_kind"], row["out_hook_name"], row["out_site"], row["d_out"]) == (
        "transcoder", "blocks.1.hook_mlp_out", "mlp_out", 48,
    )  # fmt: skip
    llama = from_hf_model(tiny_model("llama"), source="tiny-llama", source_kind="path")
    check_sae_fits(tc, llama)
    # through the CLI: an atlas whose dictionary says what it is
    tiny_model("llama").save_pretrained(tmp_path / "model")
    out = tmp_path / "out.db"
    r = CliRunner().invoke(cli, ["build", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "tc"), "-o", str(out),
                                 "--device", "cpu", "--no-progress", "--passes", "du,ee", "--no-tokenizer"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["--db", str(out), "show", "L1.tc/0"])
    assert r.exit_code == 0 and "transcoder -> blocks.1.hook_mlp_out" in r.output, r.output
