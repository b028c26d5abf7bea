"""The TopK SAE trainer (builders.train): learns, folds its input scale, writes SAELens folders.

All on the CPU in a few seconds: synthetic sparse data with a known dictionary,
and a tiny random Llama for the activation hooks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builders import train
from builders.train import TrainConfig, TrainError

D_IN, N_TRUE, ACTIVE = 32, 64, 3


def sparse_data(n: int, seed: int, scale: float = 100.0) -> torch.Tensor:
    """Tokens that are sums of ACTIVE of N_TRUE unit directions, plus an offset and a little noise.

    ``scale`` makes raw norms far from sqrt(d_in), so that a trainer that forgot
    to fold its input scale back would fail the raw-space checks.
    """
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(N_TRUE, D_IN, generator=torch.Generator().manual_seed(1234))  # same dictionary every call
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    idx = torch.stack([torch.randperm(N_TRUE, generator=g)[:ACTIVE] for _ in range(n)])  # (n, ACTIVE)
    coef = torch.rand(n, ACTIVE, generator=g) + 0.5  # (n, ACTIVE)
    x = (coef[..., None] * dirs[idx]).sum(1)  # (n, D_IN)
    offset = torch.linspace(-1, 1, D_IN)
    return scale * (x + offset + 0.01 * torch.randn(n, D_IN, generator=g))


CFG = TrainConfig(d_sae=128, k=4, lr=3e-3, batch_size=256, steps=400, warmup_steps=20, aux_k=16,
                  dead_after_tokens=256 * 20, seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> tuple[dict[str, torch.Tensor], dict]:
    torch.set_num_threads(1)
    return train.train_sae(sparse_data(8192, seed=0), CFG, log_every=100)


def test_fve_rises_and_l0_is_k(trained):
    weights, record = trained
    held_out = sparse_data(2048, seed=1)
    ev = train.evaluate_sae(weights, held_out, CFG.k)
    assert ev["fve"] > 0.9, ev
    assert ev["l0"] == pytest.approx(CFG.k), ev  # TopK: every token uses exactly k latents
    assert ev["dead_fraction"] < 0.5, ev
    # the same SAE at initialisation (decoder rows random, W_enc = W_dec.T) explains much less
    init = train.TopKSAE(D_IN, CFG.d_sae, CFG.k, torch.Generator().manual_seed(0))
    w0 = init.weights()
    w0["b_dec"] = held_out.mean(0)
    assert train.evaluate_sae(w0, held_out, CFG.k)["fve"] < ev["fve"] - 0.3
    log = record["log"]
    assert log[-1]["fve_train_batch"] > log[0]["fve_train_batch"]
    mean_norm = float(sparse_data(8192, seed=0).norm(dim=-1).mean())
    assert record["input_scale_while_training"] == pytest.approx(np.sqrt(D_IN) / mean_norm, rel=1e-4)


def test_decoder_rows_unit_norm_and_raw_space(trained):
    weights, _ = trained
    assert torch.allclose(weights["W_dec"].norm(dim=-1), torch.ones(CFG.d_sae), atol=1e-4)
    x = sparse_data(64, seed=2)
    # raw-space SAE: reconstruction has the data's scale, not the training scale
    x_hat = train.decode(weights, train.encode(weights, x, CFG.k))
    assert (x - x_hat).norm() < 0.5 * (x - x.mean(0)).norm()


def test_folder_round_trip(trained, tmp_path):
    weights, _ = trained
    cfg = train.saelens_cfg("blocks.3.hook_resid_post", D_IN, CFG.d_sae, CFG.k, model_name="toy", context_size=8,
                            metadata={"eval": {"fve": 0.9}})  # fmt: skip
    folder = train.save_saelens_folder(tmp_path / "sae", weights, cfg, dtype=torch.float32)
    on_disk = json.loads((folder / "cfg.json").read_text())
    assert on_disk["architecture"] == "topk" and on_disk["k"] == CFG.k
    assert on_disk["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert on_disk["reshape_activations"] == "none" and on_disk["apply_b_dec_to_input"] is True

    from safetensors.torch import load_file

    tensors = load_file(str(folder / "sae_weights.safetensors"))
    assert {n: tuple(t.shape) for n, t in tensors.items()} == {
        "W_enc": (D_IN, CFG.d_sae), "W_dec": (CFG.d_sae, D_IN), "b_enc": (CFG.d_sae,), "b_dec": (D_IN,),
    }  # fmt: skip
    x = sparse_data(32, seed=3)
    a = train.encode(weights, x, CFG.k)
    try:
        from builders.saes import load_sae  # the project's SAELens loader, when present
    except ImportError:
        loaded, _ = train.load_saelens_folder(folder)
        a2 = train.encode(loaded, x, CFG.k)
        x2 = train.decode(loaded, a2)
    else:
        sae = load_sae(str(folder))
        assert sae.architecture == "topk" and sae.k == CFG.k and sae.hook_name == "blocks.3.hook_resid_post"
        a2, x2 = sae.encode(x), None
        x2 = sae.decode(a2)
    assert torch.allclose(a, a2, atol=1e-3)
    assert torch.allclose(train.decode(weights, a), x2, atol=1e-3)


def test_packed_unpack_hook_z(trained, tmp_path):
    weights, _ = trained
    cfg = train.saelens_cfg("blocks.1.attn.hook_z", D_IN, CFG.d_sae, CFG.k, model_name="toy", context_size=8)
    train.save_packed(tmp_path / "p.safetensors", weights, cfg)
    folder = train.unpack(tmp_path / "p.safetensors", tmp_path / "z", extra_metadata={"note": "x"})
    loaded, cfg2 = train.load_saelens_folder(folder)
    assert cfg2["reshape_activations"] == "hook_z" and cfg2["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert cfg2["metadata"]["note"] == "x"
    assert torch.allclose(loaded["W_dec"], weights["W_dec"], atol=1e-3)  # float16 on disk
    assert train.short_name("blocks.1.attn.hook_z") == "layer_1_hook_z"


def test_bad_input():
    with pytest.raises(TrainError):
        train.parse_hook("blocks.1.hook_mlp_out")
    with pytest.raises(TrainError):
        train.train_sae(torch.zeros(10, 4), CFG)  # fewer tokens than one batch
    with pytest.raises(TrainError):
        train.save_saelens_folder(
            "/tmp/never", {"W_enc": torch.zeros(3, 3)}, {"d_in": 3, "d_sae": 3}, dtype=torch.float32
        )


def test_drop_massive():
    g = torch.Generator().manual_seed(0)
    acts = {"blocks.0.hook_resid_post": torch.randn(100, 8, generator=g), "blocks.0.attn.hook_z": torch.randn(100, 8)}
    acts["blocks.0.hook_resid_post"][7] *= 1000
    kept, n = train.drop_massive(dict(acts), 20.0)
    assert n == 1 and len(kept["blocks.0.attn.hook_z"]) == 99
    assert torch.equal(kept["blocks.0.attn.hook_z"][7], acts["blocks.0.attn.hook_z"][8])  # same tokens at all sites


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 200 + 3 for c in text]}


def test_tokenize_windows_and_split():
    text = "\n\n".join(f"para {i} " * 5 for i in range(200))
    w = train.tokenize_windows(_CharTokenizer(), text, ctx_len=16, chunk_chars=100)
    assert w.dtype == np.uint16 and w.shape[1] == 16
    assert (w[:, 0] == train.ENDOFTEXT_ID).all()
    flat = w[:, 1:].reshape(-1)  # chunking on blank lines loses nothing
    assert flat.tolist() == _CharTokenizer()(text)["input_ids"][: len(flat)]
    tr, ev = train.split_windows(w, eval_every=20)
    assert len(tr) + len(ev) == len(w) and len(ev) == len(w) // 20


def test_kjv_paragraphs():
    raw = "Ge1:1 In the beginning.\nGe1:2 And the earth.\nGe2:1 Thus the heavens.\n1Co13:4 Charity suffereth long.\n"
    assert train.kjv_paragraphs(raw) == (
        "In the beginning. And the earth.\n\nThus the heavens.\n\nCharity suffereth long.\n"
    )


def test_collect_activations_matches_hidden_states():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    windows = np.random.default_rng(0).integers(0, 64, size=(3, 10)).astype(np.uint16)
    hooks = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z"]
    acts = train.collect_activations(model, windows, hooks, batch_windows=2)
    assert acts["blocks.1.hook_resid_post"].shape == (3 * 9, 32)
    assert acts["blocks.2.attn.hook_z"].shape == (3 * 9, 32)  # 4 heads x d_head 8
    ids = torch.from_numpy(windows.astype(np.int64))
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        ref = hs[2][:, 1:].reshape(-1, 32)
        assert torch.allclose(acts["blocks.1.hook_resid_post"], ref, atol=1e-5)
        # hook_z oracle: layer 2's attention recomputed by hand from its input hidden state
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer = model.model.layers[2]
        attn = layer.self_attn
        x = layer.input_layernorm(hs[2])  # (3, 10, 32)
        q = attn.q_proj(x).view(3, 10, 4, 8).transpose(1, 2)  # (3, 4, 10, 8)
        k = attn.k_proj(x).view(3, 10, 2, 8).transpose(1, 2)  # (3, 2, 10, 8)
        v = attn.v_proj(x).view(3, 10, 2, 8).transpose(1, 2)  # (3, 2, 10, 8)
        cos, sin = model.model.rotary_emb(x, torch.arange(10)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # query head h reads kv head h // 2
        scores = (q @ k.transpose(-1, -2)) / 8**0.5  # (3, 4, 10, 10)
        scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
        z = scores.softmax(-1) @ v  # (3, 4, 10, 8)
        z = z.transpose(1, 2)[:, 1:].reshape(-1, 32)  # (27, 4 * 8): heads concatenated in head order
        assert torch.allclose(acts["blocks.2.attn.hook_z"], z, atol=1e-5)
    assert train._check_hooks(model, windows, hooks)["blocks.1.hook_resid_post"] < 1e-5
    with pytest.raises(TrainError):
        train.collect_activations(model, windows, ["blocks.7.hook_resid_post"])


def test_sparse_encoder_grad_learns_the_same():
    """The gather-based encoder gradient trains as well as the dense one (same init, same batches)."""
    x, held_out = sparse_data(8192, seed=0), sparse_data(2048, seed=1)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 150, "sparse_encoder_grad": True})
    w_sparse, _ = train.train_sae(x, cfg, log_every=1000)
    w_dense, _ = train.train_sae(x, TrainConfig(**{**cfg.__dict__, "sparse_encoder_grad": False}), log_every=1000)
    fve_sparse = train.evaluate_sae(w_sparse, held_out, CFG.k)["fve"]
    fve_dense = train.evaluate_sae(w_dense, held_out, CFG.k)["fve"]
    assert fve_sparse > 0.7 and abs(fve_sparse - fve_dense) < 0.01, (fve_sparse, fve_dense)


def test_refit_decoder_keeps_codes_and_improves_fit():
    x, held_out = sparse_data(8192, seed=0), sparse_data(2048, seed=1)
    w, _ = train.train_sae(x, TrainConfig(**{**CFG.__dict__, "steps": 60}), log_every=1000)
    w2 = train.refit_decoder(w, x, CFG.k)
    assert torch.equal(train.encode(w, x[:256], CFG.k) > 0, train.encode(w2, x[:256], CFG.k) > 0)  # same latents fire
    assert torch.allclose(train.encode(w, x[:256], CFG.k), train.encode(w2, x[:256], CFG.k), rtol=1e-3, atol=1e-2)
    before, after = train.evaluate_sae(w, x, CFG.k)["fve"], train.evaluate_sae(w2, x, CFG.k)["fve"]
    assert after > before + 0.01, (before, after)  # least squares beats SGD's decoder on the data it fits
    assert train.evaluate_sae(w2, held_out, CFG.k)["fve"] > train.evaluate_sae(w, held_out, CFG.k)["fve"]
