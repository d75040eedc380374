"""Chapter 5's ablations (5.6-5.8), each checked against the update written out here from its definition.

The reference for every variant is computed in the test: gradients come from a fresh engine's
backward() at the same weights, and the update is the formula of the variant applied with numpy.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from conftest import SMALL, LossRecorder, engine_params, start_run

from microgpt.config import Config
from microgpt.engines import create_engine
from microgpt.optim import learning_rate
from microgpt.train import train


def _flat(rows_by_name: dict) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in rows_by_name.values()])


def _grad_at(engine_name: str, config: Config, weights: dict, tokens: list[int], vocab_size: int) -> np.ndarray:
    """The gradient of one document's loss at `weights`, from a fresh engine."""
    fresh = create_engine(engine_name, config, vocab_size, random.Random(0))
    fresh.load_state_dict(weights)
    fresh.forward([tokens])
    fresh.backward()
    return _flat(fresh.optimizer_state()["grad"])


class History(LossRecorder):
    """Records every step's loss and the weights after it (history[0]: the initial weights)."""

    def __init__(self, engine, stop_after: int) -> None:
        super().__init__(stop_after)
        self.engine = engine
        self.weights = [engine.state_dict()]

    def __call__(self, step: int, loss: float, lr: float) -> bool:
        self.weights.append(self.engine.state_dict())
        return super().__call__(step, loss, lr)


def _run_steps(engine_name: str, config: Config, steps: int):
    """The first `steps` steps of the training loop: the engine, the dataset, the weights before each
    step and after the last, the losses."""
    engine, data, _ = start_run(engine_name, config)
    history = History(engine, steps)
    train(engine, data, config, on_step=history)
    return engine, data, history.weights, history.losses


def _updates(engine_name: str, steps: int, **ablation):
    """The first `steps` steps of a 10-step run of the small model with `ablation` (Config fields): the
    config, the engine after them, and for each step the weights before it and after it (flat) and the
    gradient of its document at the weights before it, from a fresh engine."""
    config = Config(**SMALL, num_steps=10, **ablation)
    engine, data, history, _ = _run_steps(engine_name, config, steps)
    updates = [(_flat(history[step]), _flat(history[step + 1]),
                _grad_at(engine_name, config, history[step], data.examples(step)[0], engine.vocab_size))
               for step in range(steps)]
    return config, engine, updates


class _Adam:
    """Adam's moments from its definition, m and v starting at 0; `direction` is what lr_t multiplies."""

    def __init__(self, c: Config) -> None:
        self.c = c
        self.m = self.v = 0.0

    def direction(self, g: np.ndarray, step: int, bias_correction: bool = True) -> np.ndarray:
        c = self.c
        self.m = c.beta1 * self.m + (1 - c.beta1) * g
        self.v = c.beta2 * self.v + (1 - c.beta2) * g * g
        m, v = self.m, self.v
        if bias_correction:
            m, v = m / (1 - c.beta1 ** (step + 1)), v / (1 - c.beta2 ** (step + 1))
        return m / (np.sqrt(v) + c.eps_adam)


@pytest.mark.parametrize("engine_name", engine_params())
def test_zero_grad_before_is_bit_identical_to_after(engine_name):
    """5.8: zeroing before the forward pass or after the update is the same computation."""
    steps = 1000 if engine_name != "scalar" else 25
    default = Config(num_steps=1000)
    before = Config(num_steps=1000, zero_grad_before=True)
    *_, losses_a = _run_steps(engine_name, default, steps)
    *_, losses_b = _run_steps(engine_name, before, steps)
    assert len(losses_a) == steps
    assert losses_a == losses_b  # exact floats, not approximately


@pytest.mark.parametrize("engine_name", engine_params())
def test_sgd_is_plain_gradient_descent(engine_name):
    config, _, updates = _updates(engine_name, 3, optimizer="sgd", learning_rate=0.5)
    for step, (before, after, g) in enumerate(updates):
        np.testing.assert_allclose(after, before - learning_rate(step, config) * g, rtol=0, atol=1e-13)


@pytest.mark.parametrize("engine_name", engine_params())
def test_adam_without_bias_correction_uses_raw_moments(engine_name):
    c, _, updates = _updates(engine_name, 3, bias_correction=False)
    adam = _Adam(c)
    for step, (before, after, g) in enumerate(updates):
        expected = before - learning_rate(step, c) * adam.direction(g, step, bias_correction=False)
        np.testing.assert_allclose(after, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("engine_name", engine_params())
def test_first_step_without_bias_correction_is_one_and_a_half_times_adams(engine_name):
    """At step 0, m = (1 - beta1) g and v = (1 - beta2) g^2. Adam's corrected first step is lr * g / (|g| + eps),
    about lr for every weight; the raw moments give lr * (1 - beta1) g / (sqrt(1 - beta2) |g| + eps), so
    (1 - beta1) / sqrt(1 - beta2) = 0.15 / 0.1 = 1.5 times larger, for every weight with a clear gradient
    (|g| well above eps / sqrt(1 - beta2) = 1e-7)."""
    steps = {}
    for correction in (True, False):
        c, _, [(before, after, g)] = _updates(engine_name, 1, bias_correction=correction)
        steps[correction] = before - after
    assert (1 - c.beta1) / math.sqrt(1 - c.beta2) == pytest.approx(1.5, rel=1e-12)
    clear = np.abs(g) > 1e-4
    assert clear.sum() > 0.5 * g.size  # most weights: the claim is about the typical weight
    lr = learning_rate(0, c)
    np.testing.assert_allclose(np.abs(steps[True][clear]), lr, rtol=1e-3)  # Adam: lr-sized
    np.testing.assert_allclose(steps[False][clear] / steps[True][clear], 1.5, rtol=1e-3)
    # Where the gradient is 0 (rows the document never reads) neither moves.
    assert np.all(steps[True][g == 0] == 0) and np.all(steps[False][g == 0] == 0)


@pytest.mark.parametrize("engine_name", engine_params())
def test_no_zero_grad_accumulates_every_earlier_gradient(engine_name):
    """5.8's contamination: the gradient used at step t is the sum of all gradients so far."""
    c, engine, updates = _updates(engine_name, 3, zero_grad=False)
    total = 0.0
    adam = _Adam(c)
    for step, (before, after, g) in enumerate(updates):
        total = total + g
        expected = before - learning_rate(step, c) * adam.direction(total, step)
        np.testing.assert_allclose(after, expected, rtol=0, atol=1e-12)
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


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_lr_is_where_the_decay_ends(schedule):
    c = Config(num_steps=50, learning_rate=0.02, min_lr=0.005, lr_schedule=schedule, warmup_steps=5)
    for step in range(50):
        if step < 5:
            want = 0.02 * (step + 1) / 5  # warmup rises to lr, not from min_lr
        else:
            progress = (step - 5) / 45
            shape = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
            want = 0.005 + (0.02 - 0.005) * shape
        assert learning_rate(step, c) == pytest.approx(want, rel=1e-14), step
    assert learning_rate(49, c) > 0.005 > learning_rate(49, Config(num_steps=50, learning_rate=0.02))


# --- beyond the book: gradient clipping and decoupled weight decay -----------------------------------


@pytest.mark.parametrize("engine_name", engine_params())
def test_grad_clip_scales_the_gradient_to_the_limit(engine_name):
    """With SGD the update is lr_t times the gradient used, so the clipped gradient can be read off the
    weights: g * clip / (|g| + 1e-6) when the global norm |g| is above clip."""
    c, _, updates = _updates(engine_name, 2, optimizer="sgd", learning_rate=0.5, grad_clip=0.05)
    for step, (before, after, g) in enumerate(updates):
        norm = math.sqrt(float(np.sum(g * g)))
        assert norm > c.grad_clip  # the limit bites
        used = (before - after) / learning_rate(step, c)
        np.testing.assert_allclose(used, g * (c.grad_clip / (norm + 1e-6)), rtol=0, atol=1e-12)
        assert math.sqrt(float(np.sum(used * used))) == pytest.approx(c.grad_clip, rel=1e-4)


@pytest.mark.parametrize("engine_name", engine_params())
def test_weight_decay_shrinks_every_weight_before_adam(engine_name):
    """AdamW's decoupled decay: p <- p - lr_t * wd * p, then Adam's update from the undecayed gradient."""
    c, _, updates = _updates(engine_name, 2, weight_decay=0.3)
    adam = _Adam(c)
    for step, (p, after, g) in enumerate(updates):
        lr = learning_rate(step, c)
        decayed = p - lr * c.weight_decay * p
        np.testing.assert_allclose(after, decayed - lr * adam.direction(g, step), rtol=0, atol=1e-12)


def test_ablations_change_the_run():
    """Each ablation is a different run (a flag that did nothing would pass the tests above)."""
    base = _run_steps("numpy", Config(num_steps=300), 300)[-1]
    for change in ({"optimizer": "sgd"}, {"bias_correction": False}, {"zero_grad": False},
                   {"lr_schedule": "constant"}, {"lr_schedule": "cosine"}, {"grad_clip": 0.5},
                   {"weight_decay": 0.1}, {"min_lr": 0.001}):
        losses = _run_steps("numpy", Config(num_steps=300, **change), 300)[-1]
        assert losses[0] == base[0]  # same start
        assert losses[1:] != base[1:], change
