"""What a dictionary reads and writes, and its folder in the SAELens 6.x layout.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` (SAELens's names).

- An SAE: ``architecture: "topk"`` (SAELens's ``TopKSAEConfig``), tensors ``W_enc (d_in, d_sae)``,
  ``W_dec (d_sae, d_in)``, ``b_enc (d_sae,)``, ``b_dec (d_in,)``; ``apply_b_dec_to_input: true``.
- A transcoder: the fields SAELens's ``TranscoderConfig.to_dict()`` writes (``d_in``, ``d_sae``,
  ``d_out``, ``apply_b_dec_to_input: false``, ``normalize_activations``, ``reshape_activations``,
  ``metadata`` with ``hook_name`` and ``hook_name_out``) and the same four tensor names with
  ``W_dec (d_sae, d_out)``, ``b_dec (d_out,)``. SAELens 6.x registers ``transcoder`` (ReLU),
  ``skip_transcoder`` and ``jumprelu_transcoder`` but no TopK transcoder, so these say
  ``architecture: "topk_transcoder"`` with ``k`` as the TopK SAE config has it: a reader that does not
  know TopK refuses the folder instead of running it as a ReLU transcoder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from builders.weights import hook_name_of
from examples.smollm2.activations import MLP_IN_SUFFIX, parse_hook
from examples.smollm2.errors import TrainError

SAE_CFG_FILENAME = "cfg.json"  # SAELens names
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
TENSOR_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")
TRANSCODER_ARCHITECTURE = "topk_transcoder"


@dataclass(frozen=True)
class DictionarySpec:
    """One dictionary to train: the hook its encoder reads and, for a transcoder, the hook it predicts."""

    hook_name: str
    hook_name_out: str | None = None  # None: an SAE (reconstructs hook_name)

    def __post_init__(self) -> None:
        parse_hook(self.hook_name)  # TrainError for a hook the trainer cannot collect
        if self.hook_name_out is not None:
            (l_in, s_in), (l_out, s_out) = parse_hook(self.hook_name), parse_hook(self.hook_name_out)
            if (s_in, s_out) != ("mlp_in", "mlp_out") or l_in != l_out:
                raise TrainError(f"a transcoder maps blocks.L.{MLP_IN_SUFFIX} to blocks.L.hook_mlp_out of one layer, "
                                 f"not {self.hook_name} -> {self.hook_name_out}")  # fmt: skip

    @classmethod
    def transcoder(cls, layer: int) -> DictionarySpec:
        """Layer ``layer``'s MLP: normalised MLP input -> MLP output."""
        return cls(f"blocks.{int(layer)}.{MLP_IN_SUFFIX}", hook_name_of(layer, "mlp_out"))

    @classmethod
    def parse(cls, text: str) -> DictionarySpec:
        """``blocks.L.hook_...`` (an SAE) or ``transcoder:L``."""
        if text.startswith("transcoder:"):
            layer = text.removeprefix("transcoder:")
            if not layer.isdigit():
                raise TrainError(f"{text!r}: expected transcoder:LAYER")
            return cls.transcoder(int(layer))
        return cls(text)

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None

    @property
    def layer(self) -> int:
        return parse_hook(self.hook_name)[0]

    @property
    def hooks(self) -> tuple[str, ...]:
        """The activations training needs."""
        return (self.hook_name,) + ((self.hook_name_out,) if self.hook_name_out else ())

    @property
    def name(self) -> str:
        """Folder name: ``layer_14_resid_post``, ``layer_14_hook_z``, ``layer_14_transcoder``."""
        layer, site = parse_hook(self.hook_name)
        if self.is_transcoder:
            return f"layer_{layer}_transcoder"
        return f"layer_{layer}_{'hook_z' if site == 'attn_z' else site}"

    def __str__(self) -> str:
        return f"{self.hook_name} -> {self.hook_name_out}" if self.is_transcoder else self.hook_name


def saelens_cfg(
    spec: DictionarySpec,
    d_in: int,
    d_sae: int,
    k: int,
    *,
    d_out: int | None = None,
    model_name: str,
    context_size: int,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A cfg.json dict in the SAELens 6.x layout (see the module docstring), our own record under metadata."""
    _layer, site = parse_hook(spec.hook_name)
    meta: dict[str, Any] = {
        "model_name": model_name,
        "hook_name": spec.hook_name,
        "hook_head_index": None,
    }
    if spec.is_transcoder:
        meta |= {"hook_name_out": spec.hook_name_out, "hook_head_index_out": None}
    meta |= {
        "context_size": context_size,
        "prepend_bos": True,  # <|endoftext|> at position 0, whose activations are not trained on
        "seqpos_slice": [1, None],
        # a transcoder reads the norm's output WITH its gain: TransformerLens must not fold the gain away
        "model_from_pretrained_kwargs": {"fold_ln": False} if spec.is_transcoder else {},
        "training_architecture": "topk",
    }
    meta.update(metadata or {})
    cfg: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not spec.is_transcoder,  # SAELens refuses True for a transcoder
        "normalize_activations": "none",  # the training scale is folded into the weights
        "reshape_activations": "hook_z" if site == "attn_z" else "none",
    }
    if spec.is_transcoder:
        cfg["d_out"] = d_in if d_out is None else d_out
    cfg |= {"k": k, "rescale_acts_by_decoder_norm": False, "metadata": meta}
    cfg["architecture"] = TRANSCODER_ARCHITECTURE if spec.is_transcoder else "topk"
    return cfg


def _check_weights(weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    d_out = cfg.get("d_out", d_in)
    want = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,)}
    for name, shape in want.items():
        if name not in weights:
            raise TrainError(f"dictionary weights lack {name}")
        if tuple(weights[name].shape) != shape:
            raise TrainError(f"{name} has shape {tuple(weights[name].shape)}, expected {shape}")


def save_saelens_folder(
    folder: str | os.PathLike, weights: dict[str, torch.Tensor], cfg: dict[str, Any], *, dtype: torch.dtype
) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` atomically (a temp folder renamed into place)."""
    folder = Path(folder)
    _check_weights(weights, cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a dictionary folder is meant to be shared
    try:
        tensors = {name: weights[name].detach().to(dtype).cpu().contiguous() for name in TENSOR_NAMES}
        save_file(tensors, str(tmp / SAE_WEIGHTS_FILENAME))
        (tmp / SAE_CFG_FILENAME).write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_saelens_folder(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(float32 weights, cfg) of a folder written by :func:`save_saelens_folder`."""
    folder = Path(folder)
    cfg_path, w_path = folder / SAE_CFG_FILENAME, folder / SAE_WEIGHTS_FILENAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise TrainError(f"{folder}: not an SAELens folder (needs {SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME})")
    cfg = json.loads(cfg_path.read_text())
    with safe_open(str(w_path), framework="pt") as f:
        weights = {name: f.get_tensor(name).float() for name in f.keys()}  # noqa: SIM118
    _check_weights(weights, cfg)
    return weights, cfg


def spec_of_cfg(cfg: dict[str, Any]) -> DictionarySpec:
    """The DictionarySpec a saved cfg.json describes."""
    meta = cfg.get("metadata", {})
    return DictionarySpec(meta["hook_name"], meta.get("hook_name_out"))


def save_packed(path: str | os.PathLike, weights: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """One float16 safetensors file per dictionary with its cfg.json in the file's metadata (a GPU run's output)."""
    _check_weights(weights, cfg)
    tensors = {name: weights[name].to(torch.float16).contiguous() for name in TENSOR_NAMES}
    save_file(tensors, str(path), metadata={"cfg": json.dumps(cfg)})


def unpack(packed: str | os.PathLike, folder: str | os.PathLike, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Turn a :func:`save_packed` file into an SAELens folder (float16 tensors), merging ``extra_metadata``."""
    with safe_open(str(packed), framework="pt") as f:
        meta = f.metadata() or {}
        if "cfg" not in meta:
            raise TrainError(f"{packed}: no cfg in the safetensors metadata; not written by this trainer")
        weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    cfg = json.loads(meta["cfg"])
    cfg["metadata"].update(extra_metadata or {})
    return save_saelens_folder(folder, weights, cfg, dtype=torch.float16)
