"""The book's GPT at a larger scale: Tiny Shakespeare in text mode, each engine against the machine's peak.

    python benchmarks/bench_scale.py --data tinyshakespeare.txt     # else the public copy is fetched once
    python benchmarks/bench_scale.py --data FILE --steps 20 --threads 1,2 --device cuda

Model: n_layer 4, n_head 4, n_embd 128, block_size 64, batch 12; text mode
(`microgpt.data.prepare(Config(data_format="text", ...), path)`, `dataset.examples(step)`): every
row of a batch is a window of 65 characters, so a step predicts 12 x 64 = 768 tokens and nothing
is padded. Each engine and dtype starts from the same weights and trains on the same windows:
the NumPy engine in float64; the torch engine in float64, float32 and bfloat16 (autocast; skipped
with its reason if it does not run here). The first --warmup steps are not timed; the per-step
time is the median of the next --steps.

For each, it prints tokens/s and the achieved model FLOP/s:

    model FLOPs per token = 6 N + 12 n_layer n_embd block_size

the estimate of the PaLM paper's appendix B and of nanoGPT's estimate_mfu: 6 N for the matrix
products forward and backward (2 N forward, 4 N backward), N being the parameters that take part
in one (every matrix but the wte and wpe tables, which are looked up), plus 12 L C T for the
attention's two T x T products (q k^T and att v), counted over the whole block as those estimates
do (the engines compute the masked half too).

The peak is measured in the same process: the best of three large matrix products (2048 x 2048,
2 n^3 FLOPs) per dtype, with NumPy and with torch; the higher of the two is the dtype's peak.
Everything runs twice, on 1 thread and on all cores, each in a fresh Python process (OpenBLAS
reads its thread count once, when NumPy is first imported). With --device cuda the torch engine
also runs on the GPU, against a GPU matrix product's peak; without a GPU those rows are absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from timing import shakespeare, times_of  # noqa: E402

MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)
RUNS = [("numpy", "float64"), ("torch", "float64"), ("torch", "float32"), ("torch", "bfloat16")]
PEAK_N = 2048


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def flops_per_token(num_params: int, vocab_size: int) -> tuple[int, int]:
    """(N, 6 N + 12 L C T): N counts every parameter but the looked-up wte and wpe tables."""
    C, T, L = MODEL["n_embd"], MODEL["block_size"], MODEL["n_layer"]
    n = num_params - vocab_size * C - T * C
    return n, 6 * n + 12 * L * C * T


# --- one thread setting, in its own process ---------------------------------------------------------


def best_seconds(f, repeat: int = 3) -> float:
    f()  # warm-up: thread pools, first-touch of the memory
    return min(times_of(f, repeat))


def measure_peaks(device: str) -> dict[str, float]:
    """GFLOP/s of one large matrix product per library and dtype: 'numpy float64', 'torch float32', ..."""
    import numpy as np
    import torch

    flops = 2 * PEAK_N ** 3
    peaks = {}
    if device == "cpu":
        for dtype in ("float64", "float32"):
            a, b = (np.random.default_rng(i).standard_normal((PEAK_N, PEAK_N)).astype(dtype) for i in (0, 1))
            peaks[f"numpy {dtype}"] = flops / best_seconds(lambda a=a, b=b: a @ b) / 1e9
    for dtype in ("float64", "float32", "bfloat16"):
        try:
            a, b = (torch.randn(PEAK_N, PEAK_N, dtype=getattr(torch, dtype), device=device) for _ in range(2))

            def product(a=a, b=b):
                a @ b
                if device == "cuda":
                    torch.cuda.synchronize()

            peaks[f"torch {dtype}"] = flops / best_seconds(product) / 1e9
        except RuntimeError as e:  # a dtype this device cannot multiply
            print(f"torch {dtype} matmul on {device}: {e}", file=sys.stderr)
    return peaks


def time_engine(name: str, options: dict, config, dataset, warmup: int, steps: int) -> dict:
    """Median seconds per training step (after `warmup` untimed ones) and the last loss."""
    from microgpt.data import derived_rng
    from microgpt.engines import create_engine
    from microgpt.train import train

    engine = create_engine(name, config, dataset.tokenizer.vocab_size, random.Random(config.seed), **options)
    dataset.windows = derived_rng(config.seed, "windows")  # the windows' own generator, afresh: the same windows
    marks: list[float] = []
    losses: list[float] = []

    def on_step(step: int, loss: float, lr: float) -> bool:
        marks.append(time.perf_counter())
        losses.append(loss)
        return False

    marks.append(time.perf_counter())
    train(engine, dataset, config, on_step=on_step)
    per_step = [b - a for a, b in zip(marks[warmup:], marks[warmup + 1:])]
    result = {"step_s": statistics.median(per_step), "loss": losses[-1], "params": engine.num_params}
    engine.close()
    return result


def child(args: argparse.Namespace) -> None:
    """Measure the peaks and every engine for one thread setting; print one JSON line."""
    import numpy as np
    import torch

    from microgpt.config import Config
    from microgpt.data import prepare
    from microgpt.errors import UserError

    torch.set_num_threads(args.child_threads)
    load_before = os.getloadavg()[0]
    peaks = measure_peaks(args.child_device)
    config = Config(data_format="text", **MODEL, num_steps=args.warmup + args.steps, seed=args.seed).validate()
    dataset, _ = prepare(config, args.data)
    runs = []
    for name, dtype in RUNS:
        if args.child_device != "cpu" and name != "torch":
            continue
        options = {}
        if name == "torch":
            options = {"dtype": dtype, "device": args.child_device, "threads": args.child_threads}
        row = {"engine": name, "dtype": dtype, "device": args.child_device}
        try:
            row.update(time_engine(name, options, config, dataset, args.warmup, args.steps))
        except (UserError, RuntimeError) as e:  # a dtype or device this machine cannot run
            row["skipped"] = str(e).splitlines()[0][:160]
        runs.append(row)
        done = f"{row['step_s'] * 1e3:.1f} ms/step" if "step_s" in row else "skipped"
        print(f"  {args.child_threads} thread(s), {name} {dtype} on {args.child_device}: {done}",
              file=sys.stderr, flush=True)
    print(json.dumps({"threads": args.child_threads, "device": args.child_device, "peaks": peaks, "runs": runs,
                      "load": [load_before, os.getloadavg()[0]], "vocab_size": dataset.tokenizer.vocab_size,
                      "numpy": np.__version__, "torch": torch.__version__}))


# --- the parent: one child per thread setting, then the table -------------------------------------


def run_child(args: argparse.Namespace, data: Path, threads: int, device: str) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, __file__, "--child-threads", str(threads), "--child-device", device, "--data", str(data),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_for(peaks: dict[str, float], dtype: str) -> float | None:
    values = [v for k, v in peaks.items() if k.endswith(" " + dtype)]
    return max(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Tiny Shakespeare (default: the public copy, fetched once and checked)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per engine (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", default=None, help="thread settings, comma-separated (default: 1 and all cores)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: also run the torch engine on the GPU")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_threads:
        child(args)
        return

    from microgpt.data import DataError, load_text

    try:  # read once here, so a missing or unreadable file is one line, not a child's traceback
        data = shakespeare(args.data)
        load_text(data)
    except DataError as e:
        sys.exit(f"bench_scale.py: {e}")
    cores = os.cpu_count() or 1
    settings = sorted({int(t) for t in args.threads.split(",")}) if args.threads else sorted({1, cores})
    results = [run_child(args, data, threads, "cpu") for threads in settings]
    if args.device == "cuda":
        import torch

        if torch.cuda.is_available():
            results.append(run_child(args, data, cores, "cuda"))
        else:
            print("no CUDA device here: the GPU rows are absent")

    first = results[0]
    params = next(r["params"] for r in first["runs"] if "params" in r)
    n, per_token = flops_per_token(params, first["vocab_size"])
    tokens = MODEL["batch_size"] * MODEL["block_size"]
    print(f"machine: {cpu_model()}, {cores} cores; numpy {first['numpy']}, torch {first['torch']}; "
          f"data {data.name} (text mode)")
    print(f"model: n_layer {MODEL['n_layer']}, n_head {MODEL['n_head']}, n_embd {MODEL['n_embd']}, block_size "
          f"{MODEL['block_size']}, batch {MODEL['batch_size']} ({tokens} tokens a step); {params:,} parameters, "
          f"N = {n:,} of them in matrix products")
    print(f"model FLOPs per token = 6 N + 12 n_layer n_embd block_size = {6 * n:,} + "
          f"{12 * MODEL['n_layer'] * MODEL['n_embd'] * MODEL['block_size']:,} = {per_token:,} "
          f"({per_token * tokens / 1e9:.2f} GFLOP a step)")
    for r in results:
        peaks = ", ".join(f"{k} {v:.1f}" for k, v in r["peaks"].items())
        print(f"peak, {r['threads']} thread(s) on {r['device']} ({PEAK_N}x{PEAK_N} matmul, best of 3, GFLOP/s): {peaks}"
              f"; load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}")
    print(f"\n{'engine':<7}{'dtype':<10}{'device':<7}{'threads':>8}{'ms/step':>9}{'tokens/s':>10}{'GFLOP/s':>9}"
          f"{'peak':>8}{'of peak':>9}{'last loss':>11}")
    for r in results:
        for run in r["runs"]:
            head = f"{run['engine']:<7}{run['dtype']:<10}{run['device']:<7}{r['threads']:>8}"
            if "skipped" in run:
                print(f"{head}  skipped: {run['skipped']}")
                continue
            per_s = tokens / run["step_s"]
            achieved = per_s * per_token / 1e9
            peak = peak_for(r["peaks"], run["dtype"])
            share = f"{100 * achieved / peak:.0f}%" if peak else "-"
            print(f"{head}{run['step_s'] * 1e3:>9.1f}{per_s:>10,.0f}{achieved:>9.1f}"
                  f"{(f'{peak:.1f}' if peak else '-'):>8}{share:>9}{run['loss']:>11.4f}")


if __name__ == "__main__":
    main()
