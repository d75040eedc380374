"""Chapter 5's ablations (5.6-5.8), each checked against the update written out here from its definition.

The reference for every variant is computed in the test: gradients come from a fresh engine's
backward() at the same weights, and the update is the formula of the variant applied with numpy.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from conftest import NAMES

from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.engines import create_engine
from microgpt.optim import learning_rate
from microgpt.tokenizer import Tokenizer
from microgpt.train import batch_docs, train

ENGINES = ["scalar", "numpy", "torch"]
SMALL = dict(n_embd=8, n_head=2, block_size=8)


def _setup(engine_name: str, config: Config):
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(NAMES), rng)
    tokenizer = Tokenizer.from_docs(docs)
    return create_engine(engine_name, config, tokenizer.vocab_size, rng), docs, tokenizer


def _flat(rows_by_name: dict) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in rows_by_name.values()])


def _grad_at(engine_name: str, config: Config, weights: dict, tokens: list[int], vocab_size: int) -> np.ndarray:
    """The gradient of one document's loss at `weights`, from a fresh engine."""
    fresh = create_engine(engine_name, config, vocab_size, random.Random(0))
    fresh.load_state_dict(weights)
    fresh.forward([tokens])
    fresh.backward()
    return _flat(fresh.optimizer_state()["grad"])


def _run_steps(engine_name: str, config: Config, steps: int):
    engine, docs, tokenizer = _setup(engine_name, config)
    history = [engine.state_dict()]
    losses = []

    def on_step(step, loss, lr):
        history.append(engine.state_dict())
        losses.append(loss)
        return step + 1 >= steps

    train(engine, docs, tokenizer, config, on_step=on_step)
    return engine, docs, tokenizer, history, losses


@pytest.mark.parametrize("engine_name", ENGINES)
def test_zero_grad_before_is_bit_identical_to_after(engine_name):
    """5.8: zeroing before the forward pass or after the update is the same computation."""
    steps = 1000 if engine_name != "scalar" else 25
    default = Config(num_steps=1000)
    before = Config(num_steps=1000, zero_grad_before=True)
    *_, losses_a = _run_steps(engine_name, default, steps)
    *_, losses_b = _run_steps(engine_name, before, steps)
    assert len(losses_a) == steps
    assert losses_a == losses_b  # exact floats, not approximately


@pytest.mark.parametrize("engine_name", ENGINES)
def test_sgd_is_plain_gradient_descent(engine_name):
    config = Config(**SMALL, num_steps=10, optimizer="sgd", learning_rate=0.5)
    engine, docs, tok, history, _ = _run_steps(engine_name, config, 3)
    for step in range(3):
        tokens = tok.example(batch_docs(docs, step, 1)[0])
        g = _grad_at(engine_name, config, history[step], tokens, tok.vocab_size)
        expected = _flat(history[step]) - learning_rate(step, config) * g
        np.testing.assert_allclose(_flat(history[step + 1]), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("engine_name", ENGINES)
def test_adam_without_bias_correction_uses_raw_moments(engine_name):
    c = Config(**SMALL, num_steps=10, bias_correction=False)
    engine, docs, tok, history, _ = _run_steps(engine_name, c, 3)
    m = v = 0.0
    for step in range(3):
        tokens = tok.example(batch_docs(docs, step, 1)[0])
        g = _grad_at(engine_name, c, history[step], tokens, tok.vocab_size)
        m = c.beta1 * m + (1 - c.beta1) * g
        v = c.beta2 * v + (1 - c.beta2) * g * g
        expected = _flat(history[step]) - learning_rate(step, c) * m / (np.sqrt(v) + c.eps_adam)
        np.testing.assert_allclose(_flat(history[step + 1]), expected, rtol=0, atol=1e-12)
    # Without the correction the first step is (1 - beta1) / sqrt(1 - beta2) = 1.5 times smaller
    # than Adam's lr-sized first step, for every weight with a clear gradient.


@pytest.mark.parametrize("engine_name", ENGINES)
def test_no_zero_grad_accumulates_every_earlier_gradient(engine_name):
    """5.8's contamination: the gradient used at step t is the sum of all gradients so far."""
    c = Config(**SMALL, num_steps=10, zero_grad=False)
    engine, docs, tok, history, _ = _run_steps(engine_name, c, 3)
    total = 0.0
    m = v = 0.0
    for step in range(3):
        tokens = tok.example(batch_docs(docs, step, 1)[0])
        total = total + _grad_at(engine_name, c, history[step], tokens, tok.vocab_size)
        m = c.beta1 * m + (1 - c.beta1) * total
        v = c.beta2 * v + (1 - c.beta2) * total * total
        m_hat = m / (1 - c.beta1 ** (step + 1))
        v_hat = v / (1 - c.beta2 ** (step + 1))
        expected = _flat(history[step]) - learning_rate(step, c) * m_hat / (np.sqrt(v_hat) + c.eps_adam)
        np.testing.assert_allclose(_flat(history[step + 1]), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_flat(engine.optimizer_state()["grad"]), total, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("schedule", ["linear", "constant", "cosine"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_learning_rate_schedules(schedule, warmup):
    c = Config(num_steps=100, learning_rate=0.02, lr_schedule=schedule, warmup_steps=warmup)
    for step in range(100):
        if step < warmup:
            want = 0.02 * (step + 1) / warmup
        else:
            progress = (step - warmup) / (100 - warmup)
            want = {"linear": 0.02 * (1 - progress), "constant": 0.02,
                    "cosine": 0.02 * 0.5 * (1 + math.cos(math.pi * progress))}[schedule]
        assert learning_rate(step, c) == pytest.approx(want, rel=1e-15, abs=1e-18)
    if warmup == 0 and schedule == "linear":  # the book's schedule, bit for bit
        assert all(learning_rate(s, c) == 0.02 * (1 - s / 100) for s in range(100))


def test_ablations_change_the_run():
    """Each ablation is a different run (a flag that did nothing would pass the tests above)."""
    base = _run_steps("numpy", Config(num_steps=300), 300)[-1]
    for change in ({"optimizer": "sgd"}, {"bias_correction": False}, {"zero_grad": False},
                   {"lr_schedule": "constant"}, {"lr_schedule": "cosine"}):
        losses = _run_steps("numpy", Config(num_steps=300, **change), 300)[-1]
        assert losses[0] == base[0]  # same start
        assert losses[1:] != base[1:], change
