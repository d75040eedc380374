"""The one configuration object: every hyperparameter of the book, with the book's defaults.

Chapter 4 fixes the model's shape, chapter 5 the training loop, chapter 6 sampling and
chapter 7 what the book's loop leaves out. The command line is generated from these fields
(see `microgpt.cli`), so each default is declared here and nowhere else.

Exports: `Config`, `ConfigError`, `TRAJECTORY_FIELDS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot run; the message names the problem and the fix."""


def _opt(default: Any, help: str, flag: str | None = None, choices: tuple[str, ...] | None = None,
         group: str = "training") -> Any:
    # The metadata is what the CLI needs to build a flag from this field.
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "group": group})


@dataclass
class Config:
    """All hyperparameters of a run; the defaults are the book's faithful configuration."""

    # Chapter 4: the model.
    n_layer: int = _opt(1, "number of transformer layers", group="model")
    n_embd: int = _opt(16, "embedding width (must be divisible by --n-head)", group="model")
    block_size: int = _opt(16, "longest context in tokens; longer documents are truncated", group="model")
    n_head: int = _opt(4, "attention heads per layer", group="model")
    init_std: float = _opt(0.08, "standard deviation of the initial weights", group="model")

    # Chapter 5: training.
    num_steps: int = _opt(1000, "training steps (5.1)", flag="--steps")
    learning_rate: float = _opt(0.01, "base learning rate (5.6, 5.7)", flag="--lr")
    beta1: float = _opt(0.85, "Adam's first-moment decay (5.6)")
    beta2: float = _opt(0.99, "Adam's second-moment decay (5.6)")
    eps_adam: float = _opt(1e-8, "Adam's epsilon (5.6)", flag="--eps")
    seed: int = _opt(42, "seed of the one random generator (shuffle, init, sampling)")

    # Chapter 5's "why"s, as ablations; the defaults are the book's loop.
    optimizer: str = _opt("adam", "5.6: adam, or sgd (p -= lr_t * g, no moments)", choices=("adam", "sgd"))
    lr_schedule: str = _opt("linear", "5.7: linear decay to 0 (book), constant, or cosine",
                            choices=("linear", "constant", "cosine"))
    bias_correction: bool = _opt(True, "5.6: --no-bias-correction uses Adam's raw moments (m_hat = m, v_hat = v)")
    zero_grad: bool = _opt(True, "5.8: --no-zero-grad never resets gradients, so every step adds all earlier ones")
    zero_grad_before: bool = _opt(False, "5.8: zero gradients before the forward pass instead of after the update")

    # Chapter 7: what the book's loop omits. The defaults leave the faithful run unchanged.
    batch_size: int = _opt(1, "documents per step; the loss is their mean (1 = the book's loop)", group="chapter7")
    warmup_steps: int = _opt(0, "steps of linear learning-rate warmup before the schedule", group="chapter7")
    val_fraction: float = _opt(0.0, "hold out this last fraction of the shuffled documents for validation",
                               group="chapter7")
    eval_every: int = _opt(0, "log the validation loss every N steps (0 = only at the end)", group="chapter7")

    # Chapter 6: sampling.
    temperature: float = _opt(0.5, "sampling temperature (> 0; lower is more conservative)", group="sampling")
    num_samples: int = _opt(20, "names to sample after training", group="sampling")
    top_k: int = _opt(0, "sample only among the k likeliest tokens (0 = all)", group="sampling")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> Config:
        """Raise ConfigError naming the first impossible setting and how to fix it."""
        for name in ("n_layer", "n_embd", "block_size", "n_head", "num_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag_of(name)} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            fits = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0]
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                              f"pick --n-head in {', '.join(map(str, fits))}")
        for name in ("warmup_steps", "eval_every", "num_samples", "top_k"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_of(name)} must be 0 or more, got {getattr(self, name)!r}")
        if self.warmup_steps >= self.num_steps and self.warmup_steps > 0:
            raise ConfigError(f"--warmup-steps {self.warmup_steps} must be smaller than --steps {self.num_steps}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be greater than 0, got {self.temperature!r} (try 0.5)")
        if not self.learning_rate > 0:
            raise ConfigError(f"--lr must be greater than 0, got {self.learning_rate!r} (the book uses 0.01)")
        if not self.init_std > 0:
            raise ConfigError(f"--init-std must be greater than 0, got {self.init_std!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{flag_of(name)} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.eps_adam > 0:
            raise ConfigError(f"--eps must be greater than 0, got {self.eps_adam!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction!r} (try 0.1)")
        if self.zero_grad_before and not self.zero_grad:
            raise ConfigError("--zero-grad-before and --no-zero-grad contradict each other: pick one")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build a Config from a dict such as a checkpoint's, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# Fields that change what training computes: a resumed run must keep them.
TRAJECTORY_FIELDS = (
    "n_layer", "n_embd", "block_size", "n_head", "init_std", "num_steps", "learning_rate", "beta1",
    "beta2", "eps_adam", "seed", "optimizer", "lr_schedule", "bias_correction", "zero_grad",
    "zero_grad_before", "batch_size", "warmup_steps", "val_fraction",
)


def flag_of(name: str) -> str:
    """The command-line flag of a Config field, e.g. 'num_steps' -> '--steps'."""
    for f in dataclasses.fields(Config):
        if f.name == name:
            return f.metadata.get("flag") or "--" + name.replace("_", "-")
    return "--" + name.replace("_", "-")
