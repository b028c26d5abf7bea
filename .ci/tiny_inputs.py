"""Write a tiny random model and a tiny SAE for CI's `sae-atlas build` smoke run (no hub access).

    python .ci/tiny_inputs.py OUT_DIR     # writes OUT_DIR/model (transformers) and OUT_DIR/sae (SAELens)

The model is a 2-layer GPT-2 made from a transformers config with random weights and a
word-level tokenizer of its own (so a build has real token strings), saved with
``save_pretrained``; the SAE is a TopK SAE on ``blocks.1.hook_resid_post`` in the SAELens 6
layout (``cfg.json`` + ``sae_weights.safetensors``). Seeded: the same files every run.
Needs torch, transformers, tokenizers and safetensors (the build extra), nothing from this repo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

D_MODEL, D_SAE, K, N_LAYERS = 32, 64, 8, 2
WORDS = (
    "the of and to in is was he for it with as his on be at by had are but from or have an they which one you "
    "were all we when there can been has more if no out do so what up its about into than them only other new "
    "some could time these two may first then any like now my over such our man me even most made after also "
    "did many before must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here between both life"
).split()


def write_model(folder: Path) -> None:
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>", bos_token="<unk>")
    cfg = GPT2Config(
        vocab_size=len(vocab), n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=32,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # the library's init leaves norm gains at 1 and biases at 0: draw them too
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] == D_MODEL else 0.0))
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)


def write_sae(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    W_dec = torch.randn(D_SAE, D_MODEL, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": W_dec.T.contiguous() * 0.5,  # (d_in, d_sae)
        "W_dec": W_dec.contiguous(),  # (d_sae, d_in)
        "b_enc": 0.1 * torch.randn(D_SAE, generator=g),
        "b_dec": 0.1 * torch.randn(D_MODEL, generator=g),
    }
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": "topk", "d_in": D_MODEL, "d_sae": D_SAE, "k": K, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.5.0", "model_name": "tiny-gpt2",
                     "hook_name": f"blocks.{N_LAYERS - 1}.hook_resid_post", "hook_head_index": None},
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    write_model(out / "model")
    write_sae(out / "sae")
    print(f"wrote {out / 'model'} and {out / 'sae'}")
