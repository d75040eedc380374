"""The train command's run object (`microgpt.run.TrainingRun`): where its metrics go, what they hold
beside the losses, the snapshots it keeps, and how it reads.

The oracles: the weights the run kept at each step (its snapshots) and a fresh engine's
gradient at those weights for the matrix statistics; the book's sampling from a generator
seeded as the run says for the samples drawn during training; the source of run.py, read as a
syntax tree.
"""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SMALL,
    SMALL_FLAGS,
    assert_one_line_error,
    run_cli,
    run_cli_interrupted,
    run_headers,
    run_module,
    samples_of,
    start_run,
    step_records,
    trajectory,
)

import microgpt.run
from microgpt.checkpoint import load_checkpoint
from microgpt.config import Config
from microgpt.data import derived_rng
from microgpt.engines import create_engine
from microgpt.metrics import list_runs, read_metrics
from microgpt.sample import sample

RUN_PY = Path(microgpt.run.__file__)


def test_run_py_keeps_its_state_on_the_run_object_not_in_closures():
    tree = ast.parse(RUN_PY.read_text(encoding="utf-8"))
    found = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Nonlocal)]
    assert found == [], f"run.py uses nonlocal on lines {found}: keep the state on TrainingRun"
    assert any(isinstance(node, ast.ClassDef) and node.name == "TrainingRun" for node in tree.body)


def test_the_nonlocal_scan_sees_one(tmp_path):
    source = "def f():\n    x = 0\n    def g():\n        nonlocal x\n        x += 1\n    g()\n"
    assert [n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Nonlocal)] == [4]


# --- where the metrics go ---------------------------------------------------------------------------


def test_out_without_metrics_logs_into_the_run_folder_and_a_resume_goes_on_there(tmp_path):
    def args(out: Path) -> list:
        return ["train", *SMALL_FLAGS, "--steps", 8, "--out", out, "--checkpoint-every", 4, "--quiet",
                "--num-samples", 0, "--stats-every", "off"]

    ck = tmp_path / "ck"
    rc, _, err = run_cli(*args(ck))
    assert rc == 0, err
    assert load_checkpoint(ck).meta["metrics"] == "metrics.jsonl"
    reference = trajectory(ck / "metrics.jsonl")
    assert [r["step"] for r in reference] == list(range(1, 9))

    other = tmp_path / "again"
    _, err = run_cli_interrupted(*args(other), step=3)
    assert "--metrics" not in err.split("Resume with: ", 1)[1]  # the folder's own file needs no flag
    rc, _, err = run_cli("train", "--resume", other, "--quiet")
    assert rc == 0, err
    assert trajectory(other / "metrics.jsonl") == reference
    assert [h.get("resumed_from") for h in run_headers(other / "metrics.jsonl")] == [None, 3]


def test_metrics_appends_runs_and_each_reads_back_alone(tmp_path):
    metrics = tmp_path / "m.jsonl"
    for seed in (1, 2):
        rc, _, err = run_cli("train", *SMALL_FLAGS, "--steps", 4, "--seed", seed, "--metrics", metrics, "--quiet",
                             "--num-samples", 0)
        assert rc == 0, err
    runs = list_runs(metrics)
    assert [r.steps for r in runs] == [4, 4] and runs[0].run_id != runs[1].run_id
    losses = [read_metrics(metrics, run=i).losses for i in (1, 2)]
    records = step_records(metrics)
    assert losses == [[r["loss"] for r in records[:4]], [r["loss"] for r in records[4:]]]
    assert read_metrics(metrics).losses == losses[1]  # the last run by default
    assert losses[0] != losses[1]


# --- matrix statistics ------------------------------------------------------------------------------


def norm(x) -> float:
    return math.sqrt(float(np.sum(np.asarray(x, dtype=np.float64) ** 2)))


def test_matrix_statistics_are_the_norms_of_the_step(tmp_path):
    """Per matrix: the step's gradient norm, the weights' norm after it, the update's norm, their ratio.
    Checked against the snapshots of every step and a fresh engine's gradient at the weights before."""
    ck = tmp_path / "ck"
    rc, _, err = run_cli("train", *SMALL_FLAGS, "--steps", 3, "--out", ck, "--checkpoint-every", 1,
                         "--keep-snapshots", "all", "--stats-every", 1, "--quiet", "--num-samples", 0)
    assert rc == 0, err
    checkpoint = load_checkpoint(ck)
    config = checkpoint.config
    shapes = create_engine("numpy", config, 27, random.Random(0)).shapes
    weights = [checkpoint.snapshot(step, shapes) for step in range(4)]
    _, data, _ = start_run("numpy", Config(**SMALL, num_steps=3))
    records = step_records(ck / "metrics.jsonl")
    for step, record in enumerate(records):
        fresh = create_engine("numpy", config, 27, random.Random(0))
        fresh.load_state_dict(weights[step])
        fresh.forward(data.examples(step))
        fresh.backward()
        grads = fresh.optimizer_state()["grad"]
        assert list(record["stats"]) == list(shapes)
        for name in shapes:
            g, w, u, ratio = record["stats"][name]
            assert g == pytest.approx(norm(grads[name]), rel=1e-12), (step, name)
            assert w == pytest.approx(norm(weights[step + 1][name]), rel=1e-12), (step, name)
            assert u == pytest.approx(norm(weights[step][name] - weights[step + 1][name]), rel=1e-9), (step, name)
            assert ratio == pytest.approx(u / w, rel=1e-12)


@pytest.mark.parametrize("flag, steps_with_stats", [(["--stats-every", "off"], []), (["--stats-every", "2"], [2, 4]),
                                                    ([], [1, 2, 3, 4])])
def test_stats_every(tmp_path, flag, steps_with_stats):
    """Off, every N steps, or (the default, with a metrics file) every step while they are cheap: the
    first steps always have them."""
    metrics = tmp_path / "m.jsonl"
    rc, _, err = run_cli("train", *SMALL_FLAGS, "--steps", 4, "--metrics", metrics, *flag, "--quiet",
                         "--num-samples", 0)
    assert rc == 0, err
    records = step_records(metrics)
    if flag:
        assert [r["step"] for r in records if "stats" in r] == steps_with_stats
    else:
        assert all("stats" in r for r in records[:3])
    assert [r["loss"] for r in records] == read_metrics(metrics).losses


def test_stats_do_not_change_the_run(tmp_path):
    runs = []
    for flag in ("off", "1"):
        metrics = tmp_path / f"m-{flag}.jsonl"
        rc, out, err = run_cli("train", *SMALL_FLAGS, "--steps", 6, "--metrics", metrics, "--stats-every", flag,
                               "--quiet", "--num-samples", 3)
        assert rc == 0, err
        runs.append(([(r["loss"], r["lr"]) for r in step_records(metrics)], samples_of(out)))
    assert runs[0] == runs[1]


# --- samples during training ------------------------------------------------------------------------


def test_samples_during_training_come_from_a_generator_of_their_own(tmp_path):
    ck = tmp_path / "ck"
    rc, out, err = run_cli("train", *SMALL_FLAGS, "--steps", 6, "--out", ck, "--checkpoint-every", 3,
                           "--keep-snapshots", "all", "--sample-every", 3, "--stats-every", "off", "--quiet",
                           "--num-samples", 4)
    assert rc == 0, err
    records = step_records(ck / "metrics.jsonl")
    drawn = {r["step"]: r["samples"] for r in records if "samples" in r}
    assert list(drawn) == [3, 6]
    # The book's sampling, at the weights of those steps, from the generator seeded for samples.
    checkpoint = load_checkpoint(ck)
    config = checkpoint.config
    engine, data, _ = start_run("numpy", Config(**SMALL, num_steps=6))
    rng = derived_rng(config.seed, "samples")
    for step, samples in drawn.items():
        engine.load_state_dict(checkpoint.snapshot(step, engine.shapes))
        assert samples == [sample(engine, data.tokenizer, rng, config.temperature) for _ in range(5)], step
    # The run itself is unchanged: the same losses and final samples as without them.
    plain = tmp_path / "plain.jsonl"
    rc, out_plain, err = run_cli("train", *SMALL_FLAGS, "--steps", 6, "--metrics", plain, "--stats-every", "off",
                                 "--quiet", "--num-samples", 4)
    assert rc == 0, err
    assert [r["loss"] for r in step_records(plain)] == [r["loss"] for r in records]
    assert samples_of(out_plain) == samples_of(out)


# --- snapshots --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep, steps", [("all", [0, 2, 4, 6, 8, 10]), ("none", []), ("2", [0, 10]),
                                         ("3", [0, 4, 10]), ("1", [10]), ("auto", [0, 2, 4, 6, 8, 10])])
def test_keep_snapshots(tmp_path, keep, steps):
    """Step 0 and the checkpoint steps, or an evenly spaced subset that always ends at the last step."""
    ck = tmp_path / "ck"
    rc, _, err = run_cli("train", *SMALL_FLAGS, "--steps", 10, "--out", ck, "--checkpoint-every", 2,
                         "--keep-snapshots", keep, "--quiet", "--num-samples", 0)
    assert rc == 0, err
    assert load_checkpoint(ck).snapshot_steps() == steps


def test_a_run_folder_holds_one_run_at_a_time(tmp_path):
    from microgpt.guard import FolderLock

    ck = tmp_path / "ck"
    ck.mkdir()
    with FolderLock(ck):
        proc = run_module("train", *SMALL_FLAGS, "--steps", 2, "--out", ck, "--quiet")
    assert_one_line_error(proc, str(ck), "in use by a training run")
    assert not (ck / "checkpoint.json").exists()


def test_interrupting_a_run_without_out_says_nothing_is_saved():
    out, err = run_cli_interrupted("train", *SMALL_FLAGS, "--steps", 5, "--quiet", step=2)
    assert "stopping at step 2; nothing is saved without --out" in err
    assert "interrupted at step 2 of 5; nothing saved (pass --out DIR" in err
    assert samples_of(out) == []
