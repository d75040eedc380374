"""The metrics file of a run: JSON Lines, one object per line.

The first line describes the run: `{"type": "run", "engine": ..., "config": {...}, ...}`.
Then one line per training step: `{"type": "step", "step": 1, "loss": 3.36..., "lr": 0.01,
"time": 0.12}` (step is 1-based, loss at full precision, time in seconds of training so far),
with `"val_loss"` added on the steps where the validation loss was measured.

Exports: `MetricsWriter`, `read_metrics`, `Metrics`, `MetricsError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


class MetricsError(UserError):
    """A metrics file that cannot be written or read."""


def check_writable(path: str | os.PathLike) -> Path:
    """Fail before training starts, not after, if the metrics file cannot be created."""
    path = Path(path)
    if path.is_dir():
        raise MetricsError(f"metrics path {path} is a folder: pass a file name such as {path / 'metrics.jsonl'}")
    if not path.parent.is_dir():
        raise MetricsError(f"the folder of metrics file {path} does not exist: create {path.parent} first "
                           "or pick another --metrics path")
    return path


class MetricsWriter:
    """Appends one JSON object per line, flushed at once so nothing is lost on interruption."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], resume_step: int | None = None) -> None:
        self.path = check_writable(path)
        if resume_step is None:
            lines = [json.dumps({"type": "run", **header})]
        else:
            # A resumed run keeps what the interrupted run logged up to its checkpoint, and nothing
            # after, so the finished file reads like one uninterrupted run.
            lines = []
            if self.path.exists():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a kill
                    if record.get("type") != "step" or record.get("step", 0) <= resume_step:
                        lines.append(line)
            if not lines:
                lines = [json.dumps({"type": "run", **header})]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, **record: Any) -> None:
        self._file.write(json.dumps({"type": "step", **record}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class Metrics:
    """What a metrics file holds: its run description and its step records."""

    path: Path
    run: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.steps]

    @property
    def val(self) -> list[tuple[int, float]]:
        return [(r["step"], r["val_loss"]) for r in self.steps if "val_loss" in r]


def read_metrics(path: str | os.PathLike) -> Metrics:
    """Parse a metrics file (its last run, if several appended to it); a missing, empty or
    malformed one is a MetricsError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"metrics file {path} does not exist: write one with microgpt train --metrics {path}")
    out = Metrics(path)
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise MetricsError(f"{path} line {number} is not JSON: pass a metrics file written by "
                               "microgpt train --metrics") from None
        if record.get("type") == "run":
            # A file that several runs appended to: the last run is the one to show.
            out.run, out.steps = record, []
        elif "step" in record and "loss" in record:
            out.steps.append(record)
    if not out.steps:
        raise MetricsError(f"{path} has no training steps: pass a metrics file written by microgpt train --metrics")
    return out
