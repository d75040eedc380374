"""Chapter 5: the training loop.

Each step takes one document (5.1), turns it into input/target pairs (5.2), runs the model
over it (5.3), scores the predictions with cross-entropy (5.4), backpropagates (5.5), lets Adam
(5.6) move every parameter by the decayed learning rate (5.7), and zeroes the gradients (5.8).
The engine does the arithmetic; this loop is the same for all of them. Standard library only.

Exports: `train`, `mean_loss`, `TrainingDiverged`, `StepCallback`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .config import Config
from .data import Dataset
from .engines.base import Engine
from .optim import learning_rate

# Called after every step with (step, loss, lr_t); returning True stops the loop there.
StepCallback = Callable[[int, float, float], bool]


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became infinite or NaN at `step` (1-based)."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"{reason} at step {step}")
        self.step, self.reason = step, reason


def train(engine: Engine, data: Dataset, config: Config, start_step: int = 0,
          on_step: StepCallback | None = None) -> int:
    """Run steps start_step .. num_steps-1; returns the number of steps completed.

    In a run of several processes each takes its own slice of the step's examples; the
    engine averages the gradients across them.
    """
    for step in range(start_step, config.num_steps):
        # 5.1 and 5.2: the step's document (or batch of them), each as [BOS] + characters + [BOS],
        # where position p predicts token p+1 (at most block_size of them). Text mode: windows.
        batch = data.examples(step, engine.rank, engine.world_size)

        if config.zero_grad_before:
            engine.zero_grad()  # 5.8, the other convention: zero first, same effect

        # 5.3 and 5.4: forward every position, building the graph; the mean cross-entropy.
        loss = engine.reduce_loss(engine.forward(batch))
        if not math.isfinite(loss):
            raise TrainingDiverged(step + 1, f"the loss became {loss}")

        # 5.5: backpropagation fills every parameter's .grad.
        engine.backward()
        if config.grad_clip:  # not in the book: cap the gradients' global norm
            norm = engine.grad_norm()
            if norm > config.grad_clip:
                engine.scale_grad(config.grad_clip / (norm + 1e-6))

        # 5.7: the learning rate for this step, decaying linearly to 0.
        lr_t = learning_rate(step, config)

        # 5.6: Adam moves every parameter.
        engine.step(lr_t, step)

        # 5.8: backward() accumulates with +=, so clear the gradients for the next step.
        if config.zero_grad and not config.zero_grad_before:
            engine.zero_grad()

        if on_step is not None and on_step(step, loss, lr_t):
            return step + 1
    return config.num_steps


def mean_loss(engine: Engine, examples: list[list[int]]) -> float:
    """Chapter 7's evaluation: the mean cross-entropy per predicted token over `examples`, as training counts them."""
    total, count = 0.0, 0
    for tokens in examples:
        n = min(engine.config.block_size, len(tokens) - 1)
        total += engine.evaluate(tokens) * n
        count += n
    return total / count if count else math.nan
