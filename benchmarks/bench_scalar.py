"""Time the book engine's default run: 1,000 steps on names.txt and 20 samples, seed 42.

    python benchmarks/bench_scalar.py [--data FILE] [--steps 1000]

Prints steps/s, the training time and the whole run's time. The original single-file program
takes about 150 s for the same 1,000 steps on one core of the project's CI machines; pass
`--reference-seconds S` with your own measurement of it to print the ratio. The data defaults to
the names dataset shipped with the package.
"""

from __future__ import annotations

import argparse
import time

from microgpt.config import Config
from microgpt.data import prepare
from microgpt.engines import create_engine
from microgpt.sample import sample
from microgpt.train import train


class Timed:
    """An on_step callback that keeps the losses and stops after `steps` steps."""

    def __init__(self, steps: int) -> None:
        self.steps, self.losses = steps, []

    def __call__(self, step: int, loss: float, lr: float) -> bool:
        self.losses.append(loss)
        return step + 1 >= self.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="documents, one per line (default: the packaged names)")
    parser.add_argument("--steps", type=int, default=1000, help="steps to time (the schedule stays 1,000)")
    parser.add_argument("--reference-seconds", type=float, default=150.0,
                        help="the original program's time for 1,000 steps on this machine (default: 150)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    config = Config().validate()
    data, rng = prepare(config, args.data)
    engine = create_engine("scalar", config, data.tokenizer.vocab_size, rng)
    timed = Timed(args.steps)
    t1 = time.perf_counter()
    train(engine, data, config, on_step=timed)
    t2 = time.perf_counter()
    samples = [sample(engine, data.tokenizer, rng, config.temperature) for _ in range(config.num_samples)]
    t3 = time.perf_counter()

    steps = len(timed.losses)
    print(f"book engine: {steps} steps in {t2 - t1:.1f} s = {steps / (t2 - t1):.2f} steps/s; "
          f"20 samples in {t3 - t2:.2f} s; whole run {t3 - t0:.1f} s")
    per_1000 = (t2 - t1) * 1000 / steps
    print(f"1,000 steps at this rate: {per_1000:.1f} s; original program: {args.reference_seconds:.0f} s "
          f"-> {args.reference_seconds / per_1000:.2f}x the original's speed")
    print(f"last loss {timed.losses[-1]:.4f}; samples: {', '.join(samples[:5])}, ...")


if __name__ == "__main__":
    main()
