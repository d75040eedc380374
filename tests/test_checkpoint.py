"""Checkpoints, and the `sample` and `eval` commands that read them.

A checkpoint must hold everything needed to continue (weights, Adam's moments, gradients, step,
the random generator's state), in files anyone can read without running our code (safetensors
and JSON, no pickle), and load in any engine. Broken or mismatched checkpoints are refused with
one line that names the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NAMES

from microgpt.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from microgpt.cli import main
from microgpt.config import Config
from microgpt.data import fingerprint, load_docs, shuffled
from microgpt.engines import create_engine
from microgpt.engines.base import param_shapes
from microgpt.tokenizer import Tokenizer
from microgpt.train import train

ROOT = Path(__file__).absolute().parents[1]
ENGINES = ["scalar", "numpy", "torch"]
SMALL = ["--n-embd", "8", "--n-head", "2", "--block-size", "8"]
SMALL_CONFIG = dict(n_embd=8, n_head=2, block_size=8)


def run_cli(*args) -> tuple[int, str, str]:
    """`microgpt ARGS` in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def run_module(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microgpt", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2, exactly one line on stderr, `microgpt: error: ...` naming `words`, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("microgpt: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def samples_of(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("sample ")]


def as_arrays(state: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(w, dtype=np.float64) for name, w in state.items()}


def assert_same_arrays(a: dict, b: dict) -> None:
    a, b = as_arrays(a), as_arrays(b)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name  # exact, not approximately


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """200 names from names.txt: every letter of a-z occurs, so the vocabulary is the full 27."""
    docs = load_docs(NAMES)[:200]
    path = tmp_path_factory.mktemp("data") / "names200.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    assert len(set("".join(docs))) == 26
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_data) -> dict:
    """One checkpoint per engine, written by `microgpt train --out` (20 steps of a small model)."""
    runs = {}
    for engine in ENGINES:
        out = tmp_path_factory.mktemp(f"ck-{engine}") / "ck"
        rc, stdout, stderr = run_cli("train", "--data", small_data, "--engine", engine, *SMALL, "--steps", 20,
                                     "--out", out, "--num-samples", 5, "--quiet")
        assert rc == 0, stderr
        runs[engine] = {"path": out, "samples": samples_of(stdout)}
    return runs


# --- what a checkpoint holds -----------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_round_trip_restores_weights_moments_grads_step_and_rng(tmp_path, engine):
    # --no-zero-grad keeps the gradients non-zero between steps, so restoring them is visible.
    config = Config(**SMALL_CONFIG, num_steps=10, zero_grad=False)
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(NAMES), rng)
    tokenizer = Tokenizer.from_docs(docs)
    original = create_engine(engine, config, tokenizer.vocab_size, rng)
    train(original, docs, tokenizer, config, on_step=lambda step, loss, lr: step + 1 == 4)
    save_checkpoint(tmp_path / "ck", original, 4, rng, tokenizer.chars, fingerprint(load_docs(NAMES)))

    checkpoint = load_checkpoint(tmp_path / "ck")
    assert checkpoint.step == 4
    assert checkpoint.config == config
    assert checkpoint.vocab == tokenizer.chars
    assert checkpoint.rng_state() == rng.getstate()
    restored_rng = random.Random(0)
    restored_rng.setstate(checkpoint.rng_state())
    assert [restored_rng.random() for _ in range(5)] == [rng.random() for _ in range(5)]

    other = create_engine(engine, config, tokenizer.vocab_size, random.Random(7))  # different weights
    checkpoint.restore(other)
    assert_same_arrays(other.state_dict(), original.state_dict())
    before, after = original.optimizer_state(), other.optimizer_state()
    assert set(before) == {"m", "v", "grad"}
    for key in ("m", "v", "grad"):
        assert any(np.any(np.asarray(w) != 0) for w in before[key].values()), key
        assert_same_arrays(after[key], before[key])

    # Both continue identically: a step of each gives the same loss and the same weights.
    losses = []
    for eng in (original, other):
        train(eng, docs, tokenizer, config, start_step=4, on_step=lambda step, loss, lr: losses.append(loss) or True)
    assert losses[0] == losses[1]
    assert_same_arrays(other.state_dict(), original.state_dict())
    original.close()
    other.close()


def _parse_safetensors(payload: bytes) -> tuple[dict, bytes]:
    """The format by hand: u64 little-endian header length, a JSON header, then raw tensor bytes."""
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + n].decode("utf-8"))
    return header, payload[8 + n:]


def test_checkpoint_files_are_safetensors_and_json_without_pickle(tmp_path):
    out = tmp_path / "ck"
    rc, _, err = run_cli("train", "--data", NAMES, "--steps", 3, "--out", out, "--num-samples", 0, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json", "state-0000003.safetensors"]

    meta = json.loads((out / "checkpoint.json").read_text(encoding="utf-8"))
    assert meta["format"] == "microgpt-checkpoint" and meta["version"] == FORMAT_VERSION == 1
    assert meta["step"] == 3
    assert meta["config"] == Config(num_steps=3, num_samples=0).to_dict()
    assert meta["vocab"] == list("abcdefghijklmnopqrstuvwxyz")
    assert meta["data_fingerprint"] == fingerprint(load_docs(NAMES))
    assert meta["engine"] == "numpy"
    # The generator after the shuffle and one gauss per parameter (SPEC section 1); training draws nothing.
    rng = random.Random(42)
    rng.shuffle(load_docs(NAMES))
    for _ in range(4192):
        rng.gauss(0, 0.08)
    version, internal, gauss_next = rng.getstate()
    assert meta["rng_state"] == [version, list(internal), gauss_next]

    payload = (out / meta["state_file"]).read_bytes()
    assert meta["state_sha256"] == hashlib.sha256(payload).hexdigest()
    header, data = _parse_safetensors(payload)
    assert header.pop("__metadata__") == {"format": "microgpt-checkpoint", "version": "1"}
    shapes = param_shapes(Config(), 27)
    assert set(header) == {prefix + name for prefix in ("", "adam.m.", "adam.v.", "grad.") for name in shapes}
    spans = sorted(tuple(h["data_offsets"]) for h in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(data)  # the tensors fill the rest of the file exactly
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for name, h in header.items():
        base = re.sub(r"^(adam\.m\.|adam\.v\.|grad\.)", "", name)
        assert h["dtype"] == "F64" and tuple(h["shape"]) == shapes[base], name

    from safetensors.numpy import load_file

    tensors = load_file(out / meta["state_file"])  # safetensors itself reads it
    for name, h in header.items():
        start, end = h["data_offsets"]
        by_hand = np.frombuffer(data[start:end], dtype="<f8").reshape(h["shape"])
        assert np.array_equal(tensors[name], by_hand), name
    assert np.all(tensors["grad.wte"] == 0)  # gradients are zeroed after every update
    assert np.any(tensors["adam.v.wte"] > 0)


# --- any engine reads any engine's checkpoint ------------------------------------------------


@pytest.mark.parametrize("writer", ENGINES)
def test_sample_and_eval_agree_across_engines(trained, small_data, tmp_path, writer):
    ck = trained[writer]["path"]
    # The book engine takes tens of milliseconds per document: evaluate on 12 of them.
    docs = load_docs(small_data)[:12]
    few = tmp_path / "few.txt"
    few.write_text("\n".join(docs), encoding="utf-8")
    printed, evals = {}, {}
    for reader in ENGINES:
        rc, out, err = run_cli("sample", "--checkpoint", ck, "--engine", reader, "--num-samples", 5)
        assert rc == 0, err
        printed[reader] = samples_of(out)
        rc, out, err = run_cli("eval", "--checkpoint", ck, "--engine", reader, "--data", few, "--num-samples", 0)
        assert rc == 0, err
        evals[reader] = [line for line in out.splitlines() if not line.startswith("checkpoint:")]
    # Without --seed, sample continues the checkpoint's generator: the training run's own samples again.
    assert len(trained[writer]["samples"]) == 5
    for reader in ENGINES:
        assert printed[reader] == trained[writer]["samples"], reader
        assert evals[reader] == evals[writer], reader

    # Losses at full precision, each engine's own arithmetic on the same weights.
    checkpoint = load_checkpoint(ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    losses = {}
    for reader in ENGINES:
        engine = create_engine(reader, checkpoint.config, tokenizer.vocab_size, random.Random(0))
        checkpoint.restore(engine)
        losses[reader] = [engine.evaluate(tokenizer.example(doc)) for doc in docs]
        engine.close()
    for reader in ENGINES:
        assert np.allclose(losses[reader], losses[writer], rtol=0, atol=1e-9), reader


# --- eval and sample ---------------------------------------------------------------------------


def test_eval_prints_loss_perplexity_and_uniform_baseline(trained, small_data):
    ck = trained["numpy"]["path"]
    rc, out, err = run_cli("eval", "--checkpoint", ck, "--num-samples", 0)
    assert rc == 0, err
    match = [m for m in (re.search(
        r"^(\w+): (\d+) documents \| loss ([\d.]+) nats/token \| perplexity ([\d.]+) \| "
        r"uniform guess ln\((\d+)\) = ([\d.]+)$", line) for line in out.splitlines()) if m]
    assert len(match) == 1  # no --val-fraction: one part, the training documents
    part, n_docs, loss, ppl, vocab, baseline = match[0].groups()
    assert part == "train" and int(n_docs) == 200 and int(vocab) == 27
    assert float(baseline) == round(math.log(27), 4)
    loss, ppl = float(loss), float(ppl)
    assert abs(ppl - math.exp(loss)) <= math.exp(loss) * 5.1e-5 + 5e-4  # both printed rounded

    # The mean per-token loss, recomputed here: each document's mean loss weighted by its predictions.
    checkpoint = load_checkpoint(ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = create_engine("numpy", checkpoint.config, 27, random.Random(0))
    checkpoint.restore(engine)
    total = count = 0.0
    for doc in load_docs(small_data):
        tokens = tokenizer.example(doc)
        n = min(8, len(tokens) - 1)
        total += engine.evaluate(tokens) * n
        count += n
    assert loss == round(total / count, 4)
    assert loss < float(baseline)  # 20 steps already beat guessing uniformly


def test_eval_on_another_file_reports_all_of_it(trained, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("anna\nbob\nemma\n", encoding="utf-8")
    rc, out, err = run_cli("eval", "--checkpoint", trained["numpy"]["path"], "--data", other, "--num-samples", 0)
    assert rc == 0, err
    assert "all: 3 documents | loss " in out


def test_sample_with_prompt_starts_every_sample_with_it(trained):
    rc, out, err = run_cli("sample", "--checkpoint", trained["numpy"]["path"], "--prompt", "ma", "--seed", 3)
    assert rc == 0, err
    samples = [line.split(": ", 1)[1] for line in samples_of(out)]
    assert len(samples) == 20
    assert all(s.startswith("ma") for s in samples)
    assert len(set(samples)) > 1  # the rest is drawn


def test_the_checkpoint_json_file_stands_for_its_folder(trained):
    folder = Path(trained["numpy"]["path"])
    by_folder = run_cli("sample", "--checkpoint", folder, "--seed", 5)
    by_file = run_cli("sample", "--checkpoint", folder / "checkpoint.json", "--seed", 5)
    assert by_file[0] == 0, by_file[2]
    assert by_file == by_folder


def test_top_k_one_is_greedy_and_ignores_the_seed(trained):
    ck = trained["numpy"]["path"]
    outs = []
    for seed in (1, 2):
        rc, out, err = run_cli("sample", "--checkpoint", ck, "--top-k", 1, "--seed", seed, "--num-samples", 3)
        assert rc == 0, err
        outs.append([line.split(": ", 1)[1] for line in samples_of(out)])
    assert outs[0] == outs[1]
    # Argmax decoding by hand: always the likeliest next token, until BOS or block_size tokens.
    checkpoint = load_checkpoint(ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = create_engine("numpy", checkpoint.config, tokenizer.vocab_size, random.Random(0))
    checkpoint.restore(engine)
    cache, token, greedy = engine.new_cache(), tokenizer.BOS, []
    for pos in range(checkpoint.config.block_size):
        logits = list(engine.next_logits(token, pos, cache))
        token = logits.index(max(logits))
        if token == tokenizer.BOS:
            break
        greedy.append(token)
    assert outs[0] == [tokenizer.decode(greedy)] * 3


# --- refusing broken or mismatched checkpoints -----------------------------------------------


def _copy(trained, tmp_path) -> Path:
    ck = tmp_path / "ck"
    shutil.copytree(trained["numpy"]["path"], ck)
    return ck


def _state_file(ck: Path) -> Path:
    return ck / json.loads((ck / "checkpoint.json").read_text())["state_file"]


def _newer_version(ck: Path) -> None:
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["version"] = FORMAT_VERSION + 1
    (ck / "checkpoint.json").write_text(json.dumps(meta))


def _corrupt_json(ck: Path) -> None:
    text = (ck / "checkpoint.json").read_text()
    (ck / "checkpoint.json").write_text(text[: len(text) // 2])


def _truncate_state(ck: Path) -> None:
    payload = _state_file(ck).read_bytes()
    _state_file(ck).write_bytes(payload[:-100])


def _edit_state(ck: Path) -> None:
    payload = bytearray(_state_file(ck).read_bytes())
    payload[-5] ^= 0x01  # one bit of one weight: the file still parses, only the sha256 can tell
    _state_file(ck).write_bytes(bytes(payload))


def _remove_state(ck: Path) -> None:
    _state_file(ck).unlink()


BROKEN = {
    "newer-version": (_newer_version, ["newer", "upgrade"]),
    "corrupt-json": (_corrupt_json, ["checkpoint.json", "corrupt"]),
    "truncated-state": (_truncate_state, ["sha256"]),
    "edited-state": (_edit_state, ["sha256"]),
    "missing-state": (_remove_state, ["missing"]),
}


@pytest.mark.parametrize("command", ["sample", "resume"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoint_is_one_line_error(trained, tmp_path, case, command):
    ck = _copy(trained, tmp_path)
    corrupt, words = BROKEN[case]
    corrupt(ck)
    if command == "sample":
        proc = run_module("sample", "--checkpoint", ck)
    else:
        proc = run_module("train", "--resume", ck, "--quiet")
    assert_one_line_error(proc, str(ck), *words)


def test_missing_checkpoint_folder(tmp_path):
    assert_one_line_error(run_module("sample", "--checkpoint", tmp_path / "nope"), "does not exist")


def test_resume_with_another_model_shape_is_refused(trained, tmp_path):
    ck = _copy(trained, tmp_path)
    assert_one_line_error(run_module("train", "--resume", ck, "--n-embd", 16), "--n-embd")


def test_resume_with_other_data_is_refused(trained, tmp_path):
    ck = _copy(trained, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("anna\nbob\nzoe\n", encoding="utf-8")
    assert_one_line_error(run_module("train", "--resume", ck, "--data", other), "--data")


def test_out_onto_an_existing_checkpoint_needs_resume(trained, tmp_path, small_data):
    ck = _copy(trained, tmp_path)
    before = (ck / "checkpoint.json").read_bytes()
    proc = run_module("train", "--data", small_data, *SMALL, "--steps", 20, "--out", ck)
    assert_one_line_error(proc, "--resume", str(ck))
    assert (ck / "checkpoint.json").read_bytes() == before  # left untouched


def test_prompt_outside_the_vocabulary(trained):
    proc = run_module("sample", "--checkpoint", trained["numpy"]["path"], "--prompt", "Ma")
    assert_one_line_error(proc, "character 'M' is not", "vocabulary")
    proc = run_module("sample", "--checkpoint", trained["numpy"]["path"], "--prompt", "MaX")
    assert_one_line_error(proc, "characters 'MX' are not", "vocabulary")


def test_negative_top_k(trained):
    assert_one_line_error(run_module("sample", "--checkpoint", trained["numpy"]["path"], "--top-k", -1), "--top-k")


def test_resume_with_other_steps_is_refused(trained, tmp_path):
    """--steps sets the learning-rate schedule, so a resumed run cannot change it."""
    ck = _copy(trained, tmp_path)
    assert_one_line_error(run_module("train", "--resume", ck, "--steps", 40), "--steps", "40")


def test_resume_from_a_missing_folder(tmp_path):
    assert_one_line_error(run_module("train", "--resume", tmp_path / "nope"), str(tmp_path / "nope"))


def test_eval_on_text_outside_the_vocabulary(trained, tmp_path):
    other = tmp_path / "caps.txt"
    other.write_text("anna\nZoe\n", encoding="utf-8")
    proc = run_module("eval", "--checkpoint", trained["numpy"]["path"], "--data", other)
    assert_one_line_error(proc, str(other), "'Z'")
