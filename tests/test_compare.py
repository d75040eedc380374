"""`microgpt compare`: labels say what differs between runs, the table's numbers are the runs' own."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import pytest
from conftest import write_synthetic_run

from microgpt import cli
from microgpt import compare as compare_module
from microgpt.compare import run_labels
from microgpt.config import Config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def header(engine: str = "numpy", data: str = "/data/names.txt", vocab_size: int = 27, **config) -> dict:
    return {"engine": engine, "config": Config(**config).to_dict(), "data": data, "vocab_size": vocab_size}


def write_run(path: Path, head: dict, num_steps: int, seed: int, floor: float, step_time: float,
              val: bool = False) -> list[dict]:
    """A noisy loss curve levelling off at `floor`, with a validation loss at the last step if `val`."""
    return write_synthetic_run(path, head, num_steps, seed, floor, decay=100, step_time=step_time,
                               val_loss=lambda step: floor + 0.1 if val and step == num_steps else None)


def test_labels_name_what_departs_from_the_common_settings():
    runs = [header(), header(optimizer="sgd"), header(lr_schedule="cosine", warmup_steps=100)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl", "c.jsonl"]) == [
        "baseline", "optimizer=sgd", "lr_schedule=cosine, warmup_steps=100"]


def test_labels_break_a_tie_with_the_books_default():
    names = ["a.jsonl", "b.jsonl"]
    assert run_labels([header(), header(optimizer="sgd")], names) == ["baseline", "optimizer=sgd"]
    assert run_labels([header(optimizer="sgd"), header()], names) == ["optimizer=sgd", "baseline"]
    assert run_labels([header(bias_correction=False), header()], names) == ["bias_correction=False", "baseline"]
    # a learning-rate sweep around the book's 0.01
    runs = [header(learning_rate=0.003), header(), header(learning_rate=0.03)]
    assert run_labels(runs, names + ["c.jsonl"]) == ["learning_rate=0.003", "baseline", "learning_rate=0.03"]


def test_labels_without_a_common_value_show_every_runs_own():
    runs = [header(learning_rate=0.02), header(learning_rate=0.03)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["learning_rate=0.02", "learning_rate=0.03"]
    runs = [header(engine="numpy"), header(engine="torch")]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["engine=numpy", "engine=torch"]
    runs = [header(data="/x/names.txt", vocab_size=27), header(data="/y/tinyshakespeare.txt", vocab_size=66)]
    assert run_labels(runs, ["a.jsonl", "b.jsonl"]) == ["data=names.txt", "data=tinyshakespeare.txt"]


def test_labels_follow_the_majority_even_off_the_default():
    runs = [header(learning_rate=0.02, seed=1), header(learning_rate=0.02, seed=2), header(learning_rate=0.05, seed=1)]
    assert run_labels(runs, ["a", "b", "c"]) == ["baseline", "seed=2", "learning_rate=0.05"]


def test_labels_of_identical_settings_are_file_names():
    assert run_labels([header(), header()], ["runs/a.jsonl", "runs/b.jsonl"]) == ["a.jsonl", "b.jsonl"]
    runs = [header(), header(), header(optimizer="sgd")]
    assert run_labels(runs, ["x/a.jsonl", "x/b.jsonl", "x/c.jsonl"]) == [
        "baseline (a.jsonl)", "baseline (b.jsonl)", "optimizer=sgd"]


def test_labels_ignore_header_entries_that_do_not_shape_the_curve():
    a, b = header(), header()
    a.update(num_docs=100, started="2024-01-01T00:00:00"), b.update(num_docs=200, started="2024-01-02T00:00:00")
    b["config"]["optimizer"] = "sgd"
    assert run_labels([a, b], ["a", "b"]) == ["baseline", "optimizer=sgd"]


# --- the compare command ---------------------------------------------------------------------------------------

def parse_table(out: str) -> dict[str, list[str]]:
    """Rows of the printed table by label; cells are separated by two or more spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("uniform", "wrote")):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


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
    assert cli.main(["compare", *paths, "-o", str(out), "--window", "50"]) == 0
    printed = capsys.readouterr().out
    head = next(line for line in printed.splitlines() if line.startswith("run "))
    assert re.split(r"\s{2,}", head) == ["run", "steps", "final loss", "mean last 50", "min loss", "val loss",
                                         "wall time"]
    rows = parse_table(printed)
    labels = {"base.jsonl": "baseline", "sgd.jsonl": "optimizer=sgd",
              "cos.jsonl": "lr_schedule=cosine, warmup_steps=50"}
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

    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and struct.unpack(">II", data[16:24]) == (1200, 720)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.jsonl", "compare.png", "cos.jsonl", "sgd.jsonl"]


def test_compare_draws_each_run_raw_and_smoothed(three_runs, monkeypatch):
    tmp_path, records = three_runs
    figures = []
    real_save = compare_module.save_figure
    monkeypatch.setattr(compare_module, "save_figure", lambda fig, path: (figures.append(fig), real_save(fig, path)))
    paths = [str(tmp_path / n) for n in ("base.jsonl", "sgd.jsonl", "cos.jsonl")]
    assert cli.main(["compare", *paths, "-o", str(tmp_path / "c.png"), "--window", "20"]) == 0
    (ax,) = figures[0].axes
    lines = ax.get_lines()
    by_label = {line.get_label(): line for line in lines}
    for name, label in [("base.jsonl", "baseline"), ("sgd.jsonl", "optimizer=sgd"),
                        ("cos.jsonl", "lr_schedule=cosine, warmup_steps=50")]:
        losses = [r["loss"] for r in records[name]]
        direct = [sum(losses[max(0, i - 19):i + 1]) / len(losses[max(0, i - 19):i + 1]) for i in range(len(losses))]
        smooth = by_label[label]
        assert list(smooth.get_ydata()) == pytest.approx(direct, rel=1e-12)
        # the faint raw curve of the same run, in the same colour
        (raw,) = [line for line in lines if list(line.get_ydata()) == losses]
        assert raw.get_color() == smooth.get_color() and raw.get_alpha() < 0.5
    uniform = [line for line in lines if line.get_label().startswith("uniform guess ln(27)")]
    assert len(uniform) == 1 and list(uniform[0].get_ydata()) == pytest.approx([math.log(27)] * 2)
    title = ax.get_title()
    assert "3 runs" in title and "over 20 steps" in title and "numpy engine" in title


def test_compare_draws_one_uniform_level_per_vocabulary(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "names.jsonl", header(data="/d/names.txt", vocab_size=27), 60, 1, 2.3, 0.01)
    write_run(tmp_path / "shake.jsonl", header(data="/d/tinyshakespeare.txt", vocab_size=66), 60, 2, 2.0, 0.01)
    figures = []
    real_save = compare_module.save_figure
    monkeypatch.setattr(compare_module, "save_figure", lambda fig, path: (figures.append(fig), real_save(fig, path)))
    argv = ["compare", str(tmp_path / "names.jsonl"), str(tmp_path / "shake.jsonl"), "-o", str(tmp_path / "c.svg")]
    assert cli.main(argv) == 0
    levels = sorted(line.get_ydata()[0] for line in figures[0].axes[0].get_lines()
                    if line.get_label().startswith("uniform guess"))
    assert levels == pytest.approx([math.log(27), math.log(66)])
    printed = capsys.readouterr().out
    assert "data=names.txt" in printed and "data=tinyshakespeare.txt" in printed
    assert "<svg" in (tmp_path / "c.svg").read_text()[:2000]


def test_compare_errors_exit_2_with_one_line(three_runs, capsys):
    tmp_path, _ = three_runs
    good = str(tmp_path / "base.jsonl")
    cases = [
        ([good, str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "c.png")], "missing.jsonl does not exist"),
        ([good, good, "-o", str(tmp_path / "c.png"), "--window", "0"], "--window must be at least 1"),
        ([good, good, "-o", str(tmp_path / "c.gif")], "unsupported image type '.gif'"),
        ([good, good, "-o", str(tmp_path / "no" / "c.png")], "does not exist"),
    ]
    for argv, message in cases:
        assert cli.main(["compare", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("microgpt: error: ") and message in err, err
    assert not (tmp_path / "c.png").exists()
