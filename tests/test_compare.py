"""`microgpt compare`: labels are the training flags where runs differ, the table's numbers are the runs' own
and say what they average, a diverged run does not flatten the others, and FILE@N picks a run of a file."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli, write_synthetic_run
from test_plot import bad_metrics_files, direct_mean, write_plain

from microgpt import cli
from microgpt.cli import build_parser, config_overrides
from microgpt.compare import parse_run, run_labels
from microgpt.config import TRAJECTORY_FIELDS, Config
from microgpt.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def header(engine: str = "numpy", data: str = "/data/names.txt", vocab_size: int = 27, **config) -> dict:
    return {"engine": engine, "config": Config(**config).to_dict(), "data": data, "vocab_size": vocab_size}


def write_run(path: Path, head: dict, num_steps: int, seed: int, floor: float, step_time: float,
              val: bool = False) -> list[dict]:
    """A noisy loss curve levelling off at `floor`, with a validation loss at the last step if `val`."""
    return write_synthetic_run(path, head, num_steps, seed, floor, decay=100, step_time=step_time,
                               val_loss=lambda step: floor + 0.1 if val and step == num_steps else None)


def compare(capsys, *args) -> str:
    """`microgpt compare ARGS` in this process: it succeeds; what it printed."""
    assert cli.main(["compare", *map(str, args)]) == 0
    return capsys.readouterr().out


# --- labels --------------------------------------------------------------------------------------------------

def test_labels_are_the_flags_that_depart_from_the_common_settings():
    runs = [header(), header(optimizer="sgd"), header(lr_schedule="cosine", warmup_steps=100)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl", "c.jsonl"]) == [
        "baseline", "--optimizer sgd", "--lr-schedule cosine --warmup-steps 100"]
    assert run_labels([header(), header(optimizer="sgd", learning_rate=0.3)], ["a", "b"]) == [
        "baseline", "--lr 0.3 --optimizer sgd"]


def test_switches_are_written_as_the_flag_typed():
    names = ["a", "b", "c"]
    assert run_labels([header(), header(bias_correction=False)], names[:2]) == ["baseline", "--no-bias-correction"]
    assert run_labels([header(), header(zero_grad_before=True), header(zero_grad=False)], names) == [
        "baseline", "--zero-grad-before", "--no-zero-grad"]
    # The book's value has no flag to type, so it is never a label even where most runs switched away from it.
    runs = [header(bias_correction=False), header(bias_correction=False), header()]
    assert run_labels(runs, names) == ["--no-bias-correction (a)", "--no-bias-correction (b)", "baseline"]


@pytest.mark.parametrize("name", TRAJECTORY_FIELDS)
def test_each_label_typed_to_train_gives_the_runs_settings(name):
    """The oracle is train's own parser: the label's flags, typed, set what the run recorded."""
    field_default = Config().to_dict()[name]
    choices = {"optimizer": "sgd", "lr_schedule": "cosine", "data_format": "text"}
    if isinstance(field_default, bool):
        value = not field_default
    elif name in choices:
        value = choices[name]
    elif name == "val_fraction":
        value = 0.2
    elif isinstance(field_default, int):
        value = field_default + 3
    else:
        value = field_default * 3 if field_default else 0.25
    run = header(**{name: value})
    (label,) = run_labels([header(), run], ["a", "b"])[1:]
    args = build_parser("train").parse_args(["train", *label.split()])
    overrides = config_overrides(args)
    assert overrides[name] == value
    for key, typed in overrides.items():  # nothing else typed than what the run recorded
        recorded = run["config"][key]
        if key == "val_fraction" and recorded is None:
            recorded = 0.1 if run["config"]["data_format"] == "text" else 0.0  # the mode's default
        assert typed == recorded, (key, label)


def test_labels_break_a_tie_with_the_books_default():
    names = ["a.jsonl", "b.jsonl"]
    assert run_labels([header(), header(optimizer="sgd")], names) == ["baseline", "--optimizer sgd"]
    assert run_labels([header(optimizer="sgd"), header()], names) == ["--optimizer sgd", "baseline"]
    runs = [header(learning_rate=0.003), header(), header(learning_rate=0.03)]  # a sweep around the book's 0.01
    assert run_labels(runs, names + ["c.jsonl"]) == ["--lr 0.003", "baseline", "--lr 0.03"]


def test_labels_without_a_common_value_show_every_runs_own():
    runs = [header(learning_rate=0.02), header(learning_rate=0.03)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["--lr 0.02", "--lr 0.03"]
    runs = [header(engine="numpy"), header(engine="torch")]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["--engine numpy", "--engine torch"]
    runs = [header(data="/x/names.txt", vocab_size=27), header(data="/y/tinyshakespeare.txt", vocab_size=66)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["--data names.txt", "--data tinyshakespeare.txt"]


def test_labels_follow_the_majority_even_off_the_default():
    runs = [header(learning_rate=0.02, seed=1), header(learning_rate=0.02, seed=2), header(learning_rate=0.05, seed=1)]
    assert run_labels(runs, ["a", "b", "c"]) == ["baseline", "--seed 2", "--lr 0.05"]


def test_labels_of_identical_settings_are_the_names_given():
    assert run_labels([header(), header()], ["a.jsonl", "b.jsonl@2"]) == ["a.jsonl", "b.jsonl@2"]
    runs = [header(), header(), header(optimizer="sgd")]
    assert run_labels(runs, ["a.jsonl", "b.jsonl", "c.jsonl"]) == [
        "baseline (a.jsonl)", "baseline (b.jsonl)", "--optimizer sgd"]


def test_settings_that_only_change_sampling_or_logging_never_label_a_run():
    runs = [header(), header(num_samples=5, temperature=1.0, top_k=3, eval_every=10, eval_windows=50)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["a.jsonl", "b.jsonl"]
    runs = [header(), header(temperature=1.0, optimizer="sgd")]
    assert run_labels(runs, ["a", "b"]) == ["baseline", "--optimizer sgd"]


def test_labels_ignore_header_entries_that_do_not_shape_the_curve():
    a, b = header(), header()
    a.update(num_docs=100, started="2024-01-01T00:00:00"), b.update(num_docs=200, started="2024-01-02T00:00:00")
    b["config"]["optimizer"] = "sgd"
    assert run_labels([a, b], ["a", "b"]) == ["baseline", "--optimizer sgd"]


def test_a_field_an_older_file_lacks_counts_as_the_books_default():
    old, new = header(), header()
    del old["config"]["min_lr"], old["config"]["dropout"]
    assert run_labels([old, new], ["old", "new"]) == ["old", "new"]
    new["config"]["min_lr"] = 0.001
    assert run_labels([old, new], ["old", "new"]) == ["baseline", "--min-lr 0.001"]


# --- which run of which file ---------------------------------------------------------------------------------

def test_parse_run(tmp_path):
    assert parse_run("a.jsonl") == (Path("a.jsonl"), None)
    assert parse_run("runs/a.jsonl@2") == (Path("runs/a.jsonl"), 2)
    assert parse_run("x@y.jsonl") == (Path("x@y.jsonl"), None)
    odd = tmp_path / "odd@3"  # a file whose own name ends in @N is that file
    odd.write_text("")
    assert parse_run(str(odd)) == (odd, None)
    with pytest.raises(UserError, match="numbered from 1"):
        parse_run("a.jsonl@0")


def test_compare_runs_of_one_file(tmp_path, figures, capsys):
    path = tmp_path / "runs.jsonl"
    records = [write_run(path, header(learning_rate=lr), steps, seed, 2.3, 0.01)
               for lr, steps, seed in [(0.01, 120, 1), (0.02, 150, 2), (0.01, 110, 3)]]
    rows = parse_table(compare(capsys, f"{path}@1", f"{path}@2", path, "-o", tmp_path / "c.png"))
    # the last run is the default; runs 1 and 3 share their settings, so their names tell them apart
    assert list(rows) == ["baseline (runs.jsonl@1)", "--lr 0.02", "baseline (runs.jsonl@3)"]
    assert [int(row[0]) for row in rows.values()] == [len(r) for r in records]
    assert [float(row[1]) for row in rows.values()] == pytest.approx([r[-1]["loss"] for r in records], abs=5e-5)
    for argv, words in [([f"{path}@4", str(path)], [str(path), "holds 3 runs", f"{path}@N", "1 to 3"]),
                        ([f"{path}@0", str(path)], ["numbered from 1"])]:
        assert_one_line_error(run_cli("compare", *argv, "-o", tmp_path / "d.png"), *words)
    assert not (tmp_path / "d.png").exists()


# --- the compare command ---------------------------------------------------------------------------------------

def parse_table(out: str) -> dict[str, list[str]]:
    """Rows of the printed table by label; cells are separated by two or more spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("uniform", "wrote", "*", "diverged")):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def table_head(out: str) -> list[str]:
    return re.split(r"\s{2,}", next(line for line in out.splitlines() if line.startswith("run ")))


@pytest.fixture
def three_runs(tmp_path):
    specs = {"base.jsonl": (header(), 300, 1, 2.3, 0.01, True),
             "sgd.jsonl": (header(optimizer="sgd"), 300, 2, 2.6, 0.012, True),
             "cos.jsonl": (header(lr_schedule="cosine", warmup_steps=50), 250, 3, 2.35, 0.02, False)}
    records = {name: write_run(tmp_path / name, *spec) for name, spec in specs.items()}
    return tmp_path, records


def test_compare_table_holds_each_runs_figures(three_runs, capsys):
    tmp_path, records = three_runs
    paths = [str(tmp_path / n) for n in ("base.jsonl", "sgd.jsonl", "cos.jsonl")]
    out = tmp_path / "compare.png"
    printed = compare(capsys, *paths, "-o", out, "--window", 50)
    assert table_head(printed) == ["run", "steps", "final loss", "mean of last 50", "min loss", "val loss",
                                   "wall time"]
    rows = parse_table(printed)
    labels = {"base.jsonl": "baseline", "sgd.jsonl": "--optimizer sgd",
              "cos.jsonl": "--lr-schedule cosine --warmup-steps 50"}
    assert set(rows) == set(labels.values())
    for name, label in labels.items():
        steps, final, last_mean, low, val, wall = rows[label]
        losses = [r["loss"] for r in records[name]]
        assert int(steps) == len(losses)
        assert float(final) == pytest.approx(losses[-1], abs=5e-5)
        assert float(last_mean) == pytest.approx(sum(losses[-50:]) / 50, abs=5e-5)
        assert float(low) == pytest.approx(min(losses), abs=5e-5)
        assert val == ("-" if name == "cos.jsonl" else f"{records[name][-1]['val_loss']:.4f}")
        assert wall.endswith(" s") and float(wall[:-2]) == pytest.approx(records[name][-1]["time"], abs=0.051)
    assert f"uniform guess: ln(27) = {math.log(27):.4f}" in printed
    assert "*" not in printed and "diverged" not in printed

    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and struct.unpack(">II", data[16:24]) == (1200, 720)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.jsonl", "compare.png", "cos.jsonl", "sgd.jsonl"]


def test_the_table_says_when_a_mean_is_of_all_steps(tmp_path, capsys):
    short = {name: write_run(tmp_path / name, header(seed=seed), 40, seed, 2.3, 0.01)
             for name, seed in [("a.jsonl", 42), ("b.jsonl", 2)]}
    printed = compare(capsys, tmp_path / "a.jsonl", tmp_path / "b.jsonl", "-o", tmp_path / "c.png")
    assert table_head(printed)[3] == "mean of all 40"
    rows = parse_table(printed)
    for name, label in [("a.jsonl", "baseline"), ("b.jsonl", "--seed 2")]:
        assert float(rows[label][2]) == pytest.approx(math.fsum(r["loss"] for r in short[name]) / 40, abs=5e-5)

    long = write_run(tmp_path / "long.jsonl", header(seed=3), 150, 3, 2.3, 0.01)
    printed = compare(capsys, tmp_path / "a.jsonl", tmp_path / "long.jsonl", "-o", tmp_path / "c.png")
    assert table_head(printed)[3] == "mean of last 100"
    rows = parse_table(printed)
    assert rows["--seed 3"][2] == f"{math.fsum(r['loss'] for r in long[-100:]) / 100:.4f}"
    assert rows["baseline"][2] == f"{math.fsum(r['loss'] for r in short['a.jsonl']) / 40:.4f}*"
    assert "* fewer than 100 steps: the mean of all of the run's steps" in printed.splitlines()


def test_compare_draws_each_run_raw_and_smoothed(three_runs, figures):
    tmp_path, records = three_runs
    paths = [str(tmp_path / n) for n in ("base.jsonl", "sgd.jsonl", "cos.jsonl")]
    assert cli.main(["compare", *paths, "-o", str(tmp_path / "c.png"), "--window", "20"]) == 0
    (ax,) = figures[0].axes
    lines = ax.get_lines()
    by_label = {line.get_label(): line for line in lines}
    for name, label in [("base.jsonl", "baseline"), ("sgd.jsonl", "--optimizer sgd"),
                        ("cos.jsonl", "--lr-schedule cosine --warmup-steps 50")]:
        losses = [r["loss"] for r in records[name]]
        smooth = by_label[label]
        assert list(smooth.get_ydata()) == pytest.approx(direct_mean(losses, 20), rel=1e-12)
        # the faint raw curve of the same run, in the same colour
        (raw,) = [line for line in lines if list(line.get_ydata()) == losses]
        assert raw.get_color() == smooth.get_color() and raw.get_alpha() < 0.5
    uniform = [line for line in lines if line.get_label().startswith("uniform guess ln(27)")]
    assert len(uniform) == 1 and list(uniform[0].get_ydata()) == pytest.approx([math.log(27)] * 2)
    title = ax.get_title()
    assert "3 runs" in title and "over 20 steps" in title and "numpy engine" in title
    assert not [line for line in lines if line.get_marker() == "X"]  # nothing diverged


def test_compare_draws_one_uniform_level_per_vocabulary(tmp_path, figures, capsys):
    write_run(tmp_path / "names.jsonl", header(data="/d/names.txt", vocab_size=27), 60, 1, 2.3, 0.01)
    write_run(tmp_path / "shake.jsonl", header(data="/d/tinyshakespeare.txt", vocab_size=66), 60, 2, 2.0, 0.01)
    printed = compare(capsys, tmp_path / "names.jsonl", tmp_path / "shake.jsonl", "-o", tmp_path / "c.svg")
    levels = sorted(line.get_ydata()[0] for line in figures[0].axes[0].get_lines()
                    if line.get_label().startswith("uniform guess"))
    assert levels == pytest.approx([math.log(27), math.log(66)])
    assert "--data names.txt" in printed and "--data tinyshakespeare.txt" in printed
    assert "<svg" in (tmp_path / "c.svg").read_text()[:2000]


def test_a_diverged_run_is_marked_and_does_not_flatten_the_others(tmp_path, figures, capsys):
    normal = write_run(tmp_path / "adam.jsonl", header(), 300, 1, 2.3, 0.01)
    climb = [3.3 - i / 100 for i in range(60)] + [2.7 * 1.06 ** i for i in range(1, 60)]  # up to 85
    write_plain(tmp_path / "nozg.jsonl", climb)
    lines = (tmp_path / "nozg.jsonl").read_text().splitlines(keepends=True)
    head = json.loads(lines[0])
    head["config"]["zero_grad"] = False
    (tmp_path / "nozg.jsonl").write_text(json.dumps(head) + "\n" + "".join(lines[1:]))
    write_plain(tmp_path / "sgd50.jsonl", [3.37, 207.0, math.inf])
    printed = compare(capsys, tmp_path / "adam.jsonl", tmp_path / "nozg.jsonl", tmp_path / "sgd50.jsonl",
                      "-o", tmp_path / "c.png")

    limit = 2 * math.log(27)
    means = direct_mean(climb, 100)
    climb_at = max(i for i, m in enumerate(means) if m <= limit) + 2  # the step after its last mean below 2 ln V
    assert 60 < climb_at < 120
    assert f"diverged: --no-zero-grad at step {climb_at} (its running mean over 100 steps went above 2 x ln(27)" \
        in printed
    (ax,) = figures[0].axes
    labels = {line.get_label(): line for line in ax.get_lines()}
    assert f"--no-zero-grad (diverged at step {climb_at})" in labels
    (sgd_label,) = [k for k in labels if k.endswith("(diverged at step 2)")]  # 207 at step 2, then inf
    assert list(labels[sgd_label].get_xdata()) == [1, 2]  # drawn to its last finite point
    markers = {int(line.get_xdata()[0]): line.get_color() for line in ax.get_lines() if line.get_marker() == "X"}
    assert markers == {climb_at: labels[f"--no-zero-grad (diverged at step {climb_at})"].get_color(),
                       2: labels[sgd_label].get_color()}
    bottom, top = ax.get_ylim()  # fitted to the run that did not diverge
    losses = [r["loss"] for r in normal]
    assert math.log(27) < top < max(losses) + 0.5 and bottom < min(direct_mean(losses, 100))


def test_compare_ylim_and_logy(three_runs, figures):
    tmp_path, _ = three_runs
    paths = [str(tmp_path / n) for n in ("base.jsonl", "sgd.jsonl")]
    assert cli.main(["compare", *paths, "-o", str(tmp_path / "c.png"), "--ylim", "1.5", "4"]) == 0
    assert figures[-1].axes[0].get_ylim() == (1.5, 4.0)
    assert cli.main(["compare", *paths, "-o", str(tmp_path / "c.png"), "--logy", "--ylim", "1", "10"]) == 0
    ax = figures[-1].axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((1.0, 10.0))
    assert cli.main(["compare", *paths, "-o", str(tmp_path / "c.png"), "--logy"]) == 0
    assert figures[-1].axes[0].get_yscale() == "log" and figures[-1].axes[0].get_ylim()[0] > 0


# --- errors ------------------------------------------------------------------------------------------------------

def test_compare_errors_exit_2_with_one_line(three_runs):
    tmp_path, _ = three_runs
    good = tmp_path / "base.jsonl"
    cases = [
        ([good, tmp_path / "missing.jsonl", "-o", tmp_path / "c.png"], "missing.jsonl does not exist"),
        ([good, good, "-o", tmp_path / "c.png", "--window", "0"], "--window must be at least 1"),
        ([good, good, "-o", tmp_path / "c.gif"], "unsupported image type '.gif'"),
        ([good, good, "-o", tmp_path / "no" / "c.png"], "does not exist"),
        ([good, good, "-o", tmp_path / "c.png", "--ylim", "3", "3"], "--ylim 3 3"),
    ]
    for argv, message in cases:
        assert_one_line_error(run_cli("compare", *argv), message)
    assert not (tmp_path / "c.png").exists()


def test_compare_refuses_bad_metrics_files_in_one_line(three_runs):
    tmp_path, _ = three_runs
    (tmp_path / "bad").mkdir()
    for name, (path, words) in bad_metrics_files(tmp_path / "bad").items():
        proc = run_cli("compare", tmp_path / "base.jsonl", path, "-o", tmp_path / "c.png")
        assert "microgpt train --metrics" in assert_one_line_error(proc, *words), name
    assert not (tmp_path / "c.png").exists()


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path, figures):
    """A data file's name or an engine's may hold "$", which must not be taken for a formula."""
    write_run(tmp_path / "a.jsonl", header(data="/d/$x^{$.txt"), 50, 1, 2.3, 0.01)
    write_run(tmp_path / "b.jsonl", header(engine="$\\frac{$", data="/d/$y$.txt"), 50, 2, 2.3, 0.01)
    assert cli.main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "-o",
                     str(tmp_path / "c.png")]) == 0
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert "--engine numpy --data $x^{$.txt" in legend and "--engine $\\frac{$ --data $y$.txt" in legend
    assert cli.main(["plot", str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "p.png")]) == 0
