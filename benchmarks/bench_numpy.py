"""Benchmark: the NumPy engine against the book engine, and its batch pass against one document per pass.

Three measurements, each printed with what it was measured on:

1. The faithful default run (1,000 steps on the packaged names.txt, then 20 samples), each
   engine as a fresh Python process, imports and data loading included: what a user waits for.
   `--cli` times `python -m microgpt train` instead of a small inline driver.
2. The batch speed-up (chapter 7's batching): names (lines mode), 4 layers, n_embd 64, 4 heads,
   block_size 64, batch 12. The baseline is the engine's behaviour before batching, one
   document per pass (12 single-example forward/backward calls that accumulate gradients);
   against it the whole batch as one array pass (padded, its real positions packed as rows).
   Same engine, same weights (the update runs with lr 0, so the weights never move), same
   batches, interleaved repetition by repetition; medians of wall and CPU time are reported,
   with the spread of the repetitions, the machine's load, and the matrix products' own time.
3. Steps/s of the larger model (4 layers, n_embd 64) on Tiny Shakespeare's lines, batch 1.

    python benchmarks/bench_numpy.py                        # all three (the book engine takes minutes)
    python benchmarks/bench_numpy.py --skip-scalar --scalar-seconds 145
    python benchmarks/bench_numpy.py --only batch           # the batch speed-up alone (about a minute)
    python benchmarks/bench_numpy.py --cli                  # time `python -m microgpt train` instead
    python benchmarks/bench_numpy.py --only batch --profile # with a profile of the batched step
    python benchmarks/bench_numpy.py --data tinyshakespeare.txt   # else the public copy is fetched once

NumPy's BLAS runs on one thread here (the engine's default): on these small matrices a thread
pool costs more than it saves, and the comparison stays core for core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is first imported

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from timing import shakespeare, times_of  # noqa: E402

from microgpt.config import Config  # noqa: E402
from microgpt.data import DataError, prepare  # noqa: E402
from microgpt.engines import create_engine  # noqa: E402
from microgpt.train import train  # noqa: E402

MEMORY_LIMIT_MB = 150

# The default run as a user would script it; prints what the SPEC's figures are checked on.
DRIVER = """
import json, sys
from microgpt.config import Config
from microgpt.data import prepare
from microgpt.engines import create_engine
from microgpt.sample import sample
from microgpt.train import train
config = Config().validate()
dataset, rng = prepare(config)
engine = create_engine(sys.argv[1], config, dataset.tokenizer.vocab_size, rng)
losses = []
train(engine, dataset, config, on_step=lambda step, loss, lr: losses.append(loss) and False)
samples = [sample(engine, dataset.tokenizer, rng, config.temperature) for _ in range(config.num_samples)]
print(json.dumps({"first": [round(x, 4) for x in losses[:5]], "last": round(losses[-1], 4), "samples": samples}))
"""

# The batch speed-up's model and data (section 2 of the docstring).
BATCH_CONFIG = dict(n_layer=4, n_embd=64, n_head=4, block_size=64, batch_size=12)


def run_child(cmd: list[str]) -> dict:
    """Run cmd to completion: wall seconds, CPU seconds, peak resident MB of that process, stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    out = proc.stdout.read()
    # wait4 gives this child's own resource usage (getrusage(RUSAGE_CHILDREN) mixes all children).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    # Linux reports ru_maxrss in KiB.
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "stdout": out.decode()}


def default_run_command(engine: str, cli: bool) -> list[str]:
    if cli:
        return [sys.executable, "-m", "microgpt", "train", "--engine", engine, "--quiet"]
    return [sys.executable, "-c", DRIVER, engine]


def report_run(label: str, result: dict, steps: int) -> None:
    print(f"{label:>8}: {result['wall']:8.3f} s wall, {result['cpu']:8.3f} s CPU, "
          f"{steps / result['wall']:9.0f} steps/s (whole process), peak RSS {result['rss_mb']:.1f} MB")


def default_run(args: argparse.Namespace) -> None:
    steps = Config().num_steps
    print(f"default run: {steps} steps on the packaged names.txt + {Config().num_samples} samples, whole process "
          f"({'microgpt train' if args.cli else 'inline driver'}); cores: {os.cpu_count()}")
    runs = [run_child(default_run_command("numpy", args.cli)) for _ in range(args.repeat)]
    numpy_run = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]  # the median run
    report_run("numpy", numpy_run, steps)
    walls = ", ".join(f"{r['wall']:.3f}" for r in runs)
    print(f"          walls of {len(runs)} runs: {walls} s; "
          f"median CPU {statistics.median(r['cpu'] for r in runs):.3f} s")
    if not args.cli:
        figures = json.loads(numpy_run["stdout"])
        print(f"          losses 1-5 {figures['first']}, step {steps} {figures['last']}, "
              f"samples {' '.join(figures['samples'])}")
    else:
        print("          " + "\n          ".join(numpy_run["stdout"].strip().splitlines()[-3:]))
    peak = max(r["rss_mb"] for r in runs)
    print(f"          peak resident memory {peak:.1f} MB: "
          f"{'under' if peak < MEMORY_LIMIT_MB else 'OVER'} {MEMORY_LIMIT_MB} MB")

    if args.skip_scalar:
        scalar_seconds = args.scalar_seconds
    else:
        scalar_run = run_child(default_run_command("scalar", args.cli))
        report_run("scalar", scalar_run, steps)
        scalar_seconds = scalar_run["wall"]
    if scalar_seconds:
        ratio = scalar_seconds / numpy_run["wall"]
        print(f"   ratio: {ratio:.0f}x faster than the book engine ({scalar_seconds:.1f} s / "
              f"{numpy_run['wall']:.3f} s; the goal is at least 300x)")


# --- the batch speed-up ------------------------------------------------------------------------


def batch_speedup(args: argparse.Namespace) -> None:
    """One document per pass against the whole batch in one pass, interleaved; medians and spread."""
    config = Config(**BATCH_CONFIG, num_steps=args.batch_steps).validate()
    dataset, rng = prepare(config)  # the packaged names, lines mode
    engine = create_engine("numpy", config, dataset.tokenizer.vocab_size, rng)
    batches = [dataset.examples(step) for step in range(args.batch_steps)]
    B = config.batch_size
    counts = [[min(config.block_size, len(tokens) - 1) for tokens in batch] for batch in batches]
    real = statistics.mean(sum(c) for c in counts)
    padded = statistics.mean(B * max(c) for c in counts)

    def one_per_pass(batch: list[list[int]]) -> None:
        for tokens in batch:  # what forward/backward did before batching: a pass per document
            engine.forward([tokens])
            engine.backward()

    def batched(batch: list[list[int]]) -> None:
        engine.forward(batch)
        engine.backward()

    # The two compute the same gradient (the baseline's sum of per-document gradients, over B).
    one_per_pass(batches[0])
    engine.scale_grad(1 / B)
    reference = engine.grads.copy()
    engine.zero_grad()
    batched(batches[0])
    agree = float(abs(engine.grads - reference).max() / abs(reference).max())
    engine.zero_grad()

    # Per repetition and mode, the median over the batches of: wall and CPU (this thread's) seconds
    # of forward + backward, and of the whole step (+ Adam's update with lr 0, so the weights never
    # move, + zero_grad). CPU time leaves out the time spent waiting for a core on a busy machine.
    modes = {"one document per pass": one_per_pass, "whole batch, one pass": batched}
    kinds = ("wall fwd+bwd", "wall step", "cpu fwd+bwd", "cpu step")
    per_rep = {name: {kind: [] for kind in kinds} for name in modes}
    load_before = os.getloadavg()
    for rep in range(args.repeat_batch):
        order = list(modes) if rep % 2 == 0 else list(reversed(modes))  # neither always goes first
        for name in order:
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for step, batch in enumerate(batches):
                w0, c0 = time.perf_counter(), time.thread_time()
                modes[name](batch)
                w1, c1 = time.perf_counter(), time.thread_time()
                engine.step(0.0, step)
                engine.zero_grad()
                w2, c2 = time.perf_counter(), time.thread_time()
                for kind, seconds in zip(kinds, (w1 - w0, w2 - w0, c1 - c0, c2 - c0)):
                    times[kind].append(seconds)
            for kind in kinds:
                per_rep[name][kind].append(statistics.median(times[kind]))
    load_after = os.getloadavg()

    print(f"\nbatch speed-up: names (lines mode), n_layer {config.n_layer}, n_embd {config.n_embd}, "
          f"n_head {config.n_head}, block_size {config.block_size}, batch {B}, {engine.num_params:,} parameters; "
          f"{len(batches)} batches x {args.repeat_batch} interleaved repetitions, one BLAS thread")
    print(f"  per batch: {real:.1f} real positions on average, {padded:.1f} once padded; "
          f"the two gradients agree to {agree:.1e} (relative)")
    print(f"  load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} cores")
    print("  ms per step, median over repetitions (min - max):")
    print(f"  {'':<24}" + "".join(f"{kind:>22}" for kind in kinds))
    for name in modes:
        cells = [f"{statistics.median(v) * 1e3:.2f} ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})"
                 for v in per_rep[name].values()]
        print(f"  {name:<24}" + "".join(f"{cell:>22}" for cell in cells))
    base, new = (per_rep[name] for name in modes)
    ratios = {kind: [b / n for b, n in zip(base[kind], new[kind])] for kind in kinds}
    cells = [f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})" for r in ratios.values()]
    print(f"  {'speed-up':<24}" + "".join(f"{cell:>22}" for cell in cells))

    floor = gemm_floor(engine, round(real))
    flops = 6 * (engine.num_params - engine.vocab_size * config.n_embd - config.block_size * config.n_embd) * real
    print(f"  the batched pass's matrix products alone (the same shapes, {round(real)} rows, nothing else): "
          f"{floor * 1e3:.2f} ms CPU, {flops / floor / 1e9:.1f} GFLOP/s; the batched forward + backward: "
          f"{statistics.median(new['cpu fwd+bwd']) * 1e3:.2f} ms CPU")

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for step, batch in enumerate(batches):
            batched(batch)
            engine.step(0.0, step)
            engine.zero_grad()
        profiler.disable()
        print(f"\nprofile (CPU time) of {len(batches)} batched steps, top {args.top} by own time:")
        pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(args.top)


def gemm_floor(engine, rows: int, repeat: int = 200) -> float:
    """Median CPU seconds of the matrix products one batched forward + backward makes, alone.

    For every weight matrix W (n_out, n_in) that multiplies: x W^T forward, then dW = dy^T x and
    dx = dy W backward, on `rows` positions: the floor under the batched pass's time.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    mats = [w for name, w in engine.p.items() if name not in ("wte", "wpe")]
    xs = {n: rng.standard_normal((rows, n)) for w in mats for n in w.shape}

    def products() -> None:
        for w in mats:
            np.dot(xs[w.shape[1]], w.T)
        for w in reversed(mats):
            dy = xs[w.shape[0]]
            np.dot(dy.T, xs[w.shape[1]])
            np.dot(dy, w)

    return statistics.median(times_of(products, repeat, time.thread_time))


# --- the larger model on Shakespeare's lines ---------------------------------------------------------


def larger_model(args: argparse.Namespace) -> None:
    """Steps/s of the NumPy engine on 4 layers, n_embd 64, 4 heads, block_size 64, Shakespeare lines, batch 1."""
    config = Config(n_layer=4, n_embd=64, n_head=4, block_size=64, num_steps=args.large_steps).validate()
    try:
        dataset, rng = prepare(config, shakespeare(args.data))  # every non-empty line is a document
    except DataError as e:
        print(f"\nlarger model skipped: {e}")
        return
    engine = create_engine("numpy", config, dataset.tokenizer.vocab_size, rng)
    start = time.perf_counter()
    train(engine, dataset, config)
    per_s = args.large_steps / (time.perf_counter() - start)
    print(f"\nlarger model (4 layers, n_embd 64, 4 heads, block_size 64) on {dataset.path.name}'s lines, batch 1: "
          f"{per_s:.0f} steps/s ({1e3 / per_s:.2f} ms/step, {args.large_steps} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("default", "batch", "large"), help="run one measurement only")
    parser.add_argument("--skip-scalar", action="store_true", help="do not run the book engine (minutes)")
    parser.add_argument("--scalar-seconds", type=float, default=None,
                        help="with --skip-scalar: the book engine's whole-run time to compare with")
    parser.add_argument("--repeat", type=int, default=5, help="numpy default runs; the median is reported")
    parser.add_argument("--cli", action="store_true", help="time `python -m microgpt train` instead of the driver")
    parser.add_argument("--batch-steps", type=int, default=40, help="batches timed per repetition (default 40)")
    parser.add_argument("--repeat-batch", type=int, default=7, help="interleaved repetitions of the batch timing")
    parser.add_argument("--large-steps", type=int, default=200, help="steps of the larger-model measurement")
    parser.add_argument("--data", help="Tiny Shakespeare for the larger model (default: fetch the public copy once)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary of the batched step")
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    args = parser.parse_args()

    if args.only in (None, "default"):
        default_run(args)
    if args.only in (None, "batch"):
        batch_speedup(args)
    if args.only in (None, "large"):
        larger_model(args)


if __name__ == "__main__":
    main()
