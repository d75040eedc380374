"""Trust nothing that is read, lose nothing that was written: the tool's promises, one user command each.

- A checkpoint never decides where anything is written, and the data it names is read only if it is a
  regular file of a sane size whose fingerprint matches.
- A hand-edited checkpoint.json or metrics file is one line `microgpt: error: ...`, exit 2, in every
  command that reads it (`sample`, `eval`, `train --resume`; `plot`, `compare`, `train --resume`).
- What cannot work is refused before the first step: an --out that cannot be written, a --metrics
  that is not a metrics file, sizes that do not fit in memory, a temperature that overflows, a
  negative seed, a FIFO as data.
- A write that fails mid-run (a file-size limit, a full disk) is one line, exit 1, with the last good
  checkpoint loadable and the metrics file made of whole lines.

A test marked xfail(strict=True) shows a promise the product does not keep yet; its reason says what
happens instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    SMALL_FLAGS,
    TINY_DOCS,
    assert_ok_or_one_line_error,
    assert_one_line_error,
    run_cli,
    run_cli_interrupted,
    run_module,
    samples_of,
    step_records,
    whole_checkpoint_step,
    write_docs,
)

from microgpt.checkpoint import load_checkpoint

TINY = [*SMALL_FLAGS, "--num-samples", "3", "--quiet"]
BASE_STEPS, BASE_STOP = 20, 12  # the shared checkpoint: a 20-step run stopped after step 12


def train_args(data: Path, out: Path | None = None, steps: int = BASE_STEPS, *more: str) -> list[str]:
    args = ["train", "--data", str(data), *TINY, "--steps", str(steps), *more]
    return args + (["--out", str(out)] if out is not None else [])


def edit_meta(folder: Path, change) -> None:
    """Apply `change(meta)` to a checkpoint's checkpoint.json, as a user with an editor would."""
    path = folder / "checkpoint.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    path.write_text(json.dumps(meta, indent=1), encoding="utf-8")


def files_of(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` (but the lock, whose content is the last locker's pid) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def assert_whole_lines(path: Path) -> list[dict]:
    """A metrics file made of whole JSON lines only; its records."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), raw[-200:]
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


@pytest.fixture(scope="module")
def base(tmp_path_factory, data) -> Path:
    """A checkpoint folder of a 20-step run stopped by Ctrl-C after step 12 (so a resume trains on)."""
    folder = tmp_path_factory.mktemp("base") / "run"
    run_cli_interrupted(*train_args(data, folder, BASE_STEPS, "--checkpoint-every", "5"), step=BASE_STOP)
    assert load_checkpoint(folder).step == BASE_STOP
    return folder


@pytest.fixture
def ck(base, tmp_path) -> Path:
    """A fresh copy of the shared checkpoint folder, for a test to edit."""
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    return folder


def command(name: str, folder: Path) -> list[str]:
    """The user's command that reads checkpoint `folder`."""
    if name == "resume":
        return ["train", "--resume", str(folder), "--quiet"]
    return [name, "--checkpoint", str(folder), "--num-samples", "2"]


READERS = ["sample", "eval", "resume"]


@pytest.fixture(params=["train", "sample"])
def train_or_sample(request, data, base) -> list[str]:
    """The two commands that take sampling flags: a new run on the data, or sampling from the shared checkpoint."""
    return train_args(data) if request.param == "train" else command("sample", base)


# --- a checkpoint never decides where anything is written ----------------------------------------------


def _victim(path: Path, like: Path) -> bytes:
    """A valid metrics file at `path` (so appending to it would be accepted), with known bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(like, path)
    return path.read_bytes()


@pytest.mark.parametrize("where", ["absolute", "parent", "subfolder", "dot-dot"])
def test_a_checkpoints_metrics_name_cannot_make_a_resume_write_elsewhere(ck, tmp_path, where):
    outside = tmp_path / "outside" / "victim.jsonl"
    before = _victim(outside, ck / "metrics.jsonl")
    name = {"absolute": str(outside), "parent": "../outside/victim.jsonl", "subfolder": "sub/victim.jsonl",
            "dot-dot": ".."}[where]
    if where == "subfolder":
        before_sub = _victim(ck / "sub" / "victim.jsonl", ck / "metrics.jsonl")
    edit_meta(ck, lambda m: m.update(metrics=name))

    result = run_cli(*command("resume", ck))

    assert_ok_or_one_line_error(result, "metrics")  # refusing the hint is fine; writing through it is not
    assert outside.read_bytes() == before
    if where == "subfolder":
        assert (ck / "sub" / "victim.jsonl").read_bytes() == before_sub


@pytest.mark.parametrize("cmd", READERS)
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder", "sparse-2GiB", "other-text"])
def test_the_data_a_checkpoint_names_is_read_only_if_it_is_a_sane_regular_file(ck, tmp_path, kind, cmd):
    if kind == "dev-zero":
        target = Path("/dev/zero")
    elif kind == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    elif kind == "folder":
        target = tmp_path
    elif kind == "sparse-2GiB":
        target = tmp_path / "huge.txt"
        with open(target, "wb") as f:
            f.truncate(2 << 30)  # sparse: nothing is written, but reading it would take 2 GiB
    else:
        target = write_docs(tmp_path / "other.txt", ["zzz", "yyy"])
    edit_meta(ck, lambda m: m.update(data=str(target)))
    before = files_of(ck)

    started = time.monotonic()
    proc = run_module(*command(cmd, ck), timeout=60)

    assert time.monotonic() - started < 30  # neither blocked on the FIFO nor read 2 GiB
    if cmd == "sample":  # the data only counts new samples: without it, say so and sample
        assert proc.returncode == 0, proc.stderr
        assert len(samples_of(proc.stdout)) == 2
        assert "training data not found" in proc.stdout
    else:
        assert_one_line_error(proc, "data")
        assert files_of(ck) == before


# --- a hand-edited checkpoint.json is one line, exit 2, in every command that reads it ------------------


def _set(key, value):
    return lambda m: m.update({key: value})


def _set_config(key, value):
    return lambda m: m["config"].update({key: value})


HAND_EDITS = {
    "step-ten": (_set("step", "ten"), "step"),
    "step-negative": (_set("step", -5), "step"),
    "config-a-list": (_set("config", [1, 2]), "config"),
    "n_head-zero": (_set_config("n_head", 0), "--n-head"),
    "n_embd-a-string": (_set_config("n_embd", "16"), "--n-embd"),
    "vocab-of-numbers": (_set("vocab", [1, 2, 3]), "vocab"),
    "rng_state-garbage": (_set("rng_state", "garbage"), "rng_state"),
    "unknown-engine-option": (lambda m: m["engine_options"].update(turbo=True), "engine_options"),
}


@pytest.mark.parametrize("cmd", READERS)
@pytest.mark.parametrize("edit", list(HAND_EDITS))
def test_a_hand_edited_checkpoint_is_one_line_exit_2(ck, edit, cmd):
    change, word = HAND_EDITS[edit]
    edit_meta(ck, change)
    before = files_of(ck)

    line = assert_one_line_error(run_cli(*command(cmd, ck)), word, str(ck))

    assert "checkpoint.json" in line
    assert files_of(ck) == before  # nothing written, nothing trimmed


def _set_state(folder: Path, change) -> None:
    """Rewrite the state file through `change(tensors)` and record its new sha256."""
    from safetensors.numpy import load_file, save_file

    meta = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
    state = folder / meta["state_file"]
    tensors = load_file(state)
    change(tensors)
    save_file(tensors, state)
    edit_meta(folder, lambda m: m.update(state_sha256=hashlib.sha256(state.read_bytes()).hexdigest()))


@pytest.mark.parametrize("cmd", READERS)
def test_nan_weights_with_a_matching_sha256_are_one_line_exit_2(ck, cmd):
    _set_state(ck, lambda t: t["wte"].__setitem__((0, 0), math.nan))  # only the finiteness check can tell
    before = files_of(ck)

    assert_one_line_error(run_cli(*command(cmd, ck)), "wte", "finite")
    assert files_of(ck) == before


@pytest.mark.parametrize("cmd", ["sample", "eval"])
def test_finite_but_huge_weights_sample_or_are_one_line(ck, cmd):
    _set_state(ck, lambda t: t["lm_head"].fill(1e308))
    try:
        result = run_cli(*command(cmd, ck))
    except ValueError as e:
        pytest.fail(f"{cmd} raised ValueError: {e}")
    assert_ok_or_one_line_error(result, str(ck))


def test_a_state_file_error_never_prints_the_files_raw_bytes(ck):
    import struct

    meta = json.loads((ck / "checkpoint.json").read_text(encoding="utf-8"))
    state = ck / meta["state_file"]
    raw = state.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["wte"]["dtype"] = "F\n64\x1b[2J"  # a newline, then "clear the screen"
    text = json.dumps(header).encode("utf-8")
    state.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])
    edit_meta(ck, lambda m: m.update(state_sha256=hashlib.sha256(state.read_bytes()).hexdigest()))

    rc, out, err = run_cli(*command("sample", ck))

    assert "\x1b" not in err
    assert_one_line_error((rc, out, err), str(ck), "safetensors")


def test_a_vocabulary_of_unencodable_characters_is_refused(ck):
    def lone_surrogate(meta):
        meta["vocab"] = sorted(meta["vocab"][:-1] + ["\ud800"])
    edit_meta(ck, lone_surrogate)

    proc = run_module("sample", "--checkpoint", ck, "--num-samples", "20", "--temperature", "5", timeout=60)

    assert_one_line_error(proc, "vocab")


def _memory_cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a model built anyway dies here, not the machine


@pytest.mark.parametrize("cmd", ["sample", "eval"])
def test_a_checkpoint_config_too_big_for_memory_is_refused_at_once(ck, cmd):
    edit_meta(ck, _set_config("n_layer", 10 ** 6))
    started = time.monotonic()
    try:
        proc = run_module(*command(cmd, ck), timeout=20, preexec_fn=_memory_cap)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{cmd} ran for 20 s on a checkpoint whose model cannot fit in memory")
    assert_one_line_error(proc)
    assert time.monotonic() - started < 15


# --- symlinks and special files inside a checkpoint folder --------------------------------------------------


def test_a_lock_file_that_is_a_symlink_cannot_overwrite_what_it_points_to(ck, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n", encoding="utf-8")
    (ck / ".lock").unlink()
    (ck / ".lock").symlink_to(victim)

    result = run_cli(*command("resume", ck))

    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert_ok_or_one_line_error(result, ".lock")


def test_a_lock_file_that_is_a_fifo_is_one_line(ck):
    (ck / ".lock").unlink()
    os.mkfifo(ck / ".lock")
    assert_ok_or_one_line_error(run_module(*command("resume", ck), timeout=60), str(ck))


def test_a_metrics_symlink_in_the_folder_cannot_make_a_resume_write_outside(ck, tmp_path):
    outside = tmp_path / "elsewhere" / "created.jsonl"
    outside.parent.mkdir()
    (ck / "metrics.jsonl").unlink()
    (ck / "metrics.jsonl").symlink_to(outside)

    result = run_cli(*command("resume", ck))

    assert not outside.exists()
    assert_ok_or_one_line_error(result, "metrics")


def test_a_snapshots_symlink_cannot_make_a_resume_write_outside(ck, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.rmtree(ck / "snapshots")
    (ck / "snapshots").symlink_to(outside, target_is_directory=True)

    result = run_cli(*command("resume", ck), "--checkpoint-every", "2")

    assert list(outside.iterdir()) == []
    assert_ok_or_one_line_error(result, "snapshots")


# --- write errors found before the work ------------------------------------------------------------------


def test_out_under_a_regular_file_is_refused_before_the_first_step(data, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me\n", encoding="utf-8")
    metrics = tmp_path / "m.jsonl"

    rc, out, err = run_cli(*train_args(data, blocker / "run"), "--metrics", str(metrics))

    assert_one_line_error((rc, out, err), str(blocker))
    assert not metrics.exists()  # no step was logged
    assert blocker.read_text(encoding="utf-8") == "keep me\n"


class ReadOnly:
    """Make a folder unwritable even for root where the system allows it (chmod, else chattr +i); skip if not."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.immutable = folder, False

    def __enter__(self) -> Path:
        os.chmod(self.folder, 0o500)
        if os.access(self.folder, os.W_OK):  # root ignores the mode
            chattr = shutil.which("chattr")
            self.immutable = bool(chattr) and subprocess.run([chattr, "+i", str(self.folder)],
                                                             capture_output=True).returncode == 0
            if not self.immutable or self._writable():
                self.__exit__()
                pytest.skip("running as root and chattr +i is not available: the folder stays writable")
        return self.folder

    def _writable(self) -> bool:
        try:
            (self.folder / ".probe").touch()
        except OSError:
            return False
        (self.folder / ".probe").unlink()
        return True

    def __exit__(self, *exc: object) -> None:
        if self.immutable:
            subprocess.run(["chattr", "-i", str(self.folder)], capture_output=True)
        os.chmod(self.folder, 0o700)


def test_an_unwritable_out_folder_is_refused_before_the_first_step(data, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    metrics = tmp_path / "m.jsonl"
    with ReadOnly(folder):
        result = run_cli(*train_args(data, folder / "run"), "--metrics", str(metrics))
        assert_one_line_error(result, "cannot write", "--out")
    assert not metrics.exists()


def test_a_read_only_resume_folder_is_refused_before_the_first_step(ck):
    before = files_of(ck)
    with ReadOnly(ck):
        started = time.monotonic()
        result = run_cli(*command("resume", ck))
        assert_one_line_error(result, "cannot write", str(ck))
        assert time.monotonic() - started < 10
    assert files_of(ck) == before  # the metrics file holds no step beyond the checkpoint's


# --- a write that fails mid-run: one line, exit 1, the last checkpoint whole --------------------------------


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes beyond it fail with EFBIG
    return apply


def test_a_file_size_limit_hit_by_the_metrics_keeps_the_last_checkpoint(data, base, tmp_path):
    out = tmp_path / "run"
    state_size = (base / load_checkpoint(base).meta["state_file"]).stat().st_size
    # Room for every state file and checkpoint.json, not for a metrics file of a few hundred steps.
    limit = state_size + 8000
    proc = run_module(*train_args(data, out, 3000, "--checkpoint-every", "5"), timeout=300,
                      preexec_fn=_file_size_limit(limit))

    assert_one_line_error(proc, "metrics", code=1)
    records = assert_whole_lines(out / "metrics.jsonl")
    logged = [r["step"] for r in records if r["type"] == "step"]
    assert logged == list(range(1, len(logged) + 1))
    saved = whole_checkpoint_step(out)
    assert saved % 5 == 0 and 0 < saved <= logged[-1]
    assert not list(out.glob(".*.tmp"))
    sampled = run_cli("sample", "--checkpoint", out, "--num-samples", "2")
    assert sampled[0] == 0 and len(samples_of(sampled[1])) == 2


def test_a_file_size_limit_hit_by_the_first_checkpoint_says_nothing_was_saved(data, base, tmp_path):
    out = tmp_path / "run"
    state_size = (base / load_checkpoint(base).meta["state_file"]).stat().st_size
    proc = run_module(*train_args(data, out, 3000, "--checkpoint-every", "5"), timeout=300,
                      preexec_fn=_file_size_limit(state_size - 1000))

    line = assert_one_line_error(proc, "checkpoint of step 5", code=1)
    assert "nothing saved" in line
    assert not (out / "checkpoint.json").exists()
    assert not list(out.glob(".*.tmp")) and not list(out.glob("state-*"))
    assert [r["step"] for r in assert_whole_lines(out / "metrics.jsonl") if r["type"] == "step"] == [1, 2, 3, 4, 5]


def _can_mount_tmpfs() -> bool:
    unshare = shutil.which("unshare")
    if not unshare or sys.platform != "linux":
        return False
    probe = subprocess.run([unshare, "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -m and mount (a private tmpfs for a full disk)")
def test_a_full_disk_keeps_the_last_checkpoint_and_whole_metrics_lines(data, tmp_path):
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    train = " ".join(f"'{a}'" for a in [sys.executable, "-m", "microgpt",
                                          *train_args(data, disk / "run", 3000, "--checkpoint-every", "5")])
    # A 160 KB disk of its own, in a private mount namespace: gone with the process, so copy the folder out.
    script = (f"mount -t tmpfs -o size=160k tmpfs '{disk}' || exit 99; {train}; rc=$?; "
              f"cp -a '{disk}/run' '{copy}'; exit $rc")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)

    line = assert_one_line_error(proc, "cannot write", code=1)
    assert "No space left" in line
    saved = whole_checkpoint_step(copy)
    logged = [r["step"] for r in assert_whole_lines(copy / "metrics.jsonl") if r["type"] == "step"]
    assert logged == list(range(1, len(logged) + 1)) and saved <= logged[-1]
    if "is kept" in line:  # the message names the checkpoint that is really there
        assert f"(step {saved}) is kept" in line


# --- sizes and values that cannot work ----------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--n-embd", "--n-layer", "--block-size", "--batch-size"])
def test_a_model_too_big_for_memory_is_refused_at_once_with_the_estimate(data, flag):
    started = time.monotonic()
    proc = run_module(*train_args(data), flag, 10 ** 12, timeout=60)
    assert_one_line_error(proc, "needs about", "available", flag)
    assert time.monotonic() - started < 15


def test_a_temperature_of_5e_324_is_refused_before_training(train_or_sample):
    rc, out, err = run_cli(*train_or_sample, "--temperature", "5e-324")
    assert_one_line_error((rc, out, err), "--temperature", "0.01")
    assert "num docs" not in out and not samples_of(out)


@pytest.mark.parametrize("cmd", ["train", "sample", "eval"])
def test_a_fifo_as_data_is_refused_without_blocking(data, base, tmp_path, cmd):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = ["train", "--data", str(fifo), *TINY] if cmd == "train" else command(cmd, base) + ["--data", str(fifo)]
    started = time.monotonic()
    proc = run_module(*args, timeout=60)
    assert_one_line_error(proc, str(fifo), "not a regular file")
    assert time.monotonic() - started < 30


def test_a_negative_seed_is_refused(train_or_sample):
    assert_one_line_error(run_cli(*train_or_sample, "--seed", "-1"), "--seed", "-1")


def _capped(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # memory the command may take, so it fails fast
    return apply


def test_text_eval_windows_too_big_for_memory_is_refused_before_training(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TINY_DOCS * 10) + "\n", encoding="utf-8")
    try:
        proc = run_module("train", "--data", text, "--data-format", "text", *TINY, "--steps", "5",
                          "--eval-windows", 10 ** 9, timeout=30, preexec_fn=_capped(400 << 20))
    except subprocess.TimeoutExpired:
        pytest.fail("train ran for 30 s with --eval-windows 10**9 instead of refusing it")
    assert_one_line_error(proc, "--eval-windows")
    assert "step" not in proc.stdout


@pytest.mark.parametrize("cmd", ["train", "sample"])
def test_a_text_without_newlines_trains_and_samples(tmp_path, cmd):
    text = tmp_path / "one-line.txt"
    text.write_text(" ".join(TINY_DOCS * 10), encoding="utf-8")  # one long line, no newline at all
    out = tmp_path / "run"
    rc, stdout, err = run_cli("train", "--data", text, "--data-format", "text", *TINY, "--steps", "5", "--out", out)
    if cmd == "sample":
        rc, stdout, err = run_cli("sample", "--checkpoint", out, "--max-tokens", "20")
    assert rc == 0, err
    assert "None" not in err


def test_a_diverging_run_is_one_line_exit_1_even_with_metrics(data, tmp_path):
    proc = run_module(*train_args(data), "--lr", "1e300", "--metrics", tmp_path / "m.jsonl", timeout=120)
    assert_one_line_error(proc, "diverged", "--lr", code=1, prefix=r"microgpt: training diverged at step \d+")
    assert assert_whole_lines(tmp_path / "m.jsonl")[0]["type"] == "run"


# --- metrics files: validated before use, never a target that is not one -----------------------------------


def _bad_lines(base_metrics: Path) -> dict[str, bytes]:
    header = json.loads(base_metrics.read_bytes().splitlines()[0])
    return {
        "a-list": b"[1, 2, 3]\n",
        "config-a-list": json.dumps({**header, "config": [1, 2]}).encode() + b"\n",
        "vocab_size-a-string": json.dumps({**header, "vocab_size": "27"}).encode() + b"\n",
        "non-utf8": b'{"type": "step", "step": 99, "loss": 1.0, "note": "\xff"}\n',
    }


BAD_LINES = ["a-list", "config-a-list", "vocab_size-a-string", "non-utf8"]


@pytest.mark.parametrize("cmd", ["plot", "compare", "resume"])
@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_metrics_line_is_one_line_exit_2(ck, tmp_path, case, cmd):
    metrics, good = ck / "metrics.jsonl", tmp_path / "good.jsonl"
    shutil.copyfile(metrics, good)
    bad = _bad_lines(metrics)[case]
    with open(metrics, "ab") as f:
        f.write(bad)
    before = files_of(ck)
    if cmd == "plot":
        result = run_cli("plot", metrics, "-o", tmp_path / "loss.png")
    elif cmd == "compare":
        result = run_cli("compare", good, metrics, "-o", tmp_path / "c.png")
    else:
        result = run_cli(*command("resume", ck))

    line = assert_one_line_error(result, str(metrics))
    assert "line" in line
    assert files_of(ck) == before
    assert not (tmp_path / "loss.png").exists() and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("target", ["text-file", "the-data", "dev-null", "folder"])
def test_metrics_that_is_not_a_metrics_file_is_refused_with_nothing_written(data, tmp_path, target):
    work = tmp_path / "work"
    work.mkdir()
    if target == "text-file":
        path = work / "notes.txt"
        path.write_text("my notes\n", encoding="utf-8")
    elif target == "the-data":
        path = work / "docs.txt"
        shutil.copyfile(data, path)
    elif target == "dev-null":
        path = Path("/dev/null")
    else:
        path = work / "folder"
        path.mkdir()
    own_data = work / "docs.txt" if target == "the-data" else data
    before, entries = files_of(work), sorted(work.rglob("*"))

    result = run_cli(*train_args(own_data), "--metrics", str(path))

    assert_one_line_error(result, str(path))
    assert "num docs" not in result[1]  # refused before the run started
    assert files_of(work) == before
    assert sorted(work.rglob("*")) == entries


# --- what metrics values plot and compare can draw --------------------------------------------------------


def _metrics_with(base_metrics: Path, path: Path, steps: list[dict], header: dict | None = None) -> Path:
    head = json.loads(base_metrics.read_bytes().splitlines()[0])
    lines = [json.dumps({**head, **(header or {})})] + [json.dumps({"type": "step", **s}) for s in steps]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


EXTREMES = {
    "losses-of-both-signs-1e308": ([{"step": 1, "loss": 1e308}, {"step": 2, "loss": -1e308}], None),
    "losses-of-1e308": ([{"step": 1, "loss": 1e308}, {"step": 2, "loss": 1e308}], None),
    "val-losses-of-both-signs-1e308": ([{"step": 1, "loss": 1.0, "val_loss": 1e308},
                                        {"step": 2, "loss": 1.0, "val_loss": -1e308}], None),
    "step-2**63": ([{"step": 2 ** 63, "loss": 1.0}], None),
    "window-2**64": ([{"step": 1, "loss": 1.0, "window": 2 ** 64}], None),
    "lone-surrogate-engine": ([{"step": 1, "loss": 1.0}], {"engine": "\ud800"}),
    "lone-surrogate-data": ([{"step": 1, "loss": 1.0}], {"data": "/x/\udcff.txt"}),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy says so when it overflows to inf, as it may here
@pytest.mark.parametrize("cmd", ["plot", "compare"])
@pytest.mark.parametrize("case", list(EXTREMES))
def test_metrics_values_that_cannot_be_drawn_are_one_line_or_drawn(base, tmp_path, case, cmd):
    steps, header = EXTREMES[case]
    metrics = _metrics_with(base / "metrics.jsonl", tmp_path / "m.jsonl", steps, header)
    args = ["plot", metrics, "-o", tmp_path / "m.png"] if cmd == "plot" else \
        ["compare", base / "metrics.jsonl", metrics, "-o", tmp_path / "m.png"]
    try:
        result = run_cli(*args)
    except Exception as e:  # noqa: BLE001 - what the user would see as a traceback
        pytest.fail(f"{cmd} raised {type(e).__name__}: {e}")
    assert_ok_or_one_line_error(result, str(metrics))


# --- output that cannot be written ---------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("cmd", ["sample", "train"])
def test_a_full_stdout_is_one_line_exit_1(data, base, cmd):
    args = command("sample", base) if cmd == "sample" else train_args(data)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "microgpt", *map(str, args)], stdout=full,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120)
    assert_one_line_error(proc, "No space left", code=1)


def test_a_refused_resume_leaves_the_sigint_handler_as_it_was(ck):
    # run_cli runs in this process: a refusal must not leave the tool's handlers behind.
    edit_meta(ck, _set("step", "ten"))
    before = signal.getsignal(signal.SIGINT)
    run_cli(*command("resume", ck))
    assert signal.getsignal(signal.SIGINT) is before


def test_the_shared_checkpoint_is_readable_by_every_command(base, tmp_path):
    # The baseline of every test above: the unedited folder works in each command.
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    for cmd in READERS:
        rc, out, err = run_cli(*command(cmd, copy))
        assert rc == 0, (cmd, err)
    assert whole_checkpoint_step(copy) == BASE_STEPS
    assert stat.S_ISREG((copy / "metrics.jsonl").stat().st_mode)
    assert [r["step"] for r in step_records(copy / "metrics.jsonl")] == list(range(1, BASE_STEPS + 1))
