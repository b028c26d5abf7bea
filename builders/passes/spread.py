"""Decoder spread (``spread``): how a cross-layer transcoder feature's decoder norm spreads over the layers it writes.

A CLT feature read at layer L writes a decoder row into the MLP output of L and
of every later layer; ``decoder_spread`` keeps ``||W_dec[f, u]||`` per output
layer u (its direct logit effect, the ``du`` pass, uses their sum). Other
dictionaries write one layer and get no rows.
"""

from __future__ import annotations

import torch

from builders.passes.base import Context, Pass, Rows, Step, Target, Unit
from builders.passes.common import chunks
from builders.weights import SAEWeights


@torch.inference_mode()
def decoder_spread(sae: SAEWeights, start: int, end: int, *, block: int = 1024) -> torch.Tensor:
    """||W_dec[f, u]|| for features [start, end) and each layer u it writes: (end - start, len(write_layers))."""
    parts = [sae.decoder_layers(s, e).float().norm(dim=-1) for s, e in chunks(start, end, block)]  # (b, J) each
    out = torch.cat(parts)
    return out / sae.input_scale if sae.input_scale != 1.0 else out


def targets(ctx: Context) -> list[Target]:
    return [Target(i) for i, s in enumerate(ctx.saes) if s.kind == "clt"]


def _run(ctx: Context, u: Unit) -> Rows:
    sae = ctx.saes[u.sae]
    norms = decoder_spread(sae, u.start, u.end).double().cpu().numpy()
    return Rows(decoder_spread=(tuple(sae.write_layers), norms))


PASS = Pass(
    name="spread",
    order=15,
    help="cross-layer transcoders: each feature's decoder norm at every layer it writes",
    reads="one",
    targets=targets,
    steps=(Step("spread", _run),),
    writes=("decoder_spread",),
    conventions={"spread": "||W_dec[f, u]|| / input_scale per output layer u of a CLT"},
)
