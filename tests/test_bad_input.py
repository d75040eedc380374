"""What a new user gets wrong, and what `microgpt train` answers.

Every mistake ends the process with exit status 2 and exactly one line on stderr that names the
problem and the fix, never a traceback. A run that diverges exits 1 with one line naming the
step and the flag to change, and keeps its last good checkpoint. Each case runs as a real
process, since exit statuses and stderr are what the user sees.
"""

from __future__ import annotations

import math
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    NAMES,
    assert_one_line_error,
    closed_port,
    engine_marks,
    restored,
    run_cli,
    run_module,
    step_records,
)

from microgpt.checkpoint import load_checkpoint
from microgpt.engines import ENGINES

# Quick settings for the cases that do train.
QUICK = ["--steps", "2", "--num-samples", "1", "--quiet"]


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


@pytest.mark.parametrize("value", [0, -1, 0.001])
def test_temperature_must_be_at_least_a_hundredth(names_few, value):
    line = assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--temperature", value),
                                 "--temperature", "at least 0.01")
    assert "0.5" in line  # names a value that works


def test_negative_seed_is_refused_not_folded(names_few):
    """Python seeds from |seed|, so --seed -1 would silently be the run of seed 1."""
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--seed", -1), "--seed", "-1")


@pytest.mark.parametrize("flag,value", [("--grad-clip", -1), ("--weight-decay", -0.1), ("--min-lr", -0.001),
                                        ("--dropout", 1), ("--eval-windows", 0)])
def test_beyond_the_book_options_are_checked(names_few, flag, value):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, flag, value), flag)


def test_min_lr_above_lr(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--min-lr", 0.1), "--min-lr", "--lr")


@pytest.mark.parametrize("flag,value", [("--sample-every", -1), ("--stats-every", 0), ("--stats-every", "often"),
                                        ("--keep-snapshots", "some")])
def test_run_flags_are_checked(names_few, tmp_path, flag, value):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--out", tmp_path / "ck",
                                     "--metrics", tmp_path / "m.jsonl", flag, value), flag)


def test_an_engine_option_of_another_engine(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--engine", "numpy", "--dtype", "float32"),
                          "--dtype", "--engine torch")


def test_dropout_on_the_book_engine(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, *QUICK, "--engine", "scalar", "--dropout", 0.1),
                          "--dropout", "scalar")


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
    assert len(ENGINES) >= 3
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


def test_an_unreachable_data_url_names_it_and_the_way_out(tmp_path):
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["MICROGPT_CACHE"] = str(cache)
    url = f"http://127.0.0.1:{closed_port()}/names.txt"
    line = assert_one_line_error(run_module("train", "--data", url, *QUICK, env=env), url, "--data FILE")
    assert "cannot download" in line
    assert not cache.exists() or list(cache.iterdir()) == []


def test_sha256_of_another_file(names_few):
    assert_one_line_error(run_module("train", "--data", names_few, "--sha256", "0" * 64, *QUICK), str(names_few),
                          "--sha256")


def test_sha256_without_data(names_few):
    assert_one_line_error(run_module("train", "--sha256", "0" * 64, *QUICK), "--sha256", "--data URL")


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
    assert [r["step"] for r in step_records(metrics)] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in step_records(metrics))


# --- a run that diverges -------------------------------------------------------------------------


DIVERGING = [pytest.param(engine, "50", marks=engine_marks(engine), id=f"{engine}-lr50") for engine in ENGINES] + [
    pytest.param("numpy", "1e306", id="numpy-lr1e306")]


@pytest.mark.parametrize("engine,lr", DIVERGING)
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

    logged = step_records(metrics)
    assert [r["step"] for r in logged] == list(range(1, step))  # every step before the diverged one
    assert all(math.isfinite(r["loss"]) for r in logged)
    checkpoint = load_checkpoint(ck)
    assert checkpoint.step == step - 1 >= 1
    assert f"step {checkpoint.step}" in lines[0] and str(ck) in lines[0]
    fresh = restored(checkpoint, engine)
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
