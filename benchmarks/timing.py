"""What the benchmarks share: timing one call again and again, and finding Tiny Shakespeare.

Exports: `times_of`, `shakespeare`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def times_of(f: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """The seconds each of `repeat` calls of `f` took, by `clock` (wall time, or thread_time for CPU time)."""
    times = []
    for _ in range(repeat):
        start = clock()
        f()
        times.append(clock() - start)
    return times


def shakespeare(data: str | None) -> Path:
    """--data, or the public copy of Tiny Shakespeare, downloaded once into the cache and checked."""
    from microgpt.data import SHAKESPEARE_SHA256, SHAKESPEARE_URL, fetch

    return Path(data) if data else fetch(SHAKESPEARE_URL, SHAKESPEARE_SHA256)
