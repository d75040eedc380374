"""The `microgpt train` command end to end: what it prints, the metrics file it writes, and the
chapter-7 flags (validation, warmup, batches) against references computed here from the book's
formulas and from the training loop called directly.

Most tests call `microgpt.cli.main` in-process; the ones about the real process (`python -m`,
what a pipe or a terminal receives) start a subprocess. Every engine's numbers through this
command are checked in test_parity.py; here the default engine stands for all of them.
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
import subprocess
import sys

import pytest
from conftest import (
    NAMES,
    ROOT,
    SMALL,
    SMALL_FLAGS,
    SPEC_FIRST_LOSSES,
    LossRecorder,
    run_cli,
    run_module,
    samples_of,
    start_run,
    trajectory,
    write_docs,
)

import microgpt
from microgpt.cli import COMMANDS, main
from microgpt.config import Config
from microgpt.data import load_docs
from microgpt.optim import learning_rate
from microgpt.train import mean_loss, train


def read_steps(path) -> tuple[dict, list[dict]]:
    """The run header and the step records of a metrics file that holds one run."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert records[0]["type"] == "run"
    assert all(r["type"] == "step" for r in records[1:])
    return records[0], records[1:]


def reference_losses(engine_name: str, config: Config, data=None) -> list[float]:
    """The per-step losses of the training loop called directly (no CLI)."""
    engine, dataset, _ = start_run(engine_name, config, data)
    recorder = LossRecorder()
    train(engine, dataset, config, on_step=recorder)
    engine.close()
    return recorder.losses


# --- help ----------------------------------------------------------------------------------


# The chapters each command's help must name: where a reader finds the idea in the book.
HELP_CHAPTERS = {"train": ["chapter 4", "chapter 5", "chapter 6", "chapter 7"], "sample": ["chapter 6"],
                 "eval": ["chapter 7"]}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_of_every_command_works_and_names_its_chapter(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith(f"usage: microgpt {command}")
    wanted = HELP_CHAPTERS.get(command)
    if wanted:
        for chapter in wanted:
            assert chapter in out.lower(), f"`microgpt {command} --help` does not mention {chapter}"
    else:
        assert re.search(r"chapter \d", out.lower()), f"`microgpt {command} --help` names no chapter"


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\b", out, re.M), command


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"microgpt {microgpt.__version__}"


def test_train_help_shows_the_book_defaults(capsys):
    """Each flag's default is the Config default, declared once."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    book = Config()
    for flag, value in (("--steps N training steps (5.1)", book.num_steps), ("--lr X", book.learning_rate),
                        ("--n-embd N", book.n_embd), ("--temperature X", book.temperature)):
        assert re.search(re.escape(flag) + r".*?\(default: " + re.escape(str(value)) + r"\)", out), flag
    assert "(5.6" in out and "5.7" in out and "5.8" in out  # section numbers of chapter 5


# --- the faithful run, as a process ----------------------------------------------------------


def test_train_help_as_a_user_runs_it():
    proc = run_module("train", "--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-300:]
    assert proc.stdout.startswith("usage: microgpt train")


def test_python_m_microgpt_train_prints_the_book_figures():
    """A pipe is not a terminal: plain lines only, no carriage returns or escape codes. The names
    dataset ships with the package: no --data, no network."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")  # any download would fail
    proc = run_module("train", "--steps", 3, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["num docs: 32033", "vocab size: 27", "num params: 4192"]
    samples = [line for line in lines if line.startswith("sample ")]
    assert [s[:11] for s in samples] == [f"sample {i:2d}: " for i in range(1, 21)]
    assert samples[0].startswith("sample  1: ")
    assert all(re.fullmatch(r"sample [ \d]\d: [a-z]*", s) for s in samples)
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    progress = [line for line in lines if line.startswith("step ")]
    assert progress and re.match(r"step +1 / +3 \| loss 3\.3660 ", progress[0])
    assert "Traceback" not in proc.stderr


def test_progress_on_a_terminal_redraws_one_line(tmp_path):
    """On a TTY the progress is a live bar redrawn with \\r; the figures stay plain lines."""
    main_fd, child_fd = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "microgpt", "train", "--data", str(NAMES), "--steps", "5",
                                 "--num-samples", "2"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=child_fd,
                                stderr=subprocess.PIPE)
        os.close(child_fd)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(main_fd)
    text = b"".join(chunks).decode()
    assert "\r[" in text and "step    5 /    5" in text
    assert "num docs: 32033" in text and "sample  2: " in text


# --- the metrics file ------------------------------------------------------------------------


def test_metrics_hold_the_losses_at_full_precision(tmp_path):
    steps = 4
    metrics = tmp_path / "m.jsonl"
    rc, out, err = run_cli("train", "--steps", steps, "--metrics", metrics, "--num-samples", 1)
    assert rc == 0, err
    header, records = read_steps(metrics)
    config = Config(num_steps=steps, num_samples=1).validate()
    assert header["engine"] == "numpy"  # the default
    assert header["config"] == config.to_dict()
    assert header["vocab_size"] == 27 and header["num_params"] == 4192 and header["num_docs"] == 32033
    assert header["data_format"] == "lines" and header["data"] == str(NAMES)
    assert re.fullmatch(r"[0-9a-f]{12}", header["run_id"])

    assert [r["step"] for r in records] == [1, 2, 3, 4]  # 1-based
    # json keeps a float exactly: the file holds the very numbers the training loop computes.
    assert [r["loss"] for r in records] == reference_losses("numpy", config)
    # SPEC section 8: the first two steps use the same lr as the 1000-step run, so their losses match it.
    assert [round(r["loss"], 4) for r in records[:2]] == SPEC_FIRST_LOSSES[:2]
    assert [r["lr"] for r in records] == [learning_rate(s, config) for s in range(steps)]
    assert [r["lr"] for r in records] == [0.01 * (1 - s / steps) for s in range(steps)]  # 5.7 by hand
    times = [r["time"] for r in records]
    assert times == sorted(times) and all(t >= 0 for t in times)
    assert all("val_loss" not in r for r in records)


def test_num_samples_zero_prints_no_samples():
    rc, out, err = run_cli("train", "--steps", 2, "--num-samples", 0)
    assert rc == 0, err
    assert "sample" not in out
    assert out.splitlines()[:3] == ["num docs: 32033", "vocab size: 27", "num params: 4192"]


def test_quiet_prints_figures_and_samples_but_no_progress():
    rc, out, err = run_cli("train", "--steps", 2, "--num-samples", 3, "--quiet")
    assert rc == 0, err
    assert not any(line.startswith("step ") for line in out.splitlines())
    assert sum(line.startswith("sample ") for line in out.splitlines()) == 3


def test_validation_loss_every_n_steps(tmp_path):
    """--val-fraction holds out the last fraction of the shuffled documents; val_loss on steps 5, 10
    and the last one is the mean per-token loss over them, recomputed here with engine.evaluate."""
    data = write_docs(tmp_path / "names.txt", load_docs(NAMES)[:40])
    metrics = tmp_path / "m.jsonl"
    rc, out, err = run_cli("train", "--data", data, *SMALL_FLAGS, "--steps", 12, "--val-fraction", 0.1,
                           "--eval-every", 5, "--metrics", metrics, "--num-samples", 0)
    assert rc == 0, err
    _, records = read_steps(metrics)
    assert [r["step"] for r in records if "val_loss" in r] == [5, 10, 12]

    config = Config(**SMALL, num_steps=12, val_fraction=0.1, eval_every=5)
    engine, dataset, _ = start_run("numpy", config, data)
    assert len(dataset.train_docs) == 36 and len(dataset.val_docs) == 4  # 10% of 40
    expected: dict[int, float] = {}

    class Validating(LossRecorder):
        def __call__(self, step: int, loss: float, lr: float) -> bool:
            if step + 1 in (5, 10, 12):
                total = count = 0.0
                for doc in dataset.val_docs:
                    tokens = dataset.tokenizer.example(doc)
                    n = min(config.block_size, len(tokens) - 1)
                    total += engine.evaluate(tokens) * n
                    count += n
                expected[step + 1] = total / count
                assert mean_loss(engine, dataset.val_examples()) == pytest.approx(expected[step + 1], rel=1e-15)
            return super().__call__(step, loss, lr)

    recorder = Validating()
    train(engine, dataset, config, on_step=recorder)
    assert [r["loss"] for r in records] == recorder.losses  # the loop trained on the 36 training documents only
    got = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert got.keys() == expected.keys()
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-12, abs=0)
    assert f"val loss: {expected[12]:.4f} (4 documents)" in out


def test_warmup_steps_ramp_the_learning_rate(tmp_path):
    metrics = tmp_path / "m.jsonl"
    rc, _, err = run_cli("train", "--steps", 10, "--warmup-steps", 4, "--metrics", metrics, "--num-samples", 0)
    assert rc == 0, err
    _, records = read_steps(metrics)
    # Warmup: lr * (s + 1) / 4 for s < 4; then linear decay over the remaining 6 steps.
    by_hand = [0.01 * (s + 1) / 4 for s in range(4)] + [0.01 * (1 - (s - 4) / 6) for s in range(4, 10)]
    assert [r["lr"] for r in records] == pytest.approx(by_hand, rel=1e-15)
    assert [r["lr"] for r in records][:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01], rel=1e-15)


def test_batch_size_two_averages_two_documents(tmp_path):
    """Step 1 of --batch-size 2 is the mean of the first two documents' losses at the initial weights."""
    metrics = tmp_path / "m.jsonl"
    rc, _, err = run_cli("train", *SMALL_FLAGS, "--steps", 3, "--batch-size", 2, "--metrics", metrics,
                         "--num-samples", 1)
    assert rc == 0, err
    _, records = read_steps(metrics)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records)

    fresh, dataset, _ = start_run("scalar", Config(**SMALL))  # the book engine as the reference
    first = [fresh.evaluate(dataset.tokenizer.example(doc)) for doc in dataset.docs[:2]]
    assert records[0]["loss"] == pytest.approx((first[0] + first[1]) / 2, rel=1e-12)
    assert records[0]["loss"] != pytest.approx(first[0], rel=1e-6)


def test_chapter7_and_beyond_defaults_leave_the_book_run_unchanged(tmp_path):
    plain, explicit = tmp_path / "plain.jsonl", tmp_path / "explicit.jsonl"
    rc, out_plain, err = run_cli("train", "--steps", 3, "--metrics", plain, "--num-samples", 5, "--stats-every", 1)
    assert rc == 0, err
    rc, out_explicit, err = run_cli("train", "--data", NAMES, "--steps", 3, "--metrics", explicit, "--stats-every", 1,
                                    "--num-samples", 5, "--val-fraction", 0, "--eval-every", 0, "--warmup-steps", 0,
                                    "--batch-size", 1, "--data-format", "lines", "--grad-clip", 0,
                                    "--weight-decay", 0, "--dropout", 0, "--min-lr", 0, "--top-k", 0)
    assert rc == 0, err
    computed = [trajectory(path) for path in (plain, explicit)]
    assert computed[0] == computed[1] and len(computed[0]) == 3
    assert samples_of(out_plain) == samples_of(out_explicit) and len(samples_of(out_plain)) == 5
