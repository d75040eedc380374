"""Drawing loss curves (chapter 5's training, seen): what `plot` and `compare` share.

One document's loss is noisy, so a run is drawn twice: every step's loss, faint, and its running
mean. ln(vocab_size), the loss of a model that guesses uniformly among the tokens, is the level a
trained model must end up below, and twice that level is where a run counts as diverged. A run of
a million steps is reduced before drawing to what the figure can show: the lowest and highest loss
of each pixel column, and the running mean (computed on every step) at a few thousand steps.
Figures are drawn on matplotlib's Agg canvas, imported only when a figure is made, and written
atomically.

Exports: `Curve`, `reduce_run`, `running_mean`, `envelope`, `thin`, `diverged_from`, `uniform_level`,
`check_output`, `new_figure`, `save_figure`, `draw_uniform`, `mark_divergence`, `fit_ylim`,
`set_ylim`, `axis_arguments`, `check_axis_arguments`, `set_title`, `add_legend`, `describe_config`,
`mean_phrase`, `IMAGE_TYPES`, `WINDOW`, `DIVERGED`.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import write_atomic
from .errors import UserError
from .metrics import Metrics

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

IMAGE_TYPES = (".png", ".pdf", ".svg")
FIGSIZE = (10.0, 6.0)  # inches
DPI = 120  # so a PNG is 1200 x 720 pixels
WINDOW = 100
COLUMNS = 1500  # more than the plot area's ~1100 pixel columns, so a PDF or SVG zoomed in still looks whole
MAX_POINTS = 2 * COLUMNS  # a curve with more points than this is reduced before drawing
DIVERGED = 2.0  # a running mean that ends above DIVERGED * ln(vocab_size) is a diverged run
TITLE_WIDTH = 110  # characters of an 11-point title that fit the figure's width


# --- the numbers drawn ------------------------------------------------------------------------------


def running_mean(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the `window - 1` before it (fewer at the start, where there are fewer).

    A non-finite value (a diverged step) makes only the windows that hold it non-finite, as arithmetic
    would: nan if the window holds a nan or both infinities, else the infinity it holds.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if not n:
        return np.empty(0)
    finite = np.isfinite(v)
    # Cumulative sums of values minus their mean stay small, so a million steps lose no precision
    # in the difference of two sums.
    shift = float(v[finite].mean()) if finite.any() else 0.0
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, v - shift, 0.0))))
    end = np.arange(1, n + 1)
    start = np.maximum(end - window, 0)
    out = shift + (sums[end] - sums[start]) / (end - start)
    if not finite.all():
        def held(mask: np.ndarray) -> np.ndarray:  # does each window hold a value of `mask`?
            counts = np.concatenate(([0], np.cumsum(mask)))
            return counts[end] > counts[start]
        pos, neg = held(v == np.inf), held(v == -np.inf)
        out[pos] = np.inf
        out[neg] = -np.inf
        out[held(np.isnan(v)) | (pos & neg)] = np.nan
    return out


def envelope(x: np.ndarray, y: np.ndarray, columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """The points to draw for a raw curve: all of them if few, else the lowest and highest finite
    value of each of `columns` runs of consecutive points, in step order, which draws the same picture.
    """
    n = len(y)
    if n <= 2 * columns:
        return x, y
    per = -(-n // columns)  # points per column
    rows = -(-n // per)
    padded = np.full(rows * per, np.nan)
    padded[:n] = y
    grid = padded.reshape(rows, per)  # (rows, per)
    finite = np.isfinite(grid)
    low = np.where(finite, grid, np.inf).argmin(axis=1)
    high = np.where(finite, grid, -np.inf).argmax(axis=1)
    keep = finite.any(axis=1)
    base = np.arange(rows)[keep] * per
    low, high = base + low[keep], base + high[keep]
    idx = np.stack([np.minimum(low, high), np.maximum(low, high)], axis=1).ravel()  # (2 * kept rows,)
    return x[idx], y[idx]


def thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point of a smooth curve, and its last, so at most about `max_points` are drawn."""
    n = len(y)
    if n <= max_points:
        return x, y
    idx = np.arange(0, n, -(-n // max_points))
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return x[idx], y[idx]


def uniform_level(vocab_size: int) -> float:
    """The loss of guessing every token with probability 1 / vocab_size: ln(vocab_size) nats."""
    return math.log(vocab_size)


def diverged_from(losses: np.ndarray, mean: np.ndarray, level: float | None) -> int | None:
    """The index where a run's divergence starts, or None if it did not diverge.

    A run diverged if it ends with its running mean above DIVERGED * `level` (the uniform guess) or
    non-finite; the divergence starts after the last step whose mean was below that and finite.
    Without a level, only a loss that became inf or nan counts.
    """
    limit = DIVERGED * level if level is not None and level > 0 else math.inf
    bad = ~(mean <= limit) | ~np.isfinite(losses) | ~np.isfinite(mean)
    if not len(bad) or not bad[-1]:
        return None
    good = np.flatnonzero(~bad)
    return int(good[-1]) + 1 if len(good) else 0


@dataclass
class Curve:
    """One run's loss, reduced to what a figure draws and what a table prints."""

    steps: int  # steps logged
    last_step: int
    raw: tuple[np.ndarray, np.ndarray]  # (steps, losses) to draw, up to the last finite loss
    mean: tuple[np.ndarray, np.ndarray]  # (steps, running means) to draw, up to the last finite one
    window: int
    final: float  # the last loss
    last_mean: float  # the mean of the last `window` losses, or of all of them if fewer
    low: float  # the lowest finite loss (nan if none)
    time: float
    level: float | None  # ln(vocab_size), if the header records vocab_size
    diverged_step: int | None = None
    diverged_mean: float = math.nan  # the running mean where the divergence starts
    diverged_why: str = ""
    fit: tuple[float, float] | None = None  # the y range this run asks a figure to show


def reduce_run(metrics: Metrics, window: int) -> Curve:
    """A run's curves and figures from its arrays, read once: nothing kept grows with the run's length."""
    steps = np.frombuffer(metrics.step, dtype=np.int64)
    losses = np.frombuffer(metrics.loss, dtype=np.float64)
    times = np.frombuffer(metrics.time, dtype=np.float64)
    mean = running_mean(losses, window)
    level = uniform_level(metrics.run["vocab_size"]) if "vocab_size" in metrics.run else None
    start = diverged_from(losses, mean, level)
    finite = np.isfinite(losses)
    tail = losses[-window:]
    curve = Curve(
        steps=len(losses), last_step=int(steps[-1]), window=window, final=float(losses[-1]),
        last_mean=math.fsum(tail.tolist()) / len(tail) if np.isfinite(tail).all() else float(mean[-1]),
        low=float(losses[finite].min()) if finite.any() else math.nan, time=float(times[-1]), level=level,
        raw=envelope(*_to_last_finite(steps, losses)), mean=thin(*_to_last_finite(steps, mean)))
    # The y range fits the bulk of the losses and the whole mean; a diverged run only up to its divergence.
    if start is None:
        raw = losses[finite]
        smooth = mean[np.isfinite(mean)]
        if len(raw):
            lo, hi = np.quantile(raw, [0.005, 0.995])
            curve.fit = (min(float(lo), float(smooth.min())), max(float(hi), float(smooth.max())))
    else:
        curve.diverged_step = int(steps[start])
        curve.diverged_mean = float(mean[start])
        after = losses[start:]
        if not np.isfinite(after).all():
            curve.diverged_why = "its loss became " + ("nan" if np.isnan(after).any() else "inf")
        else:
            curve.diverged_why = (f"its running mean over {window} steps went above {DIVERGED:g} x "
                                  f"ln({metrics.run['vocab_size']}) = {DIVERGED * level:.2f}")
        before = mean[:start][np.isfinite(mean[:start])]
        if len(before):
            curve.fit = (float(before.min()), float(before.max()))
    return curve


def _to_last_finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A diverged run is drawn up to its last finite point."""
    finite = np.flatnonzero(np.isfinite(y))
    end = int(finite[-1]) + 1 if len(finite) else 0
    return x[:end], y[:end]


def mean_phrase(steps: int, window: int) -> str:
    """What a "mean of the last `window`" really is for a run of `steps`: it says so when there were fewer."""
    return f"mean of last {window}" if steps >= window else f"mean of all {steps}"


# --- the output file -------------------------------------------------------------------------------


def check_output(path: str | os.PathLike) -> Path:
    """Refuse an image path we cannot write before any reading or drawing starts."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_TYPES:
        raise UserError(f"cannot write {path}: unsupported image type {path.suffix or '(none)'!r}; "
                        f"end -o with {', '.join(IMAGE_TYPES)}")
    if path.is_dir():
        raise UserError(f"-o {path} is a folder: pass a file name such as {path / 'loss.png'}")
    if not path.parent.is_dir():
        raise UserError(f"the folder of -o {path} does not exist: create {path.parent} first or pick another path")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write -o {path}: its folder is not writable; pick another path")
    return path


def new_figure() -> tuple[Figure, Axes]:
    """A figure on the Agg canvas: headless, and without touching pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(True, alpha=0.3)
    return fig, ax


def save_figure(fig: Figure, path: Path) -> None:
    """Render, then write through a uniquely named temporary file beside `path` and rename it, so a
    reader never sees half an image and two commands writing the same image never collide."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lower()[1:], dpi=DPI)
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}): free some space or pick another -o path") from None


# --- drawing ---------------------------------------------------------------------------------------


def draw_uniform(ax: Axes, vocab_sizes: Sequence[int]) -> None:
    """The dashed ln(vocab_size) line of each distinct vocabulary."""
    for vocab_size in sorted(set(vocab_sizes)):
        level = uniform_level(vocab_size)
        ax.axhline(level, color="0.35", linestyle="--", linewidth=1.2,
                   label=f"uniform guess ln({vocab_size}) = {level:.3f}")


def mark_divergence(ax: Axes, curve: Curve, color: str) -> None:
    """A cross where a diverged run's mean left the safe range; on the frame's top edge if that is above it."""
    if curve.diverged_step is None:
        return
    lo, hi = ax.get_ylim()
    y = curve.diverged_mean if math.isfinite(curve.diverged_mean) and lo <= curve.diverged_mean <= hi else hi
    ax.plot([curve.diverged_step], [y], marker="X", markersize=11, color=color, markeredgecolor="white",
            linestyle="none", clip_on=False, zorder=5, label="_nolegend_")


def fit_ylim(curves: Sequence[Curve], levels: Sequence[float], logy: bool = False) -> tuple[float, float] | None:
    """A y range for the runs that did not diverge (the others up to their divergence) and the `levels`
    (the uniform guesses, validation losses: other values the range must hold).

    Single-document spikes may leave the frame; a diverged run's climb does, rather than flatten the rest.
    """
    kept = [c for c in curves if c.diverged_step is None] or curves  # all diverged: fit them up to it
    spans = [c.fit for c in kept if c.fit] + [(v, v) for v in levels]
    if not spans:
        return None
    bottom, top = min(s[0] for s in spans), max(s[1] for s in spans)
    if logy:
        positive = [v for s in spans for v in s if v > 0]
        if not positive:
            return None
        bottom = max(bottom, min(positive))
        ratio = (top / bottom) ** 0.05 if top > bottom else 1.1
        return bottom / ratio, top * ratio
    margin = 0.05 * (top - bottom) or 0.1
    return bottom - margin, top + margin


def set_ylim(ax: Axes, curves: Sequence[Curve], levels: Sequence[float], args: argparse.Namespace) -> None:
    """--logy and --ylim as given, else the fitted range."""
    if args.logy:
        ax.set_yscale("log")
    limits = tuple(args.ylim) if args.ylim else fit_ylim(curves, levels, args.logy)
    if limits:
        ax.set_ylim(*limits)


def axis_arguments(parser: argparse.ArgumentParser) -> None:
    """--ylim and --logy, as plot and compare take them."""
    parser.add_argument("--ylim", nargs=2, type=float, metavar=("LO", "HI"),
                        help="the loss range to show (default: fit the runs that did not diverge, and the "
                        "uniform guess)")
    parser.add_argument("--logy", action="store_true", help="a logarithmic loss axis")


def check_axis_arguments(args: argparse.Namespace) -> None:
    """Refuse a --ylim that cannot be drawn, before reading anything."""
    if not args.ylim:
        return
    lo, hi = args.ylim
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"--ylim {lo:g} {hi:g} is not a range: pass two finite numbers, the lower first, "
                        "such as --ylim 2 4")
    if args.logy and lo <= 0:
        raise UserError(f"--ylim {lo:g} {hi:g} with --logy: a logarithmic axis needs LO above 0, such as --ylim 1 100")


def set_title(ax: Axes, *lines: str) -> None:
    """A title of several lines, each wrapped between its comma-separated items to fit the figure's width."""
    rows: list[str] = []
    for line in filter(None, lines):
        row = ""
        for item in line.split(", "):
            if row and len(row) + 2 + len(item) > TITLE_WIDTH:
                rows.append(row + ",")
                row = item
            else:
                row = f"{row}, {item}" if row else item
        rows.append(row)
    # Names read from a file may hold "$", which matplotlib would otherwise take as the start of a formula.
    ax.set_title("\n".join(rows), fontsize=11, parse_math=False)


def add_legend(ax: Axes) -> None:
    """The legend, its labels taken as plain text (a data file's name may hold "$")."""
    legend = ax.legend(loc="upper right")
    for text in legend.get_texts():
        text.set_parse_math(False)


def describe_config(run: dict[str, Any], skip: Sequence[str] = ()) -> str:
    """The settings that shape a loss curve, in one line (those named in `skip` are left out)."""
    config = run.get("config") or {}
    parts = []

    def add(key: str, text: str) -> None:
        if key in config and key not in skip:
            parts.append(text)

    shape = [f"{k}={config[k]}" for k in ("n_layer", "n_embd", "n_head", "block_size") if k in config and k not in skip]
    if shape:
        parts.append(" ".join(shape))
    add("optimizer", f"{config.get('optimizer')}")
    add("learning_rate", f"lr {config.get('learning_rate'):g}" if "learning_rate" in config else "")
    add("lr_schedule", f"{config.get('lr_schedule')} schedule")
    if config.get("warmup_steps"):
        add("warmup_steps", f"warmup {config['warmup_steps']}")
    add("batch_size", f"batch {config.get('batch_size')}")
    add("num_steps", f"{config.get('num_steps')} steps")
    add("seed", f"seed {config.get('seed')}")
    # The chapter 5 ablations are named only when they are switched away from the book's loop.
    if config.get("bias_correction") is False:
        add("bias_correction", "no bias correction")
    if config.get("zero_grad") is False:
        add("zero_grad", "no zero_grad")
    if config.get("zero_grad_before"):
        add("zero_grad_before", "zero_grad before")
    return ", ".join(p for p in parts if p)
