"""Checkpoints: everything needed to continue a run, or to sample and evaluate from it.

A checkpoint is a folder with two files:
- `state-NNNNNN.safetensors`: the weights (named as the book's state dict) and, prefixed
  `adam.m.`, `adam.v.` and `grad.`, the optimizer's moments and the gradients, all float64;
- `checkpoint.json`: format version, config, vocabulary, steps done, the random generator's
  state, the dataset's fingerprint, and the name and sha256 of the state file.
The state file is written first under a new name, then checkpoint.json is replaced atomically;
that rename is the moment the new checkpoint exists, so a kill at any instant leaves a whole one.
No pickle anywhere. Weights cross engines by name, so any engine loads any engine's checkpoint.

Exports: `save_checkpoint`, `snapshot_state`, `load_checkpoint`, `Checkpoint`, `CheckpointError`, `FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .data import write_atomic
from .engines.base import Engine, param_shapes
from .errors import UserError

FORMAT = "microgpt-checkpoint"
FORMAT_VERSION = 1
META = "checkpoint.json"


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, from a newer format, or does not fit the run."""


class NonFiniteState(ValueError):
    """The weights or optimizer state hold inf or NaN: such a state is not worth keeping."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"inf or NaN in {', '.join(names)}")
        self.names = names


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def config(self) -> Config:
        return Config.from_dict(self.meta["config"])

    @property
    def step(self) -> int:
        return self.meta["step"]

    @property
    def vocab(self) -> list[str]:
        return self.meta["vocab"]

    def rng_state(self) -> tuple:
        version, internal, gauss_next = self.meta["rng_state"]
        return (version, tuple(internal), gauss_next)

    def tensors(self) -> dict[str, Any]:
        """Read and verify the state file: name -> float64 array."""
        from safetensors.numpy import load

        name = self.meta["state_file"]
        file = self.path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {self.path} is incomplete: {name} is missing; "
                                  "use another checkpoint or start a new run")
        payload = file.read_bytes()
        if hashlib.sha256(payload).hexdigest() != self.meta["state_sha256"]:
            raise CheckpointError(f"checkpoint {self.path} is corrupt: {name} does not match its recorded sha256 "
                                  "(truncated or modified); use another checkpoint or start a new run")
        try:
            return load(payload)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint {self.path} is corrupt: {name} cannot be read ({e})") from None

    def restore(self, engine: Engine, with_optimizer: bool = True) -> None:
        """Load the weights (and the optimizer state) into `engine`, checking every shape first."""
        tensors = self.tensors()
        shapes = param_shapes(engine.config, engine.vocab_size)
        prefixes = ("", "adam.m.", "adam.v.", "grad.") if with_optimizer else ("",)
        for prefix in prefixes:
            for name, shape in shapes.items():
                got = tensors.get(prefix + name)
                if got is None or tuple(got.shape) != shape:
                    raise CheckpointError(f"checkpoint {self.path} does not fit this model: {prefix + name} "
                                          f"should be {shape}, found {None if got is None else tuple(got.shape)}")
        engine.load_state_dict({name: tensors[name] for name in shapes})
        if with_optimizer:
            engine.load_optimizer_state({
                key: {name: tensors[prefix + name] for name in shapes}
                for key, prefix in (("m", "adam.m."), ("v", "adam.v."), ("grad", "grad."))})


def snapshot_state(engine: Engine) -> dict[str, Any]:
    """The engine's weights, Adam moments and gradients as float64 arrays, checked to be finite.

    Taken apart from the write so that a run can check a step's state, log the step, and only
    then write the checkpoint: a checkpoint never gets ahead of the metrics file.
    """
    import numpy as np

    tensors = {name: np.ascontiguousarray(w, dtype=np.float64) for name, w in engine.state_dict().items()}
    opt = engine.optimizer_state()
    for key, prefix in (("m", "adam.m."), ("v", "adam.v."), ("grad", "grad.")):
        for name, w in opt[key].items():
            tensors[prefix + name] = np.ascontiguousarray(w, dtype=np.float64)
    bad = [name for name, t in tensors.items() if not np.isfinite(t).all()]
    if bad:
        raise NonFiniteState(bad)  # never replace a good checkpoint with a diverged one
    return tensors


def save_checkpoint(path: str | Path, engine: Engine, step: int, rng: random.Random, vocab: list[str],
                    data_fingerprint: str, extra: dict[str, Any] | None = None,
                    state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint of `engine` after `step` completed steps into folder `path`.

    `state` is a `snapshot_state(engine)` already taken; without it one is taken here.
    """
    from safetensors.numpy import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = snapshot_state(engine) if state is None else state
    payload = save(tensors, metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    state_file = f"state-{step:07d}.safetensors"
    write_atomic(path / state_file, payload)
    version, internal, gauss_next = rng.getstate()
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "step": step, "engine": engine.name,
        "config": engine.config.to_dict(), "vocab": vocab, "data_fingerprint": data_fingerprint,
        "rng_state": [version, list(internal), gauss_next], "state_file": state_file,
        "state_sha256": hashlib.sha256(payload).hexdigest(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_atomic(path / META, json.dumps(meta, indent=1).encode("utf-8"))
    # Only now is the new state file the one checkpoint.json names; older ones can go.
    for old in path.glob("state-*.safetensors"):
        if old.name != state_file:
            old.unlink(missing_ok=True)
    for stale in [*path.glob(".state-*.tmp"), *path.glob(f".{META}.*.tmp")]:  # writes a kill cut short
        stale.unlink(missing_ok=True)
    return path


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check checkpoint.json; the state file is read on restore()."""
    path = Path(path)
    if path.name == META and path.is_file():
        path = path.parent  # the checkpoint's own JSON file was given for its folder
    meta_file = path / META
    if not path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist: pass the --out folder of a training run")
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a microgpt checkpoint (no {META}): pass the --out folder of a "
                              "training run")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} is not valid JSON (truncated or edited); "
                              "use another checkpoint or start a new run") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file} is not a microgpt checkpoint file: pass the --out folder of a "
                              "training run")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this microgpt reads "
                              f"({FORMAT_VERSION}): upgrade microgpt (pip install -U microgpt)")
    missing = [k for k in ("step", "config", "vocab", "rng_state", "data_fingerprint", "state_file",
                           "state_sha256") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} lacks {', '.join(missing)}; "
                              "use another checkpoint or start a new run")
    return Checkpoint(path, meta)
