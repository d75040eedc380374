"""The book engine behind the engine seam: the same numbers, one scalar at a time.

A thin adapter over `microgpt.model` (the GPT of chapter 4 on `Value`s) and
`microgpt.optim.Adam`; it adds nothing to the arithmetic. Standard library only.

Exports: `ScalarEngine`, `no_cycle_collection`.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..autograd import Value
from ..config import Config
from ..model import document_loss, gpt, init_params
from ..optim import Adam
from .base import Engine


@contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector while a graph is built or walked.

    A step creates some 60,000 Values that live until backward() is done; the collector keeps
    scanning them (and every other object in the process) though a Value graph holds no cycles,
    which costs a quarter of the step, more when a large library is loaded. Reference counting
    still frees everything.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class ScalarEngine(Engine):
    name = "scalar"

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        super().__init__(config, vocab_size, rng)
        self.params_by_name = init_params(config, vocab_size, rng)
        self.params = [p for mat in self.params_by_name.values() for row in mat for p in row]
        self.optimizer = Adam(self.params, config)
        self._loss: Value | None = None

    def forward(self, batch: list[list[int]]) -> float:
        try:
            with no_cycle_collection():
                losses = [document_loss(tokens, self.params_by_name, self.config) for tokens in batch]
        except (OverflowError, ValueError, ZeroDivisionError):
            # exp() overflowed or a probability reached 0: the run has diverged.
            self._loss = None
            return math.inf
        # One document is the book's loop exactly; a batch averages its documents' losses.
        self._loss = losses[0] if len(losses) == 1 else (1 / len(losses)) * sum(losses)
        return self._loss.data

    def backward(self) -> None:
        if self._loss is not None:
            with no_cycle_collection():
                self._loss.backward()
                self._loss = None  # let the graph go

    def step(self, lr_t: float, step: int) -> None:
        self.optimizer.step(lr_t, step)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = 0

    def evaluate(self, tokens: list[int]) -> float:
        try:
            return document_loss(tokens, self.params_by_name, self.config).data
        except (OverflowError, ValueError, ZeroDivisionError):
            return math.inf

    def new_cache(self) -> Any:
        return [[] for _ in range(self.config.n_layer)], [[] for _ in range(self.config.n_layer)]

    def next_logits(self, token_id: int, pos_id: int, cache: Any) -> list[float]:
        keys, values = cache
        return [v.data for v in gpt(token_id, pos_id, keys, values, self.params_by_name, self.config)]

    def _rows(self, attr: str) -> dict[str, list[list[float]]]:
        return {name: [[getattr(p, attr) for p in row] for row in mat] for name, mat in self.params_by_name.items()}

    def state_dict(self) -> dict[str, Any]:
        return self._rows("data")

    def load_state_dict(self, weights: dict[str, Any]) -> None:
        for name, mat in self.params_by_name.items():
            for row, new_row in zip(mat, weights[name], strict=False):
                for p, x in zip(row, new_row, strict=False):
                    p.data = float(x)

    def optimizer_state(self) -> dict[str, dict[str, Any]]:
        state: dict[str, dict[str, Any]] = {"grad": self._rows("grad"), "m": {}, "v": {}}
        i = 0
        for name, mat in self.params_by_name.items():
            for key, flat in (("m", self.optimizer.m), ("v", self.optimizer.v)):
                state[key][name] = [flat[i + r * len(row): i + (r + 1) * len(row)] for r, row in enumerate(mat)]
            i += sum(len(row) for row in mat)
        return state

    def load_optimizer_state(self, state: dict[str, dict[str, Any]]) -> None:
        i = 0
        for name, mat in self.params_by_name.items():
            for r, row in enumerate(mat):
                for c, p in enumerate(row):
                    p.grad = float(state["grad"][name][r][c])
                    self.optimizer.m[i] = float(state["m"][name][r][c])
                    self.optimizer.v[i] = float(state["v"][name][r][c])
                    i += 1
