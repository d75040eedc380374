"""`microgpt compare`: several runs' loss curves on one plot, and a table of how each ended.

This is how chapter 5's "why"s are seen rather than told: train the book's loop and an ablation
(`--optimizer sgd`, `--lr-schedule cosine`, ...), then compare their metrics files. Each run is
labelled by the training flags where it departs from the others, written as a user types them;
settings that only change sampling never label a run. A run that diverged is drawn up to where it
did and marked there, so it does not flatten the others. Files are read one run at a time and each
curve reduced to what the image can show.

Exports: `configure`, `main`, `run_labels`, `parse_run`, `summary_table`.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import plotting
from .config import TRAJECTORY_FIELDS, Config, default_val_fraction, flag_of
from .errors import UserError
from .metrics import MetricsError, list_runs, read_metrics

# Run-header entries that change a loss curve besides the config's trajectory fields, with their flags.
HEADER_FLAGS = {"engine": "--engine", "data": "--data"}
_MISSING = object()  # a header entry the file does not record
_NO_COMMON = object()  # a setting on which no value is shared by most runs
_RUN = re.compile(r"(.+)@([0-9]+)")


# --- which run of which file ---------------------------------------------------------------------


def parse_run(text: str) -> tuple[Path, int | None]:
    """`FILE` (its last run) or `FILE@N` (its run N, from 1); a file whose own name ends in @N is that file."""
    match = _RUN.fullmatch(text)
    if match is None or Path(text).exists():
        return Path(text), None
    run = int(match.group(2))
    if run < 1:
        raise UserError(f"{text}: runs are numbered from 1; write {match.group(1)}@1 for the first, or the file "
                        "alone for its last run")
    return Path(match.group(1)), run


def _read(path: Path, run: int | None, window: int) -> tuple[dict[str, Any], plotting.Curve, float, str]:
    """(header, reduced curve, last validation loss, display name) of one run; its arrays are dropped here."""
    try:
        metrics = read_metrics(path, run=run)
    except MetricsError:
        if run is not None:  # the reader's fix names plot's --run; compare's syntax is FILE@N
            count = len(list_runs(path))
            if run > count:
                raise UserError(f"{path} holds {count} run{'s' if count > 1 else ''}, not {run}: write "
                                f"{path}@N with N from 1 to {count}") from None
        raise
    name = plotting.plain(path.name) + (f"@{metrics.index}" if metrics.num_runs > 1 else "")
    val = metrics.val[-1][1] if metrics.val else math.nan
    return plotting.plain(metrics.run), plotting.reduce_run(metrics, window), val, name


# --- labels ------------------------------------------------------------------------------------


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    """A run's settings that shape its loss curve: engine, data, then the config's trajectory fields.

    A field an older file does not record counts as the book's default, which is what runs did
    before the field existed.
    """
    out = {k: run.get(k, _MISSING) for k in HEADER_FLAGS}
    config = run.get("config") or {}
    defaults = Config().to_dict()
    for name in TRAJECTORY_FIELDS:
        out[name] = config.get(name, defaults[name])
    if out["val_fraction"] is None:  # settled by the data format, as Config.validate does
        out["val_fraction"] = default_val_fraction(out["data_format"])
    return out


def _flag(key: str, value: Any) -> str:
    """A setting as the flag a user types for it: `--lr 0.3`, `--no-bias-correction`, `--data names.txt`."""
    if isinstance(value, bool):
        default_on = Config().to_dict().get(key) is True
        return ("--no-" + key.replace("_", "-")) if default_on else flag_of(key)
    flag = HEADER_FLAGS.get(key) or flag_of(key)
    if value is _MISSING:
        return f"{flag} (unknown)"
    if key == "data":
        value = Path(str(value)).name  # the file name says which dataset; the folder rarely matters
    elif isinstance(value, float):
        short = f"{value:g}"
        value = short if float(short) == value else repr(value)  # short where that loses nothing
    return f"{flag} {value}"


def run_labels(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """One label per run header: the flags where it departs from the others' common settings.

    For each setting that differs between runs, the common value is the one most runs share; on a
    tie, the book's default if it is among the tied values; otherwise there is none and every run
    shows its own value. A switch (`--no-bias-correction`) is shown only where it is on, since the
    book's value has no flag to type. A run with no departures is the "baseline". Identical
    settings leave nothing to tell runs apart, so the file name is used, and repeated labels get it
    appended.
    """
    settings = [_settings(run) for run in runs]
    defaults = Config().to_dict()
    parts: list[list[str]] = [[] for _ in runs]
    for key in settings[0] if settings else ():
        values = [s[key] for s in settings]
        if all(_same(v, values[0]) for v in values):
            continue
        if isinstance(defaults.get(key), bool):
            common = defaults[key]
        else:
            counts = Counter(repr(v) for v in values)  # repr: the values may mix types
            most = max(counts.values())
            tied = [v for v in values if counts[repr(v)] == most]
            if len({repr(v) for v in tied}) == 1:
                common = tied[0]
            elif key in defaults and any(_same(v, defaults[key]) for v in tied):
                common = defaults[key]
            else:
                common = _NO_COMMON
        for part, v in zip(parts, values, strict=True):
            if common is _NO_COMMON or not _same(v, common):
                part.append(_flag(key, v))
    if not any(parts):
        return list(names)
    labels = [" ".join(part) or "baseline" for part in parts]
    repeated = Counter(labels)
    return [f"{label} ({name})" if repeated[label] > 1 else label for label, name in zip(labels, names, strict=True)]


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: the same type family and value (True is not 1, and 1 is 1.0)."""
    if a is _MISSING or b is _MISSING:
        return a is b
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _common_description(runs: Sequence[dict[str, Any]]) -> str:
    """What all runs share, in one line, from the first run's header minus the settings that differ."""
    settings = [_settings(run) for run in runs]
    differing = {k for k in settings[0] if any(not _same(s[k], settings[0][k]) for s in settings)}
    first = runs[0]
    parts = []
    if "engine" in first and "engine" not in differing:
        parts.append(f"{first['engine']} engine")
    if "data" in first and "data" not in differing:
        parts.append(Path(str(first["data"])).name)
    parts.append(plotting.describe_config(first, skip=tuple(differing)))
    return ", ".join(p for p in parts if p)


# --- the table -----------------------------------------------------------------------------------


def summary_table(labels: Sequence[str], curves: Sequence[plotting.Curve], vals: Sequence[float], window: int) -> str:
    """How each run ended; the mean column says over how many steps it is taken, per run if they differ."""
    phrases = {plotting.mean_phrase(c.steps, window) for c in curves}
    if len(phrases) == 1:
        mean_head, marks = phrases.pop(), ["" for _ in curves]
    else:
        mean_head = f"mean of last {window}"
        marks = ["" if c.steps >= window else "*" for c in curves]
    with_val = any(math.isfinite(v) for v in vals)
    head = ["run", "steps", "final loss", mean_head, "min loss"] + (["val loss"] if with_val else []) + ["wall time"]
    body = []
    for label, c, val, mark in zip(labels, curves, vals, marks, strict=True):
        text = plotting.loss_text
        cells = [label, str(c.steps), text(c.final), text(c.last_mean) + mark, text(c.low)]
        if with_val:
            cells.append(text(val) if math.isfinite(val) else "-")
        cells.append(f"{c.time:.1f} s" if math.isfinite(c.time) else "-")
        body.append(cells)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:  # the label left-aligned, the numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    lines = [line(head), "  ".join("-" * w for w in widths), *map(line, body)]
    if any(marks):
        lines.append(f"* fewer than {window} steps: the mean of all of the run's steps")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "Draw several runs' training losses on one plot (each step faint, and a running mean), labelled by the "
        "training flags where they differ, and print how each run ended: chapter 5's ablations (5.6 Adam vs "
        "SGD, 5.7 learning-rate schedules, 5.8 zeroing) side by side. A run whose running mean ends above "
        f"{plotting.DIVERGED:g} x ln(vocab_size), or whose loss became inf or nan, is drawn up to where it diverged, "
        "marked there, and left out of the fitted loss range.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a metrics file (microgpt train --metrics FILE) for its last run, or FILE@N for its "
                        "run N, counting from 1 in the order they were appended (a resumed run is one run); "
                        "the same file may be named more than once, e.g. a.jsonl@1 a.jsonl@2 (a file whose own "
                        "name ends in @N is that file)")
    parser.add_argument("-o", "--output", metavar="FILE", default="compare.png",
                        help="image to write, .png, .pdf or .svg (default: compare.png)")
    parser.add_argument("--window", type=int, default=plotting.WINDOW, metavar="N",
                        help=f"steps in the running mean and in the table's mean (default: {plotting.WINDOW})")
    plotting.axis_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.window < 1:
        raise UserError(f"--window must be at least 1 step, got {args.window} (the default is {plotting.WINDOW})")
    output = plotting.check_output(args.output)
    plotting.check_axis_arguments(args)
    chosen = [parse_run(text) for text in args.runs]
    headers, curves, vals, names = [], [], [], []
    with plotting.quiet_numbers():
        for path, run in chosen:  # one run's arrays in memory at a time
            header, curve, val, name = _read(path, run, args.window)
            headers.append(header), curves.append(curve), vals.append(val), names.append(name)
        labels = run_labels(headers, names)
        _draw(output, headers, curves, labels, args)

    print(summary_table(labels, curves, vals, args.window))
    for label, curve in zip(labels, curves, strict=True):
        if curve.diverged_step is not None:
            print(f"diverged: {label} at step {curve.diverged_step} ({curve.diverged_why})")
    vocab_sizes = sorted({h["vocab_size"] for h in headers if "vocab_size" in h})
    for vocab_size in vocab_sizes:
        print(f"uniform guess: ln({vocab_size}) = {math.log(vocab_size):.4f}")
    print(f"wrote {plotting.plain(str(output))}")
    return 0


def _draw(output: Path, headers: list[dict[str, Any]], curves: list[plotting.Curve], labels: list[str],
          args: argparse.Namespace) -> None:
    fig, ax = plotting.new_figure()
    faint = max(0.08, 0.25 / len(curves) ** 0.5)  # faint raw losses of many runs blur together
    for i, (curve, label) in enumerate(zip(curves, labels, strict=True)):
        color = f"C{i % 10}"
        plotting.draw_raw(ax, curve, color, faint)
        if curve.diverged_step is not None:
            label += f" (diverged at step {curve.diverged_step})"
        ax.plot(*curve.mean, color=color, linewidth=2.0, label=label)
    vocab_sizes = [h["vocab_size"] for h in headers if "vocab_size" in h]
    plotting.draw_uniform(ax, vocab_sizes)
    plotting.set_ylim(ax, curves, [math.log(v) for v in vocab_sizes], args)
    for i, curve in enumerate(curves):
        plotting.mark_divergence(ax, curve, f"C{i % 10}")
    common = _common_description(headers)
    title = f"training loss of {len(curves)} runs, running mean over {args.window} steps (faint: each step)"
    plotting.set_title(ax, title, f"common: {common}" if common else "")
    plotting.add_legend(ax)
    plotting.save_figure(fig, output)
