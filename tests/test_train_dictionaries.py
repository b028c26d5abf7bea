"""The example trainer's transcoders, its per-dictionary initialisation and its resuming (examples/smollm2).

A transcoder is trained on planted structure (sparse features with an input
direction and a different output direction) and must recover it; its folder must
match the SAELens 6.x transcoder layout; its FVE of the target must equal a dense
float64 computation. Two dictionaries trained on identical data must not come out
aligned index by index (the shared-seed bug behind the same-index flow edges).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from examples.smollm2 import activations, saelens_files, topk, train
from examples.smollm2.saelens_files import DictionarySpec
from examples.smollm2.topk import TrainConfig

D_IN, D_OUT, N_TRUE, ACTIVE = 32, 24, 48, 3


def planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, output directions): feature j reads u_j from x and writes v_j to y with the same coefficient.

    x and y have different widths, offsets and scales, so a trainer that confused
    the two spaces, or folded only one scale back, would fail.
    """
    g0 = torch.Generator().manual_seed(99)  # the same planted features every call
    u = torch.nn.functional.normalize(torch.randn(N_TRUE, D_IN, generator=g0), dim=-1)  # (N_TRUE, D_IN)
    v = torch.nn.functional.normalize(torch.randn(N_TRUE, D_OUT, generator=g0), dim=-1)  # (N_TRUE, D_OUT)
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(N_TRUE, generator=g)[:ACTIVE] for _ in range(n)])  # (n, ACTIVE)
    coef = torch.rand(n, ACTIVE, generator=g) + 0.5  # (n, ACTIVE)
    x = 50.0 * ((coef[..., None] * u[idx]).sum(1) + 0.3 + 0.01 * torch.randn(n, D_IN, generator=g))  # (n, D_IN)
    y = 2.0 * ((coef[..., None] * v[idx]).sum(1) - 0.5)  # (n, D_OUT)
    return x, y, v


TC_CFG = TrainConfig(d_sae=96, k=3, lr=3e-3, batch_size=256, steps=500, warmup_steps=20, aux_k=16,
                     dead_after_tokens=256 * 20)  # fmt: skip


@pytest.fixture(scope="module")
def transcoder() -> tuple[dict[str, torch.Tensor], dict]:
    torch.set_num_threads(1)
    x, y, _ = planted(8192, seed=0)
    return topk.train_topk(x, TC_CFG, targets=y, seed=5, log_every=100)


def test_transcoder_recovers_planted_features(transcoder):
    weights, record = transcoder
    x, y, v = planted(2048, seed=1)
    ev = topk.evaluate(weights, x, TC_CFG.k, targets=y)
    assert ev["fve"] > 0.9 and ev["l0"] == pytest.approx(TC_CFG.k), ev
    cos = torch.nn.functional.normalize(weights["W_dec"], dim=-1) @ v.T  # (d_sae, N_TRUE)
    recovered = (cos.max(0).values > 0.9).float().mean()
    assert recovered > 0.85, f"only {recovered:.2f} of the planted output directions have a decoder row"
    assert weights["W_dec"].shape == (TC_CFG.d_sae, D_OUT) and weights["b_dec"].shape == (D_OUT,)
    assert record["seed"] == 5 and record["input_scale_while_training"] != record["target_scale_while_training"]
    # the raw-space transcoder predicts y, not x: its reconstruction of x would be meaningless (other width)
    mean_fve = 1 - ((y - y.mean(0)) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert ev["fve"] > float(mean_fve) + 0.9


def test_transcoder_fve_matches_a_dense_computation(transcoder):
    weights, _ = transcoder
    x, y, _ = planted(700, seed=2)  # not a multiple of the evaluation batch
    got = topk.evaluate(weights, x, TC_CFG.k, targets=y, batch=256)
    w = {n: t.double().numpy() for n, t in weights.items()}
    xd, yd = x.double().numpy(), y.double().numpy()
    pre = xd @ w["W_enc"] + w["b_enc"]  # (n, d_sae): a transcoder never subtracts b_dec from its input
    keep = np.argsort(-pre, axis=1)[:, : TC_CFG.k]
    acts = np.zeros_like(pre)
    np.put_along_axis(acts, keep, np.maximum(np.take_along_axis(pre, keep, axis=1), 0), axis=1)
    y_hat = acts @ w["W_dec"] + w["b_dec"]  # (n, D_OUT)
    fve = 1 - ((yd - y_hat) ** 2).sum() / ((yd - yd.mean(0)) ** 2).sum()
    assert got["fve"] == pytest.approx(fve, abs=1e-5)
    assert got["l0"] == pytest.approx((acts > 0).sum(1).mean(), abs=1e-9)
    assert round(got["dead_fraction"] * TC_CFG.d_sae) == int((~(acts > 0).any(0)).sum())  # a count: exact


# SAELens 6.x: TranscoderConfig.to_dict() = SAEConfig fields + d_out + architecture; TopKSAEConfig adds k and
# rescale_acts_by_decoder_norm. sae_lens/loading/pretrained_sae_loaders.py lists hook_name_out and
# hook_head_index_out among the metadata keys of a transcoder.
SAELENS_TRANSCODER_KEYS = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                           "reshape_activations", "metadata", "architecture", "d_out"}  # fmt: skip


def test_transcoder_folder_has_the_saelens_layout(transcoder, tmp_path):
    weights, _ = transcoder
    spec = DictionarySpec.transcoder(3)
    cfg = saelens_files.saelens_cfg(spec, D_IN, TC_CFG.d_sae, TC_CFG.k, d_out=D_OUT, model_name="toy",
                                    context_size=8)  # fmt: skip
    folder = saelens_files.save_saelens_folder(tmp_path / spec.name, weights, cfg, dtype=torch.float16)
    assert folder.name == "layer_3_transcoder"
    on_disk = json.loads((folder / "cfg.json").read_text())
    assert set(on_disk) == SAELENS_TRANSCODER_KEYS | {"k", "rescale_acts_by_decoder_norm"}
    assert on_disk["architecture"] == "topk_transcoder" and on_disk["k"] == TC_CFG.k
    assert on_disk["apply_b_dec_to_input"] is False  # SAELens's TranscoderConfig refuses True
    assert (on_disk["d_in"], on_disk["d_sae"], on_disk["d_out"]) == (D_IN, TC_CFG.d_sae, D_OUT)
    meta = on_disk["metadata"]
    assert meta["hook_name"] == "blocks.3.mlp.hook_in" and meta["hook_name_out"] == "blocks.3.hook_mlp_out"
    assert meta["hook_head_index_out"] is None and meta["model_from_pretrained_kwargs"] == {"fold_ln": False}
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    assert {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()} == {
        "W_enc": ((D_IN, TC_CFG.d_sae), torch.float16), "W_dec": ((TC_CFG.d_sae, D_OUT), torch.float16),
        "b_enc": ((TC_CFG.d_sae,), torch.float16), "b_dec": ((D_OUT,), torch.float16),
    }  # fmt: skip
    loaded, cfg2 = saelens_files.load_saelens_folder(folder)
    assert saelens_files.spec_of_cfg(cfg2) == spec
    x, y, _ = planted(512, seed=3)
    fve32 = topk.evaluate(weights, x, TC_CFG.k, targets=y)["fve"]
    assert topk.evaluate(loaded, x, TC_CFG.k, targets=y)["fve"] == pytest.approx(fve32, abs=0.01)  # float16


def _same_index_fraction(a: torch.Tensor, b: torch.Tensor, cos: float = 0.9) -> float:
    """Fraction of rows i with cos(a[i], b[i]) > cos."""
    sims = (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1)
    return float((sims > cos).float().mean())


def test_each_dictionary_starts_from_its_own_tokens(tmp_path):
    """Two layers with IDENTICAL activations: with one shared seed their dictionaries came out equal row by row.

    Given its own seed, each starts from other tokens in another order, so a decoder
    row matches the same-index row of the other dictionary only by chance (about
    1/N_TRUE here), although both learn the same set of directions.
    """
    torch.set_num_threads(1)
    x, _, _ = planted(4096, seed=0)
    specs = [DictionarySpec("blocks.1.hook_resid_post"), DictionarySpec("blocks.2.hook_resid_post")]
    cfg = TrainConfig(d_sae=64, k=3, lr=3e-3, batch_size=256, steps=150, warmup_steps=10, aux_k=8,
                      dead_after_tokens=256 * 10)  # fmt: skip
    info = {"gguf_sha256": "toy", "context_size": 8, "massive_tokens_dropped": {"train": 0, "eval": 0}}
    metrics = train.train_many(lambda _hook: (x, x[:512]), info, tmp_path, specs, cfg, device="cpu",
                               folders=True, min_fve=0.0)  # fmt: skip
    w1, _ = saelens_files.load_saelens_folder(tmp_path / "layer_1_resid_post")
    w2, _ = saelens_files.load_saelens_folder(tmp_path / "layer_2_resid_post")
    assert _same_index_fraction(w1["W_dec"], w2["W_dec"]) < 0.15
    seeds = {m["seed"] for m in metrics["dictionaries"].values()}
    assert len(seeds) == 2 and seeds == {topk.dictionary_seed(0, str(s)) for s in specs}
    best = torch.nn.functional.normalize(w1["W_dec"], dim=-1) @ torch.nn.functional.normalize(w2["W_dec"], dim=-1).T
    assert (best.max(1).values > 0.9).float().mean() > 0.5  # the same directions, in another order

    # and from the first step: the initial decoders share no token rows beyond chance
    gens = [torch.Generator().manual_seed(topk.dictionary_seed(0, str(s))) for s in specs]
    inits = [topk.init_dictionary(x, cfg, g)[0].W_dec.detach() for g in gens]
    assert _same_index_fraction(inits[0], inits[1], cos=0.9999) < 0.05


def test_train_many_resumes_without_retraining(tmp_path, capsys):
    torch.set_num_threads(1)
    x, y, _ = planted(2048, seed=0)
    data = {"blocks.4.hook_resid_post": x, "blocks.4.mlp.hook_in": x, "blocks.4.hook_mlp_out": y}
    info = {"gguf_sha256": "toy", "context_size": 8, "massive_tokens_dropped": {"train": 0, "eval": 0}}
    cfg = TrainConfig(d_sae=32, k=3, lr=3e-3, batch_size=256, steps=20, warmup_steps=5, aux_k=8)
    sae, tc = DictionarySpec("blocks.4.hook_resid_post"), DictionarySpec.transcoder(4)

    def load(hook: str) -> tuple[torch.Tensor, torch.Tensor]:
        return data[hook], data[hook][:256]

    train.train_many(load, info, tmp_path, [sae], cfg, device="cpu", folders=True, min_fve=0.0)
    first = (tmp_path / sae.name / "sae_weights.safetensors").stat().st_mtime_ns
    metrics = train.train_many(load, info, tmp_path, [sae, tc], cfg, device="cpu", folders=True, min_fve=0.0)
    assert "layer_4_resid_post: already trained" in capsys.readouterr().out
    assert (tmp_path / sae.name / "sae_weights.safetensors").stat().st_mtime_ns == first
    assert set(metrics["dictionaries"]) == {sae.name, tc.name}
    assert metrics["dictionaries"][tc.name]["kind"] == "transcoder"
    assert metrics["dictionaries"][tc.name]["fve_of"] == "blocks.4.hook_mlp_out"
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["dictionaries"][sae.name]["fve"] == metrics["dictionaries"][sae.name]["fve"]
    # another recipe (more steps) is another dictionary: trained again
    longer = TrainConfig(**{**cfg.__dict__, "steps": 25})
    train.train_many(load, info, tmp_path, [sae], longer, device="cpu", folders=True, min_fve=0.0)
    assert (tmp_path / sae.name / "sae_weights.safetensors").stat().st_mtime_ns != first


def test_collect_activations_matches_the_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    windows = np.random.default_rng(0).integers(0, 64, size=(3, 10)).astype(np.uint16)
    hooks = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z", *DictionarySpec.transcoder(1).hooks]
    acts = activations.collect_activations(model, windows, hooks, batch_windows=2)
    assert {h: tuple(a.shape) for h, a in acts.items()} == {h: (3 * 9, 32) for h in hooks}  # z: 4 heads x d_head 8
    ids = torch.from_numpy(windows.astype(np.int64))
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        assert torch.allclose(acts["blocks.1.hook_resid_post"], hs[2][:, 1:].reshape(-1, 32), atol=1e-5)
        # transcoder sites, recomputed by hand from layer 1's input: attention, then the MLP's normed input
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        def attention(layer: torch.nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(z (3, 10, 32) heads concatenated, attention output (3, 10, 32)) of ``layer`` on residual ``h``."""
            attn = layer.self_attn
            x = layer.input_layernorm(h)  # (3, 10, 32)
            q = attn.q_proj(x).view(3, 10, 4, 8).transpose(1, 2)  # (3, 4, 10, 8)
            k = attn.k_proj(x).view(3, 10, 2, 8).transpose(1, 2)  # (3, 2, 10, 8)
            v = attn.v_proj(x).view(3, 10, 2, 8).transpose(1, 2)  # (3, 2, 10, 8)
            cos, sin = model.model.rotary_emb(x, torch.arange(10)[None])
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # query head h reads kv head h // 2
            scores = (q @ k.transpose(-1, -2)) / 8**0.5  # (3, 4, 10, 10)
            scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
            z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 10, 32)  # heads concatenated in head order
            return z, attn.o_proj(z)

        layer1 = model.model.layers[1]
        _, attn_out = attention(layer1, hs[1])
        resid_mid = hs[1] + attn_out  # (3, 10, 32)
        mlp_in = resid_mid.pow(2).mean(-1, keepdim=True).add(cfg.rms_norm_eps).rsqrt() * resid_mid
        mlp_in = mlp_in * layer1.post_attention_layernorm.weight  # the norm's gain is part of the input
        mlp = layer1.mlp
        mlp_out = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(mlp_in)) * mlp.up_proj(mlp_in))
        assert torch.allclose(acts["blocks.1.mlp.hook_in"], mlp_in[:, 1:].reshape(-1, 32), atol=1e-5)
        assert torch.allclose(acts["blocks.1.hook_mlp_out"], mlp_out[:, 1:].reshape(-1, 32), atol=1e-5)
        assert torch.allclose(resid_mid + mlp_out, hs[2], atol=1e-5)  # resid_post = resid_mid + MLP output
        z, _ = attention(model.model.layers[2], hs[2])
        assert torch.allclose(acts["blocks.2.attn.hook_z"], z[:, 1:].reshape(-1, 32), atol=1e-5)
    diffs = activations.check_hooks(model, windows, hooks)
    assert set(diffs) == {"blocks.1.hook_resid_post", *DictionarySpec.transcoder(1).hooks}
    assert max(diffs.values()) < 1e-5
    with pytest.raises(activations.TrainError):
        activations.collect_activations(model, windows, ["blocks.7.hook_resid_post"])


def test_command_line_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert train.main(["train", "--acts", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                       "--dictionaries", "transcoder:3"]) == 1  # fmt: skip
    assert train.main(["train", "--acts", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--dictionaries", "blocks.3.hook_attn_out"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no complete activation cache" in err[0] and "unsupported hook" in err[1]
    assert not (tmp_path / "o").exists()  # nothing written


def test_transcoder_drops_massive_targets(tmp_path):
    """A token whose MLP output is 20x the median norm (an attention-sink write) leaves training and the FVE."""
    torch.set_num_threads(1)
    x, y, _ = planted(2048, seed=0)
    y_ev = y[:256].clone()
    y, y_ev[3] = y.clone(), y_ev[3] * 1000
    y[[5, 50]] *= 1000
    data = {"blocks.4.mlp.hook_in": (x, x[:256]), "blocks.4.hook_mlp_out": (y, y_ev)}
    info = {"gguf_sha256": "toy", "context_size": 8, "massive_tokens_dropped": {"train": 0, "eval": 0}}
    cfg = TrainConfig(d_sae=32, k=3, lr=3e-3, batch_size=256, steps=20, warmup_steps=5, aux_k=8)
    tc = DictionarySpec.transcoder(4)
    metrics = train.train_many(data.__getitem__, info, tmp_path, [tc], cfg, device="cpu", folders=True, min_fve=0)
    entry = metrics["dictionaries"][tc.name]
    assert entry["massive_targets_dropped"] == {"train": 2, "eval": 1}
    assert entry["train_tokens"] == 2048 - 2 and entry["eval_tokens"] == 256 - 1
    weights, cfg_json = saelens_files.load_saelens_folder(tmp_path / tc.name)
    keep = torch.ones(256, dtype=torch.bool)
    keep[3] = False
    want = topk.evaluate(weights, x[:256][keep], 3, targets=y_ev[keep])["fve"]
    assert cfg_json["metadata"]["eval"]["fve"] == pytest.approx(want, abs=1e-6)
    with_all = train.train_key(tc, cfg, info, {"train": 0, "eval": 0})
    assert cfg_json["metadata"]["train_key"] != with_all  # the drop is part of the data the key describes
