"""The book engine behind the engine seam: the same numbers, one scalar at a time.

A thin adapter over `microgpt.model` (the GPT of chapter 4 on `Value`s) and
`microgpt.optim.Adam`; it adds nothing to the arithmetic. Its four flat arrays are the
parameters' `.data` and `.grad` and Adam's lists `m` and `v`, in the shared layout.
Standard library only.

Exports: `ScalarEngine`, `no_cycle_collection`.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Iterator, Mapping
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
    """The book's model on `Value`s, trained by the book's Adam: every number a node of the graph."""

    name = "scalar"
    no_dropout = "has no dropout (the book's model has none)"

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        super().__init__(config, vocab_size, rng)
        self.params_by_name = init_params(config, vocab_size, rng)  # the book's own initialisation
        self.params = [p for mat in self.params_by_name.values() for row in mat for p in row]
        self.optimizer = Adam(self.params, config)
        self._loss: Value | None = None
        self._before: list[float] = []  # the weights before the last update, for its size

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

    def _update(self, lr_t: float, step: int) -> None:
        decay = self.config.weight_decay
        if decay:  # decoupled (AdamW): shrink every weight before Adam moves it
            for p in self.params:
                p.data -= lr_t * decay * p.data
        if self.want_stats:  # the optimizer's move is what the weights were minus what they are
            self._before = [p.data for p in self.params]
        self.optimizer.step(lr_t, step)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = 0

    def grad_norm(self) -> float:
        return math.sqrt(math.fsum(p.grad * p.grad for p in self.params))

    def scale_grad(self, factor: float) -> None:
        for p in self.params:
            p.grad *= factor

    def _sum_squares(self, kind: str) -> list[float]:
        flat = self._flat(kind)
        return [math.fsum(x * x for x in flat[self.layout.span(name)]) for name in self.shapes]

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

    # The four flat arrays.

    def _flat(self, kind: str) -> list[float]:
        if kind == "params":
            return [p.data for p in self.params]
        if kind == "grad":
            return [float(p.grad) for p in self.params]
        if kind == "update":
            return [b - p.data for b, p in zip(self._before, self.params)] if self._before else []
        return list(getattr(self.optimizer, kind))

    def _export(self, kind: str) -> dict[str, Any]:
        return self.layout.rows(self._flat(kind))

    def _import(self, kind: str, matrices: Mapping[str, Any]) -> None:
        flat = [float(x) for name in self.shapes for row in matrices[name] for x in row]
        if kind == "params":
            for p, x in zip(self.params, flat):
                p.data = x
        elif kind == "grad":
            for p, x in zip(self.params, flat):
                p.grad = x
        else:
            getattr(self.optimizer, kind)[:] = flat
