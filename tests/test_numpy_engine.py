"""What is the NumPy engine's own: its llm.c-style layer pairs, each against central finite
differences and a forward written out here position by position, and each on a batch (B, T, C)
against the same pair called document by document on (T, C), to 1e-13; its whole-sequence forward
against its own one-position sampling path; its flat arrays; divergence without warnings.

Its numbers against the book (loss, gradients, every golden run, checkpoints read by other
engines) are checked in test_parity.py. Finite differences (step 1e-6) agree with an analytic
gradient to about 1e-8 relative; the bound here is 1e-7.
"""

from __future__ import annotations

import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import assert_close, write_docs

from microgpt.config import Config
from microgpt.data import prepare
from microgpt.engines import create_engine
from microgpt.engines.numpy_engine import (
    BlockWeights,
    Grid,
    KVCache,
    NumpyEngine,
    attention_backward,
    attention_forward,
    block_backward,
    block_forward,
    causal_mask,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    rmsnorm_backward,
    rmsnorm_forward,
    softmax_backward,
    softmax_forward,
)
from microgpt.train import TrainingDiverged, train


def random_docs(rng: random.Random, vocab_size: int, n: int, max_len: int) -> list[list[int]]:
    """Examples [BOS] + ids + [BOS] (BOS = vocab_size - 1): the first has max_len characters, the rest 1..max_len."""
    bos = vocab_size - 1
    lengths = [max_len] + [rng.randint(1, max_len) for _ in range(n - 1)]
    return [[bos] + [rng.randrange(bos) for _ in range(length)] + [bos] for length in lengths]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# --- the engine's own arrays ----------------------------------------------------------------------


def test_gradients_accumulate_across_backward_calls():
    config = Config(n_layer=1, n_embd=8, n_head=2, block_size=6)
    fast = NumpyEngine(config, 9, random.Random(7))
    batch = random_docs(random.Random(1), 9, 1, 5)
    fast.forward(batch)
    fast.backward()
    once = fast.grads.copy()
    fast.forward(batch)
    fast.backward()
    assert np.allclose(fast.grads, 2 * once, rtol=1e-14, atol=0)
    fast.zero_grad()
    assert not fast.grads.any()


# --- each layer pair against central finite differences --------------------------------------


def numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, one entry at a time (f returns a float)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def assert_close_to_numeric(analytic: np.ndarray, numeric: np.ndarray) -> None:
    assert rel_err(analytic, numeric) < 1e-7


@pytest.fixture
def rs() -> np.random.Generator:
    return np.random.default_rng(0)


def test_rmsnorm_backward_matches_finite_differences(rs):
    x = rs.normal(size=(5, 8))
    r = rs.normal(size=(5, 8))  # the loss is sum(r * y): dy = r

    y, scale = rmsnorm_forward(x)
    ms = (x * x).mean(axis=1, keepdims=True)
    assert np.allclose(y, x / np.sqrt(ms + 1e-5), rtol=1e-14)  # SPEC: x * (mean(x^2) + 1e-5)^-1/2
    dx = rmsnorm_backward(r, y, scale)
    assert_close_to_numeric(dx, numeric_grad(lambda: float((r * rmsnorm_forward(x)[0]).sum()), x))


def test_linear_backward_matches_finite_differences(rs):
    x, w = rs.normal(size=(4, 6)), rs.normal(size=(3, 6))
    r = rs.normal(size=(4, 3))
    assert np.allclose(linear_forward(x, w), [[sum(w[i, j] * x[t, j] for j in range(6)) for i in range(3)]
                                              for t in range(4)], rtol=1e-13)
    dw = np.zeros_like(w)
    dx = linear_backward(r, x, w, dw)
    loss = lambda: float((r * linear_forward(x, w)).sum())  # noqa: E731
    assert_close_to_numeric(dx, numeric_grad(loss, x))
    assert_close_to_numeric(dw, numeric_grad(loss, w))


def attention_by_hand(x: np.ndarray, w_qkv: np.ndarray, w_o: np.ndarray, n_head: int) -> np.ndarray:
    """SPEC section 5's attention, position by position and head by head, over the positions so far only."""
    T, C = x.shape
    hd = C // n_head
    q, k, v = x @ w_qkv[:C].T, x @ w_qkv[C:2 * C].T, x @ w_qkv[2 * C:].T
    heads = np.zeros((T, C))
    for t in range(T):
        for h in range(n_head):
            s = slice(h * hd, (h + 1) * hd)
            scores = k[:t + 1, s] @ q[t, s] / np.sqrt(hd)
            w = np.exp(scores - scores.max())
            w /= w.sum()
            heads[t, s] = w @ v[:t + 1, s]
    return heads @ w_o.T


ATTENTION_SHAPES = [(1, 4, 5), (2, 3, 6), (4, 2, 1), (4, 2, 7)]  # (n_head, head_dim, T)


@pytest.fixture(params=ATTENTION_SHAPES, ids=lambda shape: "-".join(map(str, shape)))
def attention_case(request, rs) -> tuple:
    """n_head, and random x (T, C), w_qkv (3C, C) and w_o (C, C) of one of ATTENTION_SHAPES."""
    n_head, head_dim, T = request.param
    C = n_head * head_dim
    return n_head, rs.normal(size=(T, C)), rs.normal(size=(3 * C, C)), rs.normal(size=(C, C))


def test_attention_forward_matches_the_positions_one_by_one(attention_case):
    n_head, x, w_qkv, w_o = attention_case
    out, _ = attention_forward(x, w_qkv, w_o, n_head)
    assert out.shape == x.shape
    assert np.allclose(out, attention_by_hand(x, w_qkv, w_o, n_head), rtol=1e-12, atol=1e-13)


def test_attention_backward_matches_finite_differences(rs, attention_case):
    n_head, x, w_qkv, w_o = attention_case
    r = rs.normal(size=x.shape)  # the loss is sum(r * out): dout = r
    _, cache = attention_forward(x, w_qkv, w_o, n_head)
    dw_qkv, dw_o = np.zeros_like(w_qkv), np.zeros_like(w_o)
    dx = attention_backward(r, cache, w_qkv, w_o, dw_qkv, dw_o)
    loss = lambda: float((r * attention_forward(x, w_qkv, w_o, n_head)[0]).sum())  # noqa: E731
    assert_close_to_numeric(dx, numeric_grad(loss, x))
    assert_close_to_numeric(dw_qkv, numeric_grad(loss, w_qkv))
    assert_close_to_numeric(dw_o, numeric_grad(loss, w_o))


def test_attention_backward_adds_into_the_weight_gradients(rs):
    x, w_qkv, w_o, r = rs.normal(size=(3, 4)), rs.normal(size=(12, 4)), rs.normal(size=(4, 4)), rs.normal(size=(3, 4))
    _, cache = attention_forward(x, w_qkv, w_o, 2)
    once_qkv, once_o = np.zeros_like(w_qkv), np.zeros_like(w_o)
    attention_backward(r, cache, w_qkv, w_o, once_qkv, once_o)
    twice_qkv, twice_o = once_qkv.copy(), once_o.copy()
    attention_backward(r, cache, w_qkv, w_o, twice_qkv, twice_o)
    assert np.allclose(twice_qkv, 2 * once_qkv, rtol=1e-14) and np.allclose(twice_o, 2 * once_o, rtol=1e-14)


@pytest.mark.parametrize("n_head,head_dim,T", [(1, 4, 5), (4, 2, 7)])
def test_attention_with_a_cache_one_position_at_a_time_is_the_whole_sequence(rs, n_head, head_dim, T):
    C = n_head * head_dim
    x, w_qkv, w_o = rs.normal(size=(T, C)), rs.normal(size=(3 * C, C)), rs.normal(size=(C, C))
    whole, _ = attention_forward(x, w_qkv, w_o, n_head)
    cache = KVCache(np.empty((T + 2, C)), np.empty((T + 2, C)))  # room for more positions than used
    for t in range(T):
        out, _ = attention_forward(x[t:t + 1], w_qkv, w_o, n_head, cache, t)
        assert np.abs(out[0] - whole[t]).max() <= 1e-12, t
    assert np.allclose(cache.keys[:T], x @ w_qkv[C:2 * C].T, rtol=1e-13)  # the keys it kept
    assert np.allclose(cache.values[:T], x @ w_qkv[2 * C:].T, rtol=1e-13)
    # Two new positions at once after a cached prefix: the causal mask offset by the prefix.
    cache = KVCache(np.empty((T, C)), np.empty((T, C)))
    attention_forward(x[:T - 2], w_qkv, w_o, n_head, cache, 0)
    tail, _ = attention_forward(x[T - 2:], w_qkv, w_o, n_head, cache, T - 2)
    assert np.abs(tail - whole[T - 2:]).max() <= 1e-12


def test_causal_mask_hides_later_positions_only():
    mask = causal_mask(3, 2)  # queries at positions 2, 3, 4 over keys 0..4
    assert mask.shape == (3, 5)
    assert np.array_equal(np.isfinite(mask), np.tril(np.ones((3, 5), dtype=bool), 2))
    assert np.all(mask[np.isfinite(mask)] == 0)


def test_softmax_backward_matches_finite_differences(rs):
    z, r = rs.normal(size=(2, 3, 5)) * 2, rs.normal(size=(2, 3, 5))
    p = softmax_forward(z)
    assert np.allclose(p.sum(-1), 1, rtol=1e-14)
    assert np.allclose(p, np.exp(z) / np.exp(z).sum(-1, keepdims=True), rtol=1e-13)
    dz = softmax_backward(r, p)
    assert_close_to_numeric(dz, numeric_grad(lambda: float((r * softmax_forward(z)).sum()), z))


def test_mlp_backward_matches_finite_differences(rs):
    x = rs.normal(size=(4, 3))
    w1, w2 = rs.normal(size=(12, 3)), rs.normal(size=(3, 12))
    r = rs.normal(size=(4, 3))
    y, cache = mlp_forward(x, w1, w2)
    assert np.allclose(y, np.maximum(x @ w1.T, 0) @ w2.T, rtol=1e-13)
    _, h = cache
    assert (h == 0).any() and (h > 0).any()  # both sides of relu are exercised
    dw1, dw2 = np.zeros_like(w1), np.zeros_like(w2)
    dx = mlp_backward(r, cache, w1, w2, dw1, dw2)
    loss = lambda: float((r * mlp_forward(x, w1, w2)[0]).sum())  # noqa: E731
    assert_close_to_numeric(dx, numeric_grad(loss, x))
    assert_close_to_numeric(dw1, numeric_grad(loss, w1))
    assert_close_to_numeric(dw2, numeric_grad(loss, w2))


def block_by_hand(x: np.ndarray, w: BlockWeights, n_head: int) -> np.ndarray:
    """SPEC section 5's layer: r = x; x = rmsnorm(x); attention + r; then the MLP the same way."""
    def rms(v):
        return v / np.sqrt((v * v).mean(axis=1, keepdims=True) + 1e-5)

    x = attention_by_hand(rms(x), w.qkv, w.o, n_head) + x
    return np.maximum(rms(x) @ w.fc1.T, 0) @ w.fc2.T + x


@pytest.mark.parametrize("n_head,C,T", [(2, 4, 3), (1, 3, 5)])
def test_block_pair_matches_the_book_layer_and_finite_differences(rs, n_head, C, T):
    x = rs.normal(size=(T, C))
    w = BlockWeights(rs.normal(size=(3 * C, C)), rs.normal(size=(C, C)), rs.normal(size=(4 * C, C)),
                     rs.normal(size=(C, 4 * C)))
    out, acts = block_forward(x, w, n_head)
    assert np.allclose(out, block_by_hand(x, w, n_head), rtol=1e-12, atol=1e-13)
    r = rs.normal(size=(T, C))
    dw = BlockWeights(*(np.zeros_like(m) for m in w))
    dx = block_backward(r, acts, w, dw)
    loss = lambda: float((r * block_forward(x, w, n_head)[0]).sum())  # noqa: E731
    assert_close_to_numeric(dx, numeric_grad(loss, x))
    for name, got, weight in zip(BlockWeights._fields, dw, w):
        assert rel_err(got, numeric_grad(loss, weight)) < 1e-7, name


def test_cross_entropy_backward_matches_finite_differences(rs):
    logits = rs.normal(size=(6, 7)) * 3
    targets = np.array([0, 6, 3, 3, 1, 2])
    losses, probs = cross_entropy_forward(logits, targets)
    log_softmax = logits - logits.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    assert np.allclose(losses, -log_softmax[np.arange(6), targets], rtol=1e-13)
    dlogits = cross_entropy_backward(probs, targets, 0.25)  # the gradient of 0.25 * sum(losses)
    loss = lambda: 0.25 * float(cross_entropy_forward(logits, targets)[0].sum())  # noqa: E731
    assert_close_to_numeric(dlogits, numeric_grad(loss, logits))


def test_embedding_backward_matches_finite_differences(rs):
    wte, wpe = rs.normal(size=(5, 4)), rs.normal(size=(6, 4))
    inputs = np.array([4, 1, 1, 0])  # a repeated token collects both positions' gradients
    r = rs.normal(size=(4, 4))
    assert np.array_equal(embedding_forward(wte, wpe, inputs), wte[inputs] + wpe[:4])
    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    embedding_backward(r, inputs, dwte, dwpe)
    loss = lambda: float((r * embedding_forward(wte, wpe, inputs)).sum())  # noqa: E731
    assert_close_to_numeric(dwte, numeric_grad(loss, wte))
    assert_close_to_numeric(dwpe, numeric_grad(loss, wpe))


# --- each layer pair takes a batch (B, T, C) as it takes one document (T, C) -----------------------


LAYER_TOL = 1e-13  # a layer pair on a batch against the same pair per document
B, T, C, H = 3, 5, 8, 2


def per_document(f, *batched):
    """f on each document's slice of the batched arrays, the results stacked back (tuples element-wise)."""
    results = [f(*(a[b] for a in batched)) for b in range(len(batched[0]))]
    if isinstance(results[0], tuple):
        return tuple(np.stack(parts) for parts in zip(*results))
    return np.stack(results)


def assert_each_close(names, got, want) -> None:
    """Matrix by matrix (weight gradients, say), each named, to LAYER_TOL."""
    for name, g, w in zip(names, got, want, strict=True):
        assert_close(name, g, w, LAYER_TOL)


def assert_batch_is_each_document(what: str, f, *batched) -> None:
    """f of the whole batch is f of each document alone, to LAYER_TOL."""
    assert_close(what, f(*batched), per_document(f, *batched), LAYER_TOL)


def test_embedding_pair_takes_a_batch(rs):
    wte, wpe = rs.normal(size=(6, C)), rs.normal(size=(T + 2, C))
    inputs = rs.integers(0, 6, size=(B, T))
    assert_batch_is_each_document("forward", lambda i: embedding_forward(wte, wpe, i), inputs)
    dx = rs.normal(size=(B, T, C))
    got = np.zeros_like(wte), np.zeros_like(wpe)
    embedding_backward(dx, inputs, *got)
    want = np.zeros_like(wte), np.zeros_like(wpe)
    for b in range(B):
        embedding_backward(dx[b], inputs[b], *want)
    assert_each_close(("dwte", "dwpe"), got, want)


def test_rmsnorm_and_linear_pairs_take_a_batch(rs):
    x, dy = rs.normal(size=(B, T, C)), rs.normal(size=(B, T, C))
    y, scale = rmsnorm_forward(x)
    assert y.shape == x.shape and scale.shape == (B, T, 1)
    assert_batch_is_each_document("rmsnorm", lambda a: rmsnorm_forward(a)[0], x)
    assert_close("rmsnorm backward", rmsnorm_backward(dy, y, scale),
                 per_document(lambda d, a: rmsnorm_backward(d, *rmsnorm_forward(a)), dy, x), LAYER_TOL)
    w = rs.normal(size=(6, C))
    assert_batch_is_each_document("linear", lambda a: linear_forward(a, w), x)
    dw, dw_each = np.zeros_like(w), np.zeros_like(w)
    dout = rs.normal(size=(B, T, 6))
    dx = linear_backward(dout, x, w, dw)
    assert_close("linear dx", dx, per_document(lambda d, a: linear_backward(d, a, w, dw_each), dout, x), LAYER_TOL)
    assert_close("linear dw", dw, dw_each, LAYER_TOL)


def test_attention_pair_takes_a_batch_and_a_packed_batch(rs):
    x, dout = rs.normal(size=(B, T, C)), rs.normal(size=(B, T, C))
    w_qkv, w_o = rs.normal(size=(3 * C, C)), rs.normal(size=(C, C))

    def one(d, a, dw_qkv, dw_o):
        out, cache = attention_forward(a, w_qkv, w_o, H)
        return out, attention_backward(d, cache, w_qkv, w_o, dw_qkv, dw_o)

    each = np.zeros_like(w_qkv), np.zeros_like(w_o)
    want_out, want_dx = per_document(lambda d, a: one(d, a, *each), dout, x)
    got = np.zeros_like(w_qkv), np.zeros_like(w_o)
    out, cache = attention_forward(x, w_qkv, w_o, H)
    assert_close("attention", out, want_out, LAYER_TOL)
    assert_close("attention dx", attention_backward(dout, cache, w_qkv, w_o, *got), want_dx, LAYER_TOL)
    assert_each_close(("dw_qkv", "dw_o"), got, each)

    # Packed: documents of 5, 2 and 4 positions as 11 rows; each is the document alone.
    counts = [5, 2, 4]
    grid = Grid(B, T, np.flatnonzero(np.arange(T) < np.array(counts)[:, None]))
    rows, drows = grid.pack(x), grid.pack(dout)
    packed = np.zeros_like(w_qkv), np.zeros_like(w_o)
    out, cache = attention_forward(rows, w_qkv, w_o, H, grid=grid)
    dx = attention_backward(drows, cache, w_qkv, w_o, *packed, grid=grid)
    alone = np.zeros_like(w_qkv), np.zeros_like(w_o)
    start = 0
    for b, n in enumerate(counts):
        want_out, want_dx = one(dout[b, :n], x[b, :n], *alone)
        assert_close(f"packed document {b}", out[start:start + n], want_out, LAYER_TOL)
        assert_close(f"packed document {b} dx", dx[start:start + n], want_dx, LAYER_TOL)
        start += n
    assert_each_close(("packed dw_qkv", "packed dw_o"), packed, alone)


def test_mlp_and_block_pairs_take_a_batch(rs):
    x, dy = rs.normal(size=(B, T, C)), rs.normal(size=(B, T, C))
    w1, w2 = rs.normal(size=(4 * C, C)), rs.normal(size=(C, 4 * C))
    assert_batch_is_each_document("mlp", lambda a: mlp_forward(a, w1, w2)[0], x)
    _, cache = mlp_forward(x, w1, w2)
    got, each = (np.zeros_like(w1), np.zeros_like(w2)), (np.zeros_like(w1), np.zeros_like(w2))
    dx = mlp_backward(dy, cache, w1, w2, *got)
    want = per_document(lambda d, a: mlp_backward(d, mlp_forward(a, w1, w2)[1], w1, w2, *each), dy, x)
    assert_close("mlp dx", dx, want, LAYER_TOL)
    assert_close("mlp dw", np.concatenate([g.ravel() for g in got]), np.concatenate([g.ravel() for g in each]),
                 LAYER_TOL)

    w = BlockWeights(rs.normal(size=(3 * C, C)) * 0.3, rs.normal(size=(C, C)) * 0.3, w1 * 0.3, w2 * 0.3)
    dw = BlockWeights(*(np.zeros_like(m) for m in w))
    dw_each = BlockWeights(*(np.zeros_like(m) for m in w))
    out, acts = block_forward(x, w, H)

    def one(d, a):
        o, one_acts = block_forward(a, w, H)
        return o, block_backward(d, one_acts, w, dw_each)

    want_out, want_dx = per_document(one, dy, x)
    assert_close("block", out, want_out, LAYER_TOL)
    assert_close("block dx", block_backward(dy, acts, w, dw), want_dx, LAYER_TOL)
    assert_each_close([f"block d{name}" for name in BlockWeights._fields], dw, dw_each)


def test_cross_entropy_pair_takes_a_batch_with_a_weight_per_position(rs):
    logits = rs.normal(size=(B, T, 7)) * 3
    targets = rs.integers(0, 7, size=(B, T))
    losses, probs = cross_entropy_forward(logits, targets)
    assert losses.shape == (B, T)
    assert_batch_is_each_document("losses", lambda z, t: cross_entropy_forward(z, t)[0], logits, targets)
    weights = rs.random(size=(B, T))  # d loss / d losses[b, t]
    onehot = np.eye(7)[targets]  # (B, T, 7)
    want = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) - onehot) * weights[..., None]
    assert_close("dlogits", cross_entropy_backward(probs, targets, weights), want, LAYER_TOL)


# --- a run that diverges -----------------------------------------------------------------------


def test_divergence_returns_inf_without_warnings(tmp_path):
    config = Config(n_embd=8, n_head=2, block_size=8)
    fast = NumpyEngine(config, 9, random.Random(0))
    weights = fast.state_dict()
    weights["lm_head"] *= 1e300  # logits so far apart that the target's probability is 0
    fast.load_state_dict(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = fast.forward([[8, 1, 2, 3, 8]])
        assert not np.isfinite(loss)
        assert not np.isfinite(fast.evaluate([8, 1, 2, 3, 8]))
        fast.backward()  # the gradients of a diverged forward may be NaN, but no warning is raised
        data, _ = prepare(config.validate(), write_docs(tmp_path / "docs.txt", ["abcdefgh", "bcd"]))
        with pytest.raises(TrainingDiverged, match="at step 1"):
            train(fast, data, config)


# --- sampling with the key/value cache -------------------------------------------------------


@pytest.mark.parametrize("n_layer,n_embd,n_head,block_size", [(1, 16, 4, 16), (2, 12, 3, 7)])
def test_next_logits_with_cache_equals_the_whole_sequence_forward(n_layer, n_embd, n_head, block_size):
    """Sampling runs the very same layers over one position with a cache; training runs them over
    the whole sequence under the causal mask. Both give the same logits."""
    config = Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size)
    fast = NumpyEngine(config, 10, random.Random(7))
    tokens = random_docs(random.Random(4), 10, 1, block_size + 3)[0][:block_size]
    full = fast.logits(tokens)  # (T, V), all positions at once under the causal mask
    assert full.shape == (block_size, 10)
    cache = fast.new_cache()
    for pos, token in enumerate(tokens):
        step = fast.next_logits(token, pos, cache)
        assert isinstance(step, list) and all(isinstance(z, float) for z in step)
        assert np.abs(np.array(step) - full[pos]).max() <= 1e-12
        # window_logits: the last position of a fresh forward over the window so far.
        assert np.abs(np.array(fast.window_logits(tokens[:pos + 1])) - full[pos]).max() <= 1e-12


def test_attention_weights_are_causal_distributions():
    config = Config(n_layer=2, n_embd=8, n_head=2, block_size=6)
    fast = NumpyEngine(config, 9, random.Random(2))
    maps = fast.attention([8, 1, 2, 3, 4])
    assert len(maps) == 2 and all(m.shape == (2, 5, 5) for m in maps)
    for m in maps:
        assert np.allclose(m.sum(-1), 1, rtol=1e-13)
        assert np.all(np.triu(m, 1) == 0)  # no position attends to a later one
    assert np.all(maps[0][:, 0, 0] == 1)  # the first position can only look at itself


def test_blocks_are_views_into_the_flat_arrays():
    config = Config(n_layer=2, n_embd=8, n_head=2, block_size=6)
    fast = NumpyEngine(config, 9, random.Random(3))
    assert len(fast.blocks) == len(fast.block_grads) == 2
    for i, (w, g) in enumerate(zip(fast.blocks, fast.block_grads)):
        assert all(np.shares_memory(m, fast.params) for m in w)
        assert all(np.shares_memory(m, fast.grads) for m in g)
        state = fast.state_dict()
        stacked = np.vstack([state[f"layer{i}.attn_w{x}"] for x in "qkv"])
        assert np.array_equal(w.qkv, stacked)  # Wq, Wk, Wv stacked in the book's order
        assert np.array_equal(w.o, state[f"layer{i}.attn_wo"]) and np.array_equal(w.fc2, state[f"layer{i}.mlp_fc2"])


# --- state round trips ---------------------------------------------------------------------------


def test_state_dict_round_trip_and_copies():
    config = Config(n_embd=8, n_head=2, block_size=8)
    fast = NumpyEngine(config, 9, random.Random(1))
    saved = fast.state_dict()
    assert all(w.dtype == np.float64 and w.ndim == 2 for w in saved.values())
    saved["wte"][0, 0] += 1.0  # a copy: changing it leaves the engine alone
    assert fast.state_dict()["wte"][0, 0] != saved["wte"][0, 0]
    batch = random_docs(random.Random(2), 9, 1, 6)
    before = fast.forward(batch)
    fast.backward()
    fast.step(0.01, 0)
    assert fast.forward(batch) != before
    saved["wte"][0, 0] -= 1.0
    fast.load_state_dict({k: v.tolist() for k, v in saved.items()})  # plain rows load too
    assert fast.forward(batch) == before
    with pytest.raises(ValueError, match="wte"):
        fast.load_state_dict({**saved, "wte": saved["wte"][:, :3]})


def test_optimizer_state_round_trip_continues_identically():
    config = Config(n_embd=8, n_head=2, block_size=8)
    docs = random_docs(random.Random(3), 9, 4, 6)
    a = NumpyEngine(config, 9, random.Random(1))
    for step, doc in enumerate(docs[:2]):
        a.forward([doc])
        a.backward()
        a.step(0.01, step)
    b = NumpyEngine(config, 9, random.Random(99))
    b.load_state_dict(a.state_dict())
    b.load_optimizer_state(a.optimizer_state())
    assert np.array_equal(b.grads, a.grads) and np.array_equal(b.m, a.m) and np.array_equal(b.v, a.v)
    for step, doc in enumerate(docs[2:], start=2):
        for e in (a, b):
            e.zero_grad()
            e.forward([doc])
            e.backward()
            e.step(0.01, step)
    assert np.array_equal(a.params, b.params)


def test_created_by_name_and_imports_only_numpy():
    config = Config(n_embd=8, n_head=2, block_size=8)
    engine = create_engine("numpy", config, 9, random.Random(0))
    assert isinstance(engine, NumpyEngine) and engine.name == "numpy"
    code = ("import sys, microgpt.engines.numpy_engine; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'matplotlib', 'pandas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
