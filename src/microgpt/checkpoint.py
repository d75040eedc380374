"""Checkpoints: everything needed to continue a run, or to sample and evaluate from it.

A checkpoint is a folder (the `--out` of a run) holding:
- `state-NNNNNNN.safetensors`: the weights (named as the book's state dict) and, prefixed
  `adam.m.`, `adam.v.` and `grad.`, the optimizer's moments and the gradients, all float64;
- `checkpoint.json`: format version, config, vocabulary, steps done, the random generators'
  states, the dataset's fingerprint, the training stages, and the name and sha256 of the state file;
- `snapshots/step-NNNNNNN.safetensors`: the weights alone at step 0 and at checkpoint steps,
  for looking back at how the model learned (`microgpt explain`, `sample --snapshot`);
- `metrics.jsonl` (unless --metrics named another file) and `.lock`, held while a run writes here.
The state file is written first under a new name, then checkpoint.json is replaced atomically;
that rename is the moment the new checkpoint exists, so a kill at any instant leaves a whole one.

Nothing read is trusted: checkpoint.json is checked against the declared schema below (types,
ranges, the config through Config.validate(), a vocabulary of distinct characters) and the
state file against its sha256, its shapes and finiteness, before anything uses them. A
checkpoint never decides where anything is written: the metrics file it names is a plain file
name inside its own folder. No pickle anywhere. Weights cross engines by name.

Format versions: 2 (this one). Version 1 files load too: they are read as version 2 with one
training stage, lines mode, no generators beside the book's one, and their metrics path (an
absolute path) kept only as a hint that is shown, never written to.

Exports: `save_checkpoint`, `save_snapshot`, `snapshot_state`, `load_checkpoint`, `is_checkpoint`,
`Checkpoint`, `CheckpointError`, `NonFiniteState`, `FORMAT_VERSION`, `META`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema as s
from .config import Config
from .data import write_atomic
from .engines.base import Engine, ShapeError, check_shapes
from .errors import UserError
from .metrics import RUN_ID, TIMESTAMP

FORMAT = "microgpt-checkpoint"
FORMAT_VERSION = 2
META = "checkpoint.json"
SNAPSHOTS = "snapshots"
OPTIMIZER_PREFIXES = {"m": "adam.m.", "v": "adam.v.", "grad": "grad."}
MAX_META_BYTES = 64 << 20  # a vocabulary of a few thousand characters is a few hundred KB


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, from a newer format, or does not fit the run."""


class NonFiniteState(ValueError):
    """The weights or optimizer state hold inf or NaN: such a state is not worth keeping."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"inf or NaN in {', '.join(names)}")
        self.names = names


# --- the declared schema of checkpoint.json ----------------------------------------------------------

HEX64 = s.string(64, r"[0-9a-f]{64}", "64 hexadecimal digits (a sha256)")


def _rng_state(value: Any, where: str) -> list:
    """Python's Mersenne Twister state as JSON: [version, 625 words, gauss_next]."""
    expected = "[3, a list of 625 integers below 2**32 (the last at most 624), null or a number]"
    if not (isinstance(value, list) and len(value) == 3 and value[0] == 3 and not isinstance(value[0], bool)):
        raise s.SchemaError(where, expected, value)
    words = s.list_of(s.integer(0, 2 ** 32 - 1), 625, 625)(value[1], where + "[1]")
    if words[-1] > 624:
        raise s.SchemaError(where + "[1][624]", "a position of at most 624", words[-1])
    return [3, words, s.optional(s.number())(value[2], where + "[2]")]


def _vocab(value: Any, where: str) -> list[str]:
    chars = s.list_of(s.string(1, r"(?s).", "one character"), 1, 1_000_000)(value, where)
    for i, ch in enumerate(chars):
        if "\ud800" <= ch <= "\udfff":  # half of a surrogate pair is no character: it cannot be printed
            raise s.SchemaError(f"{where}[{i}]", "a character (not half of a surrogate pair)", ch)
    if chars != sorted(set(chars)):
        raise s.SchemaError(where, "distinct characters in sorted order", value)
    return chars


def _plain_name(value: Any, where: str) -> str:
    name = s.string(255, r"[^/\\\x00]+", "a plain file name inside the checkpoint folder")(value, where)
    if name.startswith("."):
        raise s.SchemaError(where, "a plain file name inside the checkpoint folder", value)
    return name


ENGINE_OPTIONS = s.record({
    "device": s.string(20, r"auto|cpu|mps|cuda(:\d{1,3})?", "auto, cpu, cuda, cuda:N or mps"),
    "dtype": s.one_of("float64", "float32", "bfloat16"),
    "compile": s.boolean(),
    "threads": s.integer(0, 4096),
}, extra=False)

def _count_or(*words: str) -> s.Check:
    """One of `words`, or a non-negative integer."""
    number = s.integer(0)

    def check(value: Any, where: str) -> Any:
        if isinstance(value, str) and value in words:
            return value
        try:
            return number(value, where)
        except s.SchemaError:
            raise s.SchemaError(where, f"{', '.join(words)} or a number", value) from None
    return check


RUN_OPTIONS = s.record({
    "checkpoint_every": s.integer(1), "sample_every": s.integer(0), "keep_snapshots": _count_or("auto", "all", "none"),
    "stats_every": _count_or("auto", "off"),
}, extra=False)

CHECKPOINT = s.record({
    "format": s.one_of(FORMAT),
    "version": s.integer(1, FORMAT_VERSION),
    "step": s.integer(0),
    "engine": s.string(20, r"[a-z_]+", "an engine name"),
    "engine_options": ENGINE_OPTIONS,
    "run_options": RUN_OPTIONS,
    "config": s.record({}),  # checked field by field by Config.validate()
    "vocab": _vocab,
    "data_fingerprint": HEX64,
    "data": s.optional(s.string(4096)),
    "rng_state": _rng_state,
    "rngs": s.mapping(s.optional(_rng_state), r"windows|samples"),
    "engine_state": s.record({"dropout_rng": s.list_of(s.integer(0, 255), 1, 1 << 16)}, extra=False),
    "state_file": s.string(40, r"state-\d{7,9}\.safetensors", "state-NNNNNNN.safetensors"),
    "state_sha256": HEX64,
    "saved_at": s.string(100),
    "elapsed": s.number(lo=0),
    "run_id": RUN_ID,
    "metrics": s.optional(_plain_name),
    "metrics_hint": s.optional(s.string(4096)),
    "stages": s.list_of(s.record({"from": s.integer(0), "to": s.integer(1)}, required=("from", "to"), extra=False),
                        1, 10_000),
}, required=("format", "version", "step", "config", "vocab", "rng_state", "data_fingerprint", "state_file",
             "state_sha256"))


# --- reading -------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checked checkpoint: its folder, its validated metadata and config."""

    path: Path
    meta: dict[str, Any]
    config: Config

    @property
    def step(self) -> int:
        return self.meta["step"]

    @property
    def vocab(self) -> list[str]:
        return self.meta["vocab"]

    @property
    def engine(self) -> str:
        return self.meta.get("engine", "numpy")

    @property
    def stages(self) -> list[dict[str, int]]:
        return self.meta.get("stages") or [{"from": 0, "to": self.config.num_steps}]

    def rng_state(self, name: str = "main") -> tuple | None:
        """The saved state of the book's generator ("main") or of the generator `name` (None if it has none)."""
        state = self.meta["rng_state"] if name == "main" else self.meta.get("rngs", {}).get(name)
        return None if state is None else (state[0], tuple(state[1]), state[2])

    def _read_tensors(self, file: Path, what: str, sha256: str | None = None) -> dict[str, Any]:
        """The tensors of `file`, read once; checked against `sha256` first when one is recorded."""
        from safetensors.numpy import load

        if not file.is_file():
            raise CheckpointError(f"checkpoint {self.path} is incomplete: {what} {file.name} is missing; "
                                  "use another checkpoint or start a new run")
        payload = file.read_bytes()
        if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
            raise CheckpointError(f"checkpoint {self.path} is corrupt: {file.name} does not match its recorded "
                                  "sha256 (truncated or modified); use another checkpoint or start a new run")
        try:
            return load(payload)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            reason = s.show(str(e), 80)  # the library quotes the file's bytes: escaped, on one line
            raise CheckpointError(f"checkpoint {self.path} is corrupt: {file.name} cannot be read "
                                  f"({reason}); use another checkpoint or start a new run") from None

    def tensors(self) -> dict[str, Any]:
        """Read and verify the state file: name -> float64 array, finite, matching its sha256."""
        return self._read_tensors(self.path / self.meta["state_file"], "the state file", self.meta["state_sha256"])

    def _checked(self, tensors: dict[str, Any], shapes: dict[str, tuple[int, int]], prefix: str,
                 file: str) -> dict[str, Any]:
        import numpy as np

        part = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        try:
            check_shapes(part, shapes, prefix)
        except ShapeError as e:
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: {e} in {file}") from None
        for name in shapes:
            if part[name].dtype != np.float64 or not np.isfinite(part[name]).all():
                raise CheckpointError(f"checkpoint {self.path} is corrupt: {prefix}{name} in {file} is not "
                                      "finite float64; use another checkpoint or start a new run")
        return {name: part[name] for name in shapes}

    def restore(self, engine: Engine, with_optimizer: bool = True) -> None:
        """Load the weights (and the optimizer state) into `engine`, checking every shape first."""
        tensors, file = self.tensors(), self.meta["state_file"]
        weights = self._checked(tensors, engine.shapes, "", file)
        opt = {kind: self._checked(tensors, engine.shapes, prefix, file)
               for kind, prefix in OPTIMIZER_PREFIXES.items()} if with_optimizer else None
        engine.load_state_dict(weights)
        if opt is not None:
            engine.load_optimizer_state(opt)
            engine.load_extra_state(self.meta.get("engine_state", {}))

    def snapshot_steps(self) -> list[int]:
        """The steps whose weights are kept in snapshots/, in order."""
        found = []
        for file in (self.path / SNAPSHOTS).glob("step-*.safetensors"):
            match = re.fullmatch(r"step-(\d{7,9})\.safetensors", file.name)
            if match and int(match.group(1)) <= self.step:
                found.append(int(match.group(1)))
        return sorted(found)

    def snapshot(self, step: int, shapes: dict[str, tuple[int, int]]) -> dict[str, Any]:
        """The weights at `step`: a snapshot, or the checkpoint's own state at its step."""
        if step == self.step:
            return self._checked(self.tensors(), shapes, "", self.meta["state_file"])
        steps = self.snapshot_steps()
        if step not in steps:
            kept = ", ".join(str(s) for s in steps if s != self.step)
            raise CheckpointError(f"checkpoint {self.path} keeps no weights of step {step}: pick "
                                  + (f"one of {kept}, or " if kept else "") + f"{self.step} (the latest)")
        name = snapshot_name(step)
        return self._checked(self._read_tensors(self.path / SNAPSHOTS / name, "snapshot"), shapes, "", name)


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
    if meta_file.stat().st_size > MAX_META_BYTES:
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} is larger than any checkpoint writes; "
                              "use another checkpoint or start a new run")
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} is not valid JSON (truncated or edited); "
                              "use another checkpoint or start a new run") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file} is not a microgpt checkpoint file: pass the --out folder of a "
                              "training run")
    version = meta.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this microgpt reads "
                              f"({FORMAT_VERSION}): upgrade microgpt (pip install -U -e . in the clone)")
    try:
        if version == 1:
            meta = _from_version_1(meta)
        meta = CHECKPOINT(meta, "")
        config = Config.from_dict(meta["config"]).validate()
    except (s.SchemaError, UserError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} field {e}; use another checkpoint or "
                              "start a new run") from None
    if meta["step"] > config.num_steps:
        raise CheckpointError(f"checkpoint {path} is corrupt: {META} field step: expected at most the run's "
                              f"{config.num_steps} steps, found {meta['step']}; use another checkpoint")
    return Checkpoint(path, meta, config)


def _from_version_1(meta: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint read as version 2: what it lacks takes the value it implied."""
    meta = dict(meta)
    hint = meta.pop("metrics", None)
    meta["metrics_hint"] = hint if isinstance(hint, str) else None  # an absolute path: shown, never written
    meta.setdefault("engine_options", {})
    meta.setdefault("rngs", {})
    return meta  # no stages: one, from 0 to the config's num_steps (Checkpoint.stages)


# --- writing -------------------------------------------------------------------------------------


def snapshot_state(engine: Engine) -> dict[str, Any]:
    """The engine's weights, Adam moments and gradients as float64 arrays, checked to be finite.

    Taken apart from the write so that a run can check a step's state, log the step, and only
    then write the checkpoint: a checkpoint never gets ahead of the metrics file.
    """
    import numpy as np

    tensors = {name: np.ascontiguousarray(w, dtype=np.float64) for name, w in engine.state_dict().items()}
    for kind, matrices in engine.optimizer_state().items():
        for name, w in matrices.items():
            tensors[OPTIMIZER_PREFIXES[kind] + name] = np.ascontiguousarray(w, dtype=np.float64)
    bad = [name for name, t in tensors.items() if not np.isfinite(t).all()]
    if bad:
        raise NonFiniteState(bad)  # never replace a good checkpoint with a diverged one
    return tensors


def save_checkpoint(path: str | Path, state: dict[str, Any], step: int, meta: dict[str, Any]) -> Path:
    """Write a checkpoint after `step` completed steps into folder `path`.

    `state` is a `snapshot_state(engine)`; `meta` the run's description (config, vocabulary,
    generators, ...), to which the format, the step and the state file's name and sha256 are added.
    """
    from safetensors.numpy import save

    path = Path(path)
    payload = save(state, metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    state_file = f"state-{step:07d}.safetensors"
    write_atomic(path / state_file, payload)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, **meta, "state_file": state_file,
            "state_sha256": hashlib.sha256(payload).hexdigest(), "saved_at": time.strftime(TIMESTAMP)}
    write_atomic(path / META, json.dumps(meta, indent=1).encode("utf-8"))
    # Only now is the new state file the one checkpoint.json names; older ones can go, and so can
    # what a killed write left half-written (the run holds the folder's lock: no other writer is at work).
    for old in path.glob("state-*.safetensors"):
        if old.name != state_file:
            old.unlink(missing_ok=True)
    for stale in [*path.glob(".state-*.tmp"), *path.glob(f".{META}.*.tmp"), *path.glob(f"{SNAPSHOTS}/.step-*.tmp")]:
        stale.unlink(missing_ok=True)
    return path


def snapshot_name(step: int) -> str:
    return f"step-{step:07d}.safetensors"


def save_snapshot(path: str | Path, step: int, weights: dict[str, Any]) -> Path:
    """Keep the weights of `step` (float64, no optimizer state) in the checkpoint's snapshots/ folder."""
    import numpy as np
    from safetensors.numpy import save

    file = Path(path) / SNAPSHOTS / snapshot_name(step)
    tensors = {name: np.ascontiguousarray(w, dtype=np.float64) for name, w in weights.items()}
    write_atomic(file, save(tensors, metadata={"format": FORMAT, "step": str(step)}))
    return file


def rng_json(rng: random.Random | None) -> list | None:
    """A generator's state as JSON: [version, 625 words, gauss_next]."""
    if rng is None:
        return None
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]
