"""Shared pieces of the weight passes: directions, norm folding, chunking, streaming top-k, moments.

Conventions every pass follows (and the build records in provenance):

* ``g`` is the gain of the norm that reads the residual stream at that point
  (:attr:`builders.weights.Norm.gain`, Gemma's ``1 + w`` included). Folding a
  direction ``d`` through a norm means ``g * d`` (LayerNorm also removes the
  mean of ``d``: its centring is linear and data-free). The data-dependent
  ``1/rms`` scale is never applied: a direction has no rms.
* A decoder row ``W_dec[f]`` in model units is ``W_dec[f] / input_scale``;
  an encoder column in model units is ``W_enc[:, f] * input_scale``.
* A ``hook_z`` decoder row lives in the concatenated head outputs ``z``; its
  residual-stream direction is ``sum_h d_f[h] @ W_O[h]`` (times the gain of
  Gemma-2's post-attention norm when folding).
* Which attention layer reads a site: ``resid_pre L`` -> L; every other site
  of layer L -> L + 1 (none past the last layer).
* Ties in a top-k are broken by the smaller index, so two builds give
  identical rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from builders.weights import ModelWeights, Norm, SAEWeights

# fp32 everywhere: bf16 matmuls on the CPU are emulated and slow, and the statistics want fp32 on a GPU too
# (weights kept in bf16 there are converted block by block).
COMPUTE_DTYPE = torch.float32


def reading_attention_layer(sae: SAEWeights, n_layers: int) -> int | None:
    """The first attention layer that reads what this SAE's site writes or holds.

    A transcoder writes the MLP output of its layer L, read by attention L + 1 on. A CLT writes
    a different decoder at every layer from L on, so no one direction reaches an attention layer:
    the attention, QK and OV passes leave CLTs out (docs/graph.md).
    """
    if sae.kind == "clt":
        return None
    layer = sae.layer if sae.site == "resid_pre" else sae.layer + 1
    return layer if layer < n_layers else None


def mlp_input_norm(model: ModelWeights, layer: int) -> Norm:
    """The norm that reads the residual stream into layer ``layer``'s MLP (ln1 where attention and MLP share it)."""
    lw = model.layers[layer]
    return lw.ln2 if lw.ln2 is not None else lw.ln1


def unit_gain(norm: Norm) -> Norm:
    """The same norm without its gain: what ln2.hook_normalized (before the gain) is read through."""
    return Norm(norm.kind, torch.ones_like(norm.weight), None, norm.eps)


def site_reader_norm(model: ModelWeights, site: str, layer: int) -> Norm:
    """The norm that next reads the residual stream at a site (used to fold encoders, ``ee``).

    A transcoder's site is already behind its norm: mlp_in (after the gain) is read through
    layer ``layer``'s MLP-input norm, ln2_normalized (before the gain) through it without its gain.
    """
    if site == "mlp_in":
        return mlp_input_norm(model, layer)
    if site == "ln2_normalized":
        return unit_gain(mlp_input_norm(model, layer))
    if site == "resid_pre":
        return model.layers[layer].ln1
    if site in ("resid_mid", "attn_out", "attn_z") and model.layers[layer].ln2 is not None:
        return model.layers[layer].ln2
    if layer + 1 < model.n_layers:
        return model.layers[layer + 1].ln1
    return model.ln_final


def attention_folding(fold: bool) -> dict[str, str]:
    """provenance["folding"] entry of every pass that reads a direction through an attention layer's input norm."""
    return {"attn/qk/ov": "x = ln1(l).gain * d (LayerNorm: centred first)" if fold else "none"}


def fold_direction(x: torch.Tensor, norm: Norm | None, *, center: bool = True) -> torch.Tensor:
    """g * x, with LayerNorm's centring when ``center``. x: (n, d_model)."""
    if norm is None:
        return x
    if center and norm.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)  # (n, d_model)
    return x * norm.gain.to(x)


def decoder_rows(model: ModelWeights, sae: SAEWeights, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Decoder rows in the SAE's own space, model units: (n, d_in)."""
    W = sae.W_dec[start:end].to(device=model.device, dtype=dtype)  # (n, d_in)
    return W / sae.input_scale if sae.input_scale != 1.0 else W


def encoder_columns(model: ModelWeights, sae: SAEWeights, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
    """Encoder columns as rows, model units: (n, d_in)."""
    E = sae.W_enc[:, start:end].T.to(device=model.device, dtype=dtype)  # (n, d_in)
    return E * sae.input_scale if sae.input_scale != 1.0 else E


def z_to_resid(model: ModelWeights, layer: int, z_dirs: torch.Tensor, *, fold_norms: bool) -> torch.Tensor:
    """hook_z directions (n, n_heads*d_head) -> residual stream (n, d_model) through W_O."""
    lw = model.layers[layer]
    zh = z_dirs.view(z_dirs.shape[0], model.n_heads, model.d_head)  # (n, H, d_head)
    out = torch.einsum("nhd,hdm->nm", zh, lw.W_O.to(z_dirs))  # (n, d_model)
    if fold_norms and lw.ln_attn_out is not None:
        # Gemma-2 normalises the attention output before adding it: fold its gain too.
        out = out * lw.ln_attn_out.gain.to(out)
    return out


def to_resid(model: ModelWeights, sae: SAEWeights, d: torch.Tensor, *, fold_norms: bool) -> torch.Tensor:
    """Directions of the space an SAE writes into (n, d_out) -> what they add to the residual stream (n, d_model)."""
    if sae.site == "attn_z":
        return z_to_resid(model, sae.layer, d, fold_norms=fold_norms)
    return d


def resid_directions(
    model: ModelWeights, sae: SAEWeights, start: int, end: int, *, fold_norms: bool, dtype: torch.dtype
) -> torch.Tensor:
    """What features [start, end) write into the residual stream: (n, d_model), not yet folded."""
    return to_resid(model, sae, decoder_rows(model, sae, start, end, dtype), fold_norms=fold_norms)


def write_space(sae: SAEWeights) -> tuple[str, str]:
    """(key, words) of the space an SAE's decoder writes into: random baselines are drawn there.

    A hook_z dictionary writes concatenated head outputs, which reach the
    residual stream only through W_O (its image: at most n_heads * d_head of
    d_model dimensions); every other (an SAE of the residual stream, a
    transcoder writing an MLP's output) writes the residual stream itself.
    """
    if sae.site == "attn_z":
        return f"z{sae.layer}", f"random unit hook_z directions of layer {sae.layer} through W_O"
    return "resid", "random unit residual-stream directions"


def read_space(sae: SAEWeights) -> str:
    """What the ee baseline's random directions are: the SAE's input space, sent through what its encoder sees."""
    if sae.site == "attn_z":
        return f"random unit hook_z directions of layer {sae.layer} through W_V and ln1({sae.layer}).gain"
    return "random unit directions of the SAE's input space times the gain of the norm that reads its site"


def ee_fold(model: ModelWeights, sae: SAEWeights, e: torch.Tensor, *, fold_norms: bool = True) -> torch.Tensor:
    """Encoder-space directions (n, d_in), model units -> directions whose product with W_E^T gives ee scores.

    The same map for the encoder columns and for the random directions of the reads criterion's baseline
    (:func:`builders.passes.predicts.token_criterion`), so both carry the same gain.
    """
    if sae.site == "attn_z":
        lw = model.layers[sae.layer]
        eh = e.view(e.shape[0], model.n_heads, model.d_head)  # (n, H, d_head)
        u = torch.einsum("nhd,hmd->nm", eh, lw.W_V.to(e))  # (n, d_model)
        g = lw.ln1.gain.to(u) if fold_norms else None
    else:
        u = e
        g = site_reader_norm(model, sae.site, sae.layer).gain.to(u) if fold_norms else None
    if g is not None:
        u = u * g
    return u * model.embed_scale


def random_write_directions(
    model: ModelWeights, sae: SAEWeights, n: int, seed: int, *, fold_norms: bool
) -> torch.Tensor:
    """``n`` seeded random directions of the SAE's write space, sent to the residual stream exactly as its decoder
    rows are (:func:`to_resid`): (n, d_model), not yet folded or normalised."""
    r = random_unit_directions(n, sae.W_dec.shape[1], seed, model.device).to(COMPUTE_DTYPE)  # (n, d_out)
    return to_resid(model, sae, r, fold_norms=fold_norms)


def random_unit_directions(n: int, d: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """Seeded isotropic unit vectors (n, d), drawn on the CPU so every device gets the same ones."""
    gen = torch.Generator().manual_seed(int(seed))
    r = torch.randn(n, d, generator=gen, dtype=torch.float32)  # (n, d)
    r = r / r.norm(dim=-1, keepdim=True)
    return r.to(device)


def chunks(start: int, end: int, size: int):
    """[start, end) in consecutive pieces of at most ``size``."""
    for s in range(start, end, size):
        yield s, min(s + size, end)


def sort_topk(values: np.ndarray, ids: np.ndarray, *, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Order each row's k entries by value (desc if ``largest``), ties by the smaller id."""
    key = -values if largest else values
    order = np.lexsort((ids, key), axis=-1)  # last key is primary
    return np.take_along_axis(values, order, -1), np.take_along_axis(ids, order, -1)


class ChunkTopK:
    """Exact running top-k per row over column tiles, for tiles too wide to ``torch.topk`` each.

    The k best values of a row lie in its k chunks (``chunk`` consecutive
    columns) with the best chunk extremes: any other chunk has k chunks above
    it, each holding an element better than all of its own. So a tile costs one
    fast reduction to chunk extremes, a small top-k over (k + t/chunk) extremes,
    and a copy of the few chunks that enter the kept set; ``result()`` runs one
    top-k over the k kept chunks. On the CPU that is several times cheaper than
    a ``torch.topk`` of every tile, whose cost barely depends on k. The kept
    chunks sit in slots, unordered; an incoming chunk takes an evicted one's slot.
    """

    def __init__(self, k: int, *, largest: bool = True, chunk: int = 64):
        self.k, self.largest, self.chunk = k, largest, chunk
        self.ext: torch.Tensor | None = None  # (n, kk) extreme of each kept chunk
        self.vals: torch.Tensor | None = None  # (n, kk, chunk) its values (padding: -inf / +inf)
        self.base: torch.Tensor | None = None  # (n, kk) int64 column id of its first value

    def update(self, tile: torch.Tensor, offset: int) -> torch.Tensor:
        """tile: (n, t) values of columns [offset, offset + t). Returns its (n,) row max (min if smallest)."""
        b, t = tile.shape
        c, k, largest = self.chunk, self.k, self.largest
        nc = -(-t // c)
        if t % c == 0 and tile.stride(1) == 1:
            tiles = tile.unflatten(1, (nc, c))  # (b, nc, c) no copy, rows may be strided
        else:  # a ragged last tile: pad with values that never win
            tiles = torch.full(
                (b, nc, c), float("-inf") if largest else float("inf"), dtype=tile.dtype, device=tile.device
            )
            tiles.view(b, nc * c)[:, :t] = tile
        ext = tiles.amax(2) if largest else tiles.amin(2)  # (b, nc)
        row_ext = ext.amax(1) if largest else ext.amin(1)  # (b,) exact, as a reduction of the tile would be
        if self.ext is None or self.ext.shape[1] < k:
            # filling: keep the best of everything seen until there are k chunks
            rows = torch.arange(b, device=tile.device)
            old = self.ext if self.ext is not None else ext[:, :0]
            kk_old = old.shape[1]
            kk = min(k, kk_old + nc)
            e, j = torch.cat([old, ext], 1).topk(kk, 1, largest=largest)  # (b, kk)
            jn = (j - kk_old).clamp(min=0)
            vals = tiles[rows[:, None], jn]  # (b, kk, c)
            base = offset + c * jn
            if kk_old:
                from_old = j < kk_old
                jo = j.clamp(max=kk_old - 1)
                old_vals = self.vals.view(b * kk_old, c)[(rows[:, None] * kk_old + jo).view(-1)].view(b, kk, c)
                vals = torch.where(from_old[:, :, None], old_vals, vals)
                base = torch.where(from_old, self.base.gather(1, jo), base)
            self.ext, self.vals, self.base = e, vals, base
            return row_ext
        worst = self.ext.amin(1) if largest else self.ext.amax(1)  # (b,) k-th best chunk extreme
        if not bool((row_ext > worst if largest else row_ext < worst).any()):
            return row_ext
        _, j = torch.cat([self.ext, ext], 1).topk(k, 1, largest=largest)  # (b, k) the new kept set
        incoming = j >= k  # (b, k) entries naming a chunk of this tile
        kept = torch.zeros(b, k + 1, dtype=torch.bool, device=tile.device)
        kept.scatter_(1, torch.where(incoming, k, j), True)  # column k is a sink for the incoming
        free_r, free_s = (~kept[:, :k]).nonzero(as_tuple=True)  # evicted slots, as many per row as incoming
        in_r, in_p = incoming.nonzero(as_tuple=True)  # both row-major, so they pair up row by row
        jn = j[in_r, in_p] - k  # chunk index within this tile
        self.vals.view(b * k, c)[free_r * k + free_s] = tiles[in_r, jn]
        self.ext[free_r, free_s] = ext[in_r, jn]
        self.base[free_r, free_s] = offset + c * jn
        return row_ext

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, ids), each (n, k), best first, ties by smaller id."""
        b, kk, c = self.vals.shape
        k = min(self.k, kk * c)
        v, j = self.vals.reshape(b, kk * c).topk(k, 1, largest=self.largest)  # (b, k)
        ids = (self.base[:, :, None] + torch.arange(c, device=self.base.device)).reshape(b, kk * c).gather(1, j)
        return sort_topk(v.double().cpu().numpy(), ids.cpu().numpy(), largest=self.largest)


class StreamingTopK:
    """Running top-k per row over column tiles, without materialising all columns.

    A tile only costs a ``torch.topk`` on the rows whose best entry in the tile
    (``extreme``, which the caller has from one ``amax``/``amin`` pass) beats their
    current k-th value; after the first few tiles those are few, so the cost is
    close to one read of each tile. ``largest=False`` keeps the k smallest.
    """

    def __init__(self, k: int, *, largest: bool = True):
        self.k, self.largest = k, largest
        self.vals: torch.Tensor | None = None  # (n, k) best first
        self.ids: torch.Tensor | None = None  # (n, k) int64 column ids
        self.payload: torch.Tensor | None = None  # (n, k) companion values of the kept columns, if given

    def update(
        self,
        tile: torch.Tensor,
        offset: int,
        extreme: torch.Tensor | None = None,
        payload: torch.Tensor | None = None,
    ) -> None:
        """tile: (n, t) values of columns [offset, offset + t); extreme: (n,) its row max (min if smallest).

        ``payload`` (n, t): values carried along with the kept columns (the
        signed score when ranking by magnitude); give it on every update or never.
        """
        if self.vals is None or self.vals.shape[1] < self.k:
            v, i = tile.topk(min(self.k, tile.shape[1]), dim=1, largest=self.largest)  # (n, <=k)
            p = None if payload is None else payload.gather(1, i)  # (n, <=k)
            i = i + offset
            if self.vals is not None:
                v, i, p = self._merge(self.vals, self.ids, self.payload, v, i, p)
            self.vals, self.ids, self.payload = v, i, p
            return
        if extreme is None:
            extreme = tile.amax(1) if self.largest else tile.amin(1)
        kth = self.vals[:, -1]  # (n,)
        better = extreme > kth if self.largest else extreme < kth  # (n,)
        n_better = int(better.sum())
        if n_better == 0:
            return
        if n_better == tile.shape[0]:
            # every row has a candidate (the usual case while k is large against the
            # columns seen so far): no copy of the tile's rows, no scatter back
            v, i = tile.topk(min(self.k, tile.shape[1]), dim=1, largest=self.largest)  # (n, <=k)
            p = None if payload is None else payload.gather(1, i)  # (n, <=k)
            self.vals, self.ids, self.payload = self._merge(self.vals, self.ids, self.payload, v, i + offset, p)
            return
        rows = better.nonzero(as_tuple=True)[0]  # (r,)
        v, i = tile[rows].topk(min(self.k, tile.shape[1]), dim=1, largest=self.largest)  # (r, <=k)
        p = None if payload is None else payload[rows].gather(1, i)  # (r, <=k)
        old_p = None if self.payload is None else self.payload[rows]
        v, i, p = self._merge(self.vals[rows], self.ids[rows], old_p, v, i + offset, p)
        self.vals[rows], self.ids[rows] = v, i
        if p is not None:
            self.payload[rows] = p

    def _merge(self, v1, i1, p1, v2, i2, p2):
        v, i = torch.cat([v1, v2], 1), torch.cat([i1, i2], 1)  # (r, 2k)
        kk = min(self.k, v.shape[1])
        v, j = v.topk(kk, dim=1, largest=self.largest)
        p = None if p1 is None else torch.cat([p1, p2], 1).gather(1, j)  # (r, kk)
        return v, i.gather(1, j), p

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, ids), each (n, k), best first, ties by smaller id."""
        v = self.vals.double().cpu().numpy()
        i = self.ids.cpu().numpy()
        return sort_topk(v, i, largest=self.largest)


STAT_NAMES = ("max", "min", "mean", "std", "skew", "kurtosis", "entropy", "top1_z")


@dataclass
class VocabScores:
    """Per-feature summary of a whole vocabulary score vector (du or ee)."""

    stats: dict[str, np.ndarray]  # STAT_NAMES -> (n,); kurtosis is EXCESS kurtosis (normal = 0)
    top_ids: np.ndarray  # (n, k) most positive, best first
    top_vals: np.ndarray  # (n, k)
    bot_ids: np.ndarray  # (n, k) most negative, most negative first
    bot_vals: np.ndarray  # (n, k)


@dataclass(frozen=True)
class VocabMoments:
    """Mean and covariance of the columns of W (d_model, d_vocab), in float64.

    The scores ``x @ W`` of any direction x then have the closed-form mean
    ``x . mean`` (= ``x . W.sum(1) / d_vocab``) and population variance
    ``x^T cov x`` (= ``x^T (W W^T) x / d_vocab - mean^2``, centred so that it
    does not cancel): no pass over the vocabulary per feature. Computing it
    costs one (d_model, d_model) Gram matrix per model, shared by every unit.
    """

    mean: torch.Tensor  # (d_model,) float64
    cov: torch.Tensor  # (d_model, d_model) float64


@torch.inference_mode()
def vocab_moments(W: torch.Tensor, *, tile: int = 8192) -> VocabMoments:
    """:class:`VocabMoments` of W (d_model, d_vocab), a vocabulary tile at a time (memory: one (d_model, tile))."""
    d, V = W.shape
    mean = torch.zeros(d, dtype=torch.float64, device=W.device)  # (d_model,)
    for v0, v1 in chunks(0, V, tile):
        mean += W[:, v0:v1].sum(1, dtype=torch.float64)
    mean /= V
    m32 = mean.to(COMPUTE_DTYPE)  # (d_model,)
    cov = torch.zeros(d, d, dtype=torch.float64, device=W.device)  # (d_model, d_model)
    for v0, v1 in chunks(0, V, tile):
        Wc = W[:, v0:v1].to(COMPUTE_DTYPE) - m32[:, None]  # (d_model, t) centred by the fp32 mean
        cov += (Wc @ Wc.T).double()
    cov /= V
    e = mean - m32.double()  # what the fp32 centring missed: E[(w - m32)(w - m32)^T] = cov + e e^T
    cov -= torch.outer(e, e)
    return VocabMoments(mean, cov)


@torch.inference_mode()
def vocab_scores(
    dirs: torch.Tensor,
    W: torch.Tensor,
    k: int,
    *,
    block_rows: int,
    vocab_tile: int,
    moments: VocabMoments | None = None,
) -> VocabScores:
    """Top-k, bottom-k and moments of ``dirs @ W`` without ever holding more than (block, tile).

    dirs: (n, d_model); W: (d_model, d_vocab). Mean and variance are closed
    forms (:class:`VocabMoments`, computed here unless given); the third and
    fourth moments are accumulated in float64 around the fp32 mean and
    corrected by the exact one, and the softmax entropy with an online
    log-sum-exp, so tiling changes nothing but rounding.
    """
    n, d_vocab = dirs.shape[0], W.shape[1]
    k = min(k, d_vocab)
    if moments is None:
        moments = vocab_moments(W)
    w_mean = moments.mean.to(device=dirs.device)  # (d_model,) float64
    w_cov32 = moments.cov.to(device=dirs.device, dtype=dirs.dtype)  # (d_model, d_model); fp32 costs ~1e-7 of var
    w_mean32 = w_mean.to(dirs.dtype)  # (d_model,)
    out = {s: np.empty(n) for s in STAT_NAMES}
    tops = np.empty((n, k), dtype=np.int64), np.empty((n, k)), np.empty((n, k), dtype=np.int64), np.empty((n, k))
    tile = min(vocab_tile, d_vocab)
    for r0, r1 in chunks(0, n, block_rows):
        X = dirs[r0:r1]  # (b, d_model)
        b = r1 - r0
        X64 = X.double()  # (b, d_model)
        mean = X64 @ w_mean  # (b,) exact
        var = ((X @ w_cov32).double() * X64).sum(1).clamp_min(0)  # (b,) population variance, closed form
        shift = X @ w_mean32  # (b,) the fp32 centre of the tiles; the moments are corrected for its rounding
        # one tile's centred logits c, c^2 and exp(c - m), side by side so that one batched Gram matrix
        # (b, 3, 3) gives sum c^3, sum c^4 and sum exp(c - m) c: a GEMM, 4x cheaper than three mul+sum
        # (3, b, tile): each plane is contiguous, so the matmul writes straight into the first (a (b, 3, tile)
        # layout makes torch.mm write through a strided view: measured 2x the matmul's time with 2 threads)
        P = torch.empty(3, b, tile, device=X.device, dtype=X.dtype)  # (3, b, tile)
        acc = torch.zeros(3, b, device=X.device, dtype=torch.float64)  # s3, s4 (around shift), and sum exp
        T = torch.zeros(b, device=X.device, dtype=torch.float64)  # sum exp(c - m) * c
        m = torch.full((b,), float("-inf"), device=X.device, dtype=torch.float64)  # running max of c
        hi = ChunkTopK(k, largest=True)
        lo = ChunkTopK(k, largest=False)
        for v0, v1 in chunks(0, d_vocab, tile):
            t = v1 - v0
            Pt = P[:, :, :t]  # (3, b, t)
            L = torch.mm(X, W[:, v0:v1], out=Pt[0])  # (b, t)
            tmax = hi.update(L, v0)  # (b,) row max of the tile
            lo.update(L, v0)
            L.sub_(shift[:, None])  # (b, t) centred
            torch.mul(L, L, out=Pt[1])  # (b, t)
            # online log-sum-exp over the centred values (entropy is shift-invariant)
            new_m = torch.maximum(m, (tmax - shift).double())  # (b,)
            rescale = torch.exp(m - new_m)
            acc[2] *= rescale
            T *= rescale
            m = new_m
            E = torch.sub(L, m.to(L.dtype)[:, None], out=Pt[2]).exp_()  # (b, t)
            G = torch.bmm(Pt.permute(1, 0, 2), Pt.permute(1, 2, 0)).double()  # (b, 3, 3) Gram of (c, c^2, exp(c - m))
            acc[0] += G[:, 0, 1]
            acc[1] += G[:, 1, 1]
            acc[2] += E.sum(1)
            T += G[:, 0, 2]
        V = float(d_vocab)
        delta = mean - shift.double()  # mean of the centred values
        m2, m3, m4 = var + delta**2, acc[0] / V, acc[1] / V  # raw moments around shift
        mu3 = m3 - 3 * delta * m2 + 2 * delta**3
        mu4 = m4 - 4 * delta * m3 + 6 * delta**2 * m2 - 3 * delta**4
        std = var.sqrt()
        safe = torch.where(std > 0, std, torch.ones_like(std))
        tv, ti = hi.result()
        bv, bi = lo.result()
        out["mean"][r0:r1] = mean.cpu().numpy()
        out["std"][r0:r1] = std.cpu().numpy()
        out["skew"][r0:r1] = torch.where(std > 0, mu3 / safe**3, torch.zeros_like(std)).cpu().numpy()
        out["kurtosis"][r0:r1] = torch.where(std > 0, mu4 / safe**4 - 3.0, torch.zeros_like(std)).cpu().numpy()
        out["entropy"][r0:r1] = (m + acc[2].log() - T / acc[2]).cpu().numpy()
        out["max"][r0:r1] = tv[:, 0]
        out["min"][r0:r1] = bv[:, 0]
        out["top1_z"][r0:r1] = (
            torch.where(std > 0, (torch.from_numpy(tv[:, 0]).to(mean) - mean) / safe, torch.zeros_like(std))
            .cpu()
            .numpy()
        )
        tops[0][r0:r1], tops[1][r0:r1], tops[2][r0:r1], tops[3][r0:r1] = ti, tv, bi, bv
    return VocabScores(out, tops[0], tops[1], tops[2], tops[3])


class Columns:
    """The "other side" of a streamed top-k (QK keys, OV targets, cosine columns), block by block.

    ``make(c0, c1)`` computes columns [c0, c1) from the SAE weights as a
    (H, d, c1 - c0) tensor. Blocks are always ``chunks(0, n_cols, block)``, so
    a cached instance (every block kept: ``nbytes`` of memory, the size of a
    decoder) and a streamed one (each block recomputed per sweep, one block of
    memory) hand out bit-identical tensors and give bit-identical rows. The
    build caches iff ``nbytes`` fits its memory budget (``BuildConfig.cache_bytes``).
    """

    def __init__(
        self, n_cols: int, heads: int, dim: int, make: Callable[[int, int], torch.Tensor], *, block: int, cache: bool
    ):
        self.n_cols, self.heads, self.dim, self.block = n_cols, heads, dim, max(1, int(block))
        self._make = make
        self._blocks = [make(c0, c1) for c0, c1 in chunks(0, n_cols, self.block)] if cache else None

    @classmethod
    def from_tensor(cls, t: torch.Tensor, *, block: int = 8192) -> Columns:
        """Wrap an already materialised (H, d, n_cols) tensor (views, no copy)."""
        return cls(t.shape[2], t.shape[0], t.shape[1], lambda c0, c1: t[:, :, c0:c1], block=block, cache=True)

    @property
    def cached(self) -> bool:
        return self._blocks is not None

    @property
    def nbytes(self) -> int:
        """Memory the whole set of columns takes in fp32 (what caching costs)."""
        return 4 * self.heads * self.dim * self.n_cols

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(c0, c1, block (H, d, c1 - c0)) in column order."""
        for j, (c0, c1) in enumerate(chunks(0, self.n_cols, self.block)):
            yield c0, c1, (self._blocks[j] if self._blocks is not None else self._make(c0, c1))


@torch.inference_mode()
def stream_topk(
    lefts: list[torch.Tensor],
    right: Columns,
    k: int,
    *,
    scale: float = 1.0,
    excludes: list[torch.Tensor] | None = None,
    signed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row and head, the k columns of ``scale * left[:, h] @ right[h]`` with the largest |score|.

    lefts: row blocks, each (b, H, d); right: the (H, d, n_cols) columns,
    swept ONCE for all row blocks (so a streamed ``right`` is computed once per
    call), never whole. ``excludes``: per row block, (b,) column to skip per
    row (a feature and itself), or None. ``signed=True`` ranks by the signed
    score instead of its magnitude. The signed scores returned are the ones
    ranked (same matmul). Returns scores and column ids, each (n, H, k) for the
    rows of all blocks in order, best first, ties by smaller id.
    """
    H = right.heads
    k = min(k, right.n_cols - (1 if excludes is not None else 0))
    tops = [[StreamingTopK(k, largest=True) for _ in range(H)] for _ in lefts]
    # Two score tiles reused for every (block, row block, head): no allocation in the loop, so the
    # allocator neither page-faults fresh memory nor keeps freed tiles resident.
    like = lefts[0] if lefts else torch.empty(0)
    size = max((left.shape[0] for left in lefts), default=0) * min(right.block, right.n_cols)
    S_buf = torch.empty(size, device=like.device, dtype=like.dtype)
    A_buf = S_buf if signed else torch.empty_like(S_buf)
    for c0, c1, blk in right:  # blk: (H, d, c)
        for bi, left in enumerate(lefts):
            excl = excludes[bi] if excludes is not None else None
            rows = None
            if excl is not None:
                rows = ((excl >= c0) & (excl < c1)).nonzero(as_tuple=True)[0]  # (r,)
            n_b, c = left.shape[0], c1 - c0
            S, A = S_buf[: n_b * c].view(n_b, c), A_buf[: n_b * c].view(n_b, c)  # (b, c) each
            for h in range(H):
                torch.matmul(left[:, h], blk[h], out=S)  # (b, c) signed scores
                if scale != 1.0:
                    S.mul_(scale)
                if not signed:
                    torch.abs(S, out=A)  # (b, c) ranking key
                if rows is not None and rows.numel():
                    A[rows, excl[rows] - c0] = float("-inf")
                tops[bi][h].update(A, c0, payload=None if signed else S)
    n = sum(left.shape[0] for left in lefts)
    vals = np.empty((n, H, k))
    ids = np.empty((n, H, k), dtype=np.int64)
    r0 = 0
    for bi, left in enumerate(lefts):
        r1 = r0 + left.shape[0]
        for h, st in enumerate(tops[bi]):
            s = st.vals if signed else st.payload  # (b, k) signed scores of the chosen columns
            s_np, sel_np = s.double().cpu().numpy(), st.ids.cpu().numpy()
            key = s_np if signed else np.abs(s_np)
            order = np.lexsort((sel_np, -key), axis=-1)  # by |score| desc, ties by smaller id
            vals[r0:r1, h] = np.take_along_axis(s_np, order, -1)
            ids[r0:r1, h] = np.take_along_axis(sel_np, order, -1)
        r0 = r1
    return vals, ids
