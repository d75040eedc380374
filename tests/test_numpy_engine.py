"""The NumPy engine against two oracles: the book engine and central finite differences.

Tolerances, written down once: the two engines sum in different orders, so a loss agrees to
1e-12, a gradient matrix to 1e-10 relative (max |a - b| / max |b|), parameters after a few steps
to 1e-12, and every loss of the 1000-step default run to 1e-9. Finite differences (step 1e-6)
agree with an analytic gradient to about 1e-8 relative.
"""

from __future__ import annotations

import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import NAMES, SPEC_FIRST_LOSSES, SPEC_LAST_LOSS, SPEC_SAMPLES, default_run

from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.engines import create_engine
from microgpt.engines.numpy_engine import (
    NumpyEngine,
    attention_backward,
    attention_forward,
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
)
from microgpt.engines.scalar import ScalarEngine
from microgpt.tokenizer import Tokenizer
from microgpt.train import TrainingDiverged, train


def random_docs(rng: random.Random, vocab_size: int, n: int, max_len: int) -> list[list[int]]:
    """Examples [BOS] + ids + [BOS] (BOS = vocab_size - 1): the first has max_len characters, the rest 1..max_len."""
    bos = vocab_size - 1
    lengths = [max_len] + [rng.randint(1, max_len) for _ in range(n - 1)]
    return [[bos] + [rng.randrange(bos) for _ in range(length)] + [bos] for length in lengths]


def both_engines(config: Config, vocab_size: int, seed: int = 7) -> tuple[ScalarEngine, NumpyEngine]:
    return ScalarEngine(config, vocab_size, random.Random(seed)), NumpyEngine(config, vocab_size, random.Random(seed))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# --- one forward/backward step against the book engine ----------------------------------------

GRAD_CASES = [
    # (n_layer, n_embd, n_head, block_size, batch of documents, longest document)
    (1, 16, 4, 16, 1, 12),  # the book's model
    (1, 8, 1, 6, 1, 14),  # one head; document longer than block_size
    (2, 8, 2, 5, 3, 9),  # two layers, batch of 3, truncation
    (3, 12, 4, 8, 2, 11),  # three layers, head_dim 3
    (1, 32, 2, 5, 1, 8),  # wide
]


@pytest.mark.parametrize("n_layer,n_embd,n_head,block_size,batch_size,max_len", GRAD_CASES)
def test_loss_and_gradients_match_book_engine(n_layer, n_embd, n_head, block_size, batch_size, max_len):
    config = Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size)
    vocab_size = 11
    scalar, fast = both_engines(config, vocab_size)
    batch = random_docs(random.Random(n_layer * 100 + n_embd), vocab_size, batch_size, max_len)
    truncated = len(batch[0]) - 1 > block_size  # only its first block_size predictions count
    assert truncated == (max_len >= block_size)

    loss_scalar, loss_fast = scalar.forward(batch), fast.forward(batch)
    assert abs(loss_fast - loss_scalar) <= 1e-12
    scalar.backward()
    fast.backward()
    grads_scalar = scalar.optimizer_state()["grad"]
    grads_fast = fast.optimizer_state()["grad"]
    assert grads_fast.keys() == grads_scalar.keys()
    for name, g in grads_scalar.items():
        assert grads_fast[name].shape == np.shape(g)
        if np.abs(np.asarray(g, dtype=float)).max() == 0:  # e.g. rows of wpe past the document
            assert np.abs(grads_fast[name]).max() == 0, name
        else:
            assert rel_err(grads_fast[name], g) <= 1e-10, name


def test_same_initial_weights_as_book_engine():
    config = Config(n_layer=2, n_embd=8, n_head=2, block_size=6)
    scalar, fast = both_engines(config, 9)
    ref = scalar.state_dict()
    got = fast.state_dict()
    assert list(got) == list(ref)  # the book's order
    for name in ref:
        assert np.array_equal(got[name], np.array(ref[name]))  # the same random numbers, exactly
    assert fast.num_params == sum(w.size for w in got.values())


def test_gradients_accumulate_across_backward_calls():
    config = Config(n_layer=1, n_embd=8, n_head=2, block_size=6)
    _, fast = both_engines(config, 9)
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


@pytest.mark.parametrize("n_head,head_dim,T", [(1, 4, 5), (2, 3, 6), (4, 2, 1)])
def test_attention_backward_matches_finite_differences(rs, n_head, head_dim, T):
    C = n_head * head_dim
    qkv = rs.normal(size=(T, 3 * C))
    r = rs.normal(size=(T, C))

    out, cache = attention_forward(qkv, n_head)
    # Independent oracle: position by position, head by head, over the positions so far only.
    q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
    for t in range(T):
        for h in range(n_head):
            s = slice(h * head_dim, (h + 1) * head_dim)
            scores = k[:t + 1, s] @ q[t, s] / np.sqrt(head_dim)
            w = np.exp(scores - scores.max())
            w /= w.sum()
            assert np.allclose(out[t, s], w @ v[:t + 1, s], rtol=1e-12, atol=1e-14)

    dqkv = attention_backward(r, cache)
    loss = lambda: float((r * attention_forward(qkv, n_head)[0]).sum())  # noqa: E731
    assert_close_to_numeric(dqkv, numeric_grad(loss, qkv))


def test_mlp_backward_matches_finite_differences(rs):
    x = rs.normal(size=(4, 3))
    w1, w2 = rs.normal(size=(12, 3)), rs.normal(size=(3, 12))
    r = rs.normal(size=(4, 3))
    y, h = mlp_forward(x, w1, w2)
    assert np.allclose(y, np.maximum(x @ w1.T, 0) @ w2.T, rtol=1e-13)
    assert (h == 0).any() and (h > 0).any()  # both sides of relu are exercised
    dw1, dw2 = np.zeros_like(w1), np.zeros_like(w2)
    dx = mlp_backward(r, x, h, w1, w2, dw1, dw2)
    loss = lambda: float((r * mlp_forward(x, w1, w2)[0]).sum())  # noqa: E731
    assert_close_to_numeric(dx, numeric_grad(loss, x))
    assert_close_to_numeric(dw1, numeric_grad(loss, w1))
    assert_close_to_numeric(dw2, numeric_grad(loss, w2))


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


# --- the optimizer and the training loop's variants -------------------------------------------


def names_sample(n: int = 40) -> tuple[list[str], Tokenizer]:
    docs = shuffled(load_docs(NAMES), random.Random(3))[:n]
    return docs, Tokenizer.from_docs(docs)


@pytest.mark.parametrize("variant", [
    {},
    {"optimizer": "sgd", "learning_rate": 0.5},
    {"bias_correction": False},
    {"zero_grad": False},
    {"zero_grad_before": True},
    {"batch_size": 2, "lr_schedule": "cosine", "warmup_steps": 1},
])
def test_short_training_matches_book_engine(variant):
    docs, tokenizer = names_sample()
    config = Config(num_steps=4, n_embd=8, n_head=2, block_size=8, **variant).validate()
    scalar, fast = both_engines(config, tokenizer.vocab_size, seed=5)
    losses: dict[str, list[float]] = {"scalar": [], "numpy": []}
    for engine in (scalar, fast):
        train(engine, docs, tokenizer, config, on_step=lambda s, loss, lr, e=engine: losses[e.name].append(loss))
    assert np.allclose(losses["numpy"], losses["scalar"], rtol=0, atol=1e-12)
    ref = scalar.state_dict()
    for name, w in fast.state_dict().items():
        assert np.abs(w - np.array(ref[name])).max() <= 1e-12, name
    ref_state = scalar.optimizer_state()
    for key, mats in fast.optimizer_state().items():
        for name, mat in mats.items():
            assert np.abs(mat - np.array(ref_state[key][name], dtype=float)).max() <= 1e-12, (key, name)


def test_divergence_returns_inf_without_warnings():
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
        docs = ["abc", "bcd"]
        with pytest.raises(TrainingDiverged):
            train(fast, docs, Tokenizer.from_docs(docs), config)


# --- sampling with the key/value cache -------------------------------------------------------


@pytest.mark.parametrize("n_layer,n_embd,n_head,block_size", [(1, 16, 4, 16), (2, 12, 3, 7)])
def test_next_logits_with_cache_equals_full_sequence_forward(n_layer, n_embd, n_head, block_size):
    config = Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size)
    scalar, fast = both_engines(config, 10)
    tokens = random_docs(random.Random(4), 10, 1, block_size + 3)[0][:block_size]
    full = fast.logits(tokens)  # (T, V), all positions at once under the causal mask
    cache, scalar_cache = fast.new_cache(), scalar.new_cache()
    for pos, token in enumerate(tokens):
        step = fast.next_logits(token, pos, cache)
        assert isinstance(step, list) and all(isinstance(z, float) for z in step)
        assert np.abs(np.array(step) - full[pos]).max() <= 1e-12
        assert np.abs(np.array(step) - scalar.next_logits(token, pos, scalar_cache)).max() <= 1e-12


# --- state round trips and interchange with the book engine ----------------------------------


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


def test_state_interchanges_with_book_engine():
    docs, tokenizer = names_sample(10)
    config = Config(num_steps=3, n_embd=8, n_head=2, block_size=8, zero_grad=False)
    scalar = ScalarEngine(config, tokenizer.vocab_size, random.Random(11))
    train(scalar, docs, tokenizer, config)  # moments and (kept) gradients are all non-zero now
    fast = NumpyEngine(config, tokenizer.vocab_size, random.Random(12))
    fast.load_state_dict(scalar.state_dict())
    fast.load_optimizer_state(scalar.optimizer_state())
    example = tokenizer.example(docs[5])
    assert abs(fast.evaluate(example) - scalar.evaluate(example)) <= 1e-12
    # Both continue with one more step from the same state.
    for engine in (scalar, fast):
        engine.forward([example])
        engine.backward()
        engine.step(0.005, 3)
    ref = scalar.state_dict()
    for name, w in fast.state_dict().items():
        assert np.abs(w - np.array(ref[name])).max() <= 1e-12
    # And back: the book engine takes the NumPy engine's arrays.
    back = ScalarEngine(config, tokenizer.vocab_size, random.Random(13))
    back.load_state_dict(fast.state_dict())
    back.load_optimizer_state(fast.optimizer_state())
    assert abs(back.evaluate(example) - fast.evaluate(example)) <= 1e-12
    assert back.optimizer_state()["m"]["wte"] == fast.optimizer_state()["m"]["wte"].tolist()


def test_created_by_name_and_imports_only_numpy():
    config = Config(n_embd=8, n_head=2, block_size=8)
    engine = create_engine("numpy", config, 9, random.Random(0))
    assert isinstance(engine, NumpyEngine) and engine.name == "numpy"
    code = ("import sys, microgpt.engines.numpy_engine; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'matplotlib', 'pandas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the faithful default run -----------------------------------------------------------------


@pytest.mark.slow
def test_default_run_matches_book_engine_and_spec(book_run):
    run = default_run("numpy")
    losses, ref = run["losses"], book_run["losses"]
    assert len(losses) == len(ref) == 1000
    assert max(abs(a - b) for a, b in zip(losses, ref, strict=True)) <= 1e-9
    assert run["samples"] == book_run["samples"]
    # SPEC section 8.
    assert [round(x, 4) for x in losses[:5]] == SPEC_FIRST_LOSSES
    assert round(losses[-1], 4) == SPEC_LAST_LOSS
    assert run["samples"] == SPEC_SAMPLES
    assert run["engine"].num_params == 4192
