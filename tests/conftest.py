"""What the tests share: the data, the golden figures, the engine registry, the helpers that run the
command line (in this process or as a user would, in a fresh one) and check its one-line errors, and the
runs and the headless Chromium that the page tests (test_explain.py, test_browser.py) open them in.

Everything read here is inside the repository: the packaged names dataset, `tests/golden/` (the book
engine's figures, recorded once) and `tests/fixtures/`. The engines always come from the registry
(`microgpt.engines.ENGINES`), never from a list written here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import microgpt.run
from microgpt.checkpoint import Checkpoint, load_checkpoint
from microgpt.cli import main
from microgpt.config import Config
from microgpt.data import Dataset, load_docs, names_path, prepare
from microgpt.engines import ENGINES, create_engine
from microgpt.engines.base import Engine
from microgpt.metrics import MetricsWriter
from microgpt.sample import sample
from microgpt.train import train

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"
NAMES = names_path()  # the packaged dataset, checked against its pinned sha256
GOLDEN = json.loads((TESTS / "golden" / "book_engine.json").read_text(encoding="utf-8"))
IN_CI = os.environ.get("CI", "").lower() == "true"

# SPEC section 8: the figures of the default run (seed 42, names.txt), rounded as the SPEC states them.
SPEC_FIRST_LOSSES = [3.3660, 3.4243, 3.1778, 3.0664, 3.2209]
SPEC_LAST_LOSS = 2.6497
SPEC_SAMPLES = ["kamon", "ann", "karai", "jaire", "vialan", "karia", "yeran", "anna", "areli", "kaina",
                "konna", "keylen", "liole", "alerin", "earan", "lenne", "kana", "lara", "alela", "anton"]


# A small model, for the tests where the book engine's one Value per number would otherwise take long.
SMALL = dict(n_embd=8, n_head=2, block_size=8)
SMALL_FLAGS = ["--n-embd", "8", "--n-head", "2", "--block-size", "8"]
# Sixty short documents over eight letters: a vocabulary of 9 tokens, a model of under a thousand numbers.
TINY_DOCS = ["".join(random.Random(i).choice("abcdefgh") for _ in range(2 + i % 5)) for i in range(60)]
NO_TORCH = "PyTorch is not installed (pip install -e \".[torch]\")"


@functools.cache
def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def engine_marks(name: str) -> list:
    """The marks a test of engine `name` carries: the torch engine's skip without PyTorch (except under CI)."""
    if name == "torch":
        return [pytest.mark.torch, pytest.mark.skipif(not has_torch() and not IN_CI, reason=NO_TORCH)]
    return []


def engine_params(engines=tuple(ENGINES)) -> list:
    """pytest params over the registry; the torch engine carries the `torch` mark and skips without PyTorch."""
    return [pytest.param(name, marks=engine_marks(name), id=name) for name in engines]


def available_engines() -> list[str]:
    """The registry's engines this machine can run (under CI, all of them: a missing one must fail there)."""
    return [name for name in ENGINES if name != "torch" or has_torch() or IN_CI]


def requires_torch(test: Callable) -> Callable:
    """Mark one test of a file that otherwise runs without PyTorch: skipped without it, except under CI."""
    return pytest.mark.torch(pytest.mark.skipif(not has_torch() and not IN_CI, reason=NO_TORCH)(test))


def needs(program: str, why: str):
    """Skip (outside CI) when a system program is missing; under CI=true the test runs and fails without it."""
    return pytest.mark.skipif(shutil.which(program) is None and not IN_CI,
                              reason=f"{program} is not installed ({why})")


def run_cli(*args) -> tuple[int, str, str]:
    """`microgpt ARGS` in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def run_cli_ok(*args) -> str:
    """`microgpt ARGS` in this process, which must succeed (else its stderr is the failure); its stdout."""
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    return out


def run_cli_interrupted(*args, step: int) -> tuple[str, str]:
    """`microgpt ARGS` in this process with Ctrl-C right after training step `step` (interrupt_after): it
    exits 130; (stdout, stderr)."""
    with interrupt_after(step):
        rc, out, err = run_cli(*args)
    assert rc == 130, err
    return out, err


def run_module(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
               **kwargs) -> subprocess.CompletedProcess:
    """`python -m microgpt ARGS` as a user runs it: a fresh process, no terminal, stdin closed."""
    return subprocess.run([sys.executable, "-m", "microgpt", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout, env=env, **kwargs)


def assert_one_line_error(proc, *words: str, code: int = 2, prefix: str = r"microgpt: error: ") -> str:
    """Exit status `code`, exactly one line on stderr matching `prefix` (a regex) and naming `words`, no traceback.

    `proc` is a CompletedProcess or run_cli's (status, stdout, stderr).
    """
    rc, err = (proc.returncode, proc.stderr) if hasattr(proc, "returncode") else (proc[0], proc[2])
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.match(prefix, lines[0]), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_ok_or_one_line_error(proc, *words: str) -> None:
    """A command that may refuse: exit 0, or one line naming `words` (assert_one_line_error)."""
    rc = proc.returncode if hasattr(proc, "returncode") else proc[0]
    if rc != 0:
        assert_one_line_error(proc, *words)


def assert_close(what: str, got, want, tol: float) -> None:
    """Arrays of one shape whose largest absolute difference is at most `tol`; the message names `what`."""
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = float(np.abs(got - want).max()) if got.size else 0.0
    assert err <= tol, f"{what}: largest difference {err:.3e} > {tol:g}"


def samples_of(stdout: str) -> list[str]:
    """The samples a train or sample command printed, without their numbers."""
    return [line.split(": ", 1)[1] if ": " in line else ""
            for line in stdout.splitlines() if line.startswith("sample ")]


def step_records(path: Path) -> list[dict]:
    """Every step record of a metrics file (all runs), as written."""
    return [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r.get("type") == "step"]


def trajectory(path: Path) -> list[dict]:
    """What a run computed at each step, as its metrics file holds it: every step record but its wall-clock time."""
    return [{k: v for k, v in r.items() if k != "time"} for r in step_records(path)]


def run_headers(path: Path) -> list[dict]:
    """Every run header of a metrics file, as written."""
    return [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r.get("type") == "run"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_docs(path: Path, docs: list[str]) -> Path:
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


class LossRecorder:
    """An `on_step` callback for `microgpt.train.train`: keeps every step's loss and lr_t, and stops
    the loop after `stop_after` steps (1-based) when given."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.stop_after = stop_after

    def __call__(self, step: int, loss: float, lr: float) -> bool:
        self.losses.append(loss)
        self.lrs.append(lr)
        return self.stop_after is not None and step + 1 >= self.stop_after


def start_run(engine_name: str, config: Config, data: Path | None = None,
              **options) -> tuple[Engine, Dataset, random.Random]:
    """The same start as training: the prepared data, then the engine drawn from the one generator."""
    config.validate()
    dataset, rng = prepare(config, data)
    return create_engine(engine_name, config, dataset.tokenizer.vocab_size, rng, **options), dataset, rng


def default_run(engine_name: str, config: Config | None = None, data: Path | None = None, **options) -> dict:
    """Train `engine_name` with `config` (default: the book's) on names.txt; losses, samples, engine."""
    config = (config or Config()).validate()
    engine, dataset, rng = start_run(engine_name, config, data, **options)
    recorder = LossRecorder()
    train(engine, dataset, config, on_step=recorder)
    samples = [sample(engine, dataset.tokenizer, rng, config.temperature, config.top_k)
               for _ in range(config.num_samples)]
    return {"losses": recorder.losses, "samples": samples, "engine": engine, "tokenizer": dataset.tokenizer,
            "docs": dataset.docs, "data": dataset}


@contextlib.contextmanager
def interrupt_after(step: int):
    """Ctrl-C at a known moment: this process gets SIGINT right after training step `step` (1-based) of
    the next `microgpt train` run in it, and the command's own signal handling takes it from there."""
    real_train = microgpt.run.train

    def train_then_interrupt(engine, data, config, start_step=0, on_step=None):
        def hook(s: int, loss: float, lr: float) -> bool:
            if s + 1 == step:
                signal.raise_signal(signal.SIGINT)
            return on_step(s, loss, lr)

        return real_train(engine, data, config, start_step, hook)

    microgpt.run.train = train_then_interrupt
    try:
        yield
    finally:
        microgpt.run.train = real_train


def restored(checkpoint: Checkpoint, engine: str = "numpy") -> Engine:
    """A fresh engine holding the checkpoint's weights and optimizer state (restoring verifies the state
    file's sha256 and every shape)."""
    fresh = create_engine(engine, checkpoint.config, len(checkpoint.vocab) + 1, random.Random(0))
    checkpoint.restore(fresh)
    return fresh


def whole_checkpoint_step(folder: Path, engine: str = "numpy") -> int:
    """The checkpoint in `folder` is whole (its JSON checks, and an engine takes its state); its step."""
    checkpoint = load_checkpoint(folder)
    restored(checkpoint, engine).close()
    return checkpoint.step


def final_state(ck: Path) -> dict:
    """Every tensor of a checkpoint's state file (weights, Adam's moments, gradients), read with safetensors."""
    from safetensors.numpy import load_file

    return load_file(ck / load_checkpoint(ck).meta["state_file"])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """TINY_DOCS as a data file, one document per line."""
    return write_docs(tmp_path_factory.mktemp("data") / "docs.txt", TINY_DOCS)


def write_synthetic_run(path: Path, header: dict, num_steps: int, seed: int, floor: float, decay: float,
                        step_time: float, lr: Callable[[int], float] = lambda step: 0.01,
                        val_loss: Callable[[int], float | None] = lambda step: None) -> list[dict]:
    """A metrics file whose loss decays like a real run's, `floor + exp(-step / decay)` plus seeded
    noise, levelling off at `floor`; `val_loss(step)` adds a validation loss where it is not None.
    Appends a run to `path` (a new file, or one already holding runs). Returns the step records written."""
    writer = MetricsWriter(path, {"run_id": f"synthetic{seed}", **header})
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


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures `plot` and `compare` save, kept for inspection (and still written)."""
    from microgpt import plotting

    saved = []
    real_save = plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: (saved.append(fig), real_save(fig, path)))
    return saved


# --- the browser, when there is one (test_explain.py, test_browser.py) ---------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """$CHROMIUM if set (and there), else the system's chromium."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"] if os.access(os.environ["CHROMIUM"], os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e \".[dev]\")"
    if chromium_path() is None:
        return "Chromium is not installed (apt-get install chromium), or set CHROMIUM to its path"
    return None


BROWSER_MISSING = _browser_missing()
# Outside CI a missing browser skips with its reason; under CI=true the tests run and fail without one.
needs_browser = pytest.mark.skipif(BROWSER_MISSING is not None and not IN_CI, reason=BROWSER_MISSING or "")


@contextlib.contextmanager
def chromium():
    """A headless Chromium, the system's own (Playwright cannot download browsers everywhere)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class OpenPage:
    """A page opened from disk, recording every console message, page error and request."""

    def __init__(self, browser, path: Path, width: int = 1280) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.url = path.resolve().as_uri()
        self.messages: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.messages.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.messages.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready]", timeout=30_000)

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def errors(self) -> list[tuple[str, str]]:
        return [(kind, text) for kind, text in self.messages if kind in ("error", "pageerror", "warning")]


@pytest.fixture(scope="module")  # one Playwright at a time: each module starts and closes its own
def browser():
    if BROWSER_MISSING and IN_CI:
        pytest.fail(f"{BROWSER_MISSING}: CI=true runs the browser tests")
    if BROWSER_MISSING:
        pytest.skip(BROWSER_MISSING)
    with chromium() as b:
        yield b


# --- runs to explain, trained once per test session ---------------------------------------------


def train_run(folder: Path, *flags) -> Path:
    """`microgpt train --out folder` (numpy engine), once per test session: a finished checkpoint is reused."""
    if not (folder / "checkpoint.json").is_file():
        run_cli_ok("train", "--out", folder, "--quiet", *flags)
    return folder


@pytest.fixture(scope="session")
def book(tmp_path_factory) -> Path:
    """The book's default run (1,000 steps, a snapshot every 100), about half a second on the NumPy engine."""
    return train_run(tmp_path_factory.getbasetemp() / "book-run", "--data", NAMES)


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> Path:
    """A text-mode run: names as one stream of characters, newlines included, 200 steps."""
    folder = tmp_path_factory.getbasetemp() / "text-run"
    data = folder.parent / "names-stream.txt"
    if not data.exists():
        data.write_text("\n".join(load_docs(NAMES)[:3000]) + "\n", encoding="utf-8")
    return train_run(folder, "--data", data, "--data-format", "text", "--steps", "200", "--checkpoint-every", "100")
