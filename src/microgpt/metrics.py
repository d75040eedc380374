"""The metrics file of a run: JSON Lines, one object per line, several runs appended to one file.

Each run starts with a header line: `{"type": "run", "run_id": "...", "engine": ..., "config":
{...}, "vocab_size": ..., ...}`. Then one line per training step: `{"type": "step", "step": 1,
"loss": 3.36..., "lr": 0.01, "time": 0.12}` (step is 1-based, loss at full precision, time in
seconds of training so far), with `val_loss`, `samples`, `stats` (per matrix: gradient norm,
weight norm, update norm, update / weight) and, in text mode, `window` (where the step's first
window starts) on the steps that measured them. A resumed run appends a second header with the
same run id and `resumed_from`; its steps belong to the same run.

Writing appends whole lines only: a write that fails (disk full, file too large) is undone, so
the file never ends in half a line. Reading streams the file and validates every line against
the declared schema before using it, so memory grows only with what is kept.

Exports: `MetricsWriter`, `read_metrics`, `list_runs`, `check_metrics_path`, `Metrics`, `RunInfo`,
`MetricsError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema as s
from .config import Config, field_kind
from .data import atomic_file, not_a_regular_file
from .errors import UserError, WriteFailure


class MetricsError(UserError):
    """A metrics file that cannot be written or read."""


def _config_fields() -> s.Check:
    """A header's config: every field optional (older files hold fewer), each of its declared type."""
    kinds = {"int": s.integer(), "float": s.number(finite=False), "bool": s.boolean(), "str": s.string(100)}
    checks = {f.name: kinds[field_kind(f)] for f in dataclasses.fields(Config)}
    checks["val_fraction"] = s.optional(checks["val_fraction"])
    return s.record(checks)


# A run's id, as metrics files and checkpoints both record it, and how both write a time of day.
RUN_ID = s.string(64, r"[0-9A-Za-z_-]+", "a run id of letters, digits, - and _")
TIMESTAMP = "%Y-%m-%dT%H:%M:%S%z"

RUN_HEADER = s.record({
    "type": s.one_of("run"),
    "run_id": RUN_ID,
    "engine": s.string(100),
    "config": _config_fields(),
    "data": s.string(4096),
    "data_format": s.one_of("lines", "text"),
    "vocab_size": s.integer(1, 10_000_000),
    "num_params": s.integer(0),
    "num_docs": s.integer(0),
    "started": s.string(100),
    "resumed_from": s.integer(0),
}, required=("type",))

STEP = s.record({
    "type": s.one_of("step"),
    "step": s.integer(1, 2 ** 63 - 1),
    "loss": s.number(finite=False),
    "lr": s.number(finite=False),
    "time": s.number(lo=0),
    "val_loss": s.number(finite=False),
    "samples": s.list_of(s.string(100_000), max_len=10_000),
    "stats": s.mapping(s.list_of(s.number(finite=False), 4, 4)),
    "window": s.integer(0, 2 ** 63 - 1),
}, required=("type", "step", "loss"))


# --- checking a path before a run writes to it -----------------------------------------------------


def check_metrics_path(path: str | os.PathLike, data: Path | None = None) -> Path:
    """Fail before training starts, not after: `path` must be a metrics file, or not exist yet.

    Refused with one line and nothing written: a folder, a device or FIFO, the training data
    itself, a file that is not a metrics file (its first line is not a run header), a folder
    that does not exist, a file that cannot be appended to.
    """
    path = Path(path)
    if path.is_symlink():  # the file it names is written to: never through a link
        raise MetricsError(f"metrics path {path} is a symbolic link: pass the file it points to, or another path")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as e:
        raise MetricsError(f"cannot use metrics path {path} ({e.strerror}): pick another --metrics path") from None
    if info is None:
        if not path.parent.is_dir():
            raise MetricsError(f"the folder of metrics file {path} does not exist: create {path.parent} first "
                               "or pick another --metrics path")
        if not os.access(path.parent, os.W_OK):
            raise MetricsError(f"cannot create metrics file {path}: its folder is not writable; "
                               "pick another --metrics path")
        return path
    if problem := not_a_regular_file(info):
        example = path / "metrics.jsonl" if stat.S_ISDIR(info.st_mode) else "metrics.jsonl"
        raise MetricsError(f"metrics path {path} {problem}: pass a file name such as {example}")
    if data is not None and data.exists() and os.path.samefile(path, data):
        raise MetricsError(f"metrics path {path} is the training data: pick another --metrics path")
    if info.st_size:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        try:
            RUN_HEADER(_parse(first), "")
        except (MetricsError, s.SchemaError):
            raise MetricsError(f"{path} is not a metrics file (its first line is not a run header): nothing was "
                               "written; pick a new file name for --metrics") from None
    if not os.access(path, os.W_OK):
        raise MetricsError(f"metrics file {path} is not writable: pick another --metrics path")
    return path


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MetricsError(f"byte 0x{line[e.start]:02x} is not UTF-8") from None
    except (ValueError, RecursionError):
        raise MetricsError("not JSON") from None


# --- writing -------------------------------------------------------------------------------------


class MetricsWriter:
    """Appends one JSON object per line, written at once so nothing is lost on interruption.

    A new run appends its header. A resumed run first rewrites the file without its own steps
    after `resume_step` (other runs' lines are kept as they are), then appends a header with the
    same run id. `kept` holds the losses its run had logged up to there.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.kept: list[float] = []
        if resume_step is not None and self.path.exists():
            self.kept = self._trim(header["run_id"], resume_step)
            header = {**header, "resumed_from": resume_step}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        self._size = os.fstat(self._fd).st_size
        if self._size:  # a file cut short (a kill mid-line, before this writer) gets its line ended
            with open(self.path, "rb") as f:
                f.seek(self._size - 1)
                if f.read(1) != b"\n":
                    self._write(b"\n")
        self._write((json.dumps({"type": "run", **header}) + "\n").encode("utf-8"))

    def _trim(self, run_id: str, resume_step: int) -> list[float]:
        """Rewrite the file without this run's steps beyond resume_step; its kept losses."""
        kept: list[float] = []
        with atomic_file(self.path, mode=stat.S_IMODE(os.stat(self.path).st_mode)) as out:
            for current, _, raw, record in _by_run(self.path):
                if current == run_id and record["type"] == "step":
                    if record["step"] > resume_step:
                        continue
                    kept.append(record["loss"])
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
        return kept

    def _write(self, line: bytes) -> None:
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "the disk is full or the file too large (a short write)")
        except OSError as e:
            try:
                os.ftruncate(self._fd, self._size)  # whole lines only: undo the part that was written
            except OSError:
                pass
            raise WriteFailure(f"cannot write to metrics file {self.path} ({e.strerror or e}): free some space "
                               "or pick another --metrics path") from None
        self._size += len(line)

    def log(self, **record: Any) -> None:
        self._write((json.dumps({"type": "step", **record}) + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- reading -------------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
    """(line number, raw line, validated record) for every non-blank line, streamed.

    A last line without its newline that does not parse is a write a kill cut short: it comes
    with record None. Any other line that is not a valid record is a MetricsError naming it.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise MetricsError(f"cannot read metrics file {path} ({e.strerror})") from None
    with f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = _parse(raw)
                if not isinstance(record, dict):
                    raise s.SchemaError("", "a JSON object", record)
                record = (RUN_HEADER if record.get("type") == "run" else STEP)(record, "")
            except (MetricsError, s.SchemaError) as e:
                if not raw.endswith(b"\n") and isinstance(e, MetricsError):
                    yield number, raw, None
                    continue
                raise MetricsError(f"{path} line {number}: {e}; pass a metrics file written by "
                                   "microgpt train --metrics") from None
            yield number, raw, record


def _by_run(path: Path) -> Iterator[tuple[str, int, bytes, dict[str, Any]]]:
    """(run id, line number, raw line, record) for every valid record; a step carries the id of the
    header above it. Files from before run ids count each header as a run of its own."""
    current = None
    for number, raw, record in _records(path):
        if record is None:
            continue  # a line a kill cut short
        if record["type"] == "run":
            current = record.get("run_id") or f"line{number}"
        elif current is None:
            raise MetricsError(f"{path} line {number}: a step before any run header; pass a metrics file written "
                               "by microgpt train --metrics")
        yield current, number, raw, record


@dataclass
class RunInfo:
    """One run of a metrics file: its position (1-based), id, header, and steps logged."""

    index: int
    run_id: str
    header: dict[str, Any]
    steps: int = 0


def list_runs(path: str | os.PathLike) -> list[RunInfo]:
    """Every run in the file, in order of first appearance; a resumed run's second header joins its first."""
    path = _existing(path)
    runs: dict[str, RunInfo] = {}
    for run_id, _, _, record in _by_run(path):
        if run_id not in runs:
            runs[run_id] = RunInfo(len(runs) + 1, run_id, record)
        elif record["type"] == "step":
            runs[run_id].steps += 1
        else:  # a resumed run's header: its settings are the run's latest (a new stage has more steps)
            runs[run_id].header = {**record, "started": runs[run_id].header.get("started", record.get("started"))}
    return list(runs.values())


@dataclass
class Metrics:
    """One run of a metrics file: its header and its steps, as compact arrays."""

    path: Path
    run: dict[str, Any]
    index: int = 1
    num_runs: int = 1
    step: array = field(default_factory=lambda: array("q"))
    loss: array = field(default_factory=lambda: array("d"))
    lr: array = field(default_factory=lambda: array("d"))
    time: array = field(default_factory=lambda: array("d"))
    val: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, list[str]]] = field(default_factory=list)
    stats: list[tuple[int, dict[str, list[float]]]] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return self.loss.tolist()


def read_metrics(path: str | os.PathLike, run: int | None = None, details: bool = False) -> Metrics:
    """Run `run` (1-based; default: the last) of a metrics file; with `details`, its samples and stats too.

    Two streaming passes: one to find the runs, one to keep the chosen run's numbers.
    """
    path = _existing(path)
    runs = list_runs(path)
    if not runs:
        raise MetricsError(f"{path} has no runs: pass a metrics file written by microgpt train --metrics")
    if run is None:
        run = len(runs)
    if not 1 <= run <= len(runs):
        raise MetricsError(f"{path} holds {len(runs)} run{'s' if len(runs) > 1 else ''}: pass --run from 1 to "
                           f"{len(runs)}")
    chosen = runs[run - 1]
    out = Metrics(path, chosen.header, run, len(runs))
    for run_id, _, _, record in _by_run(path):
        if run_id != chosen.run_id or record["type"] == "run":
            continue
        out.step.append(record["step"])
        out.loss.append(record["loss"])
        out.lr.append(record.get("lr", float("nan")))
        out.time.append(record.get("time", float("nan")))
        if "val_loss" in record:
            out.val.append((record["step"], record["val_loss"]))
        if "window" in record:
            out.windows.append((record["step"], record["window"]))
        if details and "samples" in record:
            out.samples.append((record["step"], record["samples"]))
        if details and "stats" in record:
            out.stats.append((record["step"], record["stats"]))
    if not out.step:
        raise MetricsError(f"{path} run {run} has no training steps: pass a metrics file written by "
                           "microgpt train --metrics")
    return out


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MetricsError(f"metrics file {path} does not exist: write one with microgpt train --metrics {path}")
    if problem := not_a_regular_file(path.stat()):
        raise MetricsError(f"metrics path {path} {problem}: pass a metrics file written by microgpt train --metrics")
    return path
