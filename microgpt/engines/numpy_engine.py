"""Chapters 4 and 5 in NumPy: the book's GPT over a whole document at once, backward by hand.

The function is the book's (SPEC sections 4-6) in float64; what changes is how it is computed.
Instead of one `Value` per number, each layer kind is a pair of functions on arrays, llm.c
style: `*_forward` computes the layer for every position of a document (a causal mask keeps
each position from seeing later ones) and returns what its backward needs; `*_backward` is its
mirror, turning the gradient of the output into the gradients of the inputs and adding (`+=`)
the weights' gradients into the arrays it is given. No autograd library is involved.

All weights live in one flat array (the matrices are views into it, in the book's order), and so
do their gradients and Adam's moments, so an optimizer step is a handful of array operations.

Exports: `NumpyEngine`, and the layer pairs `embedding_forward`/`embedding_backward`,
`rmsnorm_forward`/`rmsnorm_backward`, `linear_forward`/`linear_backward`,
`attention_forward`/`attention_backward`, `mlp_forward`/`mlp_backward`,
`cross_entropy_forward`/`cross_entropy_backward`.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

# The matrices here are tiny: BLAS worker threads cost more to start and stop than they save.
# (Only a default: a value the user set wins, and it matters only if numpy is not loaded yet.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ..config import Config
from .base import Engine, param_shapes

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
def causal_mask(T: int) -> Array:
    """(T, T) additive mask: 0 where a position may look (itself and earlier), -inf elsewhere."""
    return np.triu(np.full((T, T), -np.inf), 1)


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


def embedding_forward(wte: Array, wpe: Array, inputs: Array) -> Array:
    """x[t] = wte[inputs[t]] + wpe[t]."""
    return wte[inputs] + wpe[:len(inputs)]  # (T, C)


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


# --- causal self-attention on the projected q, k, v ----------------------------------------


def attention_forward(qkv: Array, n_head: int) -> tuple[Array, tuple[Array, ...]]:
    """Every head at once: softmax(q k^T / sqrt(head_dim), causal) v, heads concatenated.

    `qkv` is (T, 3C), the rows of Wq, Wk, Wv stacked; returns the (T, C) output and what
    backward needs: q, k, v as (H, T, hd) views and the (H, T, T) attention weights.
    """
    T, C3 = qkv.shape
    hd = C3 // (3 * n_head)
    q, k, v = qkv.reshape(T, 3, n_head, hd).transpose(1, 2, 0, 3)  # each (H, T, hd)
    scores = q @ k.transpose(0, 2, 1)  # (H, T, T)
    scores *= hd ** -0.5
    scores += causal_mask(T)
    att = softmax_forward(scores)
    out = att @ v  # (H, T, hd)
    return out.transpose(1, 0, 2).reshape(T, C3 // 3), (q, k, v, att)  # (T, C)


def attention_backward(dout: Array, cache: tuple[Array, ...]) -> Array:
    """Gradient of attention_forward's output -> gradient of its (T, 3C) input."""
    q, k, v, att = cache
    n_head, T, hd = q.shape
    dout = dout.reshape(T, n_head, hd).transpose(1, 0, 2)  # (H, T, hd)
    dqkv = np.empty((T, 3, n_head, hd))
    dq, dk, dv = dqkv.transpose(1, 2, 0, 3)  # views into dqkv, each (H, T, hd)
    np.matmul(att.transpose(0, 2, 1), dout, out=dv)
    dscores = softmax_backward(dout @ v.transpose(0, 2, 1), att)  # (H, T, T)
    dscores *= hd ** -0.5  # masked entries have att = 0, so they get no gradient
    np.matmul(dscores, k, out=dq)
    np.matmul(dscores.transpose(0, 2, 1), q, out=dk)
    return dqkv.reshape(T, 3 * n_head * hd)


def softmax_forward(z: Array) -> Array:
    """softmax over the last axis; subtracting the max keeps exp() from overflowing."""
    e = np.exp(z - _max_reduce(z, axis=-1, keepdims=True))
    e *= row_sums(e) ** -1
    return e


def softmax_backward(dp: Array, p: Array) -> Array:
    """dz = p * (dp - sum(dp * p)) over the last axis."""
    return p * (dp - _add_reduce(dp * p, axis=-1, keepdims=True))


# --- MLP: fc2(relu(fc1(x))) -----------------------------------------------------------------


def mlp_forward(x: Array, w_fc1: Array, w_fc2: Array) -> tuple[Array, Array]:
    """Returns the (T, C) output and the (T, 4C) hidden activation relu(fc1(x)) that backward needs."""
    h = np.maximum(_dot(x, w_fc1.T), 0.0)  # (T, 4C)
    return _dot(h, w_fc2.T), h  # (T, C)


def mlp_backward(dy: Array, x: Array, h: Array, w_fc1: Array, w_fc2: Array, dw_fc1: Array,
                 dw_fc2: Array) -> Array:
    """Adds the weights' gradients; returns dx. `h` is relu's output."""
    dw_fc2 += _dot(dy.T, h)
    dh = _dot(dy, w_fc2)  # (T, 4C)
    dh *= np.sign(h)  # relu passes the gradient (factor 1) only where its output is positive
    dw_fc1 += _dot(dh.T, x)
    return _dot(dh, w_fc1)  # (T, C)


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


class NumpyEngine(Engine):
    """The book's model and Adam on float64 arrays, one document per forward/backward sweep."""

    name = "numpy"

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        super().__init__(config, vocab_size, rng)
        shapes = param_shapes(config, vocab_size)
        total = sum(r * c for r, c in shapes.values())
        std = config.init_std
        # One gauss per parameter, matrix by matrix, row by row: the book's order, so both
        # engines start from the very same weights.
        self.params = np.array([rng.gauss(0, std) for _ in range(total)], dtype=np.float64)
        self.grads = np.zeros(total)
        self.m = np.zeros(total)  # Adam's first moment
        self.v = np.zeros(total)  # Adam's second moment
        self._tmp = np.empty(total), np.empty(total)  # scratch for the optimizer step
        self.shapes = shapes
        self._offsets: dict[str, int] = {}
        offset = 0
        for name, (r, c) in shapes.items():
            self._offsets[name] = offset
            offset += r * c
        self.p = {name: self._view(self.params, name) for name in shapes}  # name -> view, (n_out, n_in)
        self.g = {name: self._view(self.grads, name) for name in shapes}
        # Wq, Wk, Wv are adjacent in the book's order, so one (3C, C) view projects all three.
        e = config.n_embd
        self._layers = []
        for i in range(config.n_layer):
            start = self._offsets[f"layer{i}.attn_wq"]
            self._layers.append(tuple(
                (flat[start:start + 3 * e * e].reshape(3 * e, e), views[f"layer{i}.attn_wo"],
                 views[f"layer{i}.mlp_fc1"], views[f"layer{i}.mlp_fc2"])
                for flat, views in ((self.params, self.p), (self.grads, self.g))))
        self._saved: list[tuple] = []  # what backward needs, one entry per document

    # Training.

    def _gpt(self, inputs: Array) -> tuple[Array, tuple]:
        """The book's gpt() for every position of `inputs` at once: (T, V) logits, and the activations."""
        p = self.p
        # The extra rmsnorm right after the embedding is the book's.
        x0, s0 = rmsnorm_forward(embedding_forward(p["wte"], p["wpe"], inputs))  # (T, C)
        x = x0
        acts = []
        for (w_qkv, w_o, w_fc1, w_fc2), _ in self._layers:
            xn1, s1 = rmsnorm_forward(x)
            qkv = linear_forward(xn1, w_qkv)  # (T, 3C)
            a, attn_cache = attention_forward(qkv, self.config.n_head)  # (T, C)
            x = linear_forward(a, w_o) + x  # the residual
            xn2, s2 = rmsnorm_forward(x)
            y, h = mlp_forward(xn2, w_fc1, w_fc2)
            x = y + x  # the residual
            acts.append((xn1, s1, a, attn_cache, xn2, s2, h))
        return linear_forward(x, p["lm_head"]), (x0, s0, acts, x)  # (T, V)

    def _forward_document(self, tokens: list[int]) -> tuple[Any, tuple]:
        """5.2-5.4: the mean loss of one example over its first block_size predictions."""
        T = min(self.config.block_size, len(tokens) - 1)
        ids = np.array(tokens[:T + 1])
        inputs, targets = ids[:-1], ids[1:]  # (T,), (T,)
        logits, acts = self._gpt(inputs)
        losses, probs = cross_entropy_forward(logits, targets)
        loss = _add_reduce(losses) * (1 / T)
        return loss, (inputs, targets, probs, T, *acts)

    def logits(self, tokens: list[int]) -> Array:
        """(T, V): the logits at every position of `tokens` (at most block_size of them) at once."""
        with np.errstate(all="ignore"):
            return self._gpt(np.array(tokens))[0]

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
            for inputs, targets, probs, T, x0, s0, acts, x in self._saved:
                dlogits = cross_entropy_backward(probs, targets, scale * (1 / T))
                dx = linear_backward(dlogits, x, p["lm_head"], g["lm_head"])  # (T, C)
                for ((w_qkv, w_o, w_fc1, w_fc2), (dw_qkv, dw_o, dw_fc1, dw_fc2)), (
                        xn1, s1, a, attn_cache, xn2, s2, h) in zip(reversed(self._layers), reversed(acts), strict=True):
                    dxn2 = mlp_backward(dx, xn2, h, w_fc1, w_fc2, dw_fc1, dw_fc2)
                    dx = dx + rmsnorm_backward(dxn2, xn2, s2)  # the residual passes dx through
                    da = linear_backward(dx, a, w_o, dw_o)
                    dxn1 = linear_backward(attention_backward(da, attn_cache), xn1, w_qkv, dw_qkv)
                    dx = dx + rmsnorm_backward(dxn1, xn1, s1)
                embedding_backward(rmsnorm_backward(dx, x0, s0), inputs, g["wte"], g["wpe"])
        self._saved = []

    def step(self, lr_t: float, step: int) -> None:
        # The operations of microgpt.optim.Adam, element-wise on the flat arrays, in its order.
        c, p, g = self.config, self.params, self.grads
        t1, t2 = self._tmp
        if c.optimizer == "sgd":
            p -= np.multiply(g, lr_t, out=t1)
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

    # Evaluation and sampling.

    def evaluate(self, tokens: list[int]) -> float:
        with np.errstate(all="ignore"):
            return float(self._forward_document(tokens)[0])

    def new_cache(self) -> list[list[Array]]:
        """Per layer: [keys (block_size, C), values (block_size, C)], filled one row per position."""
        shape = (self.config.block_size, self.config.n_embd)
        return [[np.empty(shape), np.empty(shape)] for _ in range(self.config.n_layer)]

    def next_logits(self, token_id: int, pos_id: int, cache: Any) -> list[float]:
        """The book's gpt() for one position: attend over the cached rows 0..pos_id."""
        n_head, hd = self.config.n_head, self.config.head_dim
        n = pos_id + 1
        p = self.p
        with np.errstate(all="ignore"):
            x, _ = rmsnorm_forward(p["wte"][token_id] + p["wpe"][pos_id])  # (C,)
            for ((w_qkv, w_o, w_fc1, w_fc2), _), (keys, values) in zip(self._layers, cache, strict=True):
                xn, _ = rmsnorm_forward(x)
                q, keys[pos_id], values[pos_id] = _dot(w_qkv, xn).reshape(3, -1)  # each (C,)
                k = keys[:n].reshape(n, n_head, hd)  # (n, H, hd)
                v = values[:n].reshape(n, n_head, hd)
                scores = _add_reduce(k * q.reshape(n_head, hd), axis=-1) * hd ** -0.5  # (n, H)
                w = np.exp(scores - _max_reduce(scores, axis=0))
                w *= _add_reduce(w, axis=0) ** -1
                x = _dot(w_o, _add_reduce(w[:, :, None] * v, axis=0).reshape(-1)) + x  # (C,)
                xn, _ = rmsnorm_forward(x)
                x = _dot(w_fc2, np.maximum(_dot(w_fc1, xn), 0.0)) + x
            return _dot(p["lm_head"], x).tolist()

    # State.

    def state_dict(self) -> dict[str, Array]:
        return {name: w.copy() for name, w in self.p.items()}

    def load_state_dict(self, weights: dict[str, Any]) -> None:
        for name, w in self.p.items():
            w[...] = self._checked(weights, name)

    def _checked(self, source: dict[str, Any], name: str) -> Array:
        arr = np.asarray(source[name], dtype=np.float64)
        if arr.shape != self.shapes[name]:
            raise ValueError(f"{name} has shape {arr.shape}, expected {self.shapes[name]}")
        return arr

    def optimizer_state(self) -> dict[str, dict[str, Array]]:
        state: dict[str, dict[str, Array]] = {}
        for key, flat in (("m", self.m), ("v", self.v), ("grad", self.grads)):
            state[key] = {name: self._view(flat, name).copy() for name in self.shapes}
        return state

    def load_optimizer_state(self, state: dict[str, dict[str, Any]]) -> None:
        for key, flat in (("m", self.m), ("v", self.v), ("grad", self.grads)):
            for name in self.shapes:
                self._view(flat, name)[...] = self._checked(state[key], name)

    def _view(self, flat: Array, name: str) -> Array:
        r, c = self.shapes[name]
        start = self._offsets[name]
        return flat[start:start + r * c].reshape(r, c)
