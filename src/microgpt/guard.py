"""What a run checks before its first step, and the signals it answers while it trains.

- `FolderLock`: one run per output folder (an exclusive `fcntl.flock` on `DIR/.lock`, held for the
  whole run); a second run on the folder is refused at once, naming the process that holds it.
- `check_output_file`: an output file has the right ending, is not a folder, and its folder exists.
- `probe_writable`: the folder can be created and written (a probe file is written and removed).
- `check_memory`: the model's parameters, gradients, Adam's moments and one step's activations fit
  in the memory available.
- `catch_signals`: Ctrl-C (SIGINT) and SIGTERM while training finish the step, then save; a second
  one while saving says so and lets the save finish; a third quits at once.

The lock and the signal handling are POSIX (Linux, macOS); elsewhere the lock is skipped with a
one-line note. Standard library only.

Exports: `FolderLock`, `check_output_file`, `probe_writable`, `check_memory`, `estimate_memory`,
`available_memory`, `catch_signals`, `SignalHandler`.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import SNAPSHOTS
from .config import Config
from .errors import Interrupted, UserError

LOCK = ".lock"


class FolderLock:
    """An exclusive lock on `DIR/.lock` for as long as a run writes into DIR."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no flock
            print(f"note: {self.folder} is not locked (folder locks need Linux or macOS): do not run two trainings "
                  "on it at once", file=sys.stderr)
            return self
        path = self.folder / LOCK
        try:
            # Never through a link, never anything but a regular file: the lock writes its pid into it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                         0o644)
        except OSError as e:
            raise UserError(f"cannot use {path} as the folder's lock ({e.strerror}): remove it if no run is "
                            "going, or pick another --out folder") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"{path} is not a regular file: remove it if no run is going, or pick another --out folder")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 100).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.folder} is in use by a training run (process {holder}): wait for it to end, "
                            "or pick another --out folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays, harmless
            self._fd = None


def check_output_file(path: str | os.PathLike, flag: str, example: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work is done, an output file (given as `flag`) that does not end in one of
    `suffixes`, is a folder, or lies in a folder that does not exist; `example` is a file name the
    message suggests in its place."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: the file name must end in {suffixes[0]}")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: pass a file name such as {path / example}")
    if not path.parent.is_dir():
        raise UserError(f"the folder of {flag} {path} does not exist: create {path.parent} first or pick another path")
    return path


def probe_writable(folder: Path) -> None:
    """Create `folder` if needed and write and remove a probe file in it, or raise a UserError naming why."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file: pass a folder for the checkpoints")
    inside = folder / SNAPSHOTS  # written into by the run: a link would send the files elsewhere
    if inside.is_symlink() or (inside.exists() and not inside.is_dir()):
        raise UserError(f"{inside} is not a folder of its own (a link or a file): remove it, or pick another "
                        "--out folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write into {folder} ({e.strerror}): pick another --out folder, or make it "
                        "writable") from None


def estimate_memory(config: Config, vocab_size: int, engine: str) -> int:
    """Bytes a run needs: parameters, gradients and Adam's two moments, plus one step's activations.

    The activations are counted per example from the layers' outputs (each rmsnorm, q/k/v, the
    attention weights of every head, the MLP's hidden layer, the logits); the book engine keeps
    one Value object (about 100 bytes) per number of its graph instead of 8 bytes.
    """
    C, T, V, L, H = config.n_embd, config.block_size, vocab_size, config.n_layer, config.n_head
    params = (2 * V + T) * C + L * 12 * C * C
    per_layer = T * C * 16 + 3 * H * T * T
    activations = config.batch_size * (L * per_layer + 3 * T * V + 4 * T * C)
    if config.data_format == "text":  # the validation windows, kept as lists of ids
        activations += config.eval_windows * (T + 8)
    if engine == "scalar":
        graph_nodes = config.batch_size * T * (L * (24 * C * C + 4 * H * T * C) + 2 * V * C)
        return params * 4 * 120 + graph_nodes * 100
    return (4 * params + activations) * 8


def available_memory() -> int | None:
    """Bytes this process may still use: MemAvailable (Linux) or physical memory, capped by RLIMIT_AS."""
    limit = None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limit = soft
    except (ImportError, ValueError, OSError):
        pass
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        try:
            free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    known = [x for x in (limit, free) if x is not None]
    return min(known) if known else None


def check_memory(config: Config, vocab_size: int, engine: str) -> None:
    """Refuse, with the estimate and the limit, a model that would not fit in memory."""
    need, have = estimate_memory(config, vocab_size, engine), available_memory()
    if have is not None and need > have:
        windows = " or --eval-windows" if config.data_format == "text" else ""
        raise UserError(f"this model needs about {_size(need)} (parameters, gradients, Adam's moments and one step's "
                        f"activations on the {engine} engine), more than the {_size(have)} available: lower "
                        f"--n-embd, --n-layer, --block-size, --batch-size{windows}")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class SignalHandler:
    """Counts Ctrl-C/SIGTERM. Outside the loop, or the third time, it raises Interrupted at once.

    In the loop (`deferring`), the first asks the run to stop after the current step and save
    (`on_first` says so at once); the second, while that happens, only says it is still saving.
    """

    def __init__(self, on_first: Callable[[int], None]) -> None:
        self.on_first = on_first
        self.deferring = False
        self.count = 0
        self.requested = 0  # the first signal's number, 0 for none

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if not self.deferring or self.count >= 3:
            raise Interrupted(self.requested or signum)
        if self.count == 1:
            self.requested = signum
            self.on_first(signum)
        else:
            print("still saving, Ctrl-C once more to quit without it", file=sys.stderr, flush=True)


@contextmanager
def catch_signals(on_first: Callable[[int], None]) -> Iterator[SignalHandler]:
    """Install a SignalHandler for SIGINT and SIGTERM, and restore the previous handlers once, on the way out.

    Installed explicitly: a process started in the background of a non-interactive shell
    ignores SIGINT, and Python's default handler would never see it.
    """
    handler = SignalHandler(on_first)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
