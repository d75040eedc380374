"""What a new user gets wrong, and what `microgpt train` answers.

Every mistake ends the process with exit status 2 and exactly one line on stderr that names the
problem and the fix, never a traceback. A run that diverges exits 1 with one line naming the
step and the flag to change, and keeps its last good checkpoint. Each case runs as a real
process, since exit statuses and stderr are what the user sees.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NAMES

from microgpt.checkpoint import load_checkpoint
from microgpt.cli import main
from microgpt.engines import create_engine

ROOT = Path(__file__).absolute().parents[1]
ENGINES = ["scalar", "numpy", "torch"]
# Quick settings for the cases that do train.
QUICK = ["--steps", "2", "--num-samples", "1", "--quiet"]


def run_module(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microgpt", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str, prefix: str = r"microgpt: error: ") -> str:
    """Exit status 2, exactly one line on stderr matching `prefix` (a regex) and naming `words`, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.match(prefix, lines[0]), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def names_few(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "few.txt"
    path.write_text("emma\nolivia\nava\nisabella\nsophia\n", encoding="utf-8")
    return path


# --- the model's shape and the loop's settings -------------------------------------------------


def test_n_embd_not_divisible_by_n_head_lists_the_valid_heads(names_few):
    line = assert_one_line_error(run_module("train", "--data", names_few, "--n-embd", 10, "--n-head", 4, *QUICK),
                                 "--n-head")
    divisors = [h for h in range(1, 11) if 10 % h == 0]  # 1, 2, 5, 10
    assert ", ".join(map(str, divisors)) in line


@pytest.mark.parametrize("flag", ["--n-layer", "--n-embd", "--n-head", "--block-size", "--steps", "--batch-size"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(names_few, flag, value):
    args = ["train", "--data", names_few, *QUICK, flag, value]
    assert_one_line_error(run_module(*args), flag, str(value))


@pytest.mark.parametrize("value", [0, -1])
def test_temperature_must_be_positive(names_few, value):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--temperature", value), "--temperature")


def test_val_fraction_above_one(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--val-fraction", 1.5), "--val-fraction")


def test_val_fraction_that_leaves_no_validation_documents(names_few):
    # 5 documents: 10% of them is none.
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--val-fraction", 0.1), "--val-fraction")


def test_checkpoint_every_zero(names_few, tmp_path):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--out", tmp_path / "ck",
                                     "--checkpoint-every", 0), "--checkpoint-every")


def test_out_is_a_file(names_few, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--out", target), "--out")


# --- argparse's own errors: still one line, no traceback ---------------------------------------


# argparse names the (sub)command whose parser refused the line: `microgpt train: error: ...`.
ARGPARSE_PREFIX = r"microgpt( train)?: error: "


def test_unknown_engine(names_few):
    line = assert_one_line_error(run_module("train", "--data", names_few, "--engine", "jax", *QUICK), "--engine",
                                 "'jax'", prefix=ARGPARSE_PREFIX)
    for name in ENGINES:
        assert name in line


def test_non_numeric_steps(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, "--steps", "ten"), "--steps", "'ten'",
                          prefix=ARGPARSE_PREFIX)


def test_unknown_flag(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, "--stepz", 3), "--stepz", prefix=ARGPARSE_PREFIX)


# --- the data file ------------------------------------------------------------------------------


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


DATA_FILES = {
    "missing": (lambda d: d / "nope.txt", ["does not exist", "--data"]),
    "empty": (lambda d: _write(d / "empty.txt", b""), ["no documents"]),
    "whitespace-only": (lambda d: _write(d / "blank.txt", b"  \n\t\n\r\n   \n"), ["no documents"]),
    "binary": (lambda d: _write(d / "data.bin", bytes(range(256)) * 4), ["binary"]),
    "not-utf8": (lambda d: _write(d / "latin1.txt", "zoë\nrené\n".encode("latin-1")), ["UTF-8"]),
    "folder": (lambda d: d, ["folder", "--data"]),
}


@pytest.mark.parametrize("case", list(DATA_FILES))
def test_bad_data_file(tmp_path, case):
    make, words = DATA_FILES[case]
    path = make(tmp_path)
    assert_one_line_error(run_module("train", "--data", path, *QUICK), str(path), *words)


def test_metrics_in_a_missing_folder(names_few, tmp_path):
    target = tmp_path / "no" / "such" / "m.jsonl"
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--metrics", target),
                          str(target.parent), "--metrics")
    assert not (tmp_path / "no").exists()


def test_offline_with_nothing_cached_names_the_cache_and_data_flag(tmp_path, names_few):
    cache = tmp_path / "cache"
    env = {**os.environ, "MICROGPT_CACHE": str(cache), "MICROGPT_NAMES_URL": "http://127.0.0.1:9/x"}
    line = assert_one_line_error(run_module("train", *QUICK, env=env), "--data")
    assert str(cache / "names.txt") in line
    assert not (cache / "names.txt").exists()


def test_a_document_longer_than_block_size_is_truncated_not_an_error(tmp_path):
    """Only the first block_size predictions of a long document count, as SPEC section 3 says."""
    data = tmp_path / "long.txt"
    long_doc = "abcdefghijklmnopqrstuvwxyz" * 2
    data.write_text(long_doc + "\nab\n", encoding="utf-8")
    metrics = tmp_path / "m.jsonl"
    proc = run_module("train", "--data", data, "--block-size", 8, "--steps", 2, "--num-samples", 2, "--metrics",
                      metrics, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "sample  2: " in proc.stdout
    assert all(math.isfinite(json.loads(line)["loss"]) for line in metrics.read_text().splitlines()[1:])


# --- a run that diverges -------------------------------------------------------------------------


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


DIVERGING = [(engine, "50") for engine in ENGINES] + [("numpy", "1e306")]


@pytest.mark.parametrize("engine,lr", DIVERGING, ids=[f"{e}-lr{lr}" for e, lr in DIVERGING])
def test_divergence_exits_1_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, engine, lr):
    """Plain SGD with lr 50 blows the loss up within a few steps on every engine; with lr 1e306 the
    first update already overflows the weights while the loss that step is still finite."""
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    proc = run_module("train", "--data", NAMES, "--engine", engine, "--optimizer", "sgd", "--lr", lr, "--steps", 50,
                      "--out", ck, "--checkpoint-every", 1, "--metrics", metrics, "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("microgpt: ")
    step = int(re.search(r"at step (\d+)", lines[0]).group(1))
    assert "lower --lr" in lines[0]
    assert "sample" not in proc.stdout

    logged = [json.loads(line) for line in metrics.read_text().splitlines()[1:]]
    assert [r["step"] for r in logged] == list(range(1, step))  # every step before the diverged one
    assert all(math.isfinite(r["loss"]) for r in logged)
    checkpoint = load_checkpoint(ck)
    assert checkpoint.step == step - 1 >= 1
    assert f"step {checkpoint.step}" in lines[0] and str(ck) in lines[0]
    fresh = create_engine(engine, checkpoint.config, len(checkpoint.vocab) + 1, random.Random(0))
    checkpoint.restore(fresh)
    # "Good": weights a run can continue from, so none of them infinite or NaN.
    bad = [name for name, w in fresh.state_dict().items() if not np.all(np.isfinite(np.asarray(w, dtype=float)))]
    assert bad == [], f"the checkpoint kept as the last good one has non-finite weights in {bad}"
    fresh.close()


def test_divergence_restores_the_sigint_handler():
    """`main` may be called from Python (a notebook, a test): a diverged run leaves no handler behind."""
    before = signal.getsignal(signal.SIGINT)
    rc, _, err = run_cli("train", "--data", NAMES, "--optimizer", "sgd", "--lr", 50, "--steps", 20, "--quiet")
    assert rc == 1 and "diverged" in err
    assert signal.getsignal(signal.SIGINT) is before
