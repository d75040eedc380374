"""`microgpt plot`: the loss curve of one run, read from its metrics file.

One document's loss is noisy (chapter 5), so the curve is drawn twice: every step's loss, faint,
and its running mean over 100 steps, which is the figure people quote. Validation losses
(chapter 7) are drawn where the run measured them, and ln(vocab_size), the loss of a model that
guesses uniformly among the tokens, is the dashed line a trained model must end up below.

Exports: `configure`, `main`, `running_mean`, `load_runs`, `check_output`, `save_figure`,
`describe_config`, `set_title`, `uniform_level`, `finite`, `IMAGE_TYPES`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .metrics import Metrics, read_metrics

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

IMAGE_TYPES = (".png", ".pdf", ".svg")
FIGSIZE = (10.0, 6.0)  # inches
DPI = 120  # so a PNG is 1200 x 720 pixels
WINDOW = 100
TITLE_WIDTH = 110  # characters of an 11-point title that fit the figure's width


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start, where there are fewer).

    A non-finite value (a diverged step) makes only the windows that hold it non-finite.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    out: list[float] = []
    total, bad = 0.0, 0  # sum of the finite values in the window, count of the others
    for i, v in enumerate(values):
        if math.isfinite(v):
            total += v
        else:
            bad += 1
        if i >= window:
            old = values[i - window]
            if math.isfinite(old):
                total -= old
            else:
                bad -= 1
        n = min(i + 1, window)
        # With an inf or nan in the window, sum it directly so inf and nan come out as arithmetic says.
        out.append(total / n if not bad else math.fsum(values[i + 1 - n:i + 1]) / n)
    return out


def uniform_level(vocab_size: int) -> float:
    """The loss of guessing every token with probability 1 / vocab_size: ln(vocab_size) nats."""
    return math.log(vocab_size)


def finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Metrics]:
    """Read metrics files, refusing step records whose step or loss is not a number."""
    runs = []
    for path in paths:
        metrics = read_metrics(path)
        for record in metrics.steps:
            for key in ("step", "loss", "val_loss", "time"):
                value = record.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UserError(f"{metrics.path}: step record {record.get('step')!r} has {key} {value!r}, "
                                    "not a number: pass a metrics file written by microgpt train --metrics")
        runs.append(metrics)
    return runs


def check_output(path: str | os.PathLike) -> Path:
    """Refuse an image path we cannot write before any drawing starts."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_TYPES:
        raise UserError(f"cannot write {path}: unsupported image type {path.suffix or '(none)'!r}; "
                        f"end -o with {', '.join(IMAGE_TYPES)}")
    if path.is_dir():
        raise UserError(f"-o {path} is a folder: pass a file name such as {path / 'loss.png'}")
    if not path.parent.is_dir():
        raise UserError(f"the folder of -o {path} does not exist: create {path.parent} first or pick another path")
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
    """Write to a temporary file beside `path`, then rename, so a reader never sees half an image."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=path.suffix.lower()[1:], dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def draw_uniform(ax: Axes, vocab_sizes: Sequence[int]) -> None:
    """The dashed ln(vocab_size) line of each distinct vocabulary."""
    for vocab_size in sorted(set(vocab_sizes)):
        level = uniform_level(vocab_size)
        ax.axhline(level, color="0.35", linestyle="--", linewidth=1.2,
                   label=f"uniform guess ln({vocab_size}) = {level:.3f}")


def set_ylim(ax: Axes, raw: Sequence[float], curves: Sequence[float]) -> None:
    """Fit the smoothed curves and the bulk of the raw losses; single-document spikes may leave the frame."""
    raw = sorted(finite(raw))
    curves = finite(curves)
    if not raw:
        return
    top = max(raw[int(0.995 * (len(raw) - 1))], *curves) if curves else raw[-1]
    bottom = min(raw[int(0.005 * (len(raw) - 1))], *curves) if curves else raw[0]
    margin = 0.05 * (top - bottom) or 0.1
    ax.set_ylim(bottom - margin, top + margin)


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
    ax.set_title("\n".join(rows), fontsize=11)


def describe_config(run: dict, skip: Sequence[str] = ()) -> str:
    """The settings that shape a loss curve, in one line (those named in `skip` are left out)."""
    config = run.get("config", {})
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


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Draw a run's training loss (each step, faint, and its running mean over 100 steps), "
                          "its validation loss (chapter 7) and the uniform-guess level ln(vocab_size) to an image: "
                          "chapter 5's training, seen.")
    parser.add_argument("metrics", metavar="METRICS", help="a metrics file (microgpt train --metrics FILE)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help=f"image to write, {', '.join(IMAGE_TYPES)} (default: METRICS with .png)")


def main(args: argparse.Namespace) -> int:
    output = check_output(args.output or Path(args.metrics).with_suffix(".png"))
    if output.resolve() == Path(args.metrics).resolve():
        raise UserError(f"the image {output} would overwrite the metrics file: pass -o with another path")
    (metrics,) = load_runs([args.metrics])
    steps = [r["step"] for r in metrics.steps]
    losses = metrics.losses
    smooth = running_mean(losses, WINDOW)

    fig, ax = new_figure()
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss of each step")
    ax.plot(steps, smooth, color="tab:blue", linewidth=2.0,
            label=f"running mean over {WINDOW} steps (last: {smooth[-1]:.4f})")
    val = metrics.val
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], color="tab:orange", marker="o", linewidth=1.5,
                label=f"validation loss (last: {val[-1][1]:.4f})")
    levels = []
    if "vocab_size" in metrics.run:
        draw_uniform(ax, [metrics.run["vocab_size"]])
        levels.append(uniform_level(metrics.run["vocab_size"]))
    set_ylim(ax, losses, smooth + [v for _, v in val] + levels)
    data = Path(metrics.run["data"]).name if metrics.run.get("data") else metrics.path.name
    set_title(ax, f"{metrics.run.get('engine', 'unknown')} engine on {data}", describe_config(metrics.run))
    ax.legend(loc="upper right")
    save_figure(fig, output)
    print(f"wrote {output} ({len(steps)} steps, final running mean {smooth[-1]:.4f})")
    return 0
