"""Text mode and nanoGPT's options, against their definitions and the book engine.

Text mode (`--data-format text`): the file is one stream of characters, newlines included; an
example is a window of block_size + 1 characters at an offset drawn from a generator of its own
(random.Random(f"{seed}:windows")), batch rows drawn independently; the last --val-fraction of the
stream is held out (0.1 unless given) and validation reads --eval-windows windows drawn once from
random.Random(f"{seed}:eval-val"). The vocabulary keeps BOS, unused: no example holds it and
sampling never draws it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import GOLDEN, LossRecorder, engine_params, run_cli, samples_of, step_records

import microgpt.run
from microgpt.checkpoint import load_checkpoint
from microgpt.config import Config
from microgpt.data import prepare
from microgpt.engines import ENGINES, create_engine
from microgpt.evaluate import load_model
from microgpt.optim import learning_rate
from microgpt.sample import continue_text, sample_probs
from microgpt.train import train

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 6
SMALL = ["--n-embd", "8", "--n-head", "2", "--block-size", "8"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def text_config(**changes) -> Config:
    return Config(data_format="text", n_embd=8, n_head=2, block_size=8, batch_size=3, num_steps=30,
                  **changes).validate()


def test_windows_and_split_follow_the_definition(text_file):
    config = text_config(val_fraction=0.25, eval_windows=7)
    data, _ = prepare(config, text_file)
    chars = sorted(set(TEXT))
    assert data.tokenizer.chars == chars and data.tokenizer.vocab_size == len(chars) + 1  # BOS kept, unused
    ids = [chars.index(c) for c in TEXT]
    n_val = int(len(ids) * 0.25)
    assert data.train_ids == ids[:len(ids) - n_val] and data.val_ids == ids[len(ids) - n_val:]
    # Step by step, each of the 3 rows is a window of block_size + 1 ids at an offset drawn independently.
    windows = random.Random(f"{config.seed}:windows")
    span = config.block_size + 1
    for step in range(5):
        offsets = [windows.randrange(len(data.train_ids) - span + 1) for _ in range(3)]
        assert data.examples(step) == [data.train_ids[o:o + span] for o in offsets]
    assert all(data.tokenizer.BOS not in row for row in data.examples(5))
    # Validation: a fixed set of windows from the held-out end, the same every time it is asked for.
    draws = random.Random(f"{config.seed}:eval-val")
    expected = [data.val_ids[o:o + span] for o in (draws.randrange(n_val - span + 1) for _ in range(7))]
    assert data.val_examples() == expected == data.val_examples()


def test_text_mode_holds_out_a_tenth_unless_told(text_file):
    assert text_config().val_fraction == 0.1
    assert text_config(val_fraction=0.0).val_fraction == 0.0
    assert Config().validate().val_fraction == 0.0  # lines mode: the book holds nothing out
    rc, out, _ = run_cli("train", "--data", text_file, "--data-format", "text", *SMALL, "--steps", "2",
                         "--num-samples", "0", "--quiet")
    assert rc == 0 and "the text mode's default --val-fraction 0.1" in out


@pytest.mark.parametrize("engine", engine_params([name for name in ENGINES if name != "scalar"]))
def test_every_engine_agrees_with_the_book_engine_in_text_mode(text_file, engine):
    """float64, 30 steps of batches of windows: losses to 1e-9 and the same weights."""
    config = text_config()
    runs = {}
    for name in ("scalar", engine):
        data, rng = prepare(config, text_file)
        e = create_engine(name, config, data.tokenizer.vocab_size, rng)
        recorder = LossRecorder()
        train(e, data, config, on_step=recorder)
        runs[name] = (recorder.losses, e.state_dict())
    assert np.allclose(runs[engine][0], runs["scalar"][0], rtol=0, atol=1e-9)
    for name, w in runs["scalar"][1].items():
        assert np.abs(np.asarray(runs[engine][1][name]) - np.asarray(w)).max() <= 1e-9, name


def stop_after(monkeypatch, step: int) -> None:
    """Make the next `train` command stop after `step` steps, as a Ctrl-C there would."""
    real = microgpt.run.train

    def stopping(engine, data, config, start_step=0, on_step=None):
        return real(engine, data, config, start_step,
                    lambda s, loss, lr: on_step(s, loss, lr) or s + 1 == step)
    monkeypatch.setattr(microgpt.run, "train", stopping)


@pytest.mark.parametrize("engine,extra", [("numpy", []), pytest.param("torch", ["--dropout", "0.2"],
                                                                       marks=engine_params(["torch"])[0].marks)])
def test_exact_resume_in_text_mode(tmp_path, text_file, monkeypatch, engine, extra):
    args = ["train", "--data", text_file, "--data-format", "text", "--engine", engine, *SMALL, *extra,
            "--batch-size", "3", "--steps", "24", "--checkpoint-every", "5", "--sample-every", "6",
            "--stats-every", "1", "--num-samples", "2", "--quiet"]
    rc, reference_out, err = run_cli(*args, "--out", tmp_path / "whole")
    assert rc == 0, err
    stop_after(monkeypatch, 13)  # between checkpoints: the stop itself saves step 13
    rc, _, err = run_cli(*args, "--out", tmp_path / "cut")
    assert rc == 128 and "interrupted at step 13" in err
    monkeypatch.undo()
    rc, out, err = run_cli("train", "--resume", tmp_path / "cut", "--quiet")
    assert rc == 0, err
    whole, cut = (step_records(tmp_path / name / "metrics.jsonl") for name in ("whole", "cut"))
    strip = [{k: v for k, v in r.items() if k != "time"} for r in whole]
    assert [{k: v for k, v in r.items() if k != "time"} for r in cut] == strip  # windows, samples, stats too
    assert out.split("--- samples ---")[1] == reference_out.split("--- samples ---")[1]
    a, b = (load_checkpoint(tmp_path / name).tensors() for name in ("whole", "cut"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sample_continues_a_prompt_beyond_block_size(tmp_path, text_file):
    rc, _, err = run_cli("train", "--data", text_file, "--data-format", "text", *SMALL, "--steps", "40",
                         "--out", tmp_path / "ck", "--num-samples", "0", "--quiet")
    assert rc == 0, err
    rc, out, err = run_cli("sample", "--checkpoint", tmp_path / "ck", "--prompt", "First Citizen:",
                           "--max-tokens", "30", "--seed", "3")
    assert rc == 0, err
    assert "its last 8" in err  # the prompt is longer than block_size: cropped, with a note
    text = out.rstrip("\n")
    assert text.startswith("First Citizen:") and len(text) == len("First Citizen:") + 30
    # An independent continuation: for every new character, the logits after the last block_size
    # characters, computed over the whole window at once (nanoGPT's crop), then the book's draw.
    checkpoint = load_checkpoint(tmp_path / "ck")
    engine, tokenizer = load_model(checkpoint)
    rng, context = random.Random(3), tokenizer.encode("First Citizen:")
    for _ in range(30):
        logits = engine.logits(context[-8:])[-1].copy()
        logits[tokenizer.BOS] = -np.inf
        probs = sample_probs(logits.tolist(), checkpoint.config.temperature)
        context.append(rng.choices(range(len(probs)), weights=probs)[0])
    assert text == tokenizer.decode(context)


def test_continuation_streams_and_never_draws_bos(text_file):
    config = text_config()
    data, rng = prepare(config, text_file)
    engine = create_engine("numpy", config, data.tokenizer.vocab_size, rng)
    seen: list[str] = []
    text = continue_text(engine, data.tokenizer, random.Random(0), 5.0, 200, prompt="\n", on_text=seen.append)
    assert "".join(seen) == text and len(text) == 200  # a hot temperature: BOS would be drawn if allowed


def test_new_options_off_give_the_golden_run(tmp_path):
    rc, out, err = run_cli("train", "--steps", "30", "--num-samples", "5", "--grad-clip", "0", "--weight-decay", "0",
                           "--dropout", "0", "--min-lr", "0", "--quiet", "--metrics", tmp_path / "m.jsonl")
    assert rc == 0, err
    losses = [r["loss"] for r in step_records(tmp_path / "m.jsonl")]
    assert np.allclose(losses, GOLDEN["variants"]["book30"]["losses"], rtol=0, atol=1e-12)
    assert samples_of(out) == GOLDEN["variants"]["book30"]["samples"]


def test_gradient_clipping_caps_the_global_norm():
    config = Config(n_embd=8, n_head=2, block_size=8, grad_clip=0.05).validate()
    engine = create_engine("numpy", config, 9, random.Random(0))
    engine.forward([[8, 1, 2, 3, 4, 8]])
    engine.backward()
    norm = engine.grad_norm()
    assert norm > 0.05  # the check is not vacuous
    grads = {k: v.copy() for k, v in engine.optimizer_state()["grad"].items()}
    engine.scale_grad(0.05 / (norm + 1e-6))
    clipped = np.sqrt(sum((g * g).sum() for g in engine.optimizer_state()["grad"].values()))
    assert clipped == pytest.approx(0.05, rel=1e-6)
    for name, g in engine.optimizer_state()["grad"].items():  # direction unchanged
        np.testing.assert_allclose(g, grads[name] * 0.05 / (norm + 1e-6), rtol=1e-15)


@pytest.mark.parametrize("engine", engine_params(["numpy", "torch"]))
def test_weight_decay_is_decoupled_and_matches_the_book_engine(engine):
    """One step with decay: p - lr_t * wd * p, then Adam's usual update, on every engine alike."""
    config = Config(n_embd=8, n_head=2, block_size=8, weight_decay=0.5, num_steps=10).validate()
    results = {}
    for name in ("scalar", engine):
        e = create_engine(name, config, 9, random.Random(1))
        before = {k: np.asarray(v, dtype=float) for k, v in e.state_dict().items()}
        e.forward([[8, 1, 2, 3, 8]])
        e.backward()
        grads = {k: np.asarray(v, dtype=float) for k, v in e.optimizer_state()["grad"].items()}
        e.step(learning_rate(0, config), 0)
        results[name] = {k: np.asarray(v, dtype=float) for k, v in e.state_dict().items()}
    lr = learning_rate(0, config)
    for k, p in before.items():
        g = grads[k]
        m_hat, v_hat = (1 - config.beta1) * g / (1 - config.beta1), (1 - config.beta2) * g * g / (1 - config.beta2)
        want = p - lr * 0.5 * p - lr * m_hat / (np.sqrt(v_hat) + config.eps_adam)
        np.testing.assert_allclose(results["scalar"][k], want, rtol=0, atol=1e-14)
        np.testing.assert_allclose(results[engine][k], results["scalar"][k], rtol=0, atol=1e-14)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_min_lr_is_where_the_decays_end(schedule):
    config = Config(num_steps=200, learning_rate=1e-3, min_lr=1e-4, warmup_steps=20, lr_schedule=schedule).validate()
    assert learning_rate(19, config) == pytest.approx(1e-3)
    assert learning_rate(20, config) == pytest.approx(1e-3)
    assert learning_rate(200, config) == pytest.approx(1e-4)  # the end of the decay
    assert all(1e-4 - 1e-18 <= learning_rate(s, config) <= 1e-3 for s in range(20, 200))


@pytest.mark.parametrize("engine", ["scalar", "numpy"])
def test_engines_without_dropout_say_so(engine):
    rc, out, err = run_cli("train", "--engine", engine, "--dropout", "0.1", "--steps", "2")
    assert rc == 2 and "dropout" in err and "torch" in err


@pytest.mark.parametrize("_", engine_params(["torch"]))
def test_dropout_changes_training_and_comes_from_its_own_generator(_, tmp_path):
    base = ["train", "--engine", "torch", *SMALL, "--steps", "10", "--num-samples", "3", "--quiet",
            "--stats-every", "off"]
    losses = []
    for i, extra in enumerate(([], ["--dropout", "0.3"], ["--dropout", "0.3"])):
        rc, _, err = run_cli(*base, *extra, "--metrics", tmp_path / f"{i}.jsonl")
        assert rc == 0, err
        losses.append([r["loss"] for r in step_records(tmp_path / f"{i}.jsonl")])
    assert losses[1] == losses[2]  # seeded: the same masks each time
    assert losses[1][0] != losses[0][0]  # the very first forward already drops
