"""Exact resume: a run stopped and continued with `--resume` is the uninterrupted run, bit for bit.

For every engine a run is interrupted for real, as a user or a machine would do it: Ctrl-C
(SIGINT, also in a process that started with SIGINT ignored, as a background job of a
non-interactive shell does) and SIGKILL at a seeded random moment. Resuming from what is on
disk must give the same per-step losses and learning rates (compared as floats), the same final
weights, Adam moments and gradients, and the same printed samples as a run that never stopped.
The ablation flags and chapter-7 options resume exactly too.

--steps is part of the schedule (lr_t depends on it), so a run cannot be "stopped" by giving it
fewer steps; every stop here is an interruption of the full run. (A larger --steps trains a
finished run further, as a new stage: test_checkpoint.py.)

The runs log matrix statistics every few steps (`--stats-every N`): they are part of what a
resumed run must reproduce. (The default, auto, thins them by timing, which no two runs share.)
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    NAMES,
    ROOT,
    SMALL_FLAGS,
    engine_params,
    final_state,
    requires_torch,
    run_cli_interrupted,
    run_cli_ok,
    run_headers,
    samples_of,
    trajectory,
    whole_checkpoint_step,
)

import microgpt.run
from microgpt.checkpoint import load_checkpoint
from microgpt.data import load_docs
from microgpt.metrics import read_metrics

# Per engine: a run long enough to interrupt in the middle, short enough to run in seconds.
# (model and data flags, --steps, --checkpoint-every, steps logged before the interruption)
RUNS = {
    "scalar": (SMALL_FLAGS, 30, 6, 3),
    "numpy": (["--n-layer", "2", "--n-embd", "32", "--block-size", "32"], 2000, 50, 60),
    "torch": ([], 400, 25, 20),
}
DEFAULT_RUN = ([], 400, 25, 20)  # an engine added to the registry: the torch engine's run to start with


def run_of(engine: str) -> tuple[list[str], int, int, int]:
    return RUNS.get(engine, DEFAULT_RUN)


def train_args(engine: str, out: Path, metrics: Path) -> list[str]:
    flags, steps, every, _ = run_of(engine)
    return ["train", "--data", str(NAMES), "--engine", engine, *flags, "--steps", str(steps), "--out", str(out),
            "--checkpoint-every", str(every), "--metrics", str(metrics), "--num-samples", "5", "--quiet",
            "--stats-every", "7"]


def start(args: list[str], ignore_sigint: bool = False) -> subprocess.Popen:
    """`python -m microgpt ARGS` in the background, no terminal, stdin closed, as CI runs it."""
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([sys.executable, "-m", "microgpt", *map(str, args)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


@pytest.fixture
def ck(tmp_path) -> Path:
    """The checkpoint folder of the run under test."""
    return tmp_path / "ck"


@pytest.fixture
def metrics(tmp_path) -> Path:
    """The metrics file of the run under test."""
    return tmp_path / "m.jsonl"


def start_and_wait(engine: str, ck: Path, metrics: Path, step: int, ignore_sigint: bool = False) -> subprocess.Popen:
    """The engine's run started in the background, returned once its metrics file shows `step`."""
    proc = start(train_args(engine, ck, metrics), ignore_sigint=ignore_sigint)
    wait_for_step(proc, metrics, step)
    return proc


def steps_logged(metrics: Path) -> list[dict]:
    """The step records of a metrics file; a line cut short by a kill is not a record."""
    if not metrics.exists():
        return []
    records = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "step":
            records.append(record)
    return records


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 120.0) -> int:
    """Poll the metrics file until it shows `step` (or later); the last step it shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = steps_logged(metrics)
        if records and records[-1]["step"] >= step:
            return records[-1]["step"]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before step {step}: "
                                 f"{proc.stderr.read()}")
        time.sleep(0.001)
    proc.kill()
    raise AssertionError(f"no step {step} after {timeout} s")


def assert_same_run(ck: Path, metrics: Path, stdout: str, reference: dict) -> None:
    """Bit for bit the uninterrupted run: every step's numbers, final state, samples; and one run in the
    metrics file, its later headers those of its resumes."""
    got = trajectory(metrics)
    assert [r["step"] for r in got] == list(range(1, len(reference["trajectory"]) + 1))
    assert got == reference["trajectory"]  # floats compared with ==
    headers = run_headers(metrics)
    assert len({h["run_id"] for h in headers}) == 1
    assert "resumed_from" not in headers[0] and all("resumed_from" in h for h in headers[1:])
    assert read_metrics(metrics).losses == [r["loss"] for r in reference["trajectory"]]
    state, expected = final_state(ck), reference["state"]
    assert state.keys() == expected.keys()
    for name in expected:
        assert np.array_equal(state[name], expected[name]), name
    assert load_checkpoint(ck).step == reference["steps"]
    assert samples_of(stdout) == reference["samples"]


def finished_run(ck: Path, metrics: Path, stdout: str, steps: int) -> dict:
    """What a run that finished left, as assert_same_run compares it."""
    return {"trajectory": trajectory(metrics), "state": final_state(ck), "samples": samples_of(stdout), "steps": steps}


def assert_resume_finishes_the_run(ck: Path, metrics: Path, reference: dict) -> None:
    """`train --resume` in this process: it succeeds, and the run is then the uninterrupted one."""
    out = run_cli_ok("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert_same_run(ck, metrics, out, reference)


def assert_resumed_process_finishes_the_run(ck: Path, metrics: Path, saved: int, reference: dict) -> None:
    """`python -m microgpt train --resume`: it continues from step `saved` and ends as the uninterrupted run."""
    proc = start(["train", "--resume", str(ck), "--metrics", str(metrics), "--quiet"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resuming from step {saved} of {reference['steps']}" in stdout
    assert_same_run(ck, metrics, stdout, reference)


def assert_no_leftovers(ck: Path, steps: int) -> None:
    """The run folder holds the last checkpoint and its snapshots, nothing a kill or an old step left."""
    assert sorted(p.name for p in ck.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.json", "snapshots", f"state-{steps:07d}.safetensors"]
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith(".")) == [".lock"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted runs, one per engine, computed when first needed."""
    cache: dict[str, dict] = {}

    def get(engine: str) -> dict:
        if engine not in cache:
            folder = tmp_path_factory.mktemp(f"reference-{engine}")
            ck, metrics = folder / "ck", folder / "m.jsonl"
            out = run_cli_ok(*train_args(engine, ck, metrics))
            cache[engine] = finished_run(ck, metrics, out, run_of(engine)[1])
            assert any("stats" in r for r in cache[engine]["trajectory"])
            assert len(cache[engine]["samples"]) == 5
        return cache[engine]

    return get


# --- (a) Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint", "sigint-ignored-at-start"])
@pytest.mark.parametrize("engine", engine_params())
def test_sigint_checkpoints_and_resume_is_exact(ck, metrics, reference, engine, ignore_sigint):
    _, steps, every, wait_steps = run_of(engine)
    proc = start_and_wait(engine, ck, metrics, wait_steps, ignore_sigint=ignore_sigint)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"--resume {ck}" in stderr
    assert samples_of(stdout) == []  # stopped before the samples
    stopped = steps_logged(metrics)[-1]["step"]
    assert wait_steps <= stopped < steps
    # Ctrl-C finishes the step under way and checkpoints exactly there, even between two --checkpoint-every.
    assert whole_checkpoint_step(ck, engine) == stopped
    assert f"saving a checkpoint at step {stopped}..." in stderr  # said at once, then done
    assert f"step {stopped} of {steps}" in stderr

    assert_resumed_process_finishes_the_run(ck, metrics, stopped, reference(engine))


# --- (b) SIGKILL at a random moment ------------------------------------------------------------------


def kills() -> list:
    """Each engine once; the default engine, the fastest at reaching a random moment, three times."""
    return [pytest.param(p.values[0], seed, marks=p.marks, id=f"{p.values[0]}-{seed}") for p in engine_params()
            for seed in ((1, 2, 3) if p.values[0] == "numpy" else (1,))]


def kill_moment(seed: int, steps: int, every: int) -> tuple[int, float]:
    """A seeded random moment: the step to wait for, past the first checkpoint and before the middle of the
    run, and a delay after it of a random fraction of a step or two."""
    rnd = random.Random(seed)
    return rnd.randrange(every + 1, steps // 2), rnd.uniform(0.0, 0.004)


@pytest.mark.parametrize("engine,seed", kills())
def test_sigkill_leaves_a_checkpoint_that_resumes_exactly(ck, metrics, reference, engine, seed):
    _, steps, every, _ = run_of(engine)
    target, delay = kill_moment(seed, steps, every)
    proc = start_and_wait(engine, ck, metrics, target)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    last = steps_logged(metrics)[-1]["step"]
    assert last < steps, "the run finished before the kill: make it longer"
    saved = whole_checkpoint_step(ck, engine)
    assert last - every <= saved <= last
    assert saved % every == 0

    # The killed run's metrics after the checkpoint are dropped and written again by the resumed run.
    assert_resumed_process_finishes_the_run(ck, metrics, saved, reference(engine))
    # Whatever the kill cut short (temporary files, a state file not yet named) is gone after the resume.
    assert_no_leftovers(ck, steps)


def test_a_checkpoint_is_never_ahead_of_the_metrics_file(ck, metrics, monkeypatch):
    """A kill may fall between logging a step and writing its checkpoint. The step must be logged
    first: a metrics file a step ahead is trimmed by the resume, but a checkpoint ahead of its
    metrics would leave a step that no run ever logs."""
    written = []
    real_save = microgpt.run.save_checkpoint

    def save_and_look(path, state, step, meta):
        written.append((step, steps_logged(metrics)[-1]["step"]))
        return real_save(path, state, step, meta)

    monkeypatch.setattr(microgpt.run, "save_checkpoint", save_and_look)
    run_cli_ok("train", "--engine", "numpy", "--n-embd", "8", "--n-head", "2", "--steps", "12",
               "--checkpoint-every", "5", "--out", ck, "--metrics", metrics, "--num-samples", "0", "--quiet")
    assert written == [(5, 5), (10, 10), (12, 12)]


# --- (c) every training option resumes exactly -----------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "names300.txt"
    path.write_text("\n".join(load_docs(NAMES)[:300]) + "\n", encoding="utf-8")
    return path


OPTIONS = {
    "sgd": ["--optimizer", "sgd", "--lr", "0.5"],
    "no-bias-correction": ["--no-bias-correction"],
    "no-zero-grad": ["--no-zero-grad"],  # the gradients themselves carry over between steps
    "zero-grad-before": ["--zero-grad-before"],
    "cosine-warmup": ["--lr-schedule", "cosine", "--warmup-steps", "7"],
    "constant": ["--lr-schedule", "constant"],
    "batch-2": ["--batch-size", "2"],
    "validation": ["--val-fraction", "0.2", "--eval-every", "3"],
    "model-and-adam": ["--n-layer", "2", "--n-head", "2", "--init-std", "0.05", "--beta1", "0.9",
                       "--beta2", "0.95", "--eps", "1e-6", "--seed", "7"],
    "sampling": ["--temperature", "0.8", "--top-k", "4"],
    "clip-decay-min-lr": ["--grad-clip", "0.5", "--weight-decay", "0.1", "--min-lr", "0.002"],
    "samples-during-training": ["--sample-every", "4"],  # drawn from a generator of their own
    "stats-every-step": ["--stats-every", "1"],
}


@pytest.mark.parametrize("stop", [10, 13], ids=["at-a-checkpoint", "between-checkpoints"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_resumes_exactly(tmp_path, ck, metrics, small_data, option, stop):
    steps, every = 24, 5
    args = ["train", "--data", small_data, "--engine", "numpy", "--stats-every", 3, *OPTIONS[option],
            "--steps", steps, "--checkpoint-every", every, "--num-samples", 5, "--quiet"]
    ref_ck, ref_metrics = tmp_path / "ref", tmp_path / "ref.jsonl"
    ref_out = run_cli_ok(*args, "--out", ref_ck, "--metrics", ref_metrics)
    reference = finished_run(ref_ck, ref_metrics, ref_out, steps)
    if option == "validation":
        assert [r["step"] for r in reference["trajectory"] if "val_loss" in r] == [3, 6, 9, 12, 15, 18, 21, 24]
    if option == "samples-during-training":
        assert [r["step"] for r in reference["trajectory"] if "samples" in r] == [4, 8, 12, 16, 20, 24]

    out, err = run_cli_interrupted(*args, "--out", ck, "--metrics", metrics, step=stop)
    assert f"--resume {ck}" in err and samples_of(out) == []
    assert f"saving a checkpoint at step {stop}..." in err
    assert load_checkpoint(ck).step == stop
    assert [r["step"] for r in steps_logged(metrics)] == list(range(1, stop + 1))

    assert_resume_finishes_the_run(ck, metrics, reference)


@pytest.mark.parametrize("engine", engine_params())
def test_resume_twice_and_from_the_final_checkpoint(ck, metrics, reference, engine):
    """Two interruptions in one run, then a resume of a finished run: still the same run."""
    flags, steps, every, _ = run_of(engine)
    stops = [every + 1, 2 * every + 3] if engine == "scalar" else [7, 31]
    run_cli_interrupted(*train_args(engine, ck, metrics), step=stops[0])
    run_cli_interrupted("train", "--resume", ck, "--metrics", metrics, "--quiet", step=stops[1])
    assert load_checkpoint(ck).step == stops[1]
    assert_resume_finishes_the_run(ck, metrics, reference(engine))
    # The finished run resumed: nothing left to train, the same samples again.
    assert_resume_finishes_the_run(ck, metrics, reference(engine))


# --- what the interrupted run tells the user to do ------------------------------------------------


def test_the_printed_resume_command_continues_the_metrics(ck, metrics, reference):
    """Ctrl-C prints the command to continue; run exactly as printed, it completes the metrics file."""
    _, err = run_cli_interrupted(*train_args("numpy", ck, metrics), step=9)
    command = err.split("Resume with: ", 1)[1].split()
    assert command[:2] == ["microgpt", "train"]
    out = run_cli_ok(*command[1:], "--quiet")
    assert_same_run(ck, metrics, out, reference("numpy"))


@requires_torch
@pytest.mark.parametrize("flags", [["--dtype", "float32"], [*SMALL_FLAGS, "--dropout", "0.2"]],
                         ids=["float32", "dropout"])
def test_torch_options_resume_exactly(tmp_path, ck, metrics, flags):
    """The torch engine's --dtype decides every number computed, and dropout draws its masks from a
    generator of its own: a resumed run keeps both."""
    args = ["train", "--engine", "torch", *flags, "--steps", 16, "--checkpoint-every", 4, "--num-samples", 3,
            "--quiet", "--stats-every", 5]
    ref_out = run_cli_ok(*args, "--out", tmp_path / "ref", "--metrics", tmp_path / "ref.jsonl")
    reference = finished_run(tmp_path / "ref", tmp_path / "ref.jsonl", ref_out, 16)
    run_cli_interrupted(*args, "--out", ck, "--metrics", metrics, step=6)
    assert_resume_finishes_the_run(ck, metrics, reference)


def test_resume_clears_what_a_kill_left_half_written(ck, metrics, reference):
    """A kill during a checkpoint write leaves a temporary file (or a state file checkpoint.json does not
    name yet); the next checkpoint removes them, so repeated kills do not fill the disk."""
    run_cli_interrupted(*train_args("numpy", ck, metrics), step=12)
    leftovers = [".state-0000013.safetensors.a1b2c3.tmp", ".checkpoint.json.d4e5f6.tmp", "state-0000013.safetensors"]
    for name in leftovers:
        (ck / name).write_bytes(b"cut short")
    assert_resume_finishes_the_run(ck, metrics, reference("numpy"))
    assert_no_leftovers(ck, 2000)
