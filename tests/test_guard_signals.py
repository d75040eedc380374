"""Interrupts and concurrent runs: Ctrl-C and SIGTERM stop every command with 130 and 143 and lose nothing
that was saved; one run per output folder; two commands writing one image never collide.

Each test runs the tool as a user does, in a fresh process, and signals it at a known point of its output:
the first Ctrl-C says at once where it will save, a second one while it saves says so and lets the save
finish, a third quits at once with the previous checkpoint whole. A resumed run computes exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    SMALL_FLAGS,
    assert_one_line_error,
    final_state,
    run_cli,
    samples_of,
    step_records,
    whole_checkpoint_step,
)

# A model whose checkpoint (25 MB of weights, moments and gradients) takes a good part of a second to
# write, so a second Ctrl-C sent right after the first lands while it saves.
SLOW_SAVE = ["--n-embd", "128", "--n-head", "2", "--n-layer", "4", "--block-size", "8", "--keep-snapshots", "none",
             "--stats-every", "off", "--num-samples", "0"]


class Child:
    """`python -m microgpt ARGS` in the background; its output lines collected as they come."""

    def __init__(self, *args, ignore_sigint: bool = False, cwd: Path = ROOT) -> None:
        def ignore() -> None:  # as a shell starts a background job: SIGINT ignored
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen([sys.executable, "-m", "microgpt", *map(str, args)], cwd=cwd, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=ignore if ignore_sigint else None)
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: queue.Queue = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(stream, store, name), daemon=True)
                         for stream, store, name in ((self.proc.stdout, self.out, "out"),
                                                     (self.proc.stderr, self.err, "err"))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, store: list[str], name: str) -> None:
        for line in stream:
            store.append(line)
            self.lines.put((name, line))
        self.lines.put((name, None))

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """The first line (stdout or stderr) holding `text`, from now on or already seen."""
        for line in self.out + self.err:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is not None and text in line:
                return line
            if line is None and self.proc.poll() is not None and self.lines.empty():
                break
        raise AssertionError(f"no line with {text!r}; stdout: {''.join(self.out)[-2000:]} "
                             f"stderr: {''.join(self.err)[-2000:]}")

    def wait_until(self, ready: Callable[[], bool], every: float, timeout: float = 120) -> None:
        """Poll `ready()` every `every` seconds until it holds; fail if the process ends first, or after `timeout`."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.err)
            time.sleep(every)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return rc, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def child():
    started: list[Child] = []

    def start(*args, **kwargs) -> Child:
        c = Child(*args, **kwargs)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def tiny(data: Path, out: Path, steps: int, *more) -> list[str]:
    return ["train", "--data", data, *SMALL_FLAGS, "--steps", steps, "--stats-every", "off", "--num-samples", "5",
            "--out", out, *more]


def losses(metrics: Path) -> list[float]:
    return [r["loss"] for r in step_records(metrics)]


# --- Ctrl-C once, twice, three times; SIGTERM -----------------------------------------------------------


EXACT_STEPS = 2000


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """The uninterrupted run the interrupted ones must equal: its losses, final state and samples."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    rc, out, err = run_cli(*tiny(data, folder, EXACT_STEPS, "--quiet"))
    assert rc == 0, err
    return {"losses": losses(folder / "metrics.jsonl"), "state": final_state(folder), "samples": samples_of(out)}


STOPS = {"sigint": (signal.SIGINT, 130, False), "sigint-ignored-at-start": (signal.SIGINT, 130, True),
         "sigterm": (signal.SIGTERM, 143, False), "sigkill": (signal.SIGKILL, -signal.SIGKILL, False)}


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_run_stopped_by_a_signal_resumes_exactly(data, tmp_path, child, reference, stop):
    signum, code, ignore_sigint = STOPS[stop]
    out = tmp_path / "run"
    run = child(*tiny(data, out, EXACT_STEPS, "--checkpoint-every", "500"), ignore_sigint=ignore_sigint)
    if signum == signal.SIGKILL:  # no warning at all: after the first checkpoint, at any moment
        run.wait_until((out / "checkpoint.json").exists, every=0.01)
        time.sleep(random.Random(0).uniform(0, 0.2))
        run.signal(signum)
        rc, _, stderr = run.finish()
        stopped = whole_checkpoint_step(out)
    else:
        run.wait_for("step    1 /")
        run.signal(signum)
        said = run.wait_for("saving a checkpoint at step", timeout=10)  # at once, not after the run
        rc, _, stderr = run.finish()
        stopped = int(said.split("at step ")[1].split("...")[0])
        assert whole_checkpoint_step(out) == stopped
        assert [r["step"] for r in step_records(out / "metrics.jsonl")] == list(range(1, stopped + 1))
        assert f"--resume {out}" in stderr

    assert rc == code, stderr
    assert "Traceback" not in stderr
    assert 0 < stopped < EXACT_STEPS

    rc, resumed_out, err = run_cli("train", "--resume", out, "--quiet")
    assert rc == 0, err
    assert losses(out / "metrics.jsonl") == reference["losses"]
    assert samples_of(resumed_out) == reference["samples"]
    state = final_state(out)
    assert state.keys() == reference["state"].keys()
    assert all((state[k] == reference["state"][k]).all() for k in state)


def test_a_second_ctrl_c_while_saving_says_still_saving_and_the_save_completes(data, tmp_path, child):
    out = tmp_path / "run"
    run = child(*tiny(data, out, 100000, "--checkpoint-every", "1000000", *SLOW_SAVE))
    run.wait_for("step    1 /")
    run.signal(signal.SIGINT)
    said = run.wait_for("saving a checkpoint at step", timeout=30)
    run.signal(signal.SIGINT)
    run.wait_for("still saving, Ctrl-C once more to quit without it", timeout=30)
    rc, _, stderr = run.finish()

    assert rc == 130, stderr
    assert "Traceback" not in stderr
    stopped = int(said.split("at step ")[1].split("...")[0])
    assert whole_checkpoint_step(out) == stopped  # the save went on to the end
    assert f"checkpoint saved in {out}" in stderr


def test_a_third_ctrl_c_quits_at_once_and_the_previous_checkpoint_stays_whole(data, tmp_path, child):
    out = tmp_path / "run"
    run = child(*tiny(data, out, 100000, "--checkpoint-every", "20", *SLOW_SAVE))
    run.wait_until((out / "checkpoint.json").exists, every=0.05)  # a previous checkpoint to keep
    run.wait_for("step    1 /")
    run.signal(signal.SIGINT)
    run.wait_for("saving a checkpoint at step", timeout=30)
    for _ in range(2):
        run.signal(signal.SIGINT)
        time.sleep(0.02)
    third = time.monotonic()
    rc, _, stderr = run.finish()

    assert rc == 130, stderr
    assert time.monotonic() - third < 10  # at once, not after further steps
    assert "Traceback" not in stderr
    # The previous checkpoint, or the new one if it was done.
    assert whole_checkpoint_step(out) % 20 == 0 or "checkpoint saved" in stderr
    sampled = run_cli("sample", "--checkpoint", out, "--num-samples", "2")
    assert sampled[0] == 0, sampled[2]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    rc, _, err = run_cli(*tiny(data, out, 20, "--quiet"))
    assert rc == 0, err
    return out


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_a_signal_while_sampling_exits_128_plus_the_signal(trained, child, signum, code):
    run = child("sample", "--checkpoint", trained, "--num-samples", "100000")
    run.wait_for("sample  1:")
    run.signal(signum)
    rc, stdout, stderr = run.finish(timeout=60)

    assert rc == code, stderr
    assert "Traceback" not in stderr
    assert len(samples_of(stdout)) < 100000


# --- one run per output folder ------------------------------------------------------------------------


def test_a_second_run_on_a_training_folder_is_refused_at_once_naming_the_process(data, tmp_path, child):
    steps = 3000
    other = tmp_path / "other"
    rc, _, err = run_cli(*tiny(data, other, steps, "--quiet"))
    assert rc == 0, err

    out = tmp_path / "run"
    first = child(*tiny(data, out, steps, "--checkpoint-every", "100", "--quiet"))
    first.wait_until((out / "checkpoint.json").exists, every=0.02)

    started = time.monotonic()
    second = run_cli("train", "--resume", out, "--quiet")
    took = time.monotonic() - started
    running = first.proc.poll() is None

    assert_one_line_error(second, str(out), f"process {first.proc.pid}")
    assert took < 10
    assert running, "the first run ended before the second was refused: lengthen it"
    rc, _, err = first.finish(timeout=300)
    assert rc == 0, err
    assert losses(out / "metrics.jsonl") == losses(other / "metrics.jsonl")
    assert whole_checkpoint_step(out) == steps


def test_a_second_new_run_on_a_folder_being_trained_is_refused_naming_the_process(data, tmp_path, child):
    out = tmp_path / "run"
    first = child(*tiny(data, out, 3000, "--checkpoint-every", "1000000", "--quiet"))
    first.wait_until(lambda: (out / ".lock").exists() and (out / ".lock").read_text().strip() != "", every=0.02)

    second = run_cli(*tiny(data, out, 3000, "--quiet"))

    assert_one_line_error(second, str(out), str(first.proc.pid))
    assert first.proc.poll() is None
    rc, _, err = first.finish(timeout=300)
    assert rc == 0, err
    assert [r["step"] for r in step_records(out / "metrics.jsonl")] == list(range(1, 3001))


def test_plots_to_one_image_at_once_do_not_collide(trained, tmp_path):
    image = tmp_path / "same.png"
    procs = [subprocess.Popen([sys.executable, "-m", "microgpt", "plot", str(trained / "metrics.jsonl"), "-o",
                               str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, cwd=tmp_path) for _ in range(3)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]

    for rc, _, err in results:
        assert rc == 0, err
    payload = image.read_bytes()
    assert payload.startswith(b"\x89PNG\r\n\x1a\n") and payload.endswith(b"IEND\xaeB`\x82")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.png"]  # no temporary file left behind
