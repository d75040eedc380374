"""The seam between the training loop and the engines that compute the model.

Every engine computes the same function (SPEC: the book's GPT, its loss, Adam) and is built
from a `Config`, the vocabulary size and the one `random.Random`, drawing its initial weights
from it in the book's order. The loop, sampling, checkpoints and the CLI only talk to this
interface, so they never branch on which engine runs.

Weights and optimizer state cross the seam as plain name -> 2-D array-like (rows of floats),
named as the book's state dict (`wte`, `wpe`, `lm_head`, `layer0.attn_wq`, ...), so a
checkpoint written by one engine loads in any other. Standard library only.

Exports: `Engine`, `param_shapes`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

from ..config import Config


def param_shapes(config: Config, vocab_size: int) -> dict[str, tuple[int, int]]:
    """Name -> (n_out, n_in) of every parameter matrix, in the order they are initialised."""
    e = config.n_embd
    shapes = {"wte": (vocab_size, e), "wpe": (config.block_size, e), "lm_head": (vocab_size, e)}
    for i in range(config.n_layer):
        for name in ("attn_wq", "attn_wk", "attn_wv", "attn_wo"):
            shapes[f"layer{i}.{name}"] = (e, e)
        shapes[f"layer{i}.mlp_fc1"] = (4 * e, e)
        shapes[f"layer{i}.mlp_fc2"] = (e, 4 * e)
    return shapes


class Engine(ABC):
    """One way of computing the model: initialise, loss and gradients, update, sample."""

    name: str = "?"
    # A distributed engine sets these; the loop gives each process its slice of the batch.
    rank: int = 0
    world_size: int = 1

    def __init__(self, config: Config, vocab_size: int, rng: random.Random) -> None:
        self.config = config
        self.vocab_size = vocab_size

    @property
    def num_params(self) -> int:
        return sum(r * c for r, c in param_shapes(self.config, self.vocab_size).values())

    # Training: the loop calls these in this order each step.

    @abstractmethod
    def forward(self, batch: list[list[int]]) -> float:
        """Mean over the batch of each example's mean cross-entropy; remembers what backward needs.

        Each example is `[BOS] + ids + [BOS]`; only its first block_size predictions count.
        """

    @abstractmethod
    def backward(self) -> None:
        """Add the gradient of the last forward's loss to every parameter's gradient."""

    @abstractmethod
    def step(self, lr_t: float, step: int) -> None:
        """Update every parameter from its gradient (Adam, or SGD when configured)."""

    @abstractmethod
    def zero_grad(self) -> None:
        """Reset every parameter's gradient to 0."""

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

    # State, for checkpoints: plain name -> 2-D rows of floats.

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The weights, name -> 2-D array-like of float64."""

    @abstractmethod
    def load_state_dict(self, weights: dict[str, Any]) -> None:
        """Replace the weights; `weights` maps every name to a 2-D array-like of the right shape."""

    @abstractmethod
    def optimizer_state(self) -> dict[str, dict[str, Any]]:
        """{"m": ..., "v": ..., "grad": ...}, each name -> 2-D array-like, shaped like the weights."""

    @abstractmethod
    def load_optimizer_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore what optimizer_state() returned."""

    def reduce_loss(self, loss: float) -> float:
        """The loss averaged over all processes of a distributed run (one process: unchanged)."""
        return loss

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release what the engine holds (process groups, devices)."""
