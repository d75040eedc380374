"""Chapter 5.6 and 5.7: the Adam optimizer and the learning-rate schedule.

Standard library only. `Adam` updates a list of scalar `Value` parameters; `learning_rate`
is the schedule every engine shares, so all of them step with the same lr_t.

Exports: `Adam`, `learning_rate`.
"""

from __future__ import annotations

import math

from .autograd import Value
from .config import Config


def learning_rate(step: int, config: Config) -> float:
    """5.7: lr_t for step 0, 1, ...: optional linear warmup, then the chosen decay.

    The book's schedule is linear decay from lr to 0: big steps while far from a good
    solution, small ones to settle into it. With --min-lr the decays end there instead of at 0.
    """
    lr, warmup, floor = config.learning_rate, config.warmup_steps, config.min_lr
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / (config.num_steps - warmup)
    if config.lr_schedule == "linear":
        return lr * (1 - progress) if not floor else floor + (lr - floor) * (1 - progress)
    if config.lr_schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * progress)) if not floor else \
            floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr  # constant


class Adam:
    """5.6: gradient descent with momentum (m) and a per-parameter step size (from v).

    Raw gradients from one document are noisy; m averages them over recent steps. v tracks
    each gradient's typical size, so every parameter moves by about lr_t regardless of scale.
    Both start at 0 and so are too small early on; dividing by (1 - beta^t) corrects that.
    With `config.optimizer == "sgd"` it is the plain update p -= lr_t * g, kept for comparison.
    """

    def __init__(self, params: list[Value], config: Config) -> None:
        self.params = params
        self.config = config
        self.m = [0.0] * len(params)  # first moment: running mean of gradients
        self.v = [0.0] * len(params)  # second moment: running mean of squared gradients

    def step(self, lr_t: float, step: int) -> None:
        c = self.config
        if c.optimizer == "sgd":
            for p in self.params:
                p.data -= lr_t * p.grad
            return
        beta1, beta2, eps = c.beta1, c.beta2, c.eps_adam
        m, v = self.m, self.v
        for i, p in enumerate(self.params):
            m[i] = beta1 * m[i] + (1 - beta1) * p.grad
            v[i] = beta2 * v[i] + (1 - beta2) * p.grad ** 2
            if c.bias_correction:
                m_hat = m[i] / (1 - beta1 ** (step + 1))
                v_hat = v[i] / (1 - beta2 ** (step + 1))
            else:
                m_hat, v_hat = m[i], v[i]
            p.data -= lr_t * m_hat / (v_hat ** 0.5 + eps)
