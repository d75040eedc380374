"""Drawing loss curves (chapter 5's training, seen): what `plot` and `compare` share.

One document's loss is noisy, so a run is drawn twice: every step's loss, faint, and its running
mean. ln(vocab_size), the loss of a model that guesses uniformly among the tokens, is the level a
trained model must end up below, and twice that level is where a run counts as diverged. A run of
a million steps is reduced before drawing to what the figure can show: the lowest and highest loss
of each pixel column, drawn as a band, and the running mean (computed on every step) at a few
thousand steps. Figures are drawn on matplotlib's Agg canvas, imported only when a figure is made,
and written atomically.

Exports: `Curve`, `reduce_run`, `running_mean`, `envelope`, `thin`, `diverged_from`, `uniform_level`,
`check_output`, `new_figure`, `save_figure`, `draw_raw`, `draw_uniform`, `mark_divergence`, `fit_ylim`,
`set_ylim`, `axis_arguments`, `check_axis_arguments`, `set_title`, `add_legend`, `describe_config`,
`mean_phrase`, `loss_text`, `plain`, `quiet_numbers`, `IMAGE_TYPES`, `WINDOW`, `COLUMNS`, `MAX_POINTS`,
`DIVERGED`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config, flag_of
from .data import write_atomic
from .errors import UserError
from .guard import check_output_file
from .metrics import Metrics

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

IMAGE_TYPES = (".png", ".pdf", ".svg")
FIGSIZE = (10.0, 6.0)  # inches
DPI = 120  # so a PNG is 1200 x 720 pixels
WINDOW = 100
COLUMNS = 1200  # about the plot area's width in pixels: a raw curve of more points is drawn as a band
MAX_POINTS = 2000  # a smooth curve of more points is drawn at every k-th
DIVERGED = 2.0  # a running mean that ends above DIVERGED * ln(vocab_size) is a diverged run
MAX_Y = 1e200  # the largest loss drawn or framed as it is (a log axis ticks decades beyond its frame)
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
    big = float(np.abs(v[finite]).max()) if finite.any() else 0.0
    # Losses near the largest float would overflow their sums: scale them by a power of two, which is exact.
    exponent = math.frexp(big)[1] if big > 1e300 else 0
    scaled = np.where(finite, np.ldexp(v, -exponent), 0.0)
    # Cumulative sums of values minus their mean stay small, so a million steps lose no precision
    # in the difference of two sums.
    shift = float(scaled[finite].mean()) if finite.any() else 0.0
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, scaled - shift, 0.0))))
    end = np.arange(1, n + 1)
    start = np.maximum(end - window, 0)
    out = np.ldexp(shift + (sums[end] - sums[start]) / (end - start), exponent)
    if not finite.all():
        def held(mask: np.ndarray) -> np.ndarray:  # does each window hold a value of `mask`?
            counts = np.concatenate(([0], np.cumsum(mask)))
            return counts[end] > counts[start]
        pos, neg = held(v == np.inf), held(v == -np.inf)
        out[pos] = np.inf
        out[neg] = -np.inf
        out[held(np.isnan(v)) | (pos & neg)] = np.nan
    return out


def envelope(x: np.ndarray, y: np.ndarray, columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The band that many points draw: `y` split into `columns` runs of consecutive points, each giving
    its first and last `x` with its lowest and highest finite `y` (columns with none are left out).

    Returns (x, low, high), two entries per column. Drawn filled, it shows what every point drawn as a
    line would, at a fraction of the cost: a line that zigzags across each pixel column costs the
    renderer memory for every pixel it crosses.
    """
    n = len(y)
    per = max(1, -(-n // columns))  # points per column
    rows = -(-n // per)
    padded = np.full(rows * per, np.nan)
    padded[:n] = y
    grid = padded.reshape(rows, per)  # (rows, per)
    finite = np.isfinite(grid)
    low = np.where(finite, grid, np.inf).min(axis=1)
    high = np.where(finite, grid, -np.inf).max(axis=1)
    keep = finite.any(axis=1)
    first = np.arange(rows) * per
    last = np.minimum(first + per, n) - 1
    edges = np.stack([x[first], x[last]], axis=1)[keep].ravel()  # (2 * kept rows,)
    return edges, np.repeat(low[keep], 2), np.repeat(high[keep], 2)


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
    raw: tuple[np.ndarray, ...]  # up to the last finite loss: (steps, losses), or a band (steps, low, high)
    mean: tuple[np.ndarray, np.ndarray]  # (steps, running means) to draw, up to the last finite one
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
    curve = Curve(
        steps=len(losses), final=float(losses[-1]), last_mean=_tail_mean(losses, mean, window),
        low=float(losses[finite].min()) if finite.any() else math.nan, time=float(times[-1]), level=level,
        raw=_raw(*_to_last_finite(steps, losses)), mean=thin(*_to_last_finite(steps, mean)))
    # The y range fits the bulk of the losses and the whole mean; a diverged run only up to its divergence.
    if start is None:
        raw = losses[finite]
        smooth = mean[np.isfinite(mean)]
        if len(raw):
            # Quantiles that are losses of the run, not interpolated between two (which could overflow).
            lo, hi = np.quantile(raw, 0.005, method="lower"), np.quantile(raw, 0.995, method="higher")
            curve.fit = (min(float(lo), float(smooth.min())), max(float(hi), float(smooth.max())))
    else:
        curve.diverged_step = int(steps[start])
        curve.diverged_mean = float(mean[start])
        after = losses[start:]
        bad = after[~np.isfinite(after)]
        if len(bad):
            curve.diverged_why = f"its loss became {bad[0]}"
        else:
            curve.diverged_why = (f"its running mean over {window} steps went above {DIVERGED:g} x "
                                  f"ln({metrics.run['vocab_size']}) = {DIVERGED * level:.2f}")
        before = mean[:start][np.isfinite(mean[:start])]
        if len(before):
            curve.fit = (float(before.min()), float(before.max()))
    return curve


def _tail_mean(losses: np.ndarray, mean: np.ndarray, window: int) -> float:
    """The mean of the last `window` losses, summed exactly; the running mean's last value where that cannot be."""
    tail = losses[-window:]
    if np.isfinite(tail).all():
        try:
            return math.fsum(tail.tolist()) / len(tail)
        except OverflowError:  # losses near the largest float
            pass
    return float(mean[-1])


def _raw(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every point while there are about as many as pixel columns, else their band."""
    return (x, y) if len(y) <= COLUMNS else envelope(x, y)


def _to_last_finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A diverged run is drawn up to its last finite point; beyond ±MAX_Y it is drawn at ±MAX_Y, far out of
    any frame, since matplotlib's transforms fail on values near the largest float."""
    finite = np.flatnonzero(np.isfinite(y))
    end = int(finite[-1]) + 1 if len(finite) else 0
    return x[:end], np.clip(y[:end], -MAX_Y, MAX_Y)


def plain(value: Any) -> Any:
    """Text from a file or the command line, safe to draw and print: a lone surrogate (a name that was not
    UTF-8) is written as its escape, in strings anywhere inside `value`."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@contextlib.contextmanager
def quiet_numbers() -> Iterator[None]:
    """Drawing losses near the largest float makes numpy and matplotlib warn of overflows they survive."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def loss_text(value: float) -> str:
    """A loss as the table and legends print it: 4 decimals, or 4 significant digits when it is huge."""
    return f"{value:.4f}" if not abs(value) >= 1e6 else f"{value:.4g}"


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
    check_output_file(path, "-o", "loss.png")
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
    with warnings.catch_warnings():  # a label holding a character the font lacks is drawn as a box, not a warning
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buffer, format=path.suffix.lower()[1:], dpi=fig.dpi)
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


def draw_raw(ax: Axes, curve: Curve, color: str, alpha: float, label: str = "_nolegend_") -> None:
    """A run's loss of each step, faint: a line, or for a long run the band of each pixel column."""
    if len(curve.raw) == 2:
        ax.plot(*curve.raw, color=color, alpha=alpha, linewidth=0.8, label=label)
    else:
        ax.fill_between(*curve.raw, color=color, alpha=alpha, linewidth=0, label=label)


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
        ratio = math.exp(0.05 * (math.log(top) - math.log(bottom))) if top > bottom else 1.1
        bottom, top = max(bottom / ratio, 1 / MAX_Y), top * ratio
    else:
        margin = (0.05 * top - 0.05 * bottom) or 0.1  # not 0.05 * (top - bottom), which can overflow
        bottom, top = bottom - margin, top + margin
    # matplotlib's transforms fail on ranges near the largest float: such a range is clipped.
    bottom, top = max(bottom, -MAX_Y), min(top, MAX_Y)
    return (bottom, top) if bottom < top else None


def set_ylim(ax: Axes, curves: Sequence[Curve], levels: Sequence[float], args: argparse.Namespace) -> None:
    """--logy and --ylim as given, else the fitted range."""
    if args.logy:
        with warnings.catch_warnings():  # losses of 0 or less cannot be shown on it, and need no warning
            warnings.simplefilter("ignore")
            ax.set_yscale("log")
    limits = tuple(args.ylim) if args.ylim else fit_ylim(curves, levels, args.logy)
    if limits:
        ax.set_ylim(*limits)


def axis_arguments(parser: argparse.ArgumentParser) -> None:
    """--ylim and --logy, as plot and compare take them."""
    parser.add_argument("--ylim", nargs=2, type=float, metavar=("LO", "HI"),
                        help="the loss range to show (default: fit the losses and the uniform guess, leaving "
                        "out a diverged run's climb)")
    parser.add_argument("--logy", action="store_true", help="a logarithmic loss axis")


def check_axis_arguments(args: argparse.Namespace) -> None:
    """Refuse a --ylim that cannot be drawn, before reading anything."""
    if not args.ylim:
        return
    lo, hi = args.ylim
    if not (-MAX_Y <= lo < hi <= MAX_Y):  # nan compares false, so it is refused here too
        raise UserError(f"--ylim {lo:g} {hi:g} is not a range: pass two numbers, the lower first, between "
                        f"-{MAX_Y:g} and {MAX_Y:g}, such as --ylim 2 4")
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


# Settings a run may move away from the book's; a title names them only when it does.
BEYOND_FIELDS = ("init_std", "beta1", "beta2", "min_lr", "weight_decay", "grad_clip", "dropout")


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
    # So are text mode and every setting beyond the book that a run moved from its default, by its flag.
    if config.get("data_format") == "text":
        add("data_format", "text mode")
    book = Config()
    for key in BEYOND_FIELDS:
        if key in config and config[key] != getattr(book, key):
            add(key, f"{flag_of(key)} {config[key]:g}")
    return ", ".join(p for p in parts if p)
