"""The model families of 2026 beyond the shared oracle checks (tests/test_models_oracle.py runs those
on them too): query/key norms and what QK scores mean with them, and embedding rows that are not
tokens (Qwen's padding, Llama-3's reserved placeholders) never reaching a token list or statistic."""

from __future__ import annotations

import functools

import pytest
import torch

from builders.models import from_hf_model, load_model, real_vocab_size
from builders.weights import Norm
from tests import model_oracle as oracle
from tests.builders_fixtures import D_VOCAB, tiny_model, tiny_tokenizer

IDS = torch.tensor([[3, 80, 0, 41, 7, 58], [12, 12, 85, 1, 33, 2]])  # (2, 6): ids below every trimmed size


@functools.cache
def _pair(arch: str, tied: bool = False):
    model = tiny_model(arch, tied=tied, seed=11)
    return model, from_hf_model(model, source=f"tiny-{arch}", source_kind="path")


def close(got, want, tol=1e-4, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = (got - want).abs().max().item()
    assert err <= tol * max(want.abs().max().item(), 1.0), f"{what}: {err:.3g}"


# ------------------------------------------------------------------------ query / key norms


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "gemma3_mm"])
@pytest.mark.parametrize("layer", [0, 1])
def test_qk_norms_match_the_module(arch, layer):
    model, w = _pair(arch)
    lw = w.layers[layer]
    assert lw.q_norm is not None and lw.q_norm.weight.shape == (w.d_head,)
    assert lw.q_norm.one_plus is arch.startswith("gemma")  # Gemma-3's (1 + w); Qwen3's plain w
    for name, (got, want) in oracle.check_qk_norm(model, w, IDS, layer).items():
        close(got, want, what=name)
    assert w.has_qk_norm and "q/k norms" in w.notes


def test_qk_norm_oracle_can_fail():
    model, w = _pair("gemma3")
    lw = w.layers[0]
    plain = Norm(**{**lw.q_norm.__dict__, "one_plus": False})  # (1 + w) forgotten
    bad = w.__class__(**{**w.__dict__, "layers": [lw.__class__(**{**lw.__dict__, "q_norm": plain})] + w.layers[1:]})
    got, want = oracle.check_qk_norm(model, bad, IDS, 0)["q"]
    assert (got - want).abs().max() > 1e-2
    got, want = oracle.check_attention(model, bad, 0)
    assert (got - want).abs().max() > 1e-4


def _module_score(model, layer: int, head: int, x: torch.Tensor, y: torch.Tensor, w) -> torch.Tensor:
    """The module's own pre-softmax, pre-rotary score of one head: query from x, key from y
    (each already through ln1), through q_proj, q_norm, k_proj, k_norm."""
    a = oracle.attention(model, layer)
    dh, kv = w.d_head, head // w.kv_group
    q = a.q_norm(a.q_proj(x).view(-1, w.n_heads, dh))[:, head]  # (b, d_head)
    k = a.k_norm(a.k_proj(y).view(-1, w.n_kv_heads, dh))[:, kv]
    return (q * k).sum(-1) * w.layer_qk_scale(layer)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_qk_edge_definition_against_the_module(arch):
    """QK edge (i, j, h) := qk_scale * (x_i W_Q[h] g_q) . (x_j W_K[h] g_k) (LayerWeights.qk_weights).

    Against the module: the mixed second derivative of the real score with respect to adding
    feature i at the query and feature j at the key (autograd through q_proj/q_norm/k_proj/k_norm)
    equals, exactly, qk_scale / (r_q r_k) * (g_q * P_q w_i) . (g_k * P_k w_j), with r the rms of the
    pre-norm query/key and P the projection off it; the stored definition drops the shared 1/(r_q r_k)
    and the rank-one projections, so across feature pairs it tracks the module's mixed derivative."""
    model, w = _pair(arch)
    layer, head = 1, 3
    lw = w.layers[layer]
    W_Q, W_K = lw.qk_weights()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, w.d_model, generator=gen), torch.randn(1, w.d_model, generator=gen)  # residual states
    feats = torch.randn(24, w.d_model, generator=gen)  # feature directions (after ln1's gain)
    exact, ours, rebuilt = [], [], []
    q_pre = (x @ lw.W_Q[head]).squeeze(0)  # (d_head,) the module's pre-norm query
    k_pre = (y @ lw.W_K[head]).squeeze(0)
    dh = w.d_head

    def jac(v, norm):  # d norm(v) / dv applied: diag(g) (I / r - v v^T / (d r^3))
        r = (v.pow(2).mean() + norm.eps).sqrt()
        return lambda u: norm.gain * (u / r - v * (v @ u) / (dh * r**3))

    Jq, Jk = jac(q_pre, lw.q_norm), jac(k_pre, lw.k_norm)
    for i in range(12):
        for j in range(12, 24):
            u, v = feats[i], feats[j]
            a = torch.zeros((), requires_grad=True)
            b = torch.zeros((), requires_grad=True)
            s = _module_score(model, layer, head, x + a * u, y + b * v, w).sum()
            (da,) = torch.autograd.grad(s, a, create_graph=True)
            (dab,) = torch.autograd.grad(da, b)
            exact.append(float(dab))
            rebuilt.append(float(Jq(u @ lw.W_Q[head]) @ Jk(v @ lw.W_K[head]) * w.layer_qk_scale(layer)))
            ours.append(float((u @ W_Q[head]) @ (v @ W_K[head]) * w.layer_qk_scale(layer)))
    exact, rebuilt, ours = map(torch.tensor, (exact, rebuilt, ours))
    close(rebuilt, exact, 1e-4, "the Jacobian decomposition")
    r_q = (q_pre.pow(2).mean() + lw.q_norm.eps).sqrt()
    r_k = (k_pre.pow(2).mean() + lw.k_norm.eps).sqrt()
    corr = torch.corrcoef(torch.stack([ours / (r_q * r_k), exact]))[0, 1]
    assert corr > 0.8, corr  # only the rank-one projections (1 of d_head directions each) differ
    # and without q/k norms the definition is the plain bilinear score
    _, llama = _pair("llama3")
    assert all(
        torch.equal(a, b)
        for a, b in zip(llama.layers[0].qk_weights(), (llama.layers[0].W_Q, llama.layers[0].W_K), strict=True)
    )


# ------------------------------------------------------------------------ rows that are not tokens


def test_real_vocab_size_rules():
    qwen_like = tiny_tokenizer(88, ["<|endoftext|>", "<|im_start|>"])  # 90 tokens, 97 rows: 7 padding rows
    assert real_vocab_size(qwen_like, 97) == (
        90,
        "W_E/W_U keep the first 90 of 97 embedding rows: rows 90..96 lie past the tokenizer's 90 tokens",
    )
    llama_like = tiny_tokenizer(90, ["<|begin_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]
                                + [f"<|reserved_special_token_{i}|>" for i in range(1, 5)])  # fmt: skip
    n, note = real_vocab_size(llama_like, 97)
    assert n == 93 and "ids 93..96 are reserved placeholder tokens" in note  # the interleaved one stays
    assert real_vocab_size(tiny_tokenizer(97), 97) == (97, None)
    assert real_vocab_size(None, 97) == (97, None)
    assert real_vocab_size(tiny_tokenizer(3), 97) == (97, None)  # not this model's tokenizer


@pytest.mark.parametrize("arch,tied", [("qwen2_5", False), ("qwen2_5", True), ("llama3", False), ("gemma3", True)])
def test_padding_rows_never_reach_tokens_or_statistics(arch, tied):
    from builders.passes.du import du_pass
    from tests.passes_fixtures import tiny_sae

    model = tiny_model(arch, tied=tied, seed=3)
    if arch == "llama3":  # Llama-3: the tokenizer's last ids are reserved placeholders
        tok, n_real = tiny_tokenizer(88, [f"<|reserved_special_token_{i}|>" for i in range(9)]), 88
    else:  # Qwen2.5 / Gemma-3: embedding rows past the tokenizer
        tok, n_real = tiny_tokenizer(88, ["<|endoftext|>", "<|im_end|>"]), 90
    head = model.get_output_embeddings().weight
    d = head.shape[1]
    with torch.no_grad():  # plant: the rows that are not tokens, huge along one direction
        head[n_real:] = 50.0 * torch.ones(d) / d**0.5
    w = from_hf_model(model, source="tiny", source_kind="path", tokenizer=tok)
    assert (w.d_vocab, w.W_E.shape[0], w.W_U.shape[1], len(w.tokens)) == (n_real,) * 4
    assert w.meta["vocab"] == {"embedding_rows": D_VOCAB, "tokens_kept": n_real} and "embedding rows" in w.notes
    assert (w.W_U.data_ptr() == w.W_E.data_ptr()) is tied and w.atlas_model_fields()["d_vocab"] == n_real
    close(*oracle.check_logits(model, w, IDS))  # the kept rows are exactly the model's logits
    sae = tiny_sae(w, seed=0)
    sae.W_dec[:4] = torch.ones(d) / d**0.5  # features pointing at the planted rows
    rows = du_pass(w, sae, 0, sae.d_sae, k=5)
    assert int(rows.top_ids.max()) < n_real and int(rows.bot_ids.max()) < n_real
    # the plant would win without the trim: the test can fail
    full = from_hf_model(model, source="tiny", source_kind="path", tokenizer=tok, trim_vocab=False)
    assert full.d_vocab == D_VOCAB and int(du_pass(full, sae, 0, 4, k=5).top_ids[:, 0].min()) >= n_real


def test_load_model_trims_with_its_saved_tokenizer(tmp_path):
    model = tiny_model("qwen2_5", seed=2)
    model.save_pretrained(tmp_path)
    tiny_tokenizer(88, ["<|endoftext|>", "<|im_start|>"]).save_pretrained(tmp_path)
    w = load_model(str(tmp_path), device="cpu", hash_weights=False)
    assert w.d_vocab == 90 and w.tokens[89] == "<|im_start|>" and "lie past the tokenizer's 90 tokens" in w.notes
    assert w.atlas_model_fields()["notes"] == w.notes


def test_gemma3_at_its_real_vocabulary_size():
    """Gemma-3's 262,144-token vocabulary (tiny everything else): nothing assumes a small one."""
    model = tiny_model("gemma3", vocab_size=262_144, seed=5)
    w = from_hf_model(model, source="tiny-gemma3-262k", source_kind="path")
    assert (w.d_vocab, w.W_U.shape, len(w.tokens)) == (262_144, (32, 262_144), 262_144)
    ids = torch.tensor([[0, 262_143, 131_072, 7]])
    close(*oracle.check_logits(model, w, ids))
    close(*oracle.check_embed(model, w, ids))
