"""What a run shows while it trains: a live bar on a terminal, a plain line now and then elsewhere.

Each update shows the step, the step's loss, the mean of the last 100 losses (one document's
loss is noisy; the smoothed figure is what people quote), steps per second and the time left.

Exports: `Progress`.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import TextIO


class Progress:
    def __init__(self, num_steps: int, start_step: int = 0, stream: TextIO | None = None,
                 live: bool | None = None, window: int = 100, every: int | None = None,
                 history: Iterable[float] = ()) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.num_steps, self.start_step = num_steps, start_step
        # A resumed run's running mean goes on from the losses already logged.
        self.recent: deque[float] = deque(history, maxlen=window)
        self.every = every or max(1, num_steps // 20)  # plain output: about 20 lines per run
        self.started = time.perf_counter()
        self._last_draw = 0.0

    @property
    def running_mean(self) -> float:
        return sum(self.recent) / len(self.recent)

    def line(self, step: int, loss: float) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.num_steps - step) / rate if rate > 0 else 0.0
        return (f"step {step:4d} / {self.num_steps:4d} | loss {loss:.4f} | mean({len(self.recent)}) "
                f"{self.running_mean:.4f} | {rate:.1f} steps/s | eta {_duration(eta)}")

    def update(self, step: int, loss: float) -> None:
        """Report step `step` (1-based) and its loss."""
        self.recent.append(loss)
        if self.live:
            now = time.perf_counter()
            if now - self._last_draw >= 0.1 or step == self.num_steps:  # redraw at most 10 times a second
                self._last_draw = now
                frac = step / self.num_steps
                bar = "#" * int(frac * 20) + "-" * (20 - int(frac * 20))
                self.stream.write(f"\r[{bar}] {self.line(step, loss)}\x1b[K")
                self.stream.flush()
        elif step % self.every == 0 or step == self.num_steps or step == self.start_step + 1:
            self.stream.write(self.line(step, loss) + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own, such as a validation loss, that stays on screen."""
        self.stream.write(("\r" + text + "\x1b[K\n") if self.live else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
