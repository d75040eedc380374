"""Benchmark: the NumPy engine against the book engine on the faithful default run.

Each engine runs the whole default run (1000 steps on names.txt, then 20 samples) as a fresh
Python process, imports and data loading included, so the times are what a user waits for.
Then the NumPy engine's steps/s on a larger model, and optionally a profile of its step.

    python benchmarks/bench_numpy.py                      # both engines (the book engine takes minutes)
    python benchmarks/bench_numpy.py --skip-scalar --scalar-seconds 145
    python benchmarks/bench_numpy.py --skip-scalar --profile
    python benchmarks/bench_numpy.py --cli                # time `python -m microgpt train` instead
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from microgpt.config import Config  # noqa: E402
from microgpt.data import load_docs, shuffled  # noqa: E402
from microgpt.engines import create_engine  # noqa: E402
from microgpt.tokenizer import Tokenizer  # noqa: E402
from microgpt.train import train  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
NAMES = SHARED / "names.txt"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
MEMORY_LIMIT_MB = 150

# The default run as a user would script it; prints what the SPEC's figures are checked on.
DRIVER = """
import json, random, sys
from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.engines import create_engine
from microgpt.sample import sample
from microgpt.tokenizer import Tokenizer
from microgpt.train import train
config = Config()
rng = random.Random(config.seed)
docs = shuffled(load_docs(sys.argv[2]), rng)
tokenizer = Tokenizer.from_docs(docs)
engine = create_engine(sys.argv[1], config, tokenizer.vocab_size, rng)
losses = []
train(engine, docs, tokenizer, config, on_step=lambda step, loss, lr: losses.append(loss) and False)
samples = [sample(engine, tokenizer, rng, config.temperature) for _ in range(config.num_samples)]
print(json.dumps({"first": [round(x, 4) for x in losses[:5]], "last": round(losses[-1], 4), "samples": samples}))
"""


def run_child(cmd: list[str]) -> dict:
    """Run cmd to completion: wall seconds, CPU seconds, peak resident MB of that process, stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
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
        return [sys.executable, "-m", "microgpt", "train", "--engine", engine, "--data", str(NAMES)]
    return [sys.executable, "-c", DRIVER, engine, str(NAMES)]


def report_run(label: str, result: dict, steps: int) -> None:
    print(f"{label:>8}: {result['wall']:8.3f} s wall, {result['cpu']:8.3f} s CPU, "
          f"{steps / result['wall']:9.0f} steps/s (whole process), peak RSS {result['rss_mb']:.1f} MB")


def larger_model_steps_per_second(steps: int) -> float:
    """Steps/s of the NumPy engine on 4 layers, n_embd 64, 4 heads, block_size 64, Shakespeare lines."""
    config = Config(n_layer=4, n_embd=64, n_head=4, block_size=64, num_steps=steps)
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(SHAKESPEARE), rng)  # every non-empty line is a document
    tokenizer = Tokenizer.from_docs(docs)
    engine = create_engine("numpy", config, tokenizer.vocab_size, rng)
    start = time.perf_counter()
    train(engine, docs, tokenizer, config)
    return steps / (time.perf_counter() - start)


def profile_default_training(top: int) -> None:
    """cProfile of the NumPy engine's 1000 default steps, top functions by cumulative time."""
    import cProfile
    import pstats

    config = Config()
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(NAMES), rng)
    tokenizer = Tokenizer.from_docs(docs)
    engine = create_engine("numpy", config, tokenizer.vocab_size, rng)
    profiler = cProfile.Profile()
    profiler.enable()
    train(engine, docs, tokenizer, config)
    profiler.disable()
    print(f"\nprofile of {config.num_steps} training steps (numpy engine), top {top} by cumulative time:")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-scalar", action="store_true", help="do not run the book engine (minutes)")
    parser.add_argument("--scalar-seconds", type=float, default=None,
                        help="with --skip-scalar: the book engine's whole-run time to compare with")
    parser.add_argument("--repeat", type=int, default=5, help="numpy runs; the median is reported")
    parser.add_argument("--cli", action="store_true", help="time `python -m microgpt train` instead of the driver")
    parser.add_argument("--large-steps", type=int, default=200, help="steps of the larger-model measurement")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary of the numpy step")
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    args = parser.parse_args()

    steps = Config().num_steps
    print(f"default run: {steps} steps on {NAMES.name} + {Config().num_samples} samples, whole process "
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

    per_s = larger_model_steps_per_second(args.large_steps)
    print(f"\nlarger model (4 layers, n_embd 64, 4 heads, block_size 64) on {SHAKESPEARE.name} lines: "
          f"{per_s:.0f} steps/s ({1e3 / per_s:.2f} ms/step, {args.large_steps} steps)")

    if args.profile:
        profile_default_training(args.top)


if __name__ == "__main__":
    main()
