"""Chapters 4 and 5 in NumPy: the book's GPT over a whole document at once, backward by hand.

The function is the book's (SPEC sections 4-6) in float64; what changes is how it is computed.
Instead of one `Value` per number, each layer kind is a pair of functions on arrays, llm.c
style: `*_forward` computes the layer for every position of a document (a causal mask keeps
each position from seeing later ones) and returns what its backward needs; `*_backward` is its
mirror, turning the gradient of the output into the gradients of the inputs and adding (`+=`)
the weights' gradients into the arrays it is given. No autograd library is involved.

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
`block_forward`/`block_backward`, `cross_entropy_forward`/`cross_entropy_backward`.
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
from ..errors import UserError  # noqa: E402
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
    return _dot(x, _column(x.shape[-1], 1 / x.shape[-1]))


# --- embedding: token row plus position row -------------------------------------------------


def embedding_forward(wte: Array, wpe: Array, inputs: Array, start: int = 0) -> Array:
    """x[t] = wte[inputs[t]] + wpe[start + t]."""
    return wte[inputs] + wpe[start:start + len(inputs)]  # (T, C)


def embedding_backward(dx: Array, inputs: Array, dwte: Array, dwpe: Array) -> None:
    """Add dx into the rows it came from; a token seen twice collects both gradients."""
    np.add.at(dwte, inputs, dx)
    dwpe[:len(inputs)] += dx


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
    """y[t, i] = sum_j w[i, j] * x[t, j]."""
    return _dot(x, w.T)  # (T, n_out)


def linear_backward(dy: Array, x: Array, w: Array, dw: Array) -> Array:
    """dw += dy^T x; returns dx = dy w."""
    dw += _dot(dy.T, x)
    return _dot(dy, w)  # (T, n_in)


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


def attention_forward(x: Array, w_qkv: Array, w_o: Array, n_head: int, cache: KVCache | None = None,
                      start: int = 0) -> tuple[Array, tuple]:
    """Every head at once: Wo (softmax(q k^T / sqrt(head_dim), causal) v), heads concatenated.

    `x` (T, C) holds positions start..start+T-1; `w_qkv` is (3C, C), the rows of Wq, Wk, Wv
    stacked. With a `cache` the keys and values of earlier positions come from it (and this
    call's are added to it). Returns the (T, C) output and what backward needs.
    """
    T, C = x.shape
    hd = C // n_head
    qkv = linear_forward(x, w_qkv)  # (T, 3C)
    q, k, v = qkv.reshape(T, 3, n_head, hd).transpose(1, 2, 0, 3)  # each (H, T, hd)
    if cache is not None:
        cache.keys[start:start + T], cache.values[start:start + T] = qkv[:, C:2 * C], qkv[:, 2 * C:]
        k = cache.keys[:start + T].reshape(start + T, n_head, hd).transpose(1, 0, 2)  # (H, start + T, hd)
        v = cache.values[:start + T].reshape(start + T, n_head, hd).transpose(1, 0, 2)
    scores = q @ k.transpose(0, 2, 1)  # (H, T, start + T)
    scores *= hd ** -0.5
    if T > 1:  # a single newest position may look at everything before it
        scores += causal_mask(T, start)
    att = softmax_forward(scores)
    a = (att @ v).transpose(1, 0, 2).reshape(T, C)  # (T, C), the heads side by side
    return linear_forward(a, w_o), (x, q, k, v, att, a)


def attention_backward(dout: Array, cache: tuple, w_qkv: Array, w_o: Array, dw_qkv: Array,
                       dw_o: Array) -> Array:
    """Gradient of attention_forward's output -> gradient of its input x; adds the weights' gradients."""
    x, q, k, v, att, a = cache
    n_head, T, hd = q.shape
    da = linear_backward(dout, a, w_o, dw_o).reshape(T, n_head, hd).transpose(1, 0, 2)  # (H, T, hd)
    dqkv = np.empty((T, 3, n_head, hd))
    dq, dk, dv = dqkv.transpose(1, 2, 0, 3)  # views into dqkv, each (H, T, hd)
    np.matmul(att.transpose(0, 2, 1), da, out=dv)
    dscores = softmax_backward(da @ v.transpose(0, 2, 1), att)  # (H, T, T)
    dscores *= hd ** -0.5  # masked entries have att = 0, so they get no gradient
    np.matmul(dscores, k, out=dq)
    np.matmul(dscores.transpose(0, 2, 1), q, out=dk)
    return linear_backward(dqkv.reshape(T, 3 * n_head * hd), x, w_qkv, dw_qkv)


# --- MLP: fc2(relu(fc1(x))) -----------------------------------------------------------------


def mlp_forward(x: Array, w_fc1: Array, w_fc2: Array) -> tuple[Array, tuple]:
    """Returns the (T, C) output and what backward needs: x and the (T, 4C) hidden relu(fc1(x))."""
    h = np.maximum(_dot(x, w_fc1.T), 0.0)  # (T, 4C)
    return _dot(h, w_fc2.T), (x, h)  # (T, C)


def mlp_backward(dy: Array, cache: tuple, w_fc1: Array, w_fc2: Array, dw_fc1: Array, dw_fc2: Array) -> Array:
    """Adds the weights' gradients; returns dx."""
    x, h = cache
    dw_fc2 += _dot(dy.T, h)
    dh = _dot(dy, w_fc2)  # (T, 4C)
    dh *= np.sign(h)  # relu passes the gradient (factor 1) only where its output is positive
    dw_fc1 += _dot(dh.T, x)
    return _dot(dh, w_fc1)  # (T, C)


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
                  start: int = 0) -> tuple[Array, BlockActivations]:
    """x = attn(rmsnorm(x)) + x; x = mlp(rmsnorm(x)) + x: attention looks back, the MLP thinks per position."""
    norm1 = rmsnorm_forward(x)
    a, attn = attention_forward(norm1[0], w.qkv, w.o, n_head, cache, start)
    x = a + x
    norm2 = rmsnorm_forward(x)
    m, mlp = mlp_forward(norm2[0], w.fc1, w.fc2)
    x = m + x
    return x, BlockActivations(norm1, attn, norm2, mlp)


def block_backward(dx: Array, acts: BlockActivations, w: BlockWeights, dw: BlockWeights) -> Array:
    """block_forward backwards: each residual passes dx through and adds its branch's gradient."""
    dx = dx + rmsnorm_backward(mlp_backward(dx, acts.mlp, w.fc1, w.fc2, dw.fc1, dw.fc2), *acts.norm2)
    dx = dx + rmsnorm_backward(attention_backward(dx, acts.attn, w.qkv, w.o, dw.qkv, dw.o), *acts.norm1)
    return dx


# --- cross-entropy of the softmax of the logits ---------------------------------------------


def cross_entropy_forward(logits: Array, targets: Array) -> tuple[Array, Array]:
    """Per-position -log softmax(logits)[target] (T,), and the probabilities (T, V)."""
    probs = softmax_forward(logits)
    return -np.log(probs[_rows(len(targets)), targets]), probs


def cross_entropy_backward(probs: Array, targets: Array, dloss: float) -> Array:
    """Gradient of dloss * sum_t loss_t with respect to the logits: dloss * (probs - onehot)."""
    dlogits = probs.copy()
    dlogits[_rows(len(targets)), targets] -= 1.0
    dlogits *= dloss
    return dlogits  # (T, V)


# --- the engine -----------------------------------------------------------------------------


class Activations(NamedTuple):
    """What backward needs from one document's forward."""

    inputs: Array
    targets: Array
    probs: Array
    T: int
    embed: tuple[Array, Array]  # the rmsnorm right after the embedding: output and scale
    blocks: list[BlockActivations]
    x: Array  # the last block's output, the input of lm_head


class NumpyEngine(Engine):
    """The book's model and Adam on float64 arrays, one document per forward/backward sweep."""

    name = "numpy"

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        super().__init__(config, vocab_size, rng)
        if config.dropout:
            raise UserError("the numpy engine has no dropout yet: use --engine torch, or drop --dropout")
        layout = self.layout
        self.params = np.array(initial_values(config, vocab_size, rng), dtype=np.float64)
        self.grads = np.zeros(layout.total)
        self.m = np.zeros(layout.total)  # Adam's first moment
        self.v = np.zeros(layout.total)  # Adam's second moment
        self._tmp = np.empty(layout.total), np.empty(layout.total)  # scratch for the optimizer step
        self.p = layout.views(self.params)  # name -> (n_out, n_in) view
        self.g = layout.views(self.grads)
        self.blocks = [self._block(self.params, i) for i in range(config.n_layer)]
        self.block_grads = [self._block(self.grads, i) for i in range(config.n_layer)]
        self._saved: list[Activations] = []  # what backward needs, one entry per document
        self._stepped = False  # whether _tmp[0] holds an update

    def _block(self, flat: Array, i: int) -> BlockWeights:
        views = self.layout.views(flat)
        qkv = flat[self.layout.span(f"layer{i}.attn_wq", f"layer{i}.attn_wv")].reshape(-1, self.config.n_embd)
        return BlockWeights(qkv, views[f"layer{i}.attn_wo"], views[f"layer{i}.mlp_fc1"], views[f"layer{i}.mlp_fc2"])

    # The model.

    def _gpt(self, inputs: Array, caches: list[KVCache] | None = None, start: int = 0) -> tuple[Array, tuple]:
        """The book's gpt() for the positions start.. of `inputs` at once: (T, V) logits, and the activations."""
        p = self.p
        # The extra rmsnorm right after the embedding is the book's.
        embed = rmsnorm_forward(embedding_forward(p["wte"], p["wpe"], inputs, start))  # (T, C)
        x = embed[0]
        acts = []
        for i, w in enumerate(self.blocks):
            x, block_acts = block_forward(x, w, self.config.n_head, caches[i] if caches else None, start)
            acts.append(block_acts)
        return linear_forward(x, p["lm_head"]), (embed, acts, x)  # (T, V)

    def _forward_document(self, tokens: list[int]) -> tuple[Any, Activations]:
        """5.2-5.4: the mean loss of one example over its first block_size predictions."""
        T = min(self.config.block_size, len(tokens) - 1)
        ids = np.array(tokens[:T + 1])
        inputs, targets = ids[:-1], ids[1:]  # (T,), (T,)
        logits, (embed, blocks, x) = self._gpt(inputs)
        losses, probs = cross_entropy_forward(logits, targets)
        loss = _add_reduce(losses) * (1 / T)
        return loss, Activations(inputs, targets, probs, T, embed, blocks, x)

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
            if len(batch) == 1:
                loss, saved = self._forward_document(batch[0])
                self._saved = [saved]
                return float(loss)
            results = [self._forward_document(tokens) for tokens in batch]
            self._saved = [saved for _, saved in results]
            return float((1 / len(batch)) * sum(loss for loss, _ in results))

    def backward(self) -> None:
        p, g = self.p, self.g
        scale = 1.0 if len(self._saved) == 1 else 1 / len(self._saved)
        with np.errstate(all="ignore"):
            for acts in self._saved:
                dlogits = cross_entropy_backward(acts.probs, acts.targets, scale * (1 / acts.T))
                dx = linear_backward(dlogits, acts.x, p["lm_head"], g["lm_head"])  # (T, C)
                for i in reversed(range(len(self.blocks))):
                    dx = block_backward(dx, acts.blocks[i], self.blocks[i], self.block_grads[i])
                embedding_backward(rmsnorm_backward(dx, *acts.embed), acts.inputs, g["wte"], g["wpe"])
        self._saved = []

    def _update(self, lr_t: float, step: int) -> None:
        # The operations of microgpt.optim.Adam, element-wise on the flat arrays, in its order.
        c, p, g = self.config, self.params, self.grads
        t1, t2 = self._tmp
        self._stepped = True
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
        return float(np.sqrt(_dot(self.grads, self.grads)))

    def scale_grad(self, factor: float) -> None:
        self.grads *= factor

    def _sum_squares(self, kind: str) -> list[float]:
        flat = {"params": self.params, "grad": self.grads}.get(kind)
        if flat is None:  # the update: what the last step subtracted, kept in the scratch array
            flat = self._tmp[0] if self._stepped else np.zeros(self.layout.total)
        return np.add.reduceat(flat * flat, list(self.layout.offsets.values())).tolist()

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
        with np.errstate(all="ignore"):
            return self._gpt(np.array(tokens))[0][-1].tolist()

    # The four flat arrays.

    def _flat(self, kind: str) -> Array:
        return {"params": self.params, "grad": self.grads, "m": self.m, "v": self.v}[kind]

    def _export(self, kind: str) -> dict[str, Array]:
        return {name: view.copy() for name, view in self.layout.views(self._flat(kind)).items()}

    def _import(self, kind: str, matrices: Mapping[str, Any]) -> None:
        for name, view in self.layout.views(self._flat(kind)).items():
            view[...] = np.asarray(matrices[name], dtype=np.float64)
