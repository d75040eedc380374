"""Checkpoints, and the `sample` and `eval` commands that read them.

A checkpoint must hold everything needed to continue (weights, Adam's moments, gradients, step,
the random generators' states), in files anyone can read without running our code (safetensors
and JSON, no pickle), load in any engine, and keep loading when its format moves on: a real
version-1 checkpoint (tests/fixtures/checkpoint-v1) must load, sample and resume to the run it
was cut from. Broken or mismatched checkpoints are refused with one line that names the fix.
That every engine's checkpoint continues identically in every other is in test_parity.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    FIXTURES,
    NAMES,
    SMALL,
    SMALL_FLAGS,
    LossRecorder,
    assert_one_line_error,
    available_engines,
    engine_params,
    final_state,
    restored,
    run_cli,
    run_headers,
    run_module,
    samples_of,
    start_run,
    step_records,
)

import microgpt.evaluate
from microgpt.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_json,
    save_checkpoint,
    snapshot_state,
)
from microgpt.config import Config
from microgpt.data import fingerprint, load_docs, prepare
from microgpt.engines import create_engine
from microgpt.engines.base import param_shapes
from microgpt.sample import sample
from microgpt.tokenizer import Tokenizer
from microgpt.train import train

V1 = FIXTURES / "checkpoint-v1"
V1_SAMPLES = ["ntzlurim", "ecbzisld", "hmkmdjhk"]  # what the uninterrupted 12-step run printed


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
    for engine in available_engines():
        out = tmp_path_factory.mktemp(f"ck-{engine}") / "ck"
        rc, stdout, stderr = run_cli("train", "--data", small_data, "--engine", engine, *SMALL_FLAGS, "--steps", 20,
                                     "--out", out, "--num-samples", 5, "--quiet", "--keep-snapshots", "all",
                                     "--checkpoint-every", 10)
        assert rc == 0, stderr
        runs[engine] = {"path": out, "samples": samples_of(stdout)}
    return runs


@pytest.fixture(scope="module")
def numpy_ck(trained) -> Path:
    return trained["numpy"]["path"]


# --- what a checkpoint holds -----------------------------------------------------------------


def meta_of(config: Config, data, rng: random.Random, engine: str) -> dict:
    return {"engine": engine, "config": config.to_dict(), "vocab": data.tokenizer.chars,
            "data_fingerprint": data.fingerprint, "rng_state": rng_json(rng)}


@pytest.mark.parametrize("engine", engine_params())
def test_round_trip_restores_weights_moments_grads_step_and_rng(tmp_path, engine):
    # --no-zero-grad keeps the gradients non-zero between steps, so restoring them is visible.
    config = Config(**SMALL, num_steps=10, zero_grad=False)
    original, data, rng = start_run(engine, config)
    train(original, data, config, on_step=LossRecorder(stop_after=4))
    save_checkpoint(tmp_path / "ck", snapshot_state(original), 4, meta_of(config, data, rng, engine))

    checkpoint = load_checkpoint(tmp_path / "ck")
    assert checkpoint.step == 4 and checkpoint.engine == engine
    assert checkpoint.config == config
    assert checkpoint.vocab == data.tokenizer.chars
    assert checkpoint.rng_state() == rng.getstate()
    assert checkpoint.stages == [{"from": 0, "to": 10}]
    restored_rng = random.Random(0)
    restored_rng.setstate(checkpoint.rng_state())
    assert [restored_rng.random() for _ in range(5)] == [rng.random() for _ in range(5)]

    other = create_engine(engine, config, data.tokenizer.vocab_size, random.Random(7))  # different weights
    checkpoint.restore(other)
    assert_same_arrays(other.state_dict(), original.state_dict())
    before, after = original.optimizer_state(), other.optimizer_state()
    assert set(before) == {"m", "v", "grad"}
    for key in ("m", "v", "grad"):
        assert any(np.any(np.asarray(w) != 0) for w in before[key].values()), key
        assert_same_arrays(after[key], before[key])

    # Both continue identically: a step of each gives the same loss and the same weights.
    recorders = [LossRecorder(stop_after=5), LossRecorder(stop_after=5)]
    for eng, recorder in zip((original, other), recorders):
        train(eng, data, config, start_step=4, on_step=recorder)
    assert recorders[0].losses == recorders[1].losses and len(recorders[0].losses) == 1
    assert_same_arrays(other.state_dict(), original.state_dict())
    original.close()
    other.close()


def test_restore_without_the_optimizer_leaves_it_alone(tmp_path):
    config = Config(**SMALL, num_steps=10)
    engine, data, rng = start_run("numpy", config)
    train(engine, data, config, on_step=LossRecorder(stop_after=3))
    save_checkpoint(tmp_path / "ck", snapshot_state(engine), 3, meta_of(config, data, rng, "numpy"))
    fresh = create_engine("numpy", config, data.tokenizer.vocab_size, random.Random(1))
    load_checkpoint(tmp_path / "ck").restore(fresh, with_optimizer=False)
    assert_same_arrays(fresh.state_dict(), engine.state_dict())
    assert not fresh.m.any() and not fresh.v.any()


def test_a_diverged_state_is_not_worth_keeping():
    from microgpt.checkpoint import NonFiniteState

    engine = create_engine("numpy", Config(**SMALL), 9, random.Random(0))
    engine.m[5] = math.nan
    with pytest.raises(NonFiniteState, match="adam.m.wte"):
        snapshot_state(engine)


def _parse_safetensors(payload: bytes) -> tuple[dict, bytes]:
    """The format by hand: u64 little-endian header length, a JSON header, then raw tensor bytes."""
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + n].decode("utf-8"))
    return header, payload[8 + n:]


def test_checkpoint_files_are_safetensors_and_json_without_pickle(tmp_path):
    out = tmp_path / "ck"
    rc, _, err = run_cli("train", "--steps", 3, "--out", out, "--num-samples", 0, "--quiet")
    assert rc == 0, err
    # The run folder: the checkpoint, its snapshots, the metrics (--out without --metrics), the lock.
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.json", "metrics.jsonl", "snapshots",
                                                    "state-0000003.safetensors"]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step-0000000.safetensors",
                                                                     "step-0000003.safetensors"]

    meta = json.loads((out / "checkpoint.json").read_text(encoding="utf-8"))
    assert meta["format"] == "microgpt-checkpoint" and meta["version"] == FORMAT_VERSION == 2
    assert meta["step"] == 3
    assert meta["config"] == Config(num_steps=3, num_samples=0).validate().to_dict()
    assert meta["vocab"] == list("abcdefghijklmnopqrstuvwxyz")
    assert meta["data_fingerprint"] == fingerprint(load_docs(NAMES))
    assert meta["data"] is None  # the packaged names: no path to go stale
    assert meta["engine"] == "numpy" and meta["metrics"] == "metrics.jsonl"
    assert meta["stages"] == [{"from": 0, "to": 3}]
    assert re.fullmatch(r"[0-9a-f]{12}", meta["run_id"])
    assert [h["run_id"] for h in run_headers(out / "metrics.jsonl")] == [meta["run_id"]]
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
    assert header.pop("__metadata__") == {"format": "microgpt-checkpoint", "version": str(FORMAT_VERSION)}
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
    # The last snapshot is the checkpoint's weights; the first, the initial weights of the same start.
    last = load_file(out / "snapshots" / "step-0000003.safetensors")
    assert last.keys() == shapes.keys() and all(np.array_equal(last[k], tensors[k]) for k in shapes)
    first = load_file(out / "snapshots" / "step-0000000.safetensors")
    engine, _, _ = start_run("numpy", Config())
    assert all(np.array_equal(first[k], w) for k, w in engine.state_dict().items())


def test_snapshots_keep_step_zero_and_the_checkpoint_steps(numpy_ck):
    checkpoint = load_checkpoint(numpy_ck)
    assert checkpoint.snapshot_steps() == [0, 10, 20]  # --checkpoint-every 10 --keep-snapshots all
    shapes = param_shapes(checkpoint.config, 27)
    state = final_state(numpy_ck)
    assert_same_arrays(checkpoint.snapshot(20, shapes), {k: state[k] for k in shapes})
    assert not np.array_equal(checkpoint.snapshot(10, shapes)["wte"], state["wte"])
    with pytest.raises(CheckpointError, match="keeps no weights of step 5: pick one of 0, 10, or 20 \\(the latest\\)"):
        checkpoint.snapshot(5, shapes)


# --- any engine reads any engine's checkpoint ------------------------------------------------


@pytest.mark.parametrize("writer", engine_params())
def test_sample_and_eval_agree_across_engines(trained, small_data, tmp_path, writer):
    ck = trained[writer]["path"]
    # The book engine takes tens of milliseconds per document: evaluate on 12 of them.
    docs = load_docs(small_data)[:12]
    few = tmp_path / "few.txt"
    few.write_text("\n".join(docs), encoding="utf-8")
    readers = list(trained)
    printed, evals = {}, {}
    for reader in readers:
        rc, out, err = run_cli("sample", "--checkpoint", ck, "--engine", reader, "--num-samples", 5)
        assert rc == 0, err
        printed[reader] = samples_of(out)
        rc, out, err = run_cli("eval", "--checkpoint", ck, "--engine", reader, "--data", few, "--num-samples", 0)
        assert rc == 0, err
        first, *rest = out.splitlines()
        assert first == f"checkpoint: {ck} (step 20, trained by the {writer} engine, evaluated by the {reader} engine)"
        evals[reader] = rest
    # Without --seed, sample continues the checkpoint's generator: the training run's own samples again.
    assert len(trained[writer]["samples"]) == 5
    for reader in readers:
        assert printed[reader] == trained[writer]["samples"], reader
        assert evals[reader] == evals[writer], reader

    # Losses at full precision, each engine's own arithmetic on the same weights.
    checkpoint = load_checkpoint(ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    losses = {}
    for reader in readers:
        engine = restored(checkpoint, reader)
        losses[reader] = [engine.evaluate(tokenizer.example(doc)) for doc in docs]
        engine.close()
    for reader in readers:
        assert np.allclose(losses[reader], losses[writer], rtol=0, atol=1e-9), reader


# --- eval and sample ---------------------------------------------------------------------------


def test_eval_prints_loss_perplexity_and_uniform_baseline(numpy_ck, small_data):
    rc, out, err = run_cli("eval", "--checkpoint", numpy_ck, "--num-samples", 0)
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
    checkpoint = load_checkpoint(numpy_ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = restored(checkpoint)
    total = count = 0.0
    for doc in load_docs(small_data):
        tokens = tokenizer.example(doc)
        n = min(8, len(tokens) - 1)
        total += engine.evaluate(tokens) * n
        count += n
    assert loss == round(total / count, 4)
    assert loss < float(baseline)  # 20 steps already beat guessing uniformly


def test_eval_splits_train_and_validation(tmp_path, small_data):
    out = tmp_path / "ck"
    rc, _, err = run_cli("train", "--data", small_data, *SMALL_FLAGS, "--steps", 5, "--val-fraction", 0.1,
                         "--out", out, "--num-samples", 0, "--quiet")
    assert rc == 0, err
    rc, text, err = run_cli("eval", "--checkpoint", out, "--num-samples", 0)
    assert rc == 0, err
    parts = re.findall(r"^(train|val): (\d+) documents", text, re.M)
    assert parts == [("train", "180"), ("val", "20")]


def test_eval_on_another_file_reports_all_of_it(numpy_ck, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("anna\nbob\nemma\n", encoding="utf-8")
    rc, out, err = run_cli("eval", "--checkpoint", numpy_ck, "--data", other, "--num-samples", 0)
    assert rc == 0, err
    assert "all: 3 documents | loss " in out


def test_sample_with_prompt_starts_every_sample_with_it(numpy_ck):
    rc, out, err = run_cli("sample", "--checkpoint", numpy_ck, "--prompt", "ma", "--seed", 3)
    assert rc == 0, err
    samples = samples_of(out)
    assert len(samples) == 5  # the checkpoint's --num-samples
    assert all(s.startswith("ma") for s in samples)
    assert len(set(samples)) > 1  # the rest is drawn


def test_sample_prints_each_sample_as_it_is_drawn(numpy_ck, monkeypatch):
    """By the time sample k is drawn, samples 1..k-1 are already on stdout (not held back to the end)."""
    import sys

    real, seen = microgpt.evaluate.sample, []

    def watching(*args, **kwargs):
        seen.append(len(samples_of(sys.stdout.getvalue())))
        return real(*args, **kwargs)

    monkeypatch.setattr(microgpt.evaluate, "sample", watching)
    rc, out, err = run_cli("sample", "--checkpoint", numpy_ck, "--num-samples", 4, "--seed", 1)
    assert rc == 0, err
    assert seen == [0, 1, 2, 3]


def test_sample_with_a_seed_is_the_books_sampling_from_that_generator(numpy_ck):
    rc, out, err = run_cli("sample", "--checkpoint", numpy_ck, "--num-samples", 6, "--seed", 9, "--temperature", 0.7)
    assert rc == 0, err
    checkpoint = load_checkpoint(numpy_ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = restored(checkpoint, "scalar")
    rng = random.Random(9)
    assert samples_of(out) == [sample(engine, tokenizer, rng, 0.7) for _ in range(6)]


def test_sample_from_a_snapshot(numpy_ck, small_data):
    """Snapshot 0 holds the initial weights: the samples of an untrained model from the same start."""
    rc, out, err = run_cli("sample", "--checkpoint", numpy_ck, "--snapshot", 0, "--seed", 4, "--num-samples", 5)
    assert rc == 0, err
    config = load_checkpoint(numpy_ck).config
    untrained, data, _ = start_run("numpy", config, small_data)
    rng = random.Random(4)
    want = [sample(untrained, data.tokenizer, rng, config.temperature) for _ in range(5)]
    assert samples_of(out) == want
    rc, later, err = run_cli("sample", "--checkpoint", numpy_ck, "--snapshot", 10, "--seed", 4, "--num-samples", 5)
    assert rc == 0, err
    assert samples_of(later) != want  # step 10's weights


def test_snapshot_needs_a_seed_and_a_kept_step(numpy_ck):
    assert_one_line_error(run_module("sample", "--checkpoint", numpy_ck, "--snapshot", 0), "--seed")
    assert_one_line_error(run_module("sample", "--checkpoint", numpy_ck, "--snapshot", 7, "--seed", 1),
                          "step 7", "0, 10, or 20 (the latest)")


def test_the_checkpoint_json_file_stands_for_its_folder(numpy_ck):
    by_folder = run_cli("sample", "--checkpoint", numpy_ck, "--seed", 5)
    by_file = run_cli("sample", "--checkpoint", Path(numpy_ck) / "checkpoint.json", "--seed", 5)
    assert by_file[0] == 0, by_file[2]
    assert by_file == by_folder


def test_top_k_one_is_greedy_and_ignores_the_seed(numpy_ck):
    outs = []
    for seed in (1, 2):
        rc, out, err = run_cli("sample", "--checkpoint", numpy_ck, "--top-k", 1, "--seed", seed, "--num-samples", 3)
        assert rc == 0, err
        outs.append(samples_of(out))
    assert outs[0] == outs[1]
    # Argmax decoding by hand: always the likeliest next token, until BOS or block_size tokens.
    checkpoint = load_checkpoint(numpy_ck)
    tokenizer = Tokenizer(checkpoint.vocab)
    engine = restored(checkpoint)
    cache, token, greedy = engine.new_cache(), tokenizer.BOS, []
    for pos in range(checkpoint.config.block_size):
        logits = list(engine.next_logits(token, pos, cache))
        token = logits.index(max(logits))
        if token == tokenizer.BOS:
            break
        greedy.append(token)
    assert outs[0] == [tokenizer.decode(greedy)] * 3


# --- a version-1 checkpoint ------------------------------------------------------------------


@pytest.fixture
def v1(tmp_path) -> Path:
    """A copy of the version-1 fixture (a resume writes into its folder)."""
    folder = tmp_path / "v1"
    shutil.copytree(V1, folder)
    return folder


def test_a_version_1_checkpoint_loads(v1):
    checkpoint = load_checkpoint(v1 / "ck")
    assert checkpoint.meta["version"] == 1 and checkpoint.step == 7 and checkpoint.engine == "numpy"
    assert checkpoint.config.num_steps == 12 and checkpoint.config.n_embd == 8
    assert checkpoint.config.data_format == "lines"  # what version 1 implied
    assert checkpoint.stages == [{"from": 0, "to": 12}]
    assert checkpoint.rng_state("windows") is None
    # Its metrics path (an absolute path of the machine that wrote it) is only a hint, never a target.
    assert checkpoint.meta.get("metrics") is None and checkpoint.meta["metrics_hint"].endswith("metrics-v1.jsonl")
    data, _ = prepare(checkpoint.config, v1 / "tiny.txt", checkpoint.vocab)
    assert data.fingerprint == checkpoint.meta["data_fingerprint"]
    for engine_name in available_engines():
        engine = restored(checkpoint, engine_name)
        # The weights at step 7 give step 8's logged loss on step 8's document.
        ref = [r["loss"] for r in step_records(v1 / "ref-v1.jsonl")]
        assert engine.evaluate(data.examples(7)[0]) == pytest.approx(ref[7], abs=1e-12)
        engine.close()


def test_a_version_1_checkpoint_samples_in_every_engine(v1):
    outs = set()
    for engine in available_engines():
        rc, out, err = run_cli("sample", "--checkpoint", v1 / "ck", "--engine", engine, "--seed", 3, "--data",
                               v1 / "tiny.txt")
        assert rc == 0, err
        assert len(samples_of(out)) == 3  # its config's num_samples
        outs.add(tuple(samples_of(out)))
    assert len(outs) == 1


def test_a_version_1_checkpoint_resumes_to_the_uninterrupted_run(v1):
    ck, metrics = v1 / "ck", v1 / "metrics-v1.jsonl"
    rc, out, err = run_cli("train", "--resume", ck, "--data", v1 / "tiny.txt", "--metrics", metrics, "--quiet")
    assert rc == 0, err
    assert "resuming from step 7 of 12" in out
    reference = [(r["step"], r["loss"], r["lr"]) for r in step_records(v1 / "ref-v1.jsonl")]
    assert [(r["step"], r["loss"], r["lr"]) for r in step_records(metrics)] == reference  # bit for bit
    assert samples_of(out) == V1_SAMPLES
    assert [h.get("resumed_from") for h in run_headers(metrics)] == [None, 7]
    resumed = load_checkpoint(ck)
    assert resumed.meta["version"] == FORMAT_VERSION and resumed.step == 12
    # The finished run's checkpoint samples what the run printed.
    rc, out, err = run_cli("sample", "--checkpoint", ck)
    assert rc == 0, err
    assert samples_of(out) == V1_SAMPLES


def test_a_version_1_checkpoint_never_writes_to_its_recorded_metrics_path(v1):
    """Version 1 recorded the metrics file as an absolute path; a resume shows it and never writes there."""
    recorded = v1 / "elsewhere" / "metrics-v1.jsonl"
    recorded.parent.mkdir()
    shutil.copy(v1 / "metrics-v1.jsonl", recorded)
    before = recorded.read_bytes()
    meta = json.loads((v1 / "ck" / "checkpoint.json").read_text())
    meta["metrics"] = str(recorded)
    (v1 / "ck" / "checkpoint.json").write_text(json.dumps(meta))
    rc, out, err = run_cli("train", "--resume", v1 / "ck", "--data", v1 / "tiny.txt", "--quiet")
    assert rc == 0, err
    assert str(recorded) in err and "--metrics" in err  # the hint, shown
    assert recorded.read_bytes() == before
    assert not (v1 / "ck" / "metrics.jsonl").exists()
    assert samples_of(out) == V1_SAMPLES


# --- refusing broken or mismatched checkpoints -----------------------------------------------


def _copy(numpy_ck, tmp_path) -> Path:
    ck = tmp_path / "ck"
    shutil.copytree(numpy_ck, ck, ignore=shutil.ignore_patterns(".lock"))
    return ck


def _meta(ck: Path) -> dict:
    return json.loads((ck / "checkpoint.json").read_text())


def _edit_meta(change):
    def edit(ck: Path) -> None:
        meta = _meta(ck)
        change(meta)
        (ck / "checkpoint.json").write_text(json.dumps(meta))
    return edit


def _state_file(ck: Path) -> Path:
    return ck / _meta(ck)["state_file"]


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
    "newer-version": (_edit_meta(lambda m: m.update(version=FORMAT_VERSION + 1)), ["newer", "upgrade"]),
    "corrupt-json": (_corrupt_json, ["checkpoint.json", "corrupt"]),
    "truncated-state": (_truncate_state, ["sha256"]),
    "edited-state": (_edit_state, ["sha256"]),
    "missing-state": (_remove_state, ["missing"]),
    "config-of-wrong-type": (_edit_meta(lambda m: m["config"].update(n_embd="8")), ["--n-embd", "integer"]),
    "impossible-config": (_edit_meta(lambda m: m["config"].update(n_head=3)), ["not divisible"]),
    "unsorted-vocabulary": (_edit_meta(lambda m: m["vocab"].reverse()), ["vocab", "sorted"]),
    "state-file-outside": (_edit_meta(lambda m: m.update(state_file="../state-0000020.safetensors")), ["state_file"]),
    "metrics-outside": (_edit_meta(lambda m: m.update(metrics="../../m.jsonl")), ["metrics"]),
    "step-beyond-the-run": (_edit_meta(lambda m: m.update(step=99)), ["step", "99"]),
    "rng-state-cut": (_edit_meta(lambda m: m["rng_state"][1].pop()), ["rng_state"]),
}


@pytest.mark.parametrize("command", ["sample", "resume"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoint_is_one_line_error(numpy_ck, tmp_path, case, command):
    ck = _copy(numpy_ck, tmp_path)
    corrupt, words = BROKEN[case]
    corrupt(ck)
    if command == "sample":
        proc = run_module("sample", "--checkpoint", ck)
    else:
        proc = run_module("train", "--resume", ck, "--quiet")
    assert_one_line_error(proc, str(ck), *words)


def test_missing_checkpoint_folder(tmp_path):
    assert_one_line_error(run_module("sample", "--checkpoint", tmp_path / "nope"), "does not exist")


def test_a_folder_that_is_not_a_checkpoint(tmp_path):
    assert_one_line_error(run_module("sample", "--checkpoint", tmp_path), "not a microgpt checkpoint", "--out")


def test_resume_with_another_model_shape_is_refused(numpy_ck, tmp_path):
    ck = _copy(numpy_ck, tmp_path)
    assert_one_line_error(run_module("train", "--resume", ck, "--n-embd", 16), "--n-embd")


def test_resume_with_other_data_is_refused(numpy_ck, tmp_path):
    ck = _copy(numpy_ck, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("anna\nbob\nzoe\n", encoding="utf-8")
    assert_one_line_error(run_module("train", "--resume", ck, "--data", other), "--data")


def test_out_onto_an_existing_checkpoint_needs_resume(numpy_ck, tmp_path, small_data):
    ck = _copy(numpy_ck, tmp_path)
    before = (ck / "checkpoint.json").read_bytes()
    proc = run_module("train", "--data", small_data, *SMALL_FLAGS, "--steps", 20, "--out", ck)
    assert_one_line_error(proc, "--resume", str(ck))
    assert (ck / "checkpoint.json").read_bytes() == before  # left untouched


def test_prompt_outside_the_vocabulary(numpy_ck):
    proc = run_module("sample", "--checkpoint", numpy_ck, "--prompt", "Ma")
    assert_one_line_error(proc, "character 'M' is not", "vocabulary")
    proc = run_module("sample", "--checkpoint", numpy_ck, "--prompt", "MaX")
    assert_one_line_error(proc, "characters 'MX' are not", "vocabulary")


@pytest.mark.parametrize("flags, words", [
    (["--top-k", -1], ["--top-k"]),
    (["--temperature", 0.001], ["--temperature", "0.01"]),
    (["--num-samples", -1], ["--num-samples"]),
    (["--seed", -2], ["--seed"]),
    (["--prompt", "abcdefgh"], ["--prompt", "shorter"]),  # block_size 8: no room to draw
])
def test_bad_sampling_flags(numpy_ck, flags, words):
    assert_one_line_error(run_module("sample", "--checkpoint", numpy_ck, *flags), *words)


def test_resume_cannot_shorten_the_run(numpy_ck, tmp_path):
    """--steps sets the learning-rate schedule, so a resumed run cannot end earlier."""
    ck = _copy(numpy_ck, tmp_path)
    assert_one_line_error(run_module("train", "--resume", ck, "--steps", 10), "--steps 10", "cannot shorten")


def test_resume_with_more_steps_trains_on_as_a_new_stage(numpy_ck, tmp_path):
    ck = _copy(numpy_ck, tmp_path)
    rc, out, err = run_cli("train", "--resume", ck, "--steps", 26, "--quiet", "--num-samples", 2)
    assert rc == 0, err
    assert "a new stage from step 20" in err
    checkpoint = load_checkpoint(ck)
    assert checkpoint.step == 26 and checkpoint.config.num_steps == 26
    assert checkpoint.stages == [{"from": 0, "to": 20}, {"from": 20, "to": 26}]
    assert len(samples_of(out)) == 2
    assert [r["step"] for r in step_records(ck / "metrics.jsonl")] == list(range(1, 27))


def test_resume_from_a_missing_folder(tmp_path):
    assert_one_line_error(run_module("train", "--resume", tmp_path / "nope"), str(tmp_path / "nope"))


def test_eval_on_text_outside_the_vocabulary(numpy_ck, tmp_path):
    other = tmp_path / "caps.txt"
    other.write_text("anna\nZoe\n", encoding="utf-8")
    proc = run_module("eval", "--checkpoint", numpy_ck, "--data", other)
    assert_one_line_error(proc, str(other), "'Z'")
