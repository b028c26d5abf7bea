"""Tiny random transformers models and SAE files in each real on-disk layout.

Importable by any test: ``from tests.builders_fixtures import tiny_model, write_saelens_sae``.

Every parameter of a tiny model is re-drawn at random (norm gains and biases
included), because the library's own init sets Gemma's norm weights to zero and
biases to zero, which would hide exactly the bugs the oracle tests look for
(a missing ``1 + w``, a dropped bias).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Architectures the oracle tests cover; each maps to a transformers config builder below.
ARCHS = ("gpt2", "neox", "neo", "llama", "mistral", "qwen2", "gemma", "gemma2")
# Which of them can tie W_U to W_E (all of these can; GPT-2/Neo/Gemma tie in the real checkpoints).
TIEABLE = ARCHS
D_VOCAB = 97  # odd, so a transposed (d_vocab, d_model) never passes for (d_model, d_vocab)


def tiny_config(arch: str, *, tied: bool = False, **overrides: Any):
    """A 2-layer config of this architecture; GQA where the architecture has it."""
    import transformers as T

    common = dict(vocab_size=D_VOCAB, tie_word_embeddings=tied)
    if arch == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0, **common)
    elif arch == "neox":
        cfg = T.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, use_parallel_residual=True, attention_bias=True, **common,
        )  # fmt: skip
    elif arch == "neo":
        cfg = T.GPTNeoConfig(
            hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=32,
            attention_types=[[["global", "local"], 1]], window_size=8, **common,
        )  # fmt: skip
    elif arch in ("llama", "mistral", "qwen2"):
        klass = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[arch]
        cfg = klass(
            hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=32, **common,
        )  # fmt: skip
    elif arch == "gemma":
        cfg = T.GemmaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=32, **common,
        )  # fmt: skip
    elif arch == "gemma2":
        # head_dim 16 != d_model / n_heads and query_pre_attn_scalar != head_dim, so a wrong
        # attention scale or a head_dim inferred from d_model shows up. Small softcaps so tanh bites.
        cfg = T.Gemma2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0, sliding_window=8, max_position_embeddings=32, **common,
        )  # fmt: skip
    elif arch in NEW_ARCHS or arch == "gemma3_mm":
        cfg = _tiny_config_2026(arch, common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; one of {ARCHS + NEW_ARCHS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg._attn_implementation = "eager"  # the reference path; sdpa would not apply Gemma's softcap
    return cfg


# The model families of 2026 (issue 14): Gemma-3 text (q/k norms, 4 norms per block), Qwen3
# (per-head q/k norms), Qwen2.5 (q/k/v biases) and Llama-3.x (llama3 rope scaling, 128-row GQA).
NEW_ARCHS = ("gemma3", "qwen3", "qwen2_5", "llama3")
ALL_ARCHS = ARCHS + NEW_ARCHS


def _tiny_config_2026(arch: str, common: dict[str, Any]):
    import transformers as T

    if arch in ("gemma3", "gemma3_mm"):
        # head_dim != d_model / n_heads, query_pre_attn_scalar != head_dim, sliding and full layers.
        text = T.Gemma3TextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
            max_position_embeddings=32, layer_types=["sliding_attention", "full_attention"], **common,
        )  # fmt: skip
        if arch == "gemma3":
            return text
        vision = T.SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        return T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, **common)
    if arch == "qwen3":
        return T.Qwen3Config(
            hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=32, **common,
        )  # fmt: skip
    if arch == "qwen2_5":
        return T.Qwen2Config(
            hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            max_position_embeddings=32, **common,
        )  # fmt: skip
    if arch == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
        return T.LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
            max_position_embeddings=32, rope_parameters=rope, **common,
        )  # fmt: skip
    raise ValueError(arch)


def tiny_tokenizer(n_base: int, specials: list[str] = ()):
    """A byte-free word-level tokenizer: ``n_base`` ordinary tokens ``t0..``, then ``specials``
    as added special tokens (ids n_base..): enough to check which embedding rows are tokens."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(n_base)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": list(specials)})
    return fast


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every floating parameter: gains near 1 (but not 1), biases and Gemma's w nonzero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "ln_" in name or name.endswith(("ln_f.weight", "ln_f.bias")):
                p.copy_((1.0 + 0.3 * noise) if name.endswith("weight") else 0.3 * noise)
            elif p.ndim == 1:
                p.copy_(0.3 * noise)  # biases
            else:
                p.copy_(noise / p.shape[-1] ** 0.5 * 1.5)
    return model


def tiny_model(arch: str, *, tied: bool = False, seed: int = 0, **overrides: Any):
    """A random 2-layer transformers causal LM of this architecture, in eval mode, fp32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tied=tied, **overrides))
    model.float().eval()
    return randomize_(model, seed)


# ------------------------------------------------------------------------- SAE files


def _rand_sae(d_in: int, d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5,
        "b_enc": 0.1 * torch.randn(d_sae, generator=gen),
        "b_dec": 0.1 * torch.randn(d_in, generator=gen),
    }


def write_saelens_sae(
    folder: str | Path,
    *,
    d_in: int = 32,
    d_sae: int = 64,
    hook_name: str = "blocks.1.hook_resid_post",
    architecture: str = "standard",
    style: str = "6.x",
    k: int = 8,
    apply_b_dec_to_input: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A SAELens folder (cfg.json + sae_weights.safetensors); returns the tensors written.

    ``style="6.x"`` writes the current config (``metadata.hook_name``, ``architecture``,
    ``k``, ``reshape_activations``); ``style="old"`` the pre-6 flat one (``hook_point``,
    ``hook_point_layer``, ``activation_fn_str``, ``activation_fn_kwargs``).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = _rand_sae(d_in, d_sae, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if architecture == "jumprelu":
        t["threshold"] = 0.05 + 0.1 * torch.rand(d_sae, generator=gen)
    if architecture == "gated":
        t["b_gate"] = 0.1 * torch.randn(d_sae, generator=gen)
        t["b_mag"] = 0.1 * torch.randn(d_sae, generator=gen)
        t["r_mag"] = 0.1 * torch.randn(d_sae, generator=gen)
    hook_z = hook_name.endswith("attn.hook_z")
    layer = int(hook_name.split(".")[1])
    if style == "6.x":
        cfg: dict[str, Any] = {
            "architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": "none",
            "reshape_activations": "hook_z" if hook_z else "none",
            "metadata": {"sae_lens_version": "6.5.0", "model_name": "tiny", "hook_name": hook_name,
                         "hook_head_index": None, "neuronpedia_id": "tiny/1-res", "context_size": 128},
        }  # fmt: skip
        if architecture == "topk":
            cfg["k"] = k
    else:
        act = {"standard": "relu", "gated": "relu", "jumprelu": "relu", "topk": "topk"}[architecture]
        cfg = {
            "architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "model_name": "tiny", "hook_point": hook_name, "hook_point_layer": layer,
            "hook_point_head_index": None, "activation_fn_str": act,
            "activation_fn_kwargs": {"k": k} if architecture == "topk" else {},
            "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": False,
            "finetuning_scaling_factor": False, "context_size": 128, "sae_lens_training_version": "3.13.0",
        }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    save_file({k_: v.contiguous() for k_, v in t.items()}, str(folder / "sae_weights.safetensors"))
    return t


def write_gemma_scope_sae(
    root: str | Path,
    *,
    release: str = "gemma-scope-2b-pt-res",
    layer: int = 1,
    width: str = "16k",
    l0: int = 82,
    d_in: int = 32,
    d_sae: int = 64,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """``root/<release>/layer_L/width_W/average_l0_N/params.npz``; returns (path, tensors)."""
    folder = Path(root) / release / f"layer_{layer}" / f"width_{width}" / f"average_l0_{l0}"
    folder.mkdir(parents=True, exist_ok=True)
    t = _rand_sae(d_in, d_sae, seed)
    t["threshold"] = 0.05 + 0.1 * torch.rand(d_sae, generator=torch.Generator().manual_seed(seed + 1))
    path = folder / "params.npz"
    np.savez(path, **{k: v.numpy() for k, v in t.items()})
    return path, t


def write_llama_scope_sae(
    root: str | Path,
    *,
    name: str = "Llama3_1-8B-Base-L1R-8x",
    hook_point: str = "blocks.1.hook_resid_post",
    d_model: int = 48,
    d_sae: int = 96,
    jump_relu_threshold: float = 0.3,
    average_norm: float = 12.5,
    unit_decoder: bool = True,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """An OpenMOSS Llama Scope folder: ``hyperparams.json`` + ``checkpoints/final.safetensors``.

    The checkpoint stores nn.Linear layouts: ``encoder.weight (d_sae, d_model)``,
    ``decoder.weight (d_model, d_sae)``, in bf16 like the release. Returns (folder,
    tensors in SAELens orientation, as fp32 values of the stored bf16).
    """
    from safetensors.torch import save_file

    folder = Path(root) / name
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    t = _rand_sae(d_model, d_sae, seed)
    if unit_decoder:  # the released inference checkpoints have unit-norm decoder rows
        t["W_dec"] = t["W_dec"] / t["W_dec"].norm(dim=1, keepdim=True)
    stored = {
        "encoder.weight": t["W_enc"].T.contiguous().bfloat16(),
        "encoder.bias": t["b_enc"].bfloat16(),
        "decoder.weight": t["W_dec"].T.contiguous().bfloat16(),
        "decoder.bias": t["b_dec"].bfloat16(),
    }
    save_file(stored, str(folder / "checkpoints" / "final.safetensors"))
    hp = {
        "d_model": d_model, "expansion_factor": d_sae // d_model, "d_sae": d_sae, "hook_point_in": hook_point,
        "hook_point_out": hook_point, "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": False,
        "norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": average_norm, "out": average_norm},
        "sparsity_include_decoder_norm": True, "act_fn": "jumprelu", "jump_relu_threshold": jump_relu_threshold,
        "top_k": 50, "lp": 1, "use_glu_encoder": False,
    }  # fmt: skip
    (folder / "hyperparams.json").write_text(json.dumps(hp, indent=1))
    return folder, {
        "W_enc": stored["encoder.weight"].float().T, "W_dec": stored["decoder.weight"].float().T,
        "b_enc": stored["encoder.bias"].float(), "b_dec": stored["decoder.bias"].float(),
    }  # fmt: skip


def write_kissane_sae(
    folder: str | Path,
    *,
    layer: int = 1,
    d_in: int = 32,
    d_sae: int = 64,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Kissane et al. hook_z SAE: ``<stem>.pt`` state dict + ``<stem>_cfg.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"gpt2-small_L{layer}_Hcat_z_lr1.20e-03_l11.00e+00_ds{d_sae}_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9"
    t = _rand_sae(d_in, d_sae, seed)
    path = folder / f"{stem}.pt"
    torch.save(t, path)
    cfg = {
        "seed": 49, "batch_size": 4096, "buffer_mult": 384, "lr": 0.0012, "num_tokens": 2000000000,
        "l1_coeff": 1.0, "beta1": 0.9, "beta2": 0.99, "dict_mult": d_sae // d_in, "seq_len": 128,
        "layer": layer, "enc_dtype": "fp32", "model_name": "gpt2-small", "site": "z",
        "device": "cuda", "reinit": "reinit", "head": "cat", "concat_heads": True, "resample_scheme": "anthropic",
        "anthropic_neuron_resample_scale": 0.2, "dead_direction_cutoff": 1e-06, "re_init_every": 25000,
        "anthropic_resample_last": 12500, "model_batch_size": 512, "buffer_size": 1572864,
        "buffer_batches": 12288, "act_name": f"blocks.{layer}.attn.hook_z", "act_size": d_in, "dict_size": d_sae,
        "name": f"gpt2-small_{layer}_{d_sae}_z",
    }  # fmt: skip
    (folder / f"{stem}_cfg.json").write_text(json.dumps(cfg, indent=1))
    return path, t


def write_dictionary_learning_sae(
    folder: str | Path,
    *,
    d_in: int = 32,
    d_sae: int = 64,
    layer: int = 1,
    with_config: bool = True,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A dictionary_learning ``AutoEncoder``: ``ae.pt`` (+ ``config.json``); returns (path, SAELens-style tensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = _rand_sae(d_in, d_sae, seed)
    state = {
        "bias": t["b_dec"],  # dictionary_learning's name for b_dec
        "encoder.weight": t["W_enc"].T.contiguous(),  # nn.Linear(d_in, d_sae): (d_sae, d_in)
        "encoder.bias": t["b_enc"],
        "decoder.weight": t["W_dec"].T.contiguous(),  # nn.Linear(d_sae, d_in, bias=False): (d_in, d_sae)
    }
    path = folder / "ae.pt"
    torch.save(state, path)
    if with_config:
        cfg = {
            "trainer": {"trainer_class": "StandardTrainer", "dict_class": "AutoEncoder", "lr": 1e-3,
                        "l1_penalty": 0.1, "activation_dim": d_in, "dict_size": d_sae, "layer": layer,
                        "lm_name": "tiny", "submodule_name": f"resid_post_layer_{layer}", "device": "cpu", "seed": 0},
            "buffer": {"d_submodule": d_in, "io": "out", "n_ctxs": 100, "ctx_len": 128, "device": "cpu"},
        }  # fmt: skip
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return path, t


# --------------------------------------------------------- dictionaries of 2025-26 (issue 14)


def _save_st(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _rand(shape: tuple[int, ...], gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=gen)


def write_saelens_transcoder(
    folder: str | Path,
    *,
    d_in: int = 32,
    d_sae: int = 64,
    d_out: int = 32,
    hook_name: str = "blocks.1.mlp.hook_in",
    hook_name_out: str = "blocks.1.hook_mlp_out",
    architecture: str = "transcoder",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A SAELens 6 transcoder folder (``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
    ``jumprelu_skip_transcoder``): cfg.json with ``d_out`` and ``metadata.hook_name_out``, weights
    ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_out)``, ``b_dec (d_out,)``, ``W_skip (d_out, d_in)``."""
    gen = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": _rand((d_in, d_sae), gen, d_in**-0.5), "W_dec": _rand((d_sae, d_out), gen, d_sae**-0.5),
        "b_enc": _rand((d_sae,), gen, 0.1), "b_dec": _rand((d_out,), gen, 0.1),
    }  # fmt: skip
    if "jumprelu" in architecture:
        t["threshold"] = 0.05 + 0.1 * torch.rand(d_sae, generator=gen)
    if "skip" in architecture:
        t["W_skip"] = _rand((d_out, d_in), gen, d_in**-0.5)
    cfg = {
        "architecture": architecture, "d_in": d_in, "d_sae": d_sae, "d_out": d_out, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "tiny", "hook_name": hook_name,
                     "hook_name_out": hook_name_out, "hook_head_index": None},
    }  # fmt: skip
    folder = Path(folder)
    _save_st(t, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    return t


def write_saelens_batchtopk_as_jumprelu(
    folder: str | Path, *, d_in: int = 32, d_sae: int = 64, layer: int = 1, threshold: float = 0.07, seed: int = 0
) -> dict[str, torch.Tensor]:
    """What SAELens 6 saves for inference after BatchTopK or Matryoshka BatchTopK training (their
    ``get_inference_config_class`` is JumpReLU's): a ``jumprelu`` SAE whose ``threshold`` is the
    learned global top-k threshold, the same for every latent."""
    t = _rand_sae(d_in, d_sae, seed)
    t["threshold"] = torch.full((d_sae,), threshold)
    cfg = {
        "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "tiny", "hook_name": f"blocks.{layer}.hook_resid_post",
                     "hook_head_index": None, "neuronpedia_id": None},
    }  # fmt: skip
    folder = Path(folder)
    _save_st(t, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    return t


GEMMA_SCOPE_2_HF_POINTS = {
    "resid_post": ("model.layers.{L}.output", "model.layers.{L}.output", "sae"),
    "mlp_out": ("model.layers.{L}.post_feedforward_layernorm.output",) * 2 + ("sae",),
    "attn_out": ("model.layers.{L}.self_attn.o_proj.input",) * 2 + ("sae",),
    "transcoder": ("model.layers.{L}.pre_feedforward_layernorm.output",
                   "model.layers.{L}.post_feedforward_layernorm.output", "transcoder"),
    "clt": ("model.layers.{L}.pre_feedforward_layernorm.output",
            "model.layers.{L}.post_feedforward_layernorm.output", "transcoder"),
}  # fmt: skip


def write_gemma_scope_2(
    root: str | Path,
    *,
    kind: str = "resid_post",
    layer: int = 1,
    all_layers: bool = False,
    width: str = "16k",
    l0: str = "big",
    affine: bool = False,
    d_in: int = 32,
    d_sae: int = 64,
    n_layers: int = 2,
    with_config: bool = True,
    model_name: str = "google/gemma-3-270m-pt",
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Gemma Scope 2 folder ``root/<kind>[_all]/layer_L_width_W_l0_X[_affine]/`` with
    ``params.safetensors`` (lower-case ``w_enc``, ``w_dec``, ``b_enc``, ``b_dec``, ``threshold``, and
    ``affine_skip_connection (d_in, d_out)`` when affine) and ``config.json`` (``hf_hook_point_in``,
    ``hf_hook_point_out``, ``width``, ``l0``, ``type``, ``affine_connection``, ``architecture``).
    A ``clt`` has ``w_dec (d_sae, n_layers, d_in)`` with zeros before its layer."""
    gen = torch.Generator().manual_seed(seed)
    name = f"layer_{layer}_width_{width}_l0_{l0}" + ("_affine" if affine else "")
    folder = Path(root) / (kind + ("_all" if all_layers else "")) / name
    t = {
        "w_enc": _rand((d_in, d_sae), gen, d_in**-0.5), "b_enc": _rand((d_sae,), gen, 0.1),
        "threshold": 0.05 + 0.1 * torch.rand(d_sae, generator=gen), "b_dec": _rand((d_in,), gen, 0.1),
    }  # fmt: skip
    if kind == "clt":
        w_dec = _rand((d_sae, n_layers, d_in), gen, d_sae**-0.5)
        w_dec[:, :layer] = 0.0  # a feature at layer L writes only to layers L..
        t["w_dec"] = w_dec
    else:
        t["w_dec"] = _rand((d_sae, d_in), gen, d_sae**-0.5)
    if affine:
        t["affine_skip_connection"] = _rand((d_in, d_in), gen, d_in**-0.5)
    _save_st(t, folder / "params.safetensors")
    if with_config:
        point_in, point_out, typ = GEMMA_SCOPE_2_HF_POINTS[kind]
        cfg = {
            "hf_hook_point_in": point_in.format(L=layer), "hf_hook_point_out": point_out.format(L=layer),
            "width": d_sae, "model_name": model_name, "architecture": "jump_relu", "l0": 60, "type": typ,
            "affine_connection": affine,
        }  # fmt: skip
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder, t


def write_circuit_tracer_transcoders(
    folder: str | Path,
    *,
    n_layers: int = 2,
    d_model: int = 32,
    d_sae: int = 64,
    activation: str = "jump_relu",
    skip: bool = False,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """circuit-tracer per-layer transcoders: ``layer_i.safetensors`` (``W_enc (d_sae, d_model)``,
    ``W_dec (d_sae, d_model)``, ``b_enc``, ``b_dec``, ``activation_function.threshold``,
    ``W_skip (d_model, d_model)`` used as ``x @ W_skip.T``) and ``config.yaml``."""
    import yaml

    folder = Path(folder)
    out = []
    for i in range(n_layers):
        gen = torch.Generator().manual_seed(seed + i)
        t = {
            "W_enc": _rand((d_sae, d_model), gen, d_model**-0.5), "W_dec": _rand((d_sae, d_model), gen, d_sae**-0.5),
            "b_enc": _rand((d_sae,), gen, 0.1), "b_dec": _rand((d_model,), gen, 0.1),
        }  # fmt: skip
        if activation == "jump_relu":
            t["activation_function.threshold"] = 0.05 + 0.1 * torch.rand(d_sae, generator=gen)
        if skip:
            t["W_skip"] = _rand((d_model, d_model), gen, d_model**-0.5)
        _save_st(t, folder / f"layer_{i}.safetensors")
        out.append(t)
    cfg = {"model_kind": "transcoder_set", "model_name": "tiny", "feature_input_hook": "mlp.hook_in",
           "feature_output_hook": "mlp.hook_out", "activation": activation, **(config or {})}  # fmt: skip
    if config is None or config:
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return out


def write_circuit_tracer_clt(
    folder: str | Path,
    *,
    n_layers: int = 3,
    d_model: int = 32,
    d_sae: int = 16,
    jump_relu: bool = True,
    feature_input_hook: str | None = "hook_resid_mid",
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """circuit-tracer's cross-layer transcoder files: ``W_enc_i.safetensors`` (``W_enc_i (d_sae,
    d_model)``, ``b_enc_i``, ``b_dec_i``, ``threshold_i``) and ``W_dec_i.safetensors`` (``W_dec_i
    (d_sae, n_layers - i, d_model)``), plus ``config.yaml``."""
    import yaml

    folder = Path(folder)
    out = []
    for i in range(n_layers):
        gen = torch.Generator().manual_seed(seed + i)
        enc = {
            f"W_enc_{i}": _rand((d_sae, d_model), gen, d_model**-0.5), f"b_enc_{i}": _rand((d_sae,), gen, 0.1),
            f"b_dec_{i}": _rand((d_model,), gen, 0.1),
        }  # fmt: skip
        if jump_relu:
            enc[f"threshold_{i}"] = 0.05 + 0.1 * torch.rand(d_sae, generator=gen)
        dec = {f"W_dec_{i}": _rand((d_sae, n_layers - i, d_model), gen, d_sae**-0.5)}
        _save_st(enc, folder / f"W_enc_{i}.safetensors")
        _save_st(dec, folder / f"W_dec_{i}.safetensors")
        out.append({**enc, **dec})
    if feature_input_hook is not None:
        cfg = {"model_kind": "cross_layer_transcoder", "model_name": "tiny", "feature_input_hook": feature_input_hook,
               "feature_output_hook": "hook_mlp_out"}  # fmt: skip
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return out


def write_sparsify(
    root: str | Path,
    *,
    hookpoint: str = "layers.1",
    d_in: int = 32,
    d_sae: int = 64,
    k: int = 6,
    transcode: bool = False,
    skip: bool = False,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """An EleutherAI sparsify hookpoint folder: ``cfg.json`` (SparseCoderConfig + ``d_in``) and
    ``sae.safetensors`` (``encoder.weight (d_sae, d_in)``, ``encoder.bias``, ``W_dec (d_sae, d_in)``,
    ``b_dec``, ``W_skip (d_in, d_in)`` used as ``x @ W_skip.mT``)."""
    gen = torch.Generator().manual_seed(seed)
    t = {
        "encoder.weight": _rand((d_sae, d_in), gen, d_in**-0.5), "encoder.bias": _rand((d_sae,), gen, 0.1),
        "W_dec": _rand((d_sae, d_in), gen, d_sae**-0.5), "b_dec": _rand((d_in,), gen, 0.1),
    }  # fmt: skip
    if skip:
        t["W_skip"] = _rand((d_in, d_in), gen, d_in**-0.5)
    folder = Path(root) / hookpoint
    _save_st(t, folder / "sae.safetensors")
    cfg = {"activation": "topk", "expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": d_sae,
           "k": k, "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": d_in}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, t


def write_goodfire(
    folder: str | Path,
    *,
    name: str = "Llama-3.1-8B-Instruct-SAE-l1.pth",
    d_in: int = 32,
    d_sae: int = 64,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Goodfire SAE: one ``.pth`` state dict ``encoder_linear.weight (d_sae, d_in)``,
    ``encoder_linear.bias``, ``decoder_linear.weight (d_in, d_sae)``, ``decoder_linear.bias``."""
    gen = torch.Generator().manual_seed(seed)
    t = {
        "encoder_linear.weight": _rand((d_sae, d_in), gen, d_in**-0.5), "encoder_linear.bias": _rand((d_sae,), gen, 0.1),
        "decoder_linear.weight": _rand((d_in, d_sae), gen, d_sae**-0.5), "decoder_linear.bias": _rand((d_in,), gen, 0.1),
    }  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(t, folder / name)
    return folder / name, t


# ------------------------------------------------------------------------- a hub cache on disk

_GIT_FILES = (".json", ".yaml", ".yml", ".md", ".txt")


def publish_to_hub_cache(
    cache: str | Path, repo_id: str, src: str | Path, *, commit: str = "a1" * 20, ref: str = "main"
) -> Path:
    """Lay ``src``'s files out as huggingface_hub's cache holds a downloaded repository:
    ``models--ORG--REPO/blobs/<hash>`` (sha256 for LFS files, the git blob sha1 for small text
    files), ``snapshots/<commit>/<path>`` relative symlinks to them, and ``refs/<ref>`` holding the
    commit. Returns the snapshot folder."""
    import hashlib
    import os

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for f in sorted(Path(src).rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        if f.suffix in _GIT_FILES:
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        else:
            blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(repo / "blobs" / blob, link.parent), link)
    return snap


def write_dictionary_learning_batchtopk(
    folder: str | Path, *, matryoshka: bool = False, d_in: int = 32, d_sae: int = 64, layer: int = 1,
    k: int = 8, threshold: float = 0.07, seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:  # fmt: skip
    """dictionary_learning's BatchTopKSAE (``encoder.weight``, ``encoder.bias``, ``decoder.weight``,
    ``b_dec``, ``k``, scalar ``threshold``) or MatryoshkaBatchTopKSAE (``W_enc (d_in, d_sae)``,
    ``b_enc``, ``W_dec``, ``b_dec``, ``k``, ``threshold``, ``group_sizes``) + config.json; returns
    (path, SAELens-style tensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = _rand_sae(d_in, d_sae, seed)
    extra = {"k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(threshold)}
    if matryoshka:
        state = {**t, **extra, "group_sizes": torch.tensor([d_sae // 4, d_sae // 4, d_sae // 2])}
        dict_class, trainer_class = "MatryoshkaBatchTopKSAE", "MatryoshkaBatchTopKTrainer"
    else:
        state = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
                 "decoder.weight": t["W_dec"].T.contiguous(), "b_dec": t["b_dec"], **extra}  # fmt: skip
        dict_class, trainer_class = "BatchTopKSAE", "BatchTopKTrainer"
    torch.save(state, folder / "ae.pt")
    cfg = {"trainer": {"trainer_class": trainer_class, "dict_class": dict_class, "activation_dim": d_in,
                       "dict_size": d_sae, "k": k, "layer": layer, "lm_name": "tiny",
                       "submodule_name": f"resid_post_layer_{layer}"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder / "ae.pt", t
