"""Shared fixtures: where the datasets are, the book engine's default run (computed once), and
synthetic metrics files for the commands that read them."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.engines import create_engine
from microgpt.metrics import MetricsWriter
from microgpt.sample import sample
from microgpt.tokenizer import Tokenizer
from microgpt.train import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NAMES = SHARED / "data" / "names.txt"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"

# SPEC section 8: the figures of the default run (seed 42, names.txt).
SPEC_FIRST_LOSSES = [3.3660, 3.4243, 3.1778, 3.0664, 3.2209]
SPEC_LAST_LOSS = 2.6497
SPEC_SAMPLES = ["kamon", "ann", "karai", "jaire", "vialan", "karia", "yeran", "anna", "areli", "kaina",
                "konna", "keylen", "liole", "alerin", "earan", "lenne", "kana", "lara", "alela", "anton"]


def default_run(engine_name: str, config: Config | None = None, **options) -> dict:
    """Train `engine_name` with `config` (default: the book's) on names.txt; losses, samples, engine."""
    config = config or Config()
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(NAMES), rng)
    tokenizer = Tokenizer.from_docs(docs)
    engine = create_engine(engine_name, config, tokenizer.vocab_size, rng, **options)
    losses: list[float] = []
    train(engine, docs, tokenizer, config, on_step=lambda step, loss, lr: losses.append(loss) and False)
    samples = [sample(engine, tokenizer, rng, config.temperature) for _ in range(config.num_samples)]
    return {"losses": losses, "samples": samples, "engine": engine, "tokenizer": tokenizer, "docs": docs}


@pytest.fixture(scope="session")
def book_run() -> dict:
    """The faithful default run on the book engine: minutes, so run once per test session."""
    return default_run("scalar")


def write_synthetic_run(path: Path, header: dict, num_steps: int, seed: int, floor: float, decay: float,
                        step_time: float, lr: Callable[[int], float] = lambda step: 0.01,
                        val_loss: Callable[[int], float | None] = lambda step: None) -> list[dict]:
    """A metrics file whose loss decays like a real run's, `floor + exp(-step / decay)` plus seeded
    noise, levelling off at `floor`; `val_loss(step)` adds a validation loss where it is not None.
    Returns the step records written."""
    writer = MetricsWriter(path, header)
    rng = random.Random(seed)
    records = []
    for step in range(1, num_steps + 1):
        record = {"step": step, "loss": floor + math.exp(-step / decay) + rng.gauss(0, 0.3), "lr": lr(step),
                  "time": round(step_time * step, 6)}
        if val_loss(step) is not None:
            record["val_loss"] = val_loss(step)
        writer.log(**record)
        records.append(record)
    writer.close()
    return records
