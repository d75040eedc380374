"""`microgpt compare`: several runs' loss curves on one plot, and a table of how each ended.

This is how chapter 5's "why"s are seen rather than told: train the book's loop and an ablation
(`--optimizer sgd`, `--lr-schedule cosine`, ...), then compare their metrics files. Each run is
labelled by what its recorded settings change from the others' common ones.

Exports: `configure`, `main`, `run_labels`, `summarize`.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config
from .errors import UserError
from .metrics import Metrics
from .plot import (
    WINDOW,
    check_output,
    describe_config,
    draw_uniform,
    finite,
    load_runs,
    new_figure,
    running_mean,
    save_figure,
    set_title,
    set_ylim,
)

# Run-header entries that change a loss curve, besides the config; compared like config fields.
HEADER_KEYS = ("engine", "data")
_MISSING = object()


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    """A run's comparable settings: the header entries above, then every config field."""
    out = {k: run[k] for k in HEADER_KEYS if k in run}
    out.update(run.get("config", {}))
    return out


def _show(key: str, value: Any) -> str:
    if value is _MISSING:
        return f"{key}=(unset)"
    if key == "data":
        value = Path(str(value)).name  # the file name says which dataset; the folder rarely matters
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{key}={value}"


def run_labels(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """One label per run header: the settings where it departs from the others' common ones.

    For each setting that differs between runs, the common value is the one most runs share; on a
    tie, the book's default if it is among the tied values; otherwise there is none and every run
    shows its own value. A run with no departures is the "baseline". Identical settings leave
    nothing to tell runs apart, so the file name is used, and repeated labels get it appended.
    """
    settings = [_settings(run) for run in runs]
    keys: list[str] = []
    for s in settings:
        keys.extend(k for k in s if k not in keys)
    defaults = Config().to_dict()
    parts: list[list[str]] = [[] for _ in runs]
    for key in keys:
        values = [s.get(key, _MISSING) for s in settings]
        if all(v == values[0] for v in values):
            continue
        counts = Counter(repr(v) for v in values)  # repr: the values may be unhashable or mix types
        most = max(counts.values())
        tied = [v for v in values if counts[repr(v)] == most]
        if len({repr(v) for v in tied}) == 1:
            common = tied[0]
        elif key in defaults and any(v == defaults[key] for v in tied):
            common = defaults[key]
        else:
            common = _MISSING
        for part, v in zip(parts, values, strict=True):
            if common is _MISSING or v != common:
                part.append(_show(key, v))
    if not any(parts):
        return [Path(name).name for name in names]
    labels = [", ".join(part) or "baseline" for part in parts]
    repeated = Counter(labels)
    return [f"{label} ({Path(name).name})" if repeated[label] > 1 else label
            for label, name in zip(labels, names, strict=True)]


def summarize(metrics: Metrics, window: int) -> dict[str, float]:
    """How a run ended: last loss, mean of its last `window` losses, lowest loss, wall time, steps."""
    losses = metrics.losses
    tail = losses[-window:]
    low = finite(losses)
    last = metrics.steps[-1]
    val = metrics.val
    return {"final": losses[-1], "last_mean": math.fsum(tail) / len(tail), "min": min(low) if low else math.nan,
            "time": float(last.get("time", math.nan)), "steps": last["step"],
            "val": val[-1][1] if val else math.nan}


def _common_description(runs: Sequence[dict[str, Any]]) -> str:
    """What all runs share, in one line, from the first run's header minus the settings that differ."""
    first = _settings(runs[0])
    differing = {k for k in first if any(_settings(run).get(k, _MISSING) != first[k] for run in runs)}
    parts = []
    if "engine" in first and "engine" not in differing:
        parts.append(f"{first['engine']} engine")
    if "data" in first and "data" not in differing:
        parts.append(Path(str(first["data"])).name)
    parts.append(describe_config(runs[0], skip=tuple(differing)))
    return ", ".join(p for p in parts if p)


def _table(labels: Sequence[str], rows: Sequence[dict[str, float]], window: int) -> str:
    with_val = any(math.isfinite(r["val"]) for r in rows)
    head = ["run", "steps", "final loss", f"mean last {window}", "min loss"] + (["val loss"] if with_val else [])
    head.append("wall time")
    body = []
    for label, r in zip(labels, rows, strict=True):
        cells = [label, str(r["steps"]), f"{r['final']:.4f}", f"{r['last_mean']:.4f}", f"{r['min']:.4f}"]
        if with_val:
            cells.append(f"{r['val']:.4f}" if math.isfinite(r["val"]) else "-")
        cells.append(f"{r['time']:.1f} s" if math.isfinite(r["time"]) else "-")
        body.append(cells)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:  # the label left-aligned, the numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Draw several runs' training losses on one plot (each step faint, and a running mean), "
                          "labelled by what their settings change, and print how each run ended: chapter 5's "
                          "ablations (5.6 Adam vs SGD, 5.7 learning-rate schedules, 5.8 zeroing) side by side.")
    parser.add_argument("runs", nargs="+", metavar="RUN.jsonl", help="metrics files (microgpt train --metrics FILE)")
    parser.add_argument("-o", "--output", metavar="FILE", default="compare.png",
                        help="image to write, .png, .pdf or .svg (default: compare.png)")
    parser.add_argument("--window", type=int, default=WINDOW, metavar="N",
                        help=f"steps in the running mean and in the table's mean (default: {WINDOW})")


def main(args: argparse.Namespace) -> int:
    if args.window < 1:
        raise UserError(f"--window must be at least 1 step, got {args.window} (the default is {WINDOW})")
    output = check_output(args.output)
    runs = load_runs(args.runs)
    labels = run_labels([m.run for m in runs], args.runs)

    fig, ax = new_figure()
    raw_all: list[float] = []
    curves: list[float] = []
    for i, (metrics, label) in enumerate(zip(runs, labels, strict=True)):
        color = f"C{i % 10}"
        steps = [r["step"] for r in metrics.steps]
        smooth = running_mean(metrics.losses, args.window)
        # Faint raw losses of many runs blur together; fainter still as runs are added.
        ax.plot(steps, metrics.losses, color=color, alpha=max(0.08, 0.25 / len(runs) ** 0.5), linewidth=0.7)
        ax.plot(steps, smooth, color=color, linewidth=2.0, label=label)
        raw_all += metrics.losses
        curves += smooth
    vocab_sizes = [m.run["vocab_size"] for m in runs if "vocab_size" in m.run]
    draw_uniform(ax, vocab_sizes)
    set_ylim(ax, raw_all, curves + [math.log(v) for v in vocab_sizes])
    common = _common_description([m.run for m in runs])
    title = f"training loss of {len(runs)} runs, running mean over {args.window} steps (faint: each step)"
    set_title(ax, title, f"common: {common}" if common else "")
    ax.legend(loc="upper right")
    save_figure(fig, output)

    print(_table(labels, [summarize(m, args.window) for m in runs], args.window))
    for vocab_size in sorted(set(vocab_sizes)):
        print(f"uniform guess: ln({vocab_size}) = {math.log(vocab_size):.4f}")
    print(f"wrote {output}")
    return 0
