"""Chapters 4 and 5 in NumPy: the book's GPT over a whole batch at once, backward by hand.

The function is the book's (SPEC sections 4-6) in float64; what changes is how it is computed.
Instead of one `Value` per number, each layer kind is a pair of functions on arrays, llm.c
style: `*_forward` computes the layer for every position of a document (a causal mask keeps
each position from seeing later ones) and returns what its backward needs; `*_backward` is its
mirror, turning the gradient of the output into the gradients of the inputs and adding (`+=`)
the weights' gradients into the arrays it is given. No autograd library is involved.

Every layer takes one document, (T, C), or a batch of them, (B, T, C). The engine runs a batch
as one array pass (chapter 7's batching) and computes only its real positions: the documents
are padded on the right to the longest one's prediction count, and a `Grid` records where each
real position sits. The per-position layers (rmsnorm, the linear maps, the MLP, cross-entropy)
take the real positions as the rows of one matrix (N, C); attention alone works on the padded
(B, T) grid, where the causal mask keeps every real position from seeing the padding after it.
A padded position thus has no loss and no gradient. Each real position of document b weighs
1 / (n_b * B), so the loss is still the mean over documents of each one's mean cross-entropy.
Text mode's windows all have the same length: nothing to pad. One document alone (the book's
loop, batch size 1) takes the (T, C) path, bit for bit the arithmetic it always had.

A block reads as nanoGPT's two lines, in the book's order (branch + residual):
`x = attn(rmsnorm(x)) + x; x = mlp(rmsnorm(x)) + x`, and `block_backward` is the same two lines
backwards. Sampling runs the very same functions over
one position, with the keys and values of the earlier positions kept in a cache.

The weights, their gradients and Adam's moments are four flat arrays in the shared layout
(`engines.base.Layout`); every matrix is a view into them, so an optimizer step is a handful
of array operations.

Exports: `NumpyEngine`, and the layer pairs `embedding_forward`/`embedding_backward`,
`rmsnorm_forward`/`rmsnorm_backward`, `linear_forward`/`linear_backward`,
`attention_forward`/`attention_backward`, `mlp_forward`/`mlp_backward`,
`block_forward`/`block_backward`, `cross_entropy_forward`/`cross_entropy_backward`; for
batches, `pad_batch` and `Grid`.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Mapping
from typing import Any, NamedTuple

# The matrices here are tiny: BLAS worker threads cost more to start and stop than they save.
# (Only a default: a value the user set wins, and it matters only if numpy is not loaded yet.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ..config import Config  # noqa: E402
from .base import Engine, initial_values  # noqa: E402

Array = np.ndarray

# ufunc reductions called directly: the ndarray methods add a Python-level wrapper per call.
_add_reduce = np.add.reduce
_max_reduce = np.maximum.reduce
_dot = np.dot  # on small 2-D arrays a little cheaper than the @ operator

# Small constant arrays, made once per size and never written to.


@functools.cache
def _column(n: int, value: float) -> Array:
    return np.full((n, 1), value)  # (n, 1)


@functools.cache
def _rows(T: int) -> Array:
    return np.arange(T)


@functools.cache
def causal_mask(T: int, start: int = 0) -> Array:
    """(T, start + T) additive mask for queries at positions start.. over keys 0..: 0 where a query
    may look (itself and earlier), -inf elsewhere."""
    return np.triu(np.full((T, start + T), -np.inf), start + 1)


def row_sums(x: Array) -> Array:
    """Sum over the last axis, kept as a column: (..., n) -> (..., 1).

    For 2-D arrays a product with a column of ones is numpy's cheapest way on tiny arrays.
    """
    if x.ndim == 2:
        return _dot(x, _column(x.shape[-1], 1.0))
    return _add_reduce(x, axis=-1, keepdims=True)


def row_means(x: Array) -> Array:
    """Mean over the last axis, kept as a column.

    Each term is scaled by 1/n before the sum rather than after: for a power-of-two n (the book's
    16) that is the very same number, otherwise it differs in the last bit.
    """
    n = x.shape[-1]
    if x.ndim == 2:
        return _dot(x, _column(n, 1 / n))
    return _dot(rows2d(x), _column(n, 1 / n)).reshape(*x.shape[:-1], 1)


def rows2d(x: Array) -> Array:
    """(..., n) -> (rows, n): a batch's positions as the rows of one matrix (one BLAS call, not B)."""
    return x if x.ndim == 2 else x.reshape(-1, x.shape[-1])


# --- embedding: token row plus position row -------------------------------------------------


def embedding_forward(wte: Array, wpe: Array, inputs: Array, start: int = 0) -> Array:
    """x[t] = wte[inputs[t]] + wpe[start + t]; inputs (T,) or (B, T)."""
    return wte[inputs] + wpe[start:start + inputs.shape[-1]]  # (T, C) or (B, T, C)


def embedding_backward(dx: Array, inputs: Array, dwte: Array, dwpe: Array) -> None:
    """Add dx into the rows it came from; a token seen twice collects both gradients."""
    np.add.at(dwte, inputs, dx)
    T = inputs.shape[-1]
    dwpe[:T] += dx if dx.ndim == 2 else _add_reduce(dx, axis=0)  # every document's position t uses wpe[t]


# --- rmsnorm: rescale each row to unit root-mean-square (no gain) ---------------------------


def rmsnorm_forward(x: Array) -> tuple[Array, Array]:
    """y = x * (mean(x^2) + 1e-5)^-1/2 per row; returns y and the per-row scale (T, 1)."""
    ms = row_means(x * x)  # (T, 1)
    scale = (ms + 1e-5) ** -0.5
    return x * scale, scale


def rmsnorm_backward(dy: Array, y: Array, scale: Array) -> Array:
    """dx = scale * (dy - y * mean(dy * y)): the scale depends on x too, hence the second term."""
    return scale * (dy - y * row_means(dy * y))


# --- linear: y = x W^T, no bias ------------------------------------------------------------


def linear_forward(x: Array, w: Array) -> Array:
    """y[t, i] = sum_j w[i, j] * x[t, j], for every position of x (T, n_in) or (B, T, n_in)."""
    if x.ndim == 2:
        return _dot(x, w.T)  # (T, n_out)
    return _dot(rows2d(x), w.T).reshape(*x.shape[:-1], w.shape[0])  # (B, T, n_out)


def linear_backward(dy: Array, x: Array, w: Array, dw: Array) -> Array:
    """dw += dy^T x (summed over every position of every document); returns dx = dy w."""
    if dy.ndim == 2:
        dw += _dot(dy.T, x)
        return _dot(dy, w)  # (T, n_in)
    dw += _dot(rows2d(dy).T, rows2d(x))
    return _dot(rows2d(dy), w).reshape(*dy.shape[:-1], w.shape[1])  # (B, T, n_in)


# --- softmax over the last axis ----------------------------------------------------------------


def softmax_forward(z: Array) -> Array:
    """softmax over the last axis; subtracting the max keeps exp() from overflowing."""
    e = np.exp(z - _max_reduce(z, axis=-1, keepdims=True))
    e *= row_sums(e) ** -1
    return e


def softmax_backward(dp: Array, p: Array) -> Array:
    """dz = p * (dp - sum(dp * p)) over the last axis."""
    return p * (dp - _add_reduce(dp * p, axis=-1, keepdims=True))


# --- causal self-attention: project, attend, project back -----------------------------------


class KVCache(NamedTuple):
    """One layer's keys and values of the positions seen so far, one row per position (sampling)."""

    keys: Array  # (block_size, C)
    values: Array  # (block_size, C)


class Grid(NamedTuple):
    """Where the rows of a packed batch sit in its padded (B, T) grid.

    A batch of documents of different lengths runs as its real positions only, one per row
    (N, C): the per-position layers (rmsnorm, linear, the MLP, cross-entropy) never compute a
    padded position. Attention alone needs the documents side by side, so it pads its q, k, v
    to (B, T, ...) and packs its output back; the causal mask keeps every real position from
    seeing the padding after it.
    """

    B: int
    T: int
    index: Array | None  # (N,) flat position b * T + t of each row, in order; None: nothing is padded

    def pad(self, rows: Array) -> Array:
        """(N, n) -> (B, T, n), zeros at the padded positions."""
        if self.index is None:
            return rows.reshape(self.B, self.T, -1)
        out = np.zeros((self.B * self.T, rows.shape[-1]))
        out[self.index] = rows
        return out.reshape(self.B, self.T, -1)

    def pack(self, x: Array) -> Array:
        """(B, T, ...) -> (N, ...): the real positions, one per row."""
        flat = x.reshape(self.B * self.T, *x.shape[2:])
        return flat if self.index is None else flat[self.index]


# (..., T, 3, H, hd) -> (3, ..., H, T, hd): q, k and v, each head's positions as one matrix.
_SPLIT_HEADS = {2: (1, 2, 0, 3), 3: (2, 0, 3, 1, 4)}  # by the ndim of qkv: one document, a batch


def attention_forward(x: Array, w_qkv: Array, w_o: Array, n_head: int, cache: KVCache | None = None,
                      start: int = 0, grid: Grid | None = None) -> tuple[Array, tuple]:
    """Every head at once: Wo (softmax(q k^T / sqrt(head_dim), causal) v), heads concatenated.

    `x` (T, C) holds positions start..start+T-1 (or a batch of documents from position 0:
    (B, T, C), or its real positions as rows (N, C) with their `grid`); `w_qkv` is (3C, C), the
    rows of Wq, Wk, Wv stacked. With a `cache` (one document only) the keys and values of
    earlier positions come from it (and this call's are added to it). Returns the output,
    shaped like x, and what backward needs.
    """
    qkv = linear_forward(x, w_qkv)  # (..., T, 3C), or (N, 3C)
    if grid is not None:
        qkv = grid.pad(qkv)  # (B, T, 3C), zeros at the padded positions
    *lead, T, C3 = qkv.shape  # lead: () for one document, (B,) for a batch
    C = C3 // 3
    hd = C // n_head
    q, k, v = qkv.reshape(*lead, T, 3, n_head, hd).transpose(_SPLIT_HEADS[qkv.ndim])  # each (..., H, T, hd)
    if cache is not None:
        cache.keys[start:start + T], cache.values[start:start + T] = qkv[:, C:2 * C], qkv[:, 2 * C:]
        k = cache.keys[:start + T].reshape(start + T, n_head, hd).transpose(1, 0, 2)  # (H, start + T, hd)
        v = cache.values[:start + T].reshape(start + T, n_head, hd).transpose(1, 0, 2)
    scores = q @ k.swapaxes(-1, -2)  # (..., H, T, start + T)
    scores *= hd ** -0.5
    if T > 1:  # a single newest position may look at everything before it
        scores += causal_mask(T, start)
    att = softmax_forward(scores)
    a = (att @ v).swapaxes(-3, -2).reshape(*lead, T, C)  # (..., T, C), the heads side by side
    if grid is not None:
        a = grid.pack(a)  # (N, C)
    return linear_forward(a, w_o), (x, q, k, v, att, a)


def attention_backward(dout: Array, cache: tuple, w_qkv: Array, w_o: Array, dw_qkv: Array,
                       dw_o: Array, grid: Grid | None = None) -> Array:
    """Gradient of attention_forward's output -> gradient of its input x; adds the weights' gradients.

    `grid`: the one forward was given (a batch packed as rows).
    """
    x, q, k, v, att, a = cache
    *lead, n_head, T, hd = q.shape
    da = linear_backward(dout, a, w_o, dw_o)  # shaped like a
    if grid is not None:
        da = grid.pad(da)  # (B, T, C); a padded position's gradient is 0
    da = da.reshape(*lead, T, n_head, hd).swapaxes(-3, -2)  # (..., H, T, hd)
    dqkv = np.empty((*lead, T, 3, n_head, hd))
    dq, dk, dv = dqkv.transpose(_SPLIT_HEADS[len(lead) + 2])  # views into dqkv, each (..., H, T, hd)
    np.matmul(att.swapaxes(-1, -2), da, out=dv)
    dscores = softmax_backward(da @ v.swapaxes(-1, -2), att)  # (..., H, T, T)
    dscores *= hd ** -0.5  # masked entries have att = 0, so they get no gradient
    np.matmul(dscores, k, out=dq)
    np.matmul(dscores.swapaxes(-1, -2), q, out=dk)
    dqkv = dqkv.reshape(*lead, T, 3 * n_head * hd)  # (..., T, 3C)
    if grid is not None:
        dqkv = grid.pack(dqkv)  # (N, 3C)
    return linear_backward(dqkv, x, w_qkv, dw_qkv)


# --- MLP: fc2(relu(fc1(x))) -----------------------------------------------------------------


def mlp_forward(x: Array, w_fc1: Array, w_fc2: Array) -> tuple[Array, tuple]:
    """Returns the output, shaped like x, and what backward needs: x and the hidden relu(fc1(x)).

    A batch's positions are independent here, so they go through as the rows of one matrix.
    """
    x2 = rows2d(x)  # (T, C) or (B*T, C)
    h = np.maximum(_dot(x2, w_fc1.T), 0.0)  # (rows, 4C)
    y = _dot(h, w_fc2.T)  # (rows, C)
    return (y if x.ndim == 2 else y.reshape(x.shape)), (x2, h)


def mlp_backward(dy: Array, cache: tuple, w_fc1: Array, w_fc2: Array, dw_fc1: Array, dw_fc2: Array) -> Array:
    """Adds the weights' gradients; returns dx, shaped like dy."""
    x, h = cache  # as rows: (T or B*T, C), (T or B*T, 4C)
    dy2 = rows2d(dy)
    dw_fc2 += _dot(dy2.T, h)
    dh = _dot(dy2, w_fc2)  # (rows, 4C)
    dh *= h > 0  # relu passes the gradient (factor 1) only where its output is positive (np.sign is 9x slower)
    dw_fc1 += _dot(dh.T, x)
    dx = _dot(dh, w_fc1)  # (rows, C)
    return dx if dy.ndim == 2 else dx.reshape(dy.shape)


# --- one transformer layer ----------------------------------------------------------------------


class BlockWeights(NamedTuple):
    """One layer's matrices: views into the weights (or into the gradients)."""

    qkv: Array  # (3C, C): Wq, Wk, Wv, adjacent in the book's order, as one matrix
    o: Array  # (C, C)
    fc1: Array  # (4C, C)
    fc2: Array  # (C, 4C)


class BlockActivations(NamedTuple):
    """What block_backward needs from block_forward."""

    norm1: tuple[Array, Array]  # rmsnorm's output and scale, before attention
    attn: tuple
    norm2: tuple[Array, Array]  # before the MLP
    mlp: tuple


def block_forward(x: Array, w: BlockWeights, n_head: int, cache: KVCache | None = None,
                  start: int = 0, grid: Grid | None = None) -> tuple[Array, BlockActivations]:
    """x = attn(rmsnorm(x)) + x; x = mlp(rmsnorm(x)) + x: attention looks back, the MLP thinks per position."""
    norm1 = rmsnorm_forward(x)
    a, attn = attention_forward(norm1[0], w.qkv, w.o, n_head, cache, start, grid)
    x = a + x
    norm2 = rmsnorm_forward(x)
    m, mlp = mlp_forward(norm2[0], w.fc1, w.fc2)
    x = m + x
    return x, BlockActivations(norm1, attn, norm2, mlp)


def block_backward(dx: Array, acts: BlockActivations, w: BlockWeights, dw: BlockWeights,
                   grid: Grid | None = None) -> Array:
    """block_forward backwards: each residual passes dx through and adds its branch's gradient."""
    dx = dx + rmsnorm_backward(mlp_backward(dx, acts.mlp, w.fc1, w.fc2, dw.fc1, dw.fc2), *acts.norm2)
    dx = dx + rmsnorm_backward(attention_backward(dx, acts.attn, w.qkv, w.o, dw.qkv, dw.o, grid), *acts.norm1)
    return dx


# --- cross-entropy of the softmax of the logits ---------------------------------------------


def cross_entropy_forward(logits: Array, targets: Array) -> tuple[Array, Array]:
    """Per-position -log softmax(logits)[target], shaped like targets ((T,) or (B, T)), and the probabilities."""
    probs = softmax_forward(logits)
    if targets.ndim == 1:
        return -np.log(probs[_rows(len(targets)), targets]), probs
    picked = rows2d(probs)[_rows(targets.size), targets.ravel()].reshape(targets.shape)  # (B, T)
    return -np.log(picked), probs


def cross_entropy_backward(probs: Array, targets: Array, dloss: float | Array) -> Array:
    """Gradient of sum_t dloss_t * loss_t with respect to the logits: dloss * (probs - onehot).

    `dloss` is one weight for every position, or one per position, shaped like targets.
    """
    dlogits = probs.copy()
    rows2d(dlogits)[_rows(targets.size), targets.ravel()] -= 1.0  # a view: dlogits is contiguous
    dlogits *= dloss[..., None] if isinstance(dloss, np.ndarray) else dloss
    return dlogits  # shaped like probs


def pad_batch(batch: list[list[int]], block_size: int) -> tuple[Array, Array, Array]:
    """Right-pad examples to T = the longest one's prediction count (at most block_size).

    Returns inputs and targets (B, T), where a padded position holds token 0 (any token would
    do: nothing real sees it and it has no loss), and each example's prediction count n (B,).
    """
    counts = np.array([min(block_size, len(tokens) - 1) for tokens in batch])  # (B,)
    inputs, targets = np.zeros((2, len(batch), int(counts.max())), dtype=np.intp)
    for b, (tokens, n) in enumerate(zip(batch, counts.tolist())):
        inputs[b, :n], targets[b, :n] = tokens[:n], tokens[1:n + 1]
    return inputs, targets, counts  # (B, T), (B, T), (B,)


# --- the engine -----------------------------------------------------------------------------


class Activations(NamedTuple):
    """What backward needs from the forward of one document (T rows) or of a batch (N rows, its grid)."""

    inputs: Array  # (T,), or the batch's padded (B, T)
    targets: Array  # one per row
    probs: Array
    dloss: float | Array  # d loss / d (each row's cross-entropy): 1/T, or 1 / (n_b * B) per row
    embed: tuple[Array, Array]  # the rmsnorm right after the embedding: output and scale
    blocks: list[BlockActivations]
    x: Array  # the last block's output, the input of lm_head
    grid: Grid | None = None  # a batch: where its rows sit in the padded (B, T) grid


class NumpyEngine(Engine):
    """The book's model and Adam on float64 arrays, a whole batch per forward/backward sweep."""

    name = "numpy"

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        super().__init__(config, vocab_size, rng)
        layout = self.layout
        self.params = np.array(initial_values(config, vocab_size, rng), dtype=np.float64)
        self.grads = np.zeros(layout.total)
        self.m = np.zeros(layout.total)  # Adam's first moment
        self.v = np.zeros(layout.total)  # Adam's second moment
        # Scratch for the optimizer step; the first keeps the last update (zero before any), for its size.
        self._tmp = np.zeros(layout.total), np.empty(layout.total)
        self.p = layout.views(self.params)  # name -> (n_out, n_in) view
        self.g = layout.views(self.grads)
        self.blocks = [self._block(self.params, i) for i in range(config.n_layer)]
        self.block_grads = [self._block(self.grads, i) for i in range(config.n_layer)]
        self._saved: Activations | None = None  # what backward needs from the last forward
        self._starts = np.array(list(layout.offsets.values()))  # where each matrix starts in the flat arrays
        self._squares = np.empty((3, layout.total))  # scratch for the matrix statistics

    def _block(self, flat: Array, i: int) -> BlockWeights:
        views = self.layout.views(flat)
        qkv = flat[self.layout.span(f"layer{i}.attn_wq", f"layer{i}.attn_wv")].reshape(-1, self.config.n_embd)
        return BlockWeights(qkv, views[f"layer{i}.attn_wo"], views[f"layer{i}.mlp_fc1"], views[f"layer{i}.mlp_fc2"])

    # The model.

    def _gpt(self, inputs: Array, caches: list[KVCache] | None = None, start: int = 0,
             grid: Grid | None = None) -> tuple[Array, tuple]:
        """The book's gpt() for the positions start.. of `inputs` at once: (T, V) logits, and the activations.

        With a `grid`, `inputs` is a padded batch (B, T) and the logits are its real positions' (N, V).
        """
        p = self.p
        x = embedding_forward(p["wte"], p["wpe"], inputs, start)  # (T, C) or (B, T, C)
        if grid is not None:
            x = grid.pack(x)  # (N, C): from here on, real positions only
        # The extra rmsnorm right after the embedding is the book's.
        embed = rmsnorm_forward(x)
        x = embed[0]
        acts = []
        for i, w in enumerate(self.blocks):
            x, block_acts = block_forward(x, w, self.config.n_head, caches[i] if caches else None, start, grid)
            acts.append(block_acts)
        return linear_forward(x, p["lm_head"]), (embed, acts, x)  # (T or N, V)

    def _forward_document(self, tokens: list[int]) -> tuple[Any, Activations]:
        """5.2-5.4: the mean loss of one example over its first block_size predictions."""
        T = min(self.config.block_size, len(tokens) - 1)
        ids = np.array(tokens[:T + 1])
        inputs, targets = ids[:-1], ids[1:]  # (T,), (T,)
        logits, (embed, blocks, x) = self._gpt(inputs)
        losses, probs = cross_entropy_forward(logits, targets)
        loss = _add_reduce(losses) * (1 / T)
        return loss, Activations(inputs, targets, probs, 1 / T, embed, blocks, x)

    def _forward_batch(self, batch: list[list[int]]) -> tuple[Any, Activations]:
        """5.2-5.4 for B examples in one pass: the mean over examples of each one's mean loss.

        The examples are padded on the right to the longest one's n, and run as their real
        positions only (a `Grid`): a padded position has no logits and no loss, so nothing it
        computes (its target's probability may be 0) can turn the loss into NaN. Each real
        position of example b weighs 1 / (n_b * B).
        """
        B = len(batch)
        inputs, targets, counts = pad_batch(batch, self.config.block_size)  # (B, T), (B, T), (B,)
        T = inputs.shape[1]
        real = None if counts.min() == T else np.flatnonzero(_rows(T) < counts[:, None])  # text mode: all real
        grid = Grid(B, T, real)
        logits, (embed, blocks, x) = self._gpt(inputs, grid=grid)  # (N, V), N = sum of n_b
        targets = grid.pack(targets)  # (N,)
        losses, probs = cross_entropy_forward(logits, targets)  # (N,), (N, V)
        starts = np.cumsum(counts) - counts  # each example's first row
        per_example = np.add.reduceat(losses, starts) * (1 / counts)  # (B,) each example's mean
        loss = _add_reduce(per_example) * (1 / B)
        dloss = np.repeat((1 / counts) * (1 / B), counts)  # (N,)
        return loss, Activations(inputs, targets, probs, dloss, embed, blocks, x, grid)

    def logits(self, tokens: list[int]) -> Array:
        """(T, V): the logits at every position of `tokens` (at most block_size of them) at once."""
        with np.errstate(all="ignore"):
            return self._gpt(np.array(tokens))[0]

    def attention(self, tokens: list[int]) -> list[Array]:
        """Per layer, the (H, T, T) attention weights over `tokens` (row: the position attending)."""
        with np.errstate(all="ignore"):
            _, (_, blocks, _) = self._gpt(np.array(tokens))
        return [acts.attn[4] for acts in blocks]

    # Training.

    def forward(self, batch: list[list[int]]) -> float:
        with np.errstate(all="ignore"):  # a diverged run shows up as an inf/NaN loss, not a warning
            if len(batch) == 1:  # the book's loop: one document, (T, C) arrays
                loss, self._saved = self._forward_document(batch[0])
            else:  # chapter 7: the whole batch in one pass, its real positions as rows
                loss, self._saved = self._forward_batch(batch)
            return float(loss)

    def backward(self) -> None:
        acts, p, g = self._saved, self.p, self.g
        if acts is None:
            return
        with np.errstate(all="ignore"):
            dlogits = cross_entropy_backward(acts.probs, acts.targets, acts.dloss)  # (T or N, V)
            dx = linear_backward(dlogits, acts.x, p["lm_head"], g["lm_head"])  # (T or N, C)
            for i in reversed(range(len(self.blocks))):
                dx = block_backward(dx, acts.blocks[i], self.blocks[i], self.block_grads[i], acts.grid)
            dx = rmsnorm_backward(dx, *acts.embed)
            if acts.grid is not None:
                dx = acts.grid.pad(dx)  # (B, T, C), 0 at the padded positions
            embedding_backward(dx, acts.inputs, g["wte"], g["wpe"])
        self._saved = None

    def _update(self, lr_t: float, step: int) -> None:
        with np.errstate(all="ignore"):  # a diverging update shows up in the next loss, not as a warning
            self._adam(lr_t, step)

    def _adam(self, lr_t: float, step: int) -> None:
        # The operations of microgpt.optim.Adam, element-wise on the flat arrays, in its order.
        c, p, g = self.config, self.params, self.grads
        t1, t2 = self._tmp
        if c.weight_decay:  # decoupled (AdamW): shrink every weight before the update
            p -= np.multiply(p, lr_t * c.weight_decay, out=t1)
        if c.optimizer == "sgd":
            p -= np.multiply(g, lr_t, out=t1)  # t1 keeps the update, for its size
            return
        b1, b2 = c.beta1, c.beta2
        m, v = self.m, self.v
        m *= b1
        m += np.multiply(g, 1 - b1, out=t1)  # m = b1 * m + (1 - b1) * g
        v *= b2
        np.multiply(g, g, out=t2)
        v += np.multiply(t2, 1 - b2, out=t2)  # v = b2 * v + (1 - b2) * g**2
        if c.bias_correction:
            m_hat = np.divide(m, 1 - b1 ** (step + 1), out=t1)
            v_hat = np.divide(v, 1 - b2 ** (step + 1), out=t2)
        else:
            m_hat, v_hat = m, v
        update = np.multiply(m_hat, lr_t, out=t1)
        # sqrt where the book writes ** 0.5: the same number up to the last bit of rounding.
        denom = np.sqrt(v_hat, out=t2)
        denom += c.eps_adam
        update /= denom
        p -= update  # p -= lr_t * m_hat / (v_hat ** 0.5 + eps)

    def zero_grad(self) -> None:
        self.grads.fill(0.0)

    def grad_norm(self) -> float:
        with np.errstate(all="ignore"):
            return float(np.sqrt(_dot(self.grads, self.grads)))

    def scale_grad(self, factor: float) -> None:
        self.grads *= factor

    def _sum_squares(self, kind: str) -> list[float]:
        flat = {"params": self.params, "grad": self.grads, "update": self._tmp[0]}[kind]
        with np.errstate(all="ignore"):  # a diverging run's statistics are inf: its loss says so, not a warning
            return np.add.reduceat(flat * flat, self._starts).tolist()

    def _norms(self) -> tuple[list[float], list[float], list[float]]:
        # All three at once, in a handful of array operations: they are logged every step.
        squares = self._squares
        with np.errstate(all="ignore"):  # a diverging run's statistics are inf: its loss says so, not a warning
            np.square(self.grads, out=squares[0])
            np.square(self.params, out=squares[1])
            np.square(self._tmp[0], out=squares[2])
            return tuple(np.sqrt(np.add.reduceat(squares, self._starts, axis=1)).tolist())  # (3, matrices)

    # Evaluation and sampling.

    def evaluate(self, tokens: list[int]) -> float:
        with np.errstate(all="ignore"):
            return float(self._forward_document(tokens)[0])

    def new_cache(self) -> list[KVCache]:
        """Per layer: keys and values (block_size, C), filled one row per position."""
        shape = (self.config.block_size, self.config.n_embd)
        return [KVCache(np.empty(shape), np.empty(shape)) for _ in range(self.config.n_layer)]

    def next_logits(self, token_id: int, pos_id: int, cache: list[KVCache]) -> list[float]:
        """The book's gpt() for one position: the same layers, attending over the cached rows 0..pos_id."""
        with np.errstate(all="ignore"):
            return self._gpt(np.array([token_id]), cache, pos_id)[0][0].tolist()

    def window_logits(self, tokens: list[int]) -> list[float]:
        return self.logits(tokens)[-1].tolist()

    # The four flat arrays.

    def _flat(self, kind: str) -> Array:
        return {"params": self.params, "grad": self.grads, "m": self.m, "v": self.v}[kind]

    def _export(self, kind: str) -> dict[str, Array]:
        return {name: view.copy() for name, view in self.layout.views(self._flat(kind)).items()}

    def _import(self, kind: str, matrices: Mapping[str, Any]) -> None:
        for name, view in self.layout.views(self._flat(kind)).items():
            view[...] = np.asarray(matrices[name], dtype=np.float64)
