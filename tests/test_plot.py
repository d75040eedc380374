"""`microgpt plot` and the shared plotting helpers: the image is a real PNG showing what the metrics file holds,
a long run is reduced to what the image can show without changing it, and memory stays flat."""

from __future__ import annotations

import ast
import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NAMES, assert_one_line_error, run_cli, write_synthetic_run

from microgpt import cli
from microgpt.config import Config
from microgpt.plotting import COLUMNS, MAX_POINTS, diverged_from, envelope, running_mean, thin

VOCAB = 27
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def write_run(path: Path, num_steps: int = 400, seed: int = 0, val_every: int = 100, vocab_size: int = VOCAB,
              engine: str = "numpy", **config) -> list[dict]:
    """A metrics file like a real run's, with a validation loss every `val_every` steps."""
    header = {"engine": engine, "config": Config(num_steps=num_steps, **config).to_dict(), "data": "/data/names.txt",
              "vocab_size": vocab_size, "num_params": 4192}
    return write_synthetic_run(path, header, num_steps, seed, floor=2.3, decay=120, step_time=0.004,
                               lr=lambda step: 0.01 * (1 - (step - 1) / num_steps),
                               val_loss=lambda step: (2.4 + 0.9 * math.exp(-step / 120)
                                                      if val_every and step % val_every == 0 else None))


def write_plain(path: Path, losses: list[float], vocab_size: int = VOCAB, mode: str = "w") -> None:
    """A metrics file written line by line with plain JSON, fast enough for hundreds of thousands of steps."""
    header = {"type": "run", "run_id": f"plain{len(losses)}", "engine": "numpy", "config": Config().to_dict(),
              "data": "/data/names.txt", "data_format": "lines", "vocab_size": vocab_size}
    with open(path, mode, encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        f.writelines(f'{{"type": "step", "step": {i}, "loss": {json.dumps(loss)}, "lr": 0.01, "time": {i / 1000}}}\n'
                     for i, loss in enumerate(losses, 1))


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, read independently of matplotlib."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def direct_mean(values: list[float], window: int) -> list[float]:
    return [math.fsum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def lines_by_label(fig) -> dict:
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


# --- running_mean, envelope, thin, diverged_from ---------------------------------------------------------

@pytest.mark.parametrize("window", [1, 7, 100, 500])
def test_running_mean_matches_direct_computation(window):
    rng = random.Random(3)
    values = [2.0 + rng.random() for _ in range(300)]
    assert running_mean(values, window).tolist() == pytest.approx(direct_mean(values, window), rel=1e-12, abs=0)


def test_running_mean_keeps_its_precision_over_a_million_steps():
    import numpy as np

    rng = np.random.default_rng(4)
    values = 2.0 + 1.5 * np.exp(-np.arange(1_000_000) / 2e5) + rng.normal(0, 0.3, 1_000_000)
    out = running_mean(values, 100)
    for i in [0, 1, 99, 100, 500_000, 999_999] + rng.integers(0, 1_000_000, 200).tolist():
        window = values[max(0, i - 99):i + 1].tolist()
        assert out[i] == pytest.approx(math.fsum(window) / len(window), rel=1e-12, abs=0), i


def test_running_mean_window_one_is_the_values_and_empty_is_empty():
    assert running_mean([3.0, 1.5, 2.25], 1).tolist() == pytest.approx([3.0, 1.5, 2.25], rel=1e-15)
    assert running_mean([], 100).tolist() == []
    assert running_mean([1.0, 2.0, 3.0, 4.0], 2).tolist() == pytest.approx([1.0, 1.5, 2.5, 3.5], rel=1e-15)


def test_running_mean_keeps_a_diverged_step_to_its_windows():
    values = [float(i % 5) for i in range(60)]
    values[20] = math.nan
    values[30] = math.inf
    values[45], values[46] = math.inf, -math.inf
    out = running_mean(values, 4)
    for i, got in enumerate(out):
        window = values[max(0, i - 3):i + 1]
        expected = sum(window) / len(window)  # Python's own float arithmetic is the oracle
        if math.isnan(expected):
            assert math.isnan(got), i
        else:
            assert got == pytest.approx(expected, rel=1e-12), i
    assert math.isfinite(out[24]) and math.isfinite(out[34]) and math.isfinite(out[50])  # later windows recover


def test_running_mean_rejects_an_empty_window():
    with pytest.raises(ValueError):
        running_mean([1.0], 0)


def test_envelope_holds_each_columns_lowest_and_highest_loss():
    import numpy as np

    rng = random.Random(5)
    n, columns = 100_003, 1000
    losses = [2.0 + rng.random() for _ in range(n)]
    losses[777] = math.nan  # left out, as a diverged step is
    losses[5000] = math.inf
    x, low, high = envelope(np.arange(1, n + 1), np.array(losses), columns)
    per = -(-n // columns)
    chunks = [losses[i:i + per] for i in range(0, n, per)]
    assert len(x) == 2 * len(chunks) <= 2 * columns
    for c, chunk in enumerate(chunks):
        finite = [v for v in chunk if math.isfinite(v)]
        assert (x[2 * c], x[2 * c + 1]) == (c * per + 1, c * per + len(chunk))  # the column's first and last step
        assert low[2 * c] == low[2 * c + 1] == min(finite)
        assert high[2 * c] == high[2 * c + 1] == max(finite)


def test_thin_keeps_every_kth_point_and_the_last():
    import numpy as np

    x, y = np.arange(1, 10_001), np.arange(10_000) * 0.5
    tx, ty = thin(x, y, 3000)
    assert len(tx) <= 3001 and tx[0] == 1 and tx[-1] == 10_000
    assert ty.tolist() == [(step - 1) * 0.5 for step in tx.tolist()]  # real points, not interpolated
    short = thin(x[:50], y[:50], 3000)
    assert short[0].tolist() == list(range(1, 51))


@pytest.mark.parametrize("losses, expected", [
    ([3.3] * 50 + [2.5] * 50, None),  # trained
    ([9.0] + [3.0] * 200, None),  # a bad first step it recovers from
    ([3.3, 207.0], 2),  # the book's SGD at lr 50
    ([3.3] * 10 + [math.inf], 11),
    ([3.3] * 10 + [math.nan, 3.0], 11),  # a nan is not recovered from
    ([3.3] * 30 + [3.3 + 0.5 * i for i in range(1, 60)], None),  # oracle below
])
def test_diverged_from(losses, expected):
    import numpy as np

    limit = 2 * math.log(VOCAB)
    means = direct_mean(losses, 10)
    if expected is None and means[-1] > limit:  # the oracle for the climbing run: after its last mean below 2 ln V
        expected = max(i for i, m in enumerate(means) if m <= limit) + 2
    got = diverged_from(np.array(losses), running_mean(losses, 10), math.log(VOCAB))
    assert (None if got is None else got + 1) == expected


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
    assert f"(400 steps, final running mean {math.fsum(last_100) / 100:.4f})" in capsys.readouterr().out


def test_plot_draws_the_losses_the_mean_the_validation_and_the_uniform_level(tmp_path, figures):
    records = write_run(tmp_path / "run.jsonl", engine="torch", optimizer="sgd", n_embd=32)
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "loss.png")]) == 0
    lines = lines_by_label(figures[0])
    losses = [r["loss"] for r in records]

    raw = lines["loss of each step"]
    assert list(raw.get_xdata()) == list(range(1, 401)) and list(raw.get_ydata()) == losses
    assert raw.get_alpha() < 0.5  # the raw losses are faint
    (mean_label,) = [k for k in lines if k.startswith("running mean over 100 steps")]
    assert f"(last: {math.fsum(losses[-100:]) / 100:.4f})" in mean_label
    assert list(lines[mean_label].get_ydata()) == pytest.approx(direct_mean(losses, 100), rel=1e-12)
    (val_label,) = [k for k in lines if k.startswith("validation loss")]
    assert list(lines[val_label].get_xdata()) == [100, 200, 300, 400]
    assert list(lines[val_label].get_ydata()) == [r["val_loss"] for r in records if "val_loss" in r]
    (uniform_label,) = [k for k in lines if k.startswith("uniform guess")]
    uniform = lines[uniform_label]
    assert uniform.get_linestyle() == "--"
    assert list(uniform.get_ydata()) == pytest.approx([math.log(27)] * 2, rel=1e-15)
    assert "ln(27) = 3.296" in uniform_label
    ax = figures[0].axes[0]
    title = ax.get_title()
    assert "torch engine" in title and "names.txt" in title and "sgd" in title and "n_embd=32" in title
    bottom, top = ax.get_ylim()
    assert bottom < min(direct_mean(losses, 100)) and top > math.log(27)  # the mean and the level fit
    assert ax.get_yscale() == "linear"


def test_the_title_names_what_a_run_moved_beyond_the_book(tmp_path, figures):
    write_run(tmp_path / "book.jsonl")
    write_run(tmp_path / "recipe.jsonl", data_format="text", beta1=0.9, weight_decay=0.1, grad_clip=1.0,
              lr_schedule="cosine", min_lr=1e-4)
    for name in ("book", "recipe"):
        assert cli.main(["plot", str(tmp_path / f"{name}.jsonl"), "-o", str(tmp_path / f"{name}.png")]) == 0
    book, recipe = (fig.axes[0].get_title().replace("\n", " ") for fig in figures)
    assert "--" not in book and "text mode" not in book  # the book's run reads as it always did
    for part in ("text mode", "--beta1 0.9", "--weight-decay 0.1", "--grad-clip 1", "--min-lr 0.0001"):
        assert part in recipe, (part, recipe)
    assert "--dropout" not in recipe and "--init-std" not in recipe  # left at the book's values


def test_plot_says_when_a_mean_covers_fewer_steps_than_its_window(tmp_path, figures, capsys):
    records = write_run(tmp_path / "run.jsonl", num_steps=40, val_every=0)
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "loss.png")]) == 0
    mean_of_all = math.fsum(r["loss"] for r in records) / 40
    assert f"(40 steps, mean of all 40 {mean_of_all:.4f})" in capsys.readouterr().out
    labels = list(lines_by_label(figures[0]))
    assert f"running mean of the steps so far (all 40: {mean_of_all:.4f})" in labels
    assert not any("over 100 steps" in label for label in labels)


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


def test_two_plots_to_the_same_image_at_once_do_not_collide(tmp_path):
    write_run(tmp_path / "run.jsonl", num_steps=300)
    out = tmp_path / "same.png"
    argv = [sys.executable, "-m", "microgpt", "plot", str(tmp_path / "run.jsonl"), "-o", str(out)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert png_size(out) == (1200, 720)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl", "same.png"]


def test_plot_picks_a_run_of_a_file_with_several(tmp_path, figures, capsys):
    path = tmp_path / "runs.jsonl"
    runs = [write_synthetic_run(path, {"engine": engine, "config": Config().to_dict(), "data": "/d/names.txt",
                                       "vocab_size": VOCAB}, steps, seed, 2.3, 50, 0.01)
            for engine, steps, seed in [("numpy", 120, 1), ("scalar", 80, 2), ("torch", 60, 3)]]
    for argv, index in [([], 2), (["--run", "1"], 0), (["--run", "2"], 1), (["--run", "3"], 2)]:
        figures.clear()
        assert cli.main(["plot", str(path), "-o", str(tmp_path / "x.png"), *argv]) == 0
        raw = lines_by_label(figures[0])["loss of each step"]
        assert list(raw.get_ydata()) == [r["loss"] for r in runs[index]]
        title = figures[0].axes[0].get_title()
        assert f"run {index + 1} of 3" in title and ["numpy", "scalar", "torch"][index] in title
        assert f"(run {index + 1} of 3, {len(runs[index])} steps" in capsys.readouterr().out
    assert_one_line_error(run_cli("plot", path, "-o", tmp_path / "y.png", "--run", "4"), "holds 3 runs", "--run")
    assert_one_line_error(run_cli("plot", path, "-o", tmp_path / "y.png", "--run", "0"), "numbered from 1")
    assert not (tmp_path / "y.png").exists()


def test_plot_ylim_and_logy(tmp_path, figures):
    write_run(tmp_path / "run.jsonl", num_steps=200)
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "a.png"), "--ylim", "1.5", "4"]) == 0
    assert figures[-1].axes[0].get_ylim() == (1.5, 4.0)
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "b.png"), "--logy"]) == 0
    ax = figures[-1].axes[0]
    assert ax.get_yscale() == "log" and 0 < ax.get_ylim()[0] < 2.3 and ax.get_ylim()[1] > math.log(27)
    for argv, words in [(["--ylim", "4", "2"], ["--ylim 4 2", "lower first"]),
                        (["--ylim", "nan", "2"], ["--ylim nan 2"]),
                        (["--ylim", "0", "4", "--logy"], ["--logy", "above 0"])]:
        assert_one_line_error(run_cli("plot", tmp_path / "run.jsonl", "-o", tmp_path / "c.png", *argv), *words)
    assert not (tmp_path / "c.png").exists()


def test_plot_marks_a_diverged_run_and_fits_the_range_to_the_steps_before(tmp_path, figures, capsys):
    rng = random.Random(6)
    losses = [3.3 - i / 200 + rng.gauss(0, 0.2) for i in range(150)] + [3.0 * 1.05 ** i for i in range(1, 80)]
    write_plain(tmp_path / "run.jsonl", losses + [math.inf])
    assert cli.main(["plot", str(tmp_path / "run.jsonl"), "-o", str(tmp_path / "a.png")]) == 0
    limit = 2 * math.log(VOCAB)
    means = direct_mean(losses + [math.inf], 100)
    diverged = max(i for i, m in enumerate(means) if m <= limit) + 2  # the step after the last mean below 2 ln V
    assert f"diverged at step {diverged}: its loss became inf" in capsys.readouterr().out
    ax = figures[0].axes[0]
    lines = lines_by_label(figures[0])
    (mean_label,) = [k for k in lines if k.startswith("running mean")]
    assert mean_label.endswith(f"(diverged at step {diverged})")
    assert lines[mean_label].get_xdata()[-1] == len(losses)  # drawn to the last finite point
    assert lines["loss of each step"].get_xdata()[-1] == len(losses)
    (marker,) = [line for line in ax.get_lines() if line.get_marker() == "X"]
    assert list(marker.get_xdata()) == [diverged]
    assert ax.get_ylim()[1] < 10  # the climb to 141 does not flatten the curve before it


def test_plot_reduces_a_long_run_to_what_the_image_shows(tmp_path, figures):
    rng = random.Random(7)
    n = 30_000
    losses = [2.3 + math.exp(-i / 3000) + rng.gauss(0, 0.3) for i in range(n)]
    write_plain(tmp_path / "long.jsonl", losses)
    assert cli.main(["plot", str(tmp_path / "long.jsonl"), "-o", str(tmp_path / "long.png")]) == 0
    ax = figures[0].axes[0]
    (band,) = [c for c in ax.collections if c.get_label() == "loss of each step"]
    vertices = band.get_paths()[0].vertices
    assert len(vertices) <= 4 * COLUMNS + 10
    assert vertices[:, 1].min() == min(losses) and vertices[:, 1].max() == max(losses)
    assert vertices[:, 0].min() == 1 and vertices[:, 0].max() == n
    (mean_line,) = [line for line in ax.get_lines() if line.get_label().startswith("running mean")]
    steps, drawn = mean_line.get_xdata(), mean_line.get_ydata()
    assert len(steps) <= MAX_POINTS + 1 and steps[0] == 1 and steps[-1] == n
    for step, value in zip(steps[::97], drawn[::97], strict=True):  # the mean of all steps, sampled
        window = losses[max(0, step - 100):step]
        assert value == pytest.approx(math.fsum(window) / len(window), rel=1e-12)


def _peak_rss_kib(*argv) -> int:
    """Peak resident memory of `python -m microgpt ARGV`, from getrusage in the small process that started it.

    Not the plotting process's own figure: Linux keeps a process's peak across exec, so a child of this
    test process would start from pytest's size.
    """
    code = ("import resource, subprocess, sys\n"
            "subprocess.run([sys.executable, '-m', 'microgpt', *sys.argv[1:]], check=True, capture_output=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)  # kibibytes on Linux


def test_plotting_a_huge_file_keeps_memory_flat(tmp_path):
    rng = random.Random(8)
    n = 200_000
    write_plain(tmp_path / "huge.jsonl", [2.3 + rng.random() for _ in range(n)])
    write_plain(tmp_path / "small.jsonl", [2.3 + rng.random() for _ in range(300)])
    # What keeping every record as a parsed dict would take, from Python's own sizes (keys are shared).
    record = json.loads(Path(tmp_path / "huge.jsonl").open().readlines()[1])
    as_dicts = n * (sys.getsizeof(record) + sum(sys.getsizeof(v) for v in record.values()))
    small = _peak_rss_kib("plot", tmp_path / "small.jsonl", "-o", tmp_path / "small.png")
    huge = _peak_rss_kib("plot", tmp_path / "huge.jsonl", "-o", tmp_path / "huge.png")
    print(f"peak memory: {small / 1024:.1f} MiB for 300 steps, {huge / 1024:.1f} MiB for {n} steps; "
          f"the records as dicts alone: {as_dicts / 2 ** 20:.1f} MiB")
    assert png_size(tmp_path / "huge.png") == (1200, 720)
    assert (huge - small) * 1024 < as_dicts / 3


def test_matplotlib_is_imported_only_when_drawing():
    code = "import sys, microgpt.plot, microgpt.compare; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_plot_and_compare_share_helpers_not_each_other():
    for name in ("plot", "compare"):
        tree = ast.parse((ROOT / "src" / "microgpt" / f"{name}.py").read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported |= {node.module or ""} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name.removeprefix("microgpt.") for a in node.names}
        other = "compare" if name == "plot" else "plot"
        assert other not in imported and "plotting" in imported, imported


# --- errors -------------------------------------------------------------------------------------------------

def test_plot_errors_exit_2_with_one_line(tmp_path):
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
        ([tmp_path / "missing.jsonl", "-o", tmp_path / "a.png"], "does not exist"),
        ([bad_json, "-o", tmp_path / "a.png"], "line 22: not JSON"),
        ([bad_loss, "-o", tmp_path / "a.png"], "loss: expected a number"),
        ([header_only, "-o", tmp_path / "a.png"], "no training steps"),
        ([good, "-o", tmp_path / "a.jpg"], "unsupported image type '.jpg'"),
        ([good, "-o", tmp_path / "a"], "unsupported image type"),
        ([good, "-o", tmp_path / "nowhere" / "a.png"], "does not exist"),
        ([good, "-o", tmp_path / "folder.png"], "is a folder"),
        ([metrics_png], "would overwrite the metrics file"),
    ]
    for argv, message in cases:
        assert_one_line_error(run_cli("plot", *argv), message)
    assert not (tmp_path / "a.png").exists()


def bad_metrics_files(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """Files a reader must refuse, each with the words its one-line error must hold."""
    good = folder / "good.jsonl"
    write_run(good, num_steps=20)
    lines = good.read_bytes().splitlines(keepends=True)
    header = json.loads(lines[0])
    cases = {
        "json array": (lines + [b"[1, 2]\n"], ["line 22", "a JSON object"]),
        "config list": ([json.dumps({**header, "config": [1, 2]}).encode() + b"\n"] + lines[1:], ["line 1", "config"]),
        "vocab string": ([json.dumps({**header, "vocab_size": "27"}).encode() + b"\n"] + lines[1:],
                         ["line 1", "vocab_size"]),
        "not utf-8": (lines[:5] + [b'{"type": "step", "step": 5, "loss": 2.5, "note": "\xff"}\n'] + lines[5:],
                      ["line 6", "0xff", "UTF-8"]),
        "names": ([NAMES.read_bytes()[:200]], ["line 1", "not JSON"]),
        "steps only": (lines[1:], ["line 1", "before any run header"]),
    }
    out = {}
    for name, (content, words) in cases.items():
        path = folder / (name.replace(" ", "_") + ".jsonl")
        path.write_bytes(b"".join(content))
        out[name] = (path, [str(path), *words])
    return out


def test_plot_refuses_bad_metrics_files_in_one_line(tmp_path):
    for name, (path, words) in bad_metrics_files(tmp_path).items():
        line = assert_one_line_error(run_cli("plot", path, "-o", tmp_path / "a.png"), *words)
        assert "microgpt train --metrics" in line, name  # the fix
    assert not (tmp_path / "a.png").exists()


EXTREMES = {
    "losses of both signs near the largest float": ([1e308, -1e308, 1.7976931348623157e308], {}),
    "losses of 1e308": ([1e308] * 150, {}),
    "subnormal losses": ([5e-324 * i for i in range(1, 150)], {}),
    "validation losses of both signs near the largest float": ([3.0, 2.5, 2.4], {}),
    "steps near 2**62": ({2 ** 62 + i: 1.0 for i in range(1, 30)}, {}),
    "names that were not UTF-8": ([3.0, 2.5], {"engine": "\ud800", "data": "/d/\udcff.txt",
                                               "config": {"optimizer": "\udcff"}}),
}


def test_extreme_values_and_names_are_drawn_without_a_warning(tmp_path):
    import warnings

    paths = []
    for i, (losses, header) in enumerate(EXTREMES.values()):
        steps = losses if isinstance(losses, dict) else dict(enumerate(losses, 1))
        head = {"type": "run", "run_id": "x", "engine": "numpy", "config": Config().to_dict(), "vocab_size": VOCAB,
                **header}
        val = "validation" in list(EXTREMES)[i]
        lines = [json.dumps(head)] + [json.dumps({"type": "step", "step": k, "loss": v,
                                                  **({"val_loss": (-1) ** k * 1.7976931348623157e308} if val else {})})
                                      for k, v in steps.items()]
        paths.append(tmp_path / f"odd{i}\udcff.jsonl")  # a file name that is not UTF-8, as Python sees it
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    for argv in [["plot", path] for path in paths] + [["compare", *paths], ["compare", *paths, "--logy"]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc, out, err = run_cli(*argv, "-o", tmp_path / "a.png")
        assert (rc, err) == (0, ""), argv
        assert not caught, (argv, [str(w.message) for w in caught])
        assert png_size(tmp_path / "a.png") == (1200, 720)
        out.encode("utf-8")  # printable as it is


# --- with a real run ------------------------------------------------------------------------------------------

def test_plot_reads_the_metrics_of_a_real_training_run(tmp_path, monkeypatch, capsys, figures):
    metrics = tmp_path / "run.jsonl"
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("train", "plot")})
    argv = ["train", "--engine", "numpy", "--data", str(NAMES), "--steps", "30", "--num-samples", "0", "--quiet",
            "--val-fraction", "0.1", "--eval-every", "10", "--metrics", str(metrics)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(metrics), "-o", str(tmp_path / "loss.png")]) == 0
    assert png_size(tmp_path / "loss.png") == (1200, 720)
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert "uniform guess ln(27) = 3.296" in labels  # names.txt: 26 letters and BOS
    val_line = [line for line in figures[0].axes[0].get_lines() if line.get_label().startswith("validation")]
    assert list(val_line[0].get_xdata()) == [10, 20, 30]
    assert "numpy engine on names.txt" in figures[0].axes[0].get_title()
