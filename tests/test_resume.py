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
    interrupt_after,
    requires_torch,
    run_cli,
    run_headers,
    samples_of,
    trajectory,
)

import microgpt.run
from microgpt.checkpoint import load_checkpoint
from microgpt.data import load_docs
from microgpt.engines import create_engine
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


def assert_no_leftovers(ck: Path, steps: int) -> None:
    """The run folder holds the last checkpoint and its snapshots, nothing a kill or an old step left."""
    assert sorted(p.name for p in ck.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.json", "snapshots", f"state-{steps:07d}.safetensors"]
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith(".")) == [".lock"]


def assert_whole_checkpoint(ck: Path, engine: str) -> int:
    """checkpoint.json parses, the state file matches its sha256, and an engine takes it; its step."""
    checkpoint = load_checkpoint(ck)
    fresh = create_engine(engine, checkpoint.config, len(checkpoint.vocab) + 1, random.Random(0))
    checkpoint.restore(fresh)  # verifies the sha256 and every shape
    fresh.close()
    return checkpoint.step


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted runs, one per engine, computed when first needed."""
    cache: dict[str, dict] = {}

    def get(engine: str) -> dict:
        if engine not in cache:
            folder = tmp_path_factory.mktemp(f"reference-{engine}")
            ck, metrics = folder / "ck", folder / "m.jsonl"
            rc, out, err = run_cli(*train_args(engine, ck, metrics))
            assert rc == 0, err
            cache[engine] = {"trajectory": trajectory(metrics), "state": final_state(ck), "samples": samples_of(out),
                             "steps": run_of(engine)[1]}
            assert any("stats" in r for r in cache[engine]["trajectory"])
            assert len(cache[engine]["samples"]) == 5
        return cache[engine]

    return get


# --- (a) Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint", "sigint-ignored-at-start"])
@pytest.mark.parametrize("engine", engine_params())
def test_sigint_checkpoints_and_resume_is_exact(tmp_path, reference, engine, ignore_sigint):
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    _, steps, every, wait_steps = run_of(engine)
    proc = start(train_args(engine, ck, metrics), ignore_sigint=ignore_sigint)
    wait_for_step(proc, metrics, wait_steps)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"--resume {ck}" in stderr
    assert samples_of(stdout) == []  # stopped before the samples
    stopped = steps_logged(metrics)[-1]["step"]
    assert wait_steps <= stopped < steps
    # Ctrl-C finishes the step under way and checkpoints exactly there, even between two --checkpoint-every.
    assert assert_whole_checkpoint(ck, engine) == stopped
    assert f"saving a checkpoint at step {stopped}..." in stderr  # said at once, then done
    assert f"step {stopped} of {steps}" in stderr

    proc = start(["train", "--resume", str(ck), "--metrics", str(metrics), "--quiet"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resuming from step {stopped} of {steps}" in stdout
    assert_same_run(ck, metrics, stdout, reference(engine))


# --- (b) SIGKILL at a random moment ------------------------------------------------------------------


def kills() -> list:
    """Each engine once; the default engine, the fastest at reaching a random moment, three times."""
    return [pytest.param(p.values[0], seed, marks=p.marks, id=f"{p.values[0]}-{seed}") for p in engine_params()
            for seed in ((1, 2, 3) if p.values[0] == "numpy" else (1,))]


@pytest.mark.parametrize("engine,seed", kills())
def test_sigkill_leaves_a_checkpoint_that_resumes_exactly(tmp_path, reference, engine, seed):
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    _, steps, every, _ = run_of(engine)
    rnd = random.Random(seed)
    # Past the first checkpoint, before the middle of the run; then a random fraction of a step or two.
    target = rnd.randrange(every + 1, steps // 2)
    delay = rnd.uniform(0.0, 0.004)
    proc = start(train_args(engine, ck, metrics))
    wait_for_step(proc, metrics, target)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    last = steps_logged(metrics)[-1]["step"]
    assert last < steps, "the run finished before the kill: make it longer"
    saved = assert_whole_checkpoint(ck, engine)
    assert last - every <= saved <= last
    assert saved % every == 0

    proc = start(["train", "--resume", str(ck), "--metrics", str(metrics), "--quiet"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resuming from step {saved} of {steps}" in stdout
    # The killed run's metrics after the checkpoint are dropped and written again by the resumed run.
    assert_same_run(ck, metrics, stdout, reference(engine))
    # Whatever the kill cut short (temporary files, a state file not yet named) is gone after the resume.
    assert_no_leftovers(ck, steps)


def test_a_checkpoint_is_never_ahead_of_the_metrics_file(tmp_path, monkeypatch):
    """A kill may fall between logging a step and writing its checkpoint. The step must be logged
    first: a metrics file a step ahead is trimmed by the resume, but a checkpoint ahead of its
    metrics would leave a step that no run ever logs."""
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    written = []
    real_save = microgpt.run.save_checkpoint

    def save_and_look(path, state, step, meta):
        written.append((step, steps_logged(metrics)[-1]["step"]))
        return real_save(path, state, step, meta)

    monkeypatch.setattr(microgpt.run, "save_checkpoint", save_and_look)
    rc, _, err = run_cli("train", "--engine", "numpy", "--n-embd", "8", "--n-head", "2",
                         "--steps", "12", "--checkpoint-every", "5", "--out", ck, "--metrics", metrics,
                         "--num-samples", "0", "--quiet")
    assert rc == 0, err
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
def test_every_option_resumes_exactly(tmp_path, small_data, option, stop):
    steps, every = 24, 5
    args = ["train", "--data", small_data, "--engine", "numpy", "--stats-every", 3, *OPTIONS[option],
            "--steps", steps, "--checkpoint-every", every, "--num-samples", 5, "--quiet"]
    ref_ck, ref_metrics = tmp_path / "ref", tmp_path / "ref.jsonl"
    rc, ref_out, err = run_cli(*args, "--out", ref_ck, "--metrics", ref_metrics)
    assert rc == 0, err
    reference = {"trajectory": trajectory(ref_metrics), "state": final_state(ref_ck), "samples": samples_of(ref_out),
                 "steps": steps}
    if option == "validation":
        assert [r["step"] for r in reference["trajectory"] if "val_loss" in r] == [3, 6, 9, 12, 15, 18, 21, 24]
    if option == "samples-during-training":
        assert [r["step"] for r in reference["trajectory"] if "samples" in r] == [4, 8, 12, 16, 20, 24]

    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    with interrupt_after(stop):
        rc, out, err = run_cli(*args, "--out", ck, "--metrics", metrics)
    assert rc == 130, err
    assert f"--resume {ck}" in err and samples_of(out) == []
    assert f"saving a checkpoint at step {stop}..." in err
    assert load_checkpoint(ck).step == stop
    assert [r["step"] for r in steps_logged(metrics)] == list(range(1, stop + 1))

    rc, out, err = run_cli("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert rc == 0, err
    assert_same_run(ck, metrics, out, reference)


@pytest.mark.parametrize("engine", engine_params())
def test_resume_twice_and_from_the_final_checkpoint(tmp_path, reference, engine):
    """Two interruptions in one run, then a resume of a finished run: still the same run."""
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    flags, steps, every, _ = run_of(engine)
    stops = [every + 1, 2 * every + 3] if engine == "scalar" else [7, 31]
    with interrupt_after(stops[0]):
        rc, _, err = run_cli(*train_args(engine, ck, metrics))
    assert rc == 130, err
    with interrupt_after(stops[1]):
        rc, _, err = run_cli("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert rc == 130, err
    assert load_checkpoint(ck).step == stops[1]
    rc, out, err = run_cli("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert rc == 0, err
    assert_same_run(ck, metrics, out, reference(engine))
    # The finished run resumed: nothing left to train, the same samples again.
    rc, out, err = run_cli("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert rc == 0, err
    assert_same_run(ck, metrics, out, reference(engine))


# --- what the interrupted run tells the user to do ------------------------------------------------


def test_the_printed_resume_command_continues_the_metrics(tmp_path, reference):
    """Ctrl-C prints the command to continue; run exactly as printed, it completes the metrics file."""
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    with interrupt_after(9):
        rc, _, err = run_cli(*train_args("numpy", ck, metrics))
    assert rc == 130, err
    command = err.split("Resume with: ", 1)[1].split()
    assert command[:2] == ["microgpt", "train"]
    rc, out, err = run_cli(*command[1:], "--quiet")
    assert rc == 0, err
    assert_same_run(ck, metrics, out, reference("numpy"))


@requires_torch
@pytest.mark.parametrize("flags", [["--dtype", "float32"], [*SMALL_FLAGS, "--dropout", "0.2"]],
                         ids=["float32", "dropout"])
def test_torch_options_resume_exactly(tmp_path, flags):
    """The torch engine's --dtype decides every number computed, and dropout draws its masks from a
    generator of its own: a resumed run keeps both."""
    args = ["train", "--engine", "torch", *flags, "--steps", 16, "--checkpoint-every", 4, "--num-samples", 3,
            "--quiet", "--stats-every", 5]
    rc, ref_out, err = run_cli(*args, "--out", tmp_path / "ref", "--metrics", tmp_path / "ref.jsonl")
    assert rc == 0, err
    reference = {"trajectory": trajectory(tmp_path / "ref.jsonl"), "state": final_state(tmp_path / "ref"),
                 "samples": samples_of(ref_out), "steps": 16}
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    with interrupt_after(6):
        rc, _, err = run_cli(*args, "--out", ck, "--metrics", metrics)
    assert rc == 130, err
    rc, out, err = run_cli("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert rc == 0, err
    assert_same_run(ck, metrics, out, reference)


def test_resume_clears_what_a_kill_left_half_written(tmp_path, reference):
    """A kill during a checkpoint write leaves a temporary file (or a state file checkpoint.json does not
    name yet); the next checkpoint removes them, so repeated kills do not fill the disk."""
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    with interrupt_after(12):
        rc, _, err = run_cli(*train_args("numpy", ck, metrics))
    assert rc == 130, err
    leftovers = [".state-0000013.safetensors.a1b2c3.tmp", ".checkpoint.json.d4e5f6.tmp", "state-0000013.safetensors"]
    for name in leftovers:
        (ck / name).write_bytes(b"cut short")
    rc, out, err = run_cli("train", "--resume", ck, "--metrics", metrics, "--quiet")
    assert rc == 0, err
    assert_same_run(ck, metrics, out, reference("numpy"))
    assert_no_leftovers(ck, 2000)
