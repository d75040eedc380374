"""`microgpt plot`: the loss curve of one run, read from its metrics file.

One document's loss is noisy (chapter 5), so the curve is drawn twice: every step's loss, faint,
and its running mean over 100 steps, which is the figure people quote. Validation losses
(chapter 7) are drawn where the run measured them, and ln(vocab_size), the loss of a model that
guesses uniformly among the tokens, is the dashed line a trained model must end up below. The
file is streamed and each curve reduced to what the image can show, so a run of a million steps
plots in seconds.

Exports: `configure`, `main`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import plotting
from .errors import UserError
from .metrics import read_metrics

MAX_MARKED = 200  # validation points beyond this are drawn as a line without markers


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Draw a run's training loss (each step, faint, and its running mean over 100 steps), "
                          "its validation loss (chapter 7) and the uniform-guess level ln(vocab_size) to an image: "
                          "chapter 5's training, seen. A run whose running mean ends above twice the uniform "
                          "guess, or whose loss became inf or nan, is marked where it diverged and left out of "
                          "the fitted loss range.")
    parser.add_argument("metrics", metavar="METRICS", help="a metrics file (microgpt train --metrics FILE)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help=f"image to write, {', '.join(plotting.IMAGE_TYPES)} (default: METRICS with .png)")
    parser.add_argument("--run", type=int, metavar="N",
                        help="which run of the file to draw, counting from 1 in the order they were appended "
                        "(a resumed run is one run) (default: the last)")
    plotting.axis_arguments(parser)


def main(args: argparse.Namespace) -> int:
    output = plotting.check_output(args.output or Path(args.metrics).with_suffix(".png"))
    if output.resolve() == Path(args.metrics).resolve():
        raise UserError(f"the image {output} would overwrite the metrics file: pass -o with another path")
    if args.run is not None and args.run < 1:
        raise UserError(f"--run {args.run}: runs are numbered from 1; pass --run 1 for the first, or leave it "
                        "out for the last")
    plotting.check_axis_arguments(args)
    metrics = read_metrics(args.metrics, run=args.run)
    with plotting.quiet_numbers():
        curve = plotting.reduce_run(metrics, plotting.WINDOW)
        run, val = plotting.plain(metrics.run), metrics.val
        which = f"run {metrics.index} of {metrics.num_runs}" if metrics.num_runs > 1 else ""
        del metrics  # its arrays are no longer needed: only the reduced curves are drawn
        data = Path(run["data"]).name if run.get("data") else plotting.plain(Path(args.metrics).name)
        title = f"{run.get('engine', 'unknown')} engine on {data}" + (f", {which}" if which else "")
        _draw(output, curve, run, val, title, args)
    ending = (f"final running mean {plotting.loss_text(curve.last_mean)}" if curve.steps >= plotting.WINDOW
              else f"{plotting.mean_phrase(curve.steps, plotting.WINDOW)} {plotting.loss_text(curve.last_mean)}")
    if curve.diverged_step is not None:
        ending += f", diverged at step {curve.diverged_step}: {curve.diverged_why}"
    print(f"wrote {plotting.plain(str(output))} ({which + ', ' if which else ''}{curve.steps} steps, {ending})")
    return 0


def _draw(output: Path, curve: plotting.Curve, run: dict, val: list[tuple[int, float]], title: str,
          args: argparse.Namespace) -> None:
    fig, ax = plotting.new_figure()
    plotting.draw_raw(ax, curve, "tab:blue", 0.25, "loss of each step")
    if curve.steps >= plotting.WINDOW:
        mean_label = f"running mean over {plotting.WINDOW} steps (last: {plotting.loss_text(curve.last_mean)})"
    else:
        mean_label = f"running mean of the steps so far (all {curve.steps}: {plotting.loss_text(curve.last_mean)})"
    if curve.diverged_step is not None:
        mean_label += f" (diverged at step {curve.diverged_step})"
    ax.plot(*curve.mean, color="tab:blue", linewidth=2.0, label=mean_label)
    levels = []
    if val:
        val_x, val_y = plotting.thin(np.array([s for s, _ in val]), np.array([v for _, v in val]))
        # clipped as the losses are: matplotlib fails near the largest float
        val_y = np.clip(val_y, -plotting.MAX_Y, plotting.MAX_Y)
        ax.plot(val_x, val_y, color="tab:orange", marker="o" if len(val_x) <= MAX_MARKED else None,
                linewidth=1.5, label=f"validation loss (last: {plotting.loss_text(val[-1][1])})")
        finite = val_y[np.isfinite(val_y)]
        if len(finite) and curve.diverged_step is None:  # the validation losses belong in the range, like the mean
            levels += [float(finite.min()), float(finite.max())]
    if "vocab_size" in run:
        plotting.draw_uniform(ax, [run["vocab_size"]])
        levels.append(curve.level)
    plotting.set_ylim(ax, [curve], levels, args)
    plotting.mark_divergence(ax, curve, "tab:blue")
    plotting.set_title(ax, title, plotting.describe_config(run))
    plotting.add_legend(ax)
    plotting.save_figure(fig, output)
