"""The example's TopK SAE trainer (examples/smollm2): learns, folds its input scale, writes SAELens folders.

All on the CPU in a few seconds: synthetic sparse data with a known dictionary,
and a tiny random Llama for the activation hooks. Transcoders, independent
initialisation and resuming are in tests/test_train_dictionaries.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from examples.smollm2 import activations, saelens_files, topk
from examples.smollm2.errors import TrainError
from examples.smollm2.saelens_files import DictionarySpec
from examples.smollm2.topk import TrainConfig

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
    return topk.train_topk(sparse_data(8192, seed=0), CFG, log_every=100)


def test_fve_rises_and_l0_is_k(trained):
    weights, record = trained
    held_out = sparse_data(2048, seed=1)
    ev = topk.evaluate(weights, held_out, CFG.k)
    assert ev["fve"] > 0.9, ev
    assert ev["l0"] == pytest.approx(CFG.k), ev  # TopK: every token uses exactly k latents
    assert ev["dead_fraction"] < 0.5, ev
    # the same SAE at a random initialisation (W_enc = W_dec.T, b_dec = the mean) explains much less
    random_init = TrainConfig(**{**CFG.__dict__, "init_from_data": False})
    model, sc = topk.init_dictionary(held_out, random_init, torch.Generator().manual_seed(0))
    w0 = topk.fold_scales(model.weights(), sc.s_in, sc.s_out)
    assert topk.evaluate(w0, held_out, CFG.k)["fve"] < ev["fve"] - 0.3
    log = record["log"]
    assert log[-1]["fve_train_batch"] > log[0]["fve_train_batch"]
    mean_norm = float(sparse_data(8192, seed=0).norm(dim=-1).mean())
    assert record["input_scale_while_training"] == pytest.approx(np.sqrt(D_IN) / mean_norm, rel=1e-4)
    assert record["seed"] == CFG.seed  # no seed given: the config's


def test_decoder_rows_unit_norm_and_raw_space(trained):
    weights, _ = trained
    assert torch.allclose(weights["W_dec"].norm(dim=-1), torch.ones(CFG.d_sae), atol=1e-4)
    x = sparse_data(64, seed=2)
    # raw-space SAE: reconstruction has the data's scale, not the training scale
    x_hat = topk.decode(weights, topk.encode(weights, x, CFG.k))
    assert (x - x_hat).norm() < 0.5 * (x - x.mean(0)).norm()


def test_folder_round_trip(trained, tmp_path):
    weights, _ = trained
    spec = DictionarySpec("blocks.3.hook_resid_post")
    cfg = saelens_files.saelens_cfg(spec, D_IN, CFG.d_sae, CFG.k, model_name="toy", context_size=8,
                                    metadata={"eval": {"fve": 0.9}})  # fmt: skip
    folder = saelens_files.save_saelens_folder(tmp_path / spec.name, weights, cfg, dtype=torch.float32)
    on_disk = json.loads((folder / "cfg.json").read_text())
    assert on_disk["architecture"] == "topk" and on_disk["k"] == CFG.k
    assert on_disk["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and "hook_name_out" not in on_disk["metadata"]
    assert on_disk["reshape_activations"] == "none" and on_disk["apply_b_dec_to_input"] is True
    assert "d_out" not in on_disk

    from safetensors.torch import load_file

    tensors = load_file(str(folder / "sae_weights.safetensors"))
    assert {n: tuple(t.shape) for n, t in tensors.items()} == {
        "W_enc": (D_IN, CFG.d_sae), "W_dec": (CFG.d_sae, D_IN), "b_enc": (CFG.d_sae,), "b_dec": (D_IN,),
    }  # fmt: skip
    x = sparse_data(32, seed=3)
    a = topk.encode(weights, x, CFG.k)
    from builders.saes import load_sae  # the product's SAELens loader reads what the trainer writes

    sae = load_sae(str(folder))
    assert sae.architecture == "topk" and sae.k == CFG.k and sae.hook_name == "blocks.3.hook_resid_post"
    a2 = sae.encode(x)
    assert torch.allclose(a, a2, atol=1e-3)
    assert torch.allclose(topk.decode(weights, a), sae.decode(a2), atol=1e-3)
    loaded, _ = saelens_files.load_saelens_folder(folder)
    assert torch.equal(loaded["W_dec"], weights["W_dec"])


def test_packed_unpack_hook_z(trained, tmp_path):
    weights, _ = trained
    spec = DictionarySpec("blocks.1.attn.hook_z")
    cfg = saelens_files.saelens_cfg(spec, D_IN, CFG.d_sae, CFG.k, model_name="toy", context_size=8)
    saelens_files.save_packed(tmp_path / "p.safetensors", weights, cfg)
    folder = saelens_files.unpack(tmp_path / "p.safetensors", tmp_path / "z", extra_metadata={"note": "x"})
    loaded, cfg2 = saelens_files.load_saelens_folder(folder)
    assert cfg2["reshape_activations"] == "hook_z" and cfg2["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert cfg2["metadata"]["note"] == "x"
    assert torch.allclose(loaded["W_dec"], weights["W_dec"], atol=1e-3)  # float16 on disk
    assert spec.name == "layer_1_hook_z" and saelens_files.spec_of_cfg(cfg2) == spec


def test_dictionary_specs_and_bad_input(tmp_path):
    tc = DictionarySpec.parse("transcoder:7")
    assert tc.hooks == ("blocks.7.mlp.hook_in", "blocks.7.hook_mlp_out") and tc.name == "layer_7_transcoder"
    assert tc.is_transcoder and tc.layer == 7
    assert DictionarySpec.parse("blocks.3.hook_resid_post").name == "layer_3_resid_post"
    assert activations.parse_hook("blocks.12.mlp.hook_in") == (12, "mlp_in")
    assert activations.parse_hook("blocks.12.attn.hook_z") == (12, "attn_z")
    assert activations.parse_hook("blocks.12.mlp.hook_out") == (12, "mlp_out")  # the product's alias of hook_mlp_out
    for bad in ("blocks.1.hook_attn_out", "blocks.x.hook_resid_post", "transcoder:x", "blocks.1.ln2.hook_normalized"):
        with pytest.raises(TrainError):
            DictionarySpec.parse(bad)
    with pytest.raises(TrainError):  # a transcoder maps one layer's MLP input to the same layer's output
        DictionarySpec("blocks.2.mlp.hook_in", "blocks.3.hook_mlp_out")
    with pytest.raises(TrainError):
        topk.train_topk(torch.zeros(10, 4), CFG)  # fewer tokens than one batch
    with pytest.raises(TrainError):
        topk.train_topk(torch.zeros(300, 4), CFG, targets=torch.zeros(299, 4))  # targets of other tokens
    with pytest.raises(TrainError):
        saelens_files.save_saelens_folder(tmp_path / "never", {"W_enc": torch.zeros(3, 3)},
                                          {"d_in": 3, "d_sae": 3}, dtype=torch.float32)  # fmt: skip
    assert not (tmp_path / "never").exists()


def test_drop_massive():
    g = torch.Generator().manual_seed(0)
    acts = {"blocks.0.hook_resid_post": torch.randn(100, 8, generator=g), "blocks.0.attn.hook_z": torch.randn(100, 8)}
    acts["blocks.0.hook_resid_post"][7] *= 1000
    kept, n = activations.drop_massive(dict(acts), 20.0)
    assert n == 1 and len(kept["blocks.0.attn.hook_z"]) == 99
    assert torch.equal(kept["blocks.0.attn.hook_z"][7], acts["blocks.0.attn.hook_z"][8])  # same tokens at all sites


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 200 + 3 for c in text]}


def test_tokenize_windows_and_split():
    text = "\n\n".join(f"para {i} " * 5 for i in range(200))
    w = activations.tokenize_windows(_CharTokenizer(), text, ctx_len=16, chunk_chars=100)
    assert w.dtype == np.uint16 and w.shape[1] == 16
    assert (w[:, 0] == activations.ENDOFTEXT_ID).all()
    flat = w[:, 1:].reshape(-1)  # chunking on blank lines loses nothing
    assert flat.tolist() == _CharTokenizer()(text)["input_ids"][: len(flat)]
    tr, ev = activations.split_windows(w, eval_every=20)
    assert len(tr) + len(ev) == len(w) and len(ev) == len(w) // 20


def test_kjv_paragraphs():
    raw = "Ge1:1 In the beginning.\nGe1:2 And the earth.\nGe2:1 Thus the heavens.\n1Co13:4 Charity suffereth long.\n"
    assert activations.kjv_paragraphs(raw) == (
        "In the beginning. And the earth.\n\nThus the heavens.\n\nCharity suffereth long.\n"
    )


def test_sparse_encoder_grad_learns_the_same():
    """The gather-based encoder gradient trains as well as the dense one (same init, same batches)."""
    x, held_out = sparse_data(8192, seed=0), sparse_data(2048, seed=1)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 150, "sparse_encoder_grad": True})
    w_sparse, _ = topk.train_topk(x, cfg, log_every=1000)
    w_dense, _ = topk.train_topk(x, TrainConfig(**{**cfg.__dict__, "sparse_encoder_grad": False}), log_every=1000)
    fve_sparse = topk.evaluate(w_sparse, held_out, CFG.k)["fve"]
    fve_dense = topk.evaluate(w_dense, held_out, CFG.k)["fve"]
    assert fve_sparse > 0.7 and abs(fve_sparse - fve_dense) < 0.01, (fve_sparse, fve_dense)


def test_refit_decoder_keeps_codes_and_improves_fit():
    x, held_out = sparse_data(8192, seed=0), sparse_data(2048, seed=1)
    w, _ = topk.train_topk(x, TrainConfig(**{**CFG.__dict__, "steps": 60}), log_every=1000)
    w2 = topk.refit_decoder(w, x, CFG.k)
    codes, codes2 = topk.encode(w, x[:256], CFG.k), topk.encode(w2, x[:256], CFG.k)
    assert torch.equal(codes > 0, codes2 > 0)  # same latents fire
    assert torch.allclose(codes, codes2, rtol=1e-3, atol=1e-2)
    before, after = topk.evaluate(w, x, CFG.k)["fve"], topk.evaluate(w2, x, CFG.k)["fve"]
    assert after > before + 0.01, (before, after)  # least squares beats SGD's decoder on the data it fits
    assert topk.evaluate(w2, held_out, CFG.k)["fve"] > topk.evaluate(w, held_out, CFG.k)["fve"]


def test_activation_cache_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = {"blocks.0.hook_resid_post": torch.randn(40, 8, generator=g), "blocks.0.mlp.hook_in": torch.randn(40, 8)}
    ev = {name: t[:5] * 2 for name, t in train.items()}
    assert activations.activations_info(tmp_path / "acts") is None
    activations.save_activations(tmp_path / "acts", train, ev, {"context_size": 9})
    info = activations.activations_info(tmp_path / "acts")
    assert info["context_size"] == 9 and info["hooks"] == list(train)
    tr, e = activations.load_activations(tmp_path / "acts", "blocks.0.mlp.hook_in")
    assert torch.equal(tr, train["blocks.0.mlp.hook_in"]) and torch.equal(e, ev["blocks.0.mlp.hook_in"])
    with pytest.raises(TrainError):
        activations.load_activations(tmp_path / "acts", "blocks.1.hook_resid_post")
