"""The one configuration object: every hyperparameter of the book, with the book's defaults.

Chapter 4 fixes the model's shape, chapter 5 the training loop, chapter 6 sampling and
chapter 7 what the book's loop leaves out; a last group holds what a user of nanoGPT expects
(text streams, clipping, weight decay, dropout), each off by default. The command line is
generated from these fields (see `microgpt.cli`), so each default is declared here and nowhere
else. Standard library only.

Exports: `Config`, `ConfigError`, `TRAJECTORY_FIELDS`, `default_val_fraction`, `field_kind`, `flag_of`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

MIN_TEMPERATURE = 0.01  # below this, logits / temperature overflows for ordinary logits
MAX_SEED = 2 ** 64  # seeds are non-negative and below this (Python seeds from |seed|, so -1 would be 1)


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
    seed: int = _opt(42, "seed of the one random generator (shuffle, init, sampling); 0 or more")

    # Chapter 5's "why"s, as ablations; the defaults are the book's loop.
    optimizer: str = _opt("adam", "5.6: adam, or sgd (p -= lr_t * g, no moments)", choices=("adam", "sgd"))
    lr_schedule: str = _opt("linear", "5.7: linear decay to --min-lr (book: to 0), constant, or cosine",
                            choices=("linear", "constant", "cosine"))
    bias_correction: bool = _opt(True, "5.6: --no-bias-correction uses Adam's raw moments (m_hat = m, v_hat = v)")
    zero_grad: bool = _opt(True, "5.8: --no-zero-grad never resets gradients, so every step adds all earlier ones")
    zero_grad_before: bool = _opt(False, "5.8: zero gradients before the forward pass instead of after the update")

    # Chapter 7: what the book's loop omits. The defaults leave the faithful run unchanged.
    batch_size: int = _opt(1, "examples per step; the loss is their mean (1 = the book's loop)", group="chapter7")
    warmup_steps: int = _opt(0, "steps of linear learning-rate warmup before the schedule", group="chapter7")
    val_fraction: float | None = _opt(None, "hold out this last fraction of the (shuffled) documents or of the "
                                      "text for validation (default: 0 in lines mode, 0.1 in text mode)",
                                      group="chapter7")
    eval_every: int = _opt(0, "log the validation loss every N steps (0 = only at the end)", group="chapter7")

    # What a user of nanoGPT expects; each is off by default, so the book's run is untouched.
    data_format: str = _opt("lines", "lines: one document per line (the book); text: one stream of characters, "
                            "newlines included, trained on windows of --block-size + 1 characters",
                            choices=("lines", "text"), group="beyond")
    eval_windows: int = _opt(200, "text mode: validation windows, drawn once from the held-out text",
                             group="beyond")
    grad_clip: float = _opt(0.0, "clip the gradients' global norm to X before the update (0 = off)", group="beyond")
    weight_decay: float = _opt(0.0, "decoupled weight decay (AdamW): p -= lr_t * X * p on every weight matrix "
                               "(0 = off)", group="beyond")
    dropout: float = _opt(0.0, "drop activations with probability X while training (the torch engine; 0 = off)",
                          group="beyond")
    min_lr: float = _opt(0.0, "where the linear and cosine decays end (the book: 0)", group="beyond")

    # Chapter 6: sampling.
    temperature: float = _opt(0.5, f"sampling temperature, at least {MIN_TEMPERATURE} (lower is more "
                              "conservative)", group="sampling")
    num_samples: int = _opt(20, "documents to sample after training", group="sampling")
    top_k: int = _opt(0, "sample only among the k likeliest tokens (0 = all)", group="sampling")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> Config:
        """Raise ConfigError naming the first impossible setting and how to fix it.

        Also settles the one mode-dependent default: --val-fraction is 0 in lines mode and 0.1
        in text mode unless given.
        """
        self._check_types()
        if self.val_fraction is None:
            self.val_fraction = default_val_fraction(self.data_format)
        for name in ("n_layer", "n_embd", "block_size", "n_head", "num_steps", "batch_size", "eval_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_of(name)} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            fits = [h for h in range(1, min(self.n_embd, 4096) + 1) if self.n_embd % h == 0]
            raise ConfigError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                              f"pick --n-head in {', '.join(map(str, fits))}")
        for name in ("warmup_steps", "eval_every", "num_samples", "top_k"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_of(name)} must be 0 or more, got {getattr(self, name)!r}")
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"--seed must be 0 or more (and below 2**64), got {self.seed}: Python's generator "
                              f"seeds from |seed|, so {self.seed} would silently give the run of {abs(self.seed)}")
        if self.warmup_steps >= self.num_steps and self.warmup_steps > 0:
            raise ConfigError(f"--warmup-steps {self.warmup_steps} must be smaller than --steps {self.num_steps}")
        if not self.temperature >= MIN_TEMPERATURE:
            raise ConfigError(f"--temperature must be at least {MIN_TEMPERATURE}, got {self.temperature!r}: below it "
                              "logits / temperature overflows (try 0.5; --top-k 1 always takes the likeliest token)")
        for name in ("learning_rate", "init_std", "eps_adam"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{flag_of(name)} must be greater than 0, got {getattr(self, name)!r}"
                                  + (" (the book uses 0.01)" if name == "learning_rate" else ""))
        for name in ("beta1", "beta2", "val_fraction", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{flag_of(name)} must be in [0, 1), got {getattr(self, name)!r}"
                                  + (" (try 0.1)" if name == "val_fraction" else ""))
        for name in ("grad_clip", "weight_decay", "min_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_of(name)} must be 0 (off) or more, got {getattr(self, name)!r}")
        if self.min_lr > self.learning_rate:
            raise ConfigError(f"--min-lr {self.min_lr} is above --lr {self.learning_rate}: the decay ends below "
                              "where it starts; lower --min-lr")
        if self.zero_grad_before and not self.zero_grad:
            raise ConfigError("--zero-grad-before and --no-zero-grad contradict each other: pick one")
        return self

    def _check_types(self) -> None:
        """Each field holds its declared type (a config read from a file may hold anything)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), field_kind(f)
            if f.name == "val_fraction" and value is None:
                continue
            if kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif kind == "bool":
                ok = isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                want = {"int": "an integer", "float": "a finite number", "bool": "true or false"}.get(kind, "a string")
                raise ConfigError(f"{flag_of(f.name)} must be {want}, got {value!r}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{flag_of(f.name)} must be one of {', '.join(choices)}, got {value!r}")
            if kind == "float" and isinstance(value, int):
                setattr(self, f.name, float(value))  # a JSON file may write 1 for 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build a Config from a dict such as a checkpoint's, ignoring unknown keys (not yet validated)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# Fields that change what training computes: a resumed run must keep them, and `compare` labels
# runs by them. Every field but those that only say how to report or sample, so that a field added
# to Config is kept on resume unless it is named here.
REPORTING_FIELDS = ("eval_every", "eval_windows", "temperature", "num_samples", "top_k")
TRAJECTORY_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in REPORTING_FIELDS)


def field_kind(f: dataclasses.Field) -> str:
    """A Config field's type as one word: "int", "float", "bool" or "str" (val_fraction's "float | None": "float")."""
    return str(f.type).split(" ")[0]


def default_val_fraction(data_format: str) -> float:
    """The one default that depends on the mode: text holds out its last 10%, lines nothing."""
    return 0.1 if data_format == "text" else 0.0


def flag_of(name: str) -> str:
    """The command-line flag of a Config field, e.g. 'num_steps' -> '--steps'."""
    for f in dataclasses.fields(Config):
        if f.name == name:
            return f.metadata.get("flag") or "--" + name.replace("_", "-")
    return "--" + name.replace("_", "-")
