"""What the benchmarks share: timing one call again and again.

Exports: `times_of`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def times_of(f: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """The seconds each of `repeat` calls of `f` took, by `clock` (wall time, or thread_time for CPU time)."""
    times = []
    for _ in range(repeat):
        start = clock()
        f()
        times.append(clock() - start)
    return times
