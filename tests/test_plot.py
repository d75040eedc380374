"""`microgpt plot` and `running_mean`: the image is a real PNG showing what the metrics file holds."""

from __future__ import annotations

import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NAMES, write_synthetic_run

from microgpt import cli
from microgpt import plot as plot_module
from microgpt.config import Config
from microgpt.metrics import MetricsWriter
from microgpt.plot import running_mean

VOCAB = 27
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(path: Path, num_steps: int = 400, seed: int = 0, val_every: int = 100, vocab_size: int = VOCAB,
              engine: str = "numpy", **config) -> list[dict]:
    """A metrics file like a real run's, with a validation loss every `val_every` steps."""
    header = {"engine": engine, "config": Config(num_steps=num_steps, **config).to_dict(), "data": "/data/names.txt",
              "vocab_size": vocab_size, "num_params": 4192}
    return write_synthetic_run(path, header, num_steps, seed, floor=2.3, decay=120, step_time=0.004,
                               lr=lambda step: 0.01 * (1 - (step - 1) / num_steps),
                               val_loss=lambda step: (2.4 + 0.9 * math.exp(-step / 120)
                                                      if val_every and step % val_every == 0 else None))


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, read independently of matplotlib."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def direct_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


# --- running_mean ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [1, 7, 100, 500])
def test_running_mean_matches_direct_computation(window):
    rng = random.Random(3)
    values = [2.0 + rng.random() for _ in range(300)]
    assert running_mean(values, window) == pytest.approx(direct_mean(values, window), rel=1e-12, abs=0)


def test_running_mean_window_one_is_identity_and_empty_is_empty():
    assert running_mean([3.0, 1.5, 2.25], 1) == [3.0, 1.5, 2.25]
    assert running_mean([], 100) == []
    assert running_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_running_mean_keeps_a_diverged_step_to_its_windows():
    values = [float(i % 5) for i in range(40)]
    values[20] = math.nan
    values[30] = math.inf
    out = running_mean(values, 4)
    for i, got in enumerate(out):
        window = values[max(0, i - 3):i + 1]
        if any(math.isnan(v) for v in window):
            assert math.isnan(got), i
        elif any(math.isinf(v) for v in window):
            assert got == math.inf, i
        else:
            assert got == pytest.approx(sum(window) / len(window), rel=1e-12), i
    assert math.isfinite(out[24]) and math.isfinite(out[34])  # the windows after them recover


def test_running_mean_rejects_an_empty_window():
    with pytest.raises(ValueError):
        running_mean([1.0], 0)


# --- the plot command ---------------------------------------------------------------------------------------

def test_plot_writes_a_png_of_the_expected_size(tmp_path, capsys):
    from matplotlib.image import imread

    records = write_run(tmp_path / "run.jsonl")
    out = tmp_path / "loss.png"
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(out)]) == 0
    width, height = png_size(out)
    assert (width, height) == (1200, 720)  # 10 x 6 inches at 120 dpi
    pixels = imread(out)
    assert pixels.shape[:2] == (720, 1200)
    assert pixels[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "run.jsonl"]  # no temporary file left
    last_100 = [r["loss"] for r in records[-100:]]
    assert f"final running mean {sum(last_100) / 100:.4f}" in capsys.readouterr().out


def test_plot_draws_the_losses_the_mean_the_validation_and_the_uniform_level(tmp_path, monkeypatch):
    records = write_run(tmp_path / "run.jsonl", engine="torch", optimizer="sgd", n_embd=32)
    figures = []
    real_save = plot_module.save_figure
    monkeypatch.setattr(plot_module, "save_figure", lambda fig, path: (figures.append(fig), real_save(fig, path)))
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "loss.png")]) == 0
    (ax,) = figures[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    losses = [r["loss"] for r in records]

    raw = lines["loss of each step"]
    assert list(raw.get_xdata()) == list(range(1, 401)) and list(raw.get_ydata()) == losses
    assert raw.get_alpha() < 0.5  # the raw losses are faint
    (mean_label,) = [k for k in lines if k.startswith("running mean over 100 steps")]
    assert list(lines[mean_label].get_ydata()) == pytest.approx(direct_mean(losses, 100), rel=1e-12)
    (val_label,) = [k for k in lines if k.startswith("validation loss")]
    assert list(lines[val_label].get_xdata()) == [100, 200, 300, 400]
    assert list(lines[val_label].get_ydata()) == [r["val_loss"] for r in records if "val_loss" in r]
    (uniform_label,) = [k for k in lines if k.startswith("uniform guess")]
    uniform = lines[uniform_label]
    assert uniform.get_linestyle() == "--"
    assert list(uniform.get_ydata()) == pytest.approx([math.log(27)] * 2, rel=1e-15)
    assert "ln(27) = 3.296" in uniform_label
    title = ax.get_title()
    assert "torch engine" in title and "names.txt" in title and "sgd" in title and "n_embd=32" in title


def test_plot_default_output_and_other_image_types(tmp_path):
    write_run(tmp_path / "run.jsonl", num_steps=50, val_every=0)
    assert cli.main(["plot", str(tmp_path / "run.jsonl")]) == 0
    assert png_size(tmp_path / "run.png") == (1200, 720)
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "loss.svg")]) == 0
    assert "<svg" in (tmp_path / "loss.svg").read_text()[:2000]
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "loss.pdf")]) == 0
    assert (tmp_path / "loss.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_replaces_an_existing_image(tmp_path):
    write_run(tmp_path / "run.jsonl", num_steps=50)
    out = tmp_path / "loss.png"
    out.write_bytes(b"an old, broken image")
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(out)]) == 0
    assert png_size(out) == (1200, 720)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "run.jsonl"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("microgpt: error: "), err
    return err


def test_plot_errors_exit_2_with_one_line(tmp_path, capsys):
    good = tmp_path / "run.jsonl"
    write_run(good, num_steps=20)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good.read_text() + "{not json\n")
    bad_loss = tmp_path / "badloss.jsonl"
    bad_loss.write_text(good.read_text() + '{"type": "step", "step": 21, "loss": "high"}\n')
    header_only = tmp_path / "empty.jsonl"
    header_only.write_text(good.read_text().splitlines()[0] + "\n")
    (tmp_path / "folder.png").mkdir()
    metrics_png = tmp_path / "metrics.png"  # its default image path is itself
    metrics_png.write_text(good.read_text())
    cases = [
        ([str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "a.png")], "does not exist"),
        ([str(bad_json), "-o", str(tmp_path / "a.png")], "line 22 is not JSON"),
        ([str(bad_loss), "-o", str(tmp_path / "a.png")], "not a number"),
        ([str(header_only), "-o", str(tmp_path / "a.png")], "no training steps"),
        ([str(good), "-o", str(tmp_path / "a.jpg")], "unsupported image type '.jpg'"),
        ([str(good), "-o", str(tmp_path / "a")], "unsupported image type"),
        ([str(good), "-o", str(tmp_path / "nowhere" / "a.png")], "does not exist"),
        ([str(good), "-o", str(tmp_path / "folder.png")], "is a folder"),
        ([str(metrics_png)], "would overwrite the metrics file"),
    ]
    for argv, message in cases:
        assert cli.main(["plot", *argv]) == 2, argv
        assert message in _one_line_error(capsys), argv
    assert not (tmp_path / "a.png").exists()


def test_matplotlib_is_imported_only_when_drawing():
    code = "import sys, microgpt.plot, microgpt.compare; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False"


def test_plot_reads_the_metrics_of_a_real_training_run(tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "run.jsonl"
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("train", "plot")})
    argv = ["train", "--engine", "numpy", "--data", str(NAMES), "--steps", "30", "--num-samples", "0", "--quiet",
            "--val-fraction", "0.1", "--eval-every", "10", "--metrics", str(metrics)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    figures = []
    real_save = plot_module.save_figure
    monkeypatch.setattr(plot_module, "save_figure", lambda fig, path: (figures.append(fig), real_save(fig, path)))
    assert cli.main(["plot", str(metrics), "-o", str(tmp_path / "loss.png")]) == 0
    assert png_size(tmp_path / "loss.png") == (1200, 720)
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert "uniform guess ln(27) = 3.296" in labels  # names.txt: 26 letters and BOS
    val_line = [line for line in figures[0].axes[0].get_lines() if line.get_label().startswith("validation")]
    assert list(val_line[0].get_xdata()) == [10, 20, 30]
    assert "numpy engine on names.txt" in figures[0].axes[0].get_title()


def test_a_file_two_runs_appended_to_shows_the_last_run(tmp_path):
    """Running train twice with the same --metrics appends a second run; plot shows only the last."""
    from microgpt.metrics import read_metrics

    path = tmp_path / "twice.jsonl"
    first = MetricsWriter(path, {"engine": "numpy", "config": Config().to_dict(), "vocab_size": 27})
    for step in range(1, 6):
        first.log(step=step, loss=3.0, lr=0.01, time=step)
    first.close()
    with open(path, "a") as f:  # a second, fresh run appends its own header
        f.write('{"type": "run", "engine": "scalar", "config": {}, "vocab_size": 27}\n')
        for step in range(1, 4):
            f.write(f'{{"type": "step", "step": {step}, "loss": {2.0 + step}, "lr": 0.01, "time": {step}}}\n')
    metrics = read_metrics(path)
    assert metrics.run["engine"] == "scalar"
    assert [r["step"] for r in metrics.steps] == [1, 2, 3]
    assert metrics.losses == [3.0, 4.0, 5.0]
