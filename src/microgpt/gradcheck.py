"""`microgpt gradcheck`: chapter 5.5 made visible, what a gradient is and how we know backward() is right.

The gradient of the loss with respect to one weight says how fast the loss changes when that
weight moves. backward() computes all of them at once with the chain rule; the slow, obvious
way is to move each weight a tiny step `h` both ways and watch the loss (a central difference,
`(L(p + h) - L(p - h)) / 2h`). This command does both for one document and compares them,
weight by weight, on any engine, through the `Engine` interface only.

Exports: `configure`, `main`, `finite_difference`, `relative_error`, `noise_floor`, `worked_example`.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass

from .cli import add_config_arguments, config_from_args, step_arguments, step_example
from .engines import ENGINES, create_engine
from .engines.base import Engine
from .errors import UserError

# A loss in float64 is known to about EPS * |L|, so a finite difference carries rounding noise
# of about EPS * |L| / h: gradients that small cannot be compared by their ratio. (Measured on
# the default model: the largest disagreement is 1.05 times this estimate; we allow 10 times.)
EPS = 2.2e-16
NOISE_MARGIN = 10.0
# Two loss evaluations per weight: NumPy checks the book's 4,192 weights in seconds, the scalar
# engine (a fresh Value graph per evaluation) needs about 0.1 s per evaluation at that size.
DEFAULT_MAX_PARAMS = 5000
DEFAULT_MAX_PARAMS_SCALAR = 200
PROGRESS_EVERY_S = 5.0


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "Check an engine's gradients (chapter 5.5): compute the gradient of one document's loss with\n"
        "backward(), then estimate each derivative by moving the weight h up and down,\n"
        "(L(p+h) - L(p-h)) / 2h, and compare them weight by weight.\n"
        "Exit status 0 when every weight agrees within --tolerance, 1 when some matrix does not.")
    group = parser.add_argument_group("gradient check")
    group.add_argument("--engine", choices=list(ENGINES), default="numpy",
                       help="the engine whose backward() is checked (default: numpy; scalar is the book's "
                       "Value engine, slower)")
    step_arguments(group)
    group.add_argument("--h", type=float, default=1e-6, metavar="X",
                       help="the step of the finite difference (default: 1e-6)")
    group.add_argument("--tolerance", type=float, default=1e-5, metavar="X",
                       help="largest relative error |a-n| / (|a|+|n|) allowed; gradients as small as the "
                       "rounding noise of the difference are compared absolutely (default: 1e-5)")
    group.add_argument("--max-params", type=int, metavar="N",
                       help="check every weight of models this size or smaller, else a random sample of N "
                       f"spread over all matrices (default: {DEFAULT_MAX_PARAMS}; scalar engine: "
                       f"{DEFAULT_MAX_PARAMS_SCALAR})")
    group.add_argument("--device", choices=("cpu", "cuda"),
                       help="where the torch engine runs (default: cpu); it always computes in float64 here")
    add_config_arguments(parser, groups=("model",))


def noise_floor(loss: float, h: float, tolerance: float) -> float:
    """The smallest denominator of the relative error: below it, |a - n| is rounding noise.

    With this floor, an error within tolerance means |a - n| <= tolerance * (|a| + |n|), or
    |a - n| within NOISE_MARGIN times the finite difference's own rounding noise.
    """
    return NOISE_MARGIN * EPS * max(abs(loss), 1.0) / h / tolerance


def relative_error(analytic: float, numeric: float, floor: float) -> float:
    """|a - n| / max(|a| + |n|, floor): 0 when both agree exactly, about 1 when they have nothing in common."""
    return abs(analytic - numeric) / max(abs(analytic) + abs(numeric), floor)


def worked_example(entry: str, h: float, loss_change: float, analytic: float, numeric: float) -> str:
    """One derivative in words: what moving one weight by h does to the loss, and both estimates of the rate."""
    direction = "raises" if loss_change >= 0 else "lowers"
    return (f"raising {entry} by {h:g} {direction} the loss by {abs(loss_change):.3g}; "
            f"backward says {analytic:.6g} per unit, finite differences {numeric:.6g}")


@dataclass
class MatrixReport:
    """What the check found in one parameter matrix (the reports are kept by the matrix's name)."""

    shape: tuple[int, int]
    checked: int = 0
    worst_error: float = 0.0
    worst_entry: str = ""
    largest_gradient: float = -1.0  # |analytic| of the worked example so far
    example: str = ""


def _rows(matrix) -> list[list[float]]:
    """A weight matrix of any engine (lists, NumPy or torch arrays) as rows of Python floats."""
    if hasattr(matrix, "tolist"):
        return matrix.tolist()
    return [[float(x) for x in row] for row in matrix]


def _choose(grads: dict[str, list[list[float]]], max_params: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """Every (matrix, row, column) when there are at most max_params, else a sample of max_params.

    The sample always holds each matrix's largest-gradient entry (the worked example); the rest
    is drawn uniformly over all weights, so every matrix gets its share.
    """
    every = [(name, r, c) for name, rows in grads.items() for r in range(len(rows)) for c in range(len(rows[0]))]
    if len(every) <= max_params:
        return every
    chosen = {max(((name, r, c) for r in range(len(rows)) for c in range(len(rows[0]))),
                  key=lambda e: abs(grads[e[0]][e[1]][e[2]])) for name, rows in grads.items()}
    rest = [e for e in every if e not in chosen]
    chosen.update(rng.sample(rest, max_params - len(chosen)))
    return [e for e in every if e in chosen]  # the book's order, so the output reads top to bottom


def finite_difference(engine: Engine, weights: dict[str, list[list[float]]], tokens: list[int], name: str,
                      r: int, c: int, h: float) -> tuple[float, float, float]:
    """(L(p+h) - L(p-h)) / 2h for the weight name[r][c]; also L(p+h) and the step actually taken.

    Only the Engine interface is used: change one number of the weights, load them, evaluate.
    `weights` is left as given; the engine keeps the last weights loaded (the next call loads its own).
    """
    original = weights[name][r][c]
    up, down = original + h, original - h
    weights[name][r][c] = up
    engine.load_state_dict(weights)
    loss_up = engine.evaluate(tokens)
    weights[name][r][c] = down
    engine.load_state_dict(weights)
    loss_down = engine.evaluate(tokens)
    weights[name][r][c] = original
    # In floating point (p + h) - (p - h) is not exactly 2h; dividing by the true step removes that error.
    return (loss_up - loss_down) / (up - down), loss_up, up - original


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not args.h > 0:
        raise UserError(f"--h must be greater than 0, got {args.h!r} (try 1e-6)")
    if not args.tolerance > 0:
        raise UserError(f"--tolerance must be greater than 0, got {args.tolerance!r} (try 1e-5)")
    if args.device is not None and args.engine != "torch":
        raise UserError("--device applies to the torch engine only: add --engine torch or drop it")
    max_params = args.max_params
    if max_params is None:
        max_params = DEFAULT_MAX_PARAMS_SCALAR if args.engine == "scalar" else DEFAULT_MAX_PARAMS

    # The same start as training: shuffle with the one generator, then initialise from it.
    data, rng, doc, tokens = step_example(args, config)
    options = {"device": args.device or "cpu", "dtype": "float64"} if args.engine == "torch" else {}
    engine = create_engine(args.engine, config, data.tokenizer.vocab_size, rng, **options)
    try:
        n_matrices = len(engine.state_dict())
        if max_params < n_matrices:
            raise UserError(f"--max-params {max_params} is fewer than the {n_matrices} parameter matrices: "
                            f"pick at least {n_matrices}, one weight per matrix")
        return _check(engine, doc, tokens, max_params, args.h, args.tolerance, from_seed=args.doc is None)
    finally:
        engine.close()


def _check(engine: Engine, doc: str, tokens: list[int], max_params: int, h: float, tolerance: float,
           from_seed: bool) -> int:
    config = engine.config
    # The analytic gradient: one forward pass that records, one backward pass that applies the chain rule.
    loss = engine.forward([tokens])
    if not math.isfinite(loss):
        raise UserError(f"the loss of {doc!r} is {loss}: the initial weights are too large to differentiate; "
                        f"lower --init-std")
    engine.backward()
    grads = {name: _rows(g) for name, g in engine.optimizer_state()["grad"].items()}
    weights = {name: _rows(w) for name, w in engine.state_dict().items()}
    entries = _choose(grads, max_params, random.Random(config.seed))
    floor = noise_floor(loss, h, tolerance)

    n = min(config.block_size, len(tokens) - 1)
    print(f"gradcheck: {engine.name} engine, n_layer {config.n_layer}, n_embd {config.n_embd}, "
          f"n_head {config.n_head}, block_size {config.block_size}: {engine.num_params:,} parameters "
          f"in {len(grads)} matrices")
    print(f"document {doc!r}: {n} predictions, loss {loss:.4f}"
          + (" (training's step 1 sees this document and this loss)" if from_seed else ""))
    print(f"analytic: one backward(); numeric: (L(p+h) - L(p-h)) / 2h with h = {h:g}, two forward passes "
          f"per weight")
    print(f"relative error: |a-n| / max(|a|+|n|, {floor:.1e}); the floor keeps gradients as small as the "
          f"difference's rounding noise ({EPS * max(abs(loss), 1.0) / h:.0e}) from counting as errors")
    scope = "every weight" if len(entries) == engine.num_params else "a random sample"
    print(f"checking {scope}: {len(entries):,} of {engine.num_params:,}", flush=True)
    print()

    reports = {name: MatrixReport((len(rows), len(rows[0]))) for name, rows in grads.items()}
    started = last_progress = time.perf_counter()
    for i, (name, r, c) in enumerate(entries):
        numeric, loss_up, step = finite_difference(engine, weights, tokens, name, r, c, h)
        analytic = grads[name][r][c]
        report, entry = reports[name], f"{name}[{r}][{c}]"
        report.checked += 1
        error = relative_error(analytic, numeric, floor)
        if error > report.worst_error or not report.worst_entry:
            report.worst_error, report.worst_entry = error, entry
        if abs(analytic) > report.largest_gradient:
            report.largest_gradient = abs(analytic)
            report.example = worked_example(entry, step, loss_up - loss, analytic, numeric)
        now = time.perf_counter()
        if now - last_progress > PROGRESS_EVERY_S:
            left = (now - started) / (i + 1) * (len(entries) - i - 1)
            print(f"  checked {i + 1:,} / {len(entries):,} weights ({now - started:.0f} s, about {left:.0f} s left)",
                  file=sys.stderr, flush=True)
            last_progress = now

    width = max(len(name) for name in reports)
    print(f"{'matrix':<{width}}  {'shape':>7}  {'checked':>11}  {'largest relative error':>22}  "
          f"{'at':<{width + 10}}  verdict")
    for name, rep in reports.items():
        shape, checked = f"{rep.shape[0]}x{rep.shape[1]}", f"{rep.checked}/{rep.shape[0] * rep.shape[1]}"
        verdict = "ok" if rep.worst_error <= tolerance else "FAILED"
        print(f"{name:<{width}}  {shape:>7}  {checked:>11}  {rep.worst_error:>22.2e}  "
              f"{rep.worst_entry:<{width + 10}}  {verdict}")
    print()
    print("each matrix's largest gradient, in words:")
    for name, rep in reports.items():
        print(f"  {rep.example}" if rep.largest_gradient > 0 else f"  no weight of {name} moves the loss")
    print()
    failed = [name for name, rep in reports.items() if rep.worst_error > tolerance]
    if failed:
        print(f"FAILED: backward() disagrees with finite differences in {', '.join(failed)} "
              f"(relative error above {tolerance:g})")
        return 1
    worst = max(reports.values(), key=lambda rep: rep.worst_error)
    print(f"ok: all {len(entries):,} gradients agree within {tolerance:g} (largest relative error "
          f"{worst.worst_error:.1e}, at {worst.worst_entry})")
    return 0
