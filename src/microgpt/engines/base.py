"""The seam between the training loop and the engines that compute the model.

Every engine computes the same function (SPEC: the book's GPT, its loss, Adam) and is built
from a `Config`, the vocabulary size and the one `random.Random`. What all engines share is
declared here, once:

- the parameter layout (llm.c's `fill_in_parameter_sizes`): every matrix's name, shape and
  offset in one flat array, in the book's order. Weights, gradients and Adam's two moments are
  four flat arrays with this layout, and each matrix is a view into them;
- `initial_values`: one `gauss(0, init_std)` per parameter in that order, so every engine
  starts from the very same weights;
- `check_shapes`: the one shape check for weights that come from outside (checkpoints).

Engines keep only what is truly theirs: the array type, the device and the arithmetic. Weights
and optimizer state cross the seam as name -> 2-D array-like (rows of floats), named as the
book's state dict (`wte`, `wpe`, `lm_head`, `layer0.attn_wq`, ...), so a checkpoint written by
one engine loads in any other. Standard library only.

Exports: `Engine`, `Layout`, `param_shapes`, `initial_values`, `check_shapes`, `ShapeError`.
"""

from __future__ import annotations

import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import UserError


def param_shapes(config: Config, vocab_size: int) -> dict[str, tuple[int, int]]:
    """Name -> (n_out, n_in) of every parameter matrix, in the order they are initialised (SPEC 4)."""
    e = config.n_embd
    shapes = {"wte": (vocab_size, e), "wpe": (config.block_size, e), "lm_head": (vocab_size, e)}
    for i in range(config.n_layer):
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo"):
            shapes[f"layer{i}.{name}"] = (e, e)
        shapes[f"layer{i}.mlp_fc1"] = (4 * e, e)
        shapes[f"layer{i}.mlp_fc2"] = (e, 4 * e)
    return shapes


@dataclass(frozen=True)
class Layout:
    """Where each parameter matrix lives in a flat array: name -> (offset, shape), in the book's order."""

    shapes: dict[str, tuple[int, int]]
    offsets: dict[str, int] = field(init=False)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        offsets, total = {}, 0
        for name, (rows, cols) in self.shapes.items():
            offsets[name] = total
            total += rows * cols
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "total", total)

    @classmethod
    def of(cls, config: Config, vocab_size: int) -> Layout:
        return cls(param_shapes(config, vocab_size))

    def span(self, first: str, last: str | None = None) -> slice:
        """The flat slice from matrix `first` through matrix `last` (default: `first` alone)."""
        rows, cols = self.shapes[last or first]
        return slice(self.offsets[first], self.offsets[last or first] + rows * cols)

    def views(self, flat: Any) -> dict[str, Any]:
        """name -> (n_out, n_in) view into `flat`, a NumPy array or torch tensor with this layout."""
        return {name: flat[self.span(name)].reshape(shape) for name, shape in self.shapes.items()}

    def rows(self, flat: list[float]) -> dict[str, list[list[float]]]:
        """name -> rows of floats, from a plain flat list with this layout."""
        out = {}
        for name, (n_rows, n_cols) in self.shapes.items():
            start = self.offsets[name]
            out[name] = [flat[start + r * n_cols:start + (r + 1) * n_cols] for r in range(n_rows)]
        return out


def initial_values(config: Config, vocab_size: int, rng: random.Random) -> list[float]:
    """SPEC 1.2: one gauss(0, init_std) per parameter, matrix by matrix, row by row, in the book's order."""
    std = config.init_std
    return [rng.gauss(0, std) for _ in range(Layout.of(config, vocab_size).total)]


class ShapeError(ValueError):
    """Weights from outside that do not fit the model: the message names the first matrix that does not."""


def shape_of(matrix: Any) -> tuple[int, ...]:
    """The shape of a 2-D array-like: an array's `.shape`, or (rows, columns) of nested sequences."""
    if hasattr(matrix, "shape"):
        return tuple(matrix.shape)
    rows = len(matrix)
    cols = {len(row) for row in matrix}
    return (rows, cols.pop()) if len(cols) == 1 else (rows,) if rows == 0 else (rows, -1)


def check_shapes(weights: Mapping[str, Any], shapes: Mapping[str, tuple[int, int]], what: str = "") -> None:
    """Every matrix of `shapes` is in `weights` with that shape; raise ShapeError naming the first that is not."""
    for name, shape in shapes.items():
        key = what + name
        if name not in weights:
            raise ShapeError(f"{key} is missing (expected a {shape[0]}x{shape[1]} matrix)")
        got = shape_of(weights[name])
        if got != tuple(shape):
            raise ShapeError(f"{key} has shape {got}, expected {tuple(shape)}")


class Engine(ABC):
    """One way of computing the model: initialise, loss and gradients, update, sample.

    Subclasses keep four flat arrays with `self.layout` (weights, gradients, Adam's m and v)
    and implement the arithmetic below plus `_export`/`_import`, which move one of the four
    between the engine's arrays and plain name -> 2-D float64 matrices.
    """

    name: str = "?"
    # What an engine that cannot apply --dropout says of it (None where it can); __init__ refuses the flag.
    no_dropout: str | None = "has no dropout yet"
    # A distributed engine sets these; the loop gives each process its slice of the batch.
    rank: int = 0
    world_size: int = 1
    # Set before a step to have step() record `last_stats` (see matrix_stats).
    want_stats: bool = False
    last_stats: dict[str, list[float]] | None = None
    stats_seconds = 0.0

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        if config.dropout and self.no_dropout:
            raise UserError(f"the {self.name} engine {self.no_dropout}: use --engine torch, or drop --dropout")
        self.config = config
        self.vocab_size = vocab_size
        self.layout = Layout.of(config, vocab_size)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return self.layout.shapes

    @property
    def num_params(self) -> int:
        return self.layout.total

    # Training: the loop calls these in this order each step.

    @abstractmethod
    def forward(self, batch: list[list[int]]) -> float:
        """Mean over the batch of each example's mean cross-entropy; remembers what backward needs.

        Each example is `[BOS] + ids + [BOS]`; only its first block_size predictions count.
        """

    @abstractmethod
    def backward(self) -> None:
        """Add the gradient of the last forward's loss to every parameter's gradient."""

    def step(self, lr_t: float, step: int) -> None:
        """Update every parameter from its gradient: decoupled weight decay if configured, then
        Adam (or SGD); with `want_stats`, also record each matrix's statistics in `last_stats`."""
        self._update(lr_t, step)
        if self.want_stats:
            started = time.perf_counter()
            self.last_stats = self.matrix_stats()
            self.stats_seconds = time.perf_counter() - started

    @abstractmethod
    def _update(self, lr_t: float, step: int) -> None:
        """The optimizer's arithmetic on the flat arrays, in the order of `microgpt.optim.Adam`."""

    @abstractmethod
    def zero_grad(self) -> None:
        """Reset every parameter's gradient to 0."""

    @abstractmethod
    def grad_norm(self) -> float:
        """The gradients' global norm: sqrt of the sum of every squared gradient."""

    @abstractmethod
    def scale_grad(self, factor: float) -> None:
        """Multiply every gradient by `factor` (gradient clipping)."""

    @abstractmethod
    def _sum_squares(self, kind: str) -> list[float]:
        """Per matrix, in the layout's order: the sum of squares of flat array `kind`
        ("params", "grad", or "update": what the optimizer's last move subtracted from the weights,
        weight decay not included)."""

    def matrix_stats(self) -> dict[str, list[float]]:
        """Per matrix: [gradient norm, weight norm, last update's norm, update / weight].

        Adam moves every weight by about lr_t whatever its gradient's size, so the update's norm
        follows the learning rate, and update / weight says how fast a matrix is changing.
        """
        return {name: [g, w, u, u / w if w else math.inf] for name, g, w, u in zip(self.shapes, *self._norms())}

    def _norms(self) -> tuple[list[float], list[float], list[float]]:
        """Per matrix, the norms of the gradient, the weights and the last update."""
        return tuple([math.sqrt(x) for x in self._sum_squares(kind)]  # type: ignore[return-value]
                     for kind in ("grad", "params", "update"))

    # Evaluation and sampling.

    @abstractmethod
    def evaluate(self, tokens: list[int]) -> float:
        """The loss of one example, without touching gradients."""

    @abstractmethod
    def new_cache(self) -> Any:
        """An empty key/value cache for sampling."""

    @abstractmethod
    def next_logits(self, token_id: int, pos_id: int, cache: Any) -> list[float]:
        """Logits of the next token after `token_id` at `pos_id`; extends `cache`."""

    def window_logits(self, tokens: list[int]) -> list[float]:
        """Logits of the token after `tokens` (at most block_size of them, at positions 0..): a forward
        over that window with a fresh cache. Text continues beyond block_size this way, the context
        cropped to its last block_size tokens, as nanoGPT's generate does."""
        cache = self.new_cache()
        for pos_id, token_id in enumerate(tokens):
            logits = self.next_logits(token_id, pos_id, cache)
        return logits

    # State, for checkpoints: name -> 2-D rows of float64.

    @abstractmethod
    def _export(self, kind: str) -> dict[str, Any]:
        """A copy of flat array `kind` ("params", "grad", "m" or "v") as name -> 2-D float64 matrix."""

    @abstractmethod
    def _import(self, kind: str, matrices: Mapping[str, Any]) -> None:
        """Overwrite flat array `kind` from name -> 2-D matrices (shapes already checked)."""

    def state_dict(self) -> dict[str, Any]:
        """The weights, name -> 2-D array-like of float64 (a copy: later steps do not change it)."""
        return self._export("params")

    def load_state_dict(self, weights: Mapping[str, Any]) -> None:
        """Replace the weights; `weights` maps every name to a 2-D array-like of the right shape."""
        check_shapes(weights, self.shapes)
        self._import("params", weights)

    def optimizer_state(self) -> dict[str, dict[str, Any]]:
        """{"m": ..., "v": ..., "grad": ...}, each name -> 2-D array-like, shaped like the weights."""
        return {kind: self._export(kind) for kind in ("m", "v", "grad")}

    def load_optimizer_state(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore what optimizer_state() returned."""
        for kind in ("m", "v", "grad"):
            check_shapes(state[kind], self.shapes, f"{kind}.")
        for kind in ("m", "v", "grad"):
            self._import(kind, state[kind])

    def extra_state(self) -> dict[str, Any]:
        """State of the engine's own generators (dropout), JSON-ready, for exact resume."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - most engines keep none
        """Restore what extra_state() returned."""

    def reduce_loss(self, loss: float) -> float:
        """The loss averaged over all processes of a distributed run (one process: unchanged)."""
        return loss

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release what the engine holds (process groups, devices)."""
