"""The PyTorch engine against the book engine (the oracle): loss, gradients, batches and padding,
sampling logits, state interchange, precision options, compile, and the faithful default run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import NAMES, SPEC_FIRST_LOSSES, SPEC_LAST_LOSS, SPEC_SAMPLES, default_run

from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.engines import create_engine
from microgpt.engines.base import param_shapes
from microgpt.engines.torch_engine import TorchEngine
from microgpt.errors import UserError
from microgpt.tokenizer import Tokenizer
from microgpt.train import train

VOCAB = 9  # 8 characters and BOS
BOS = VOCAB - 1

CONFIGS = {
    "book": Config(),
    "2 layers 2 heads": Config(n_layer=2, n_head=2, n_embd=8, block_size=8),
    "short block": Config(n_layer=1, n_head=1, n_embd=4, block_size=3),  # shorter than the documents
}


def example(rng: random.Random, length: int) -> list[int]:
    """[BOS] + `length` random character ids + [BOS]."""
    return [BOS] + [rng.randrange(BOS) for _ in range(length)] + [BOS]


def pair(config: Config, seed: int = 0) -> tuple:
    """The book engine and the torch engine, both initialised from random.Random(seed)."""
    return (create_engine("scalar", config, VOCAB, random.Random(seed)),
            create_engine("torch", config, VOCAB, random.Random(seed)))


def arrays(named: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in named.items()}


def assert_rel_close(got: dict, want: dict, tol: float) -> None:
    """Every matrix agrees to `tol` relative to that matrix's largest entry."""
    got, want = arrays(got), arrays(want)
    assert got.keys() == want.keys()
    for name in want:
        scale = max(np.abs(want[name]).max(), 1e-300)
        err = np.abs(got[name] - want[name]).max() / scale
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol}"


def loss_and_grads(engine, batch: list[list[int]]) -> tuple[float, dict[str, np.ndarray]]:
    engine.zero_grad()
    loss = engine.forward(batch)
    engine.backward()
    return loss, arrays(engine.optimizer_state()["grad"])


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_gradients_match_book_engine(name):
    config = CONFIGS[name]
    scalar, torch_engine = pair(config, seed=1)
    rng = random.Random(2)
    # One document (the book's step), one longer than any block_size here, and a padded batch.
    for batch in ([example(rng, 5)], [example(rng, 11)], [example(rng, n) for n in (2, 9, 4)]):
        want_loss, want_grads = loss_and_grads(scalar, batch)
        got_loss, got_grads = loss_and_grads(torch_engine, batch)
        assert got_loss == pytest.approx(want_loss, rel=1e-12)
        assert_rel_close(got_grads, want_grads, 1e-10)


def test_parameters_carry_the_book_names_and_weights():
    config = CONFIGS["2 layers 2 heads"]
    scalar, torch_engine = pair(config, seed=5)
    params = dict(torch_engine.model.named_parameters())
    assert [(k, tuple(p.shape)) for k, p in params.items()] == list(param_shapes(config, VOCAB).items())
    # The same gauss draws land in the same places: identical starting weights.
    want = arrays(scalar.state_dict())
    for k, p in params.items():
        np.testing.assert_array_equal(p.detach().numpy(), want[k])


def test_padded_batch_is_the_mean_of_its_documents():
    config = CONFIGS["2 layers 2 heads"]
    engine = create_engine("torch", config, VOCAB, random.Random(3))
    rng = random.Random(4)
    batch = [example(rng, n) for n in (1, 12, 5, 3)]  # 12 is cut to block_size 8
    singles = [loss_and_grads(engine, [tokens]) for tokens in batch]
    loss, grads = loss_and_grads(engine, batch)
    assert loss == pytest.approx(sum(s[0] for s in singles) / len(batch), rel=1e-12, abs=0)
    mean_grads = {k: sum(s[1][k] for s in singles) / len(batch) for k in grads}
    assert_rel_close(grads, mean_grads, 1e-12)


def test_padding_values_never_matter():
    config = CONFIGS["2 layers 2 heads"]
    engine = create_engine("torch", config, VOCAB, random.Random(6))
    rng = random.Random(7)
    batch = [example(rng, n) for n in (2, 7, 4)]
    results = []
    for pad_id in (0, 3, BOS):
        engine.pad_id = pad_id
        results.append(loss_and_grads(engine, batch))
    for loss, grads in results[1:]:
        # Padded positions come after every real one (so the causal mask hides them) and carry
        # no loss: what they hold changes no bit of the result.
        assert loss == results[0][0]
        for k in grads:
            np.testing.assert_array_equal(grads[k], results[0][1][k])


def test_gradients_accumulate_until_zeroed():
    engine = create_engine("torch", CONFIGS["short block"], VOCAB, random.Random(8))
    rng = random.Random(9)
    a, b = [example(rng, 4)], [example(rng, 6)]
    _, grads_a = loss_and_grads(engine, a)
    _, grads_b = loss_and_grads(engine, b)
    engine.zero_grad()
    for batch in (a, b):
        engine.forward(batch)
        engine.backward()
    assert_rel_close(engine.optimizer_state()["grad"], {k: grads_a[k] + grads_b[k] for k in grads_a}, 1e-15)
    engine.zero_grad()
    assert all(not g.any() for g in engine.optimizer_state()["grad"].values())


@pytest.mark.parametrize("name", ["book", "2 layers 2 heads"])
def test_next_logits_match_book_engine(name):
    config = CONFIGS[name]
    scalar, torch_engine = pair(config, seed=10)
    # Larger weights than the initial ones, so the attention weights are far from uniform.
    rng = random.Random(11)
    weights = {k: [[rng.gauss(0, 0.5) for _ in range(c)] for _ in range(r)]
               for k, (r, c) in param_shapes(config, VOCAB).items()}
    scalar.load_state_dict(weights)
    torch_engine.load_state_dict(weights)
    tokens = example(rng, config.block_size)[:config.block_size]
    cache_s, cache_t = scalar.new_cache(), torch_engine.new_cache()
    for pos, token in enumerate(tokens):
        want = scalar.next_logits(token, pos, cache_s)
        got = torch_engine.next_logits(token, pos, cache_t)
        assert isinstance(got, list) and len(got) == VOCAB
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # evaluate() is the whole-document loss without gradients.
    assert torch_engine.evaluate(tokens + [BOS]) == pytest.approx(scalar.evaluate(tokens + [BOS]), rel=1e-12)
    assert not torch_engine.optimizer_state()["grad"]["wte"].any()


def train_steps(engine, batches: list[list[list[int]]], start: int, config: Config) -> list[float]:
    losses = []
    for step, batch in enumerate(batches, start):
        engine.zero_grad()
        losses.append(engine.forward(batch))
        engine.backward()
        engine.step(config.learning_rate * (1 - step / config.num_steps), step)
    return losses


def test_state_round_trip_and_interchange_with_book_engine():
    config = CONFIGS["2 layers 2 heads"]
    rng = random.Random(12)
    first, then = [[example(rng, 6)], [example(rng, 3)]], [[example(rng, 5)], [example(rng, 9)]]

    scalar, original = pair(config, seed=13)
    train_steps(original, first, 0, config)
    snapshot = original.state_dict()
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float64 and w.ndim == 2 for w in snapshot.values())

    # Torch -> torch: a fresh engine (other seed) continues exactly like the original.
    restored = create_engine("torch", config, VOCAB, random.Random(99))
    restored.load_state_dict(snapshot)
    restored.load_optimizer_state(original.optimizer_state())
    losses = train_steps(original, then, 2, config)
    assert train_steps(restored, then, 2, config) == losses
    for k, w in restored.state_dict().items():
        np.testing.assert_array_equal(w, original.state_dict()[k])
    assert not np.array_equal(snapshot["wte"], original.state_dict()["wte"])  # a snapshot, not a live view

    # Book -> torch and torch -> book: either continues the other's run.
    train_steps(scalar, first, 0, config)
    from_book = create_engine("torch", config, VOCAB, random.Random(99))
    from_book.load_state_dict(scalar.state_dict())
    from_book.load_optimizer_state(scalar.optimizer_state())
    to_book = create_engine("scalar", config, VOCAB, random.Random(99))
    to_book.load_state_dict(from_book.state_dict())
    to_book.load_optimizer_state(from_book.optimizer_state())
    want = train_steps(scalar, then, 2, config)
    np.testing.assert_allclose(train_steps(from_book, then, 2, config), want, rtol=1e-12)
    np.testing.assert_allclose(train_steps(to_book, then, 2, config), want, rtol=1e-12)
    assert_rel_close(from_book.state_dict(), scalar.state_dict(), 1e-10)
    assert_rel_close(from_book.optimizer_state()["m"], scalar.optimizer_state()["m"], 1e-10)
    assert_rel_close(from_book.optimizer_state()["v"], scalar.optimizer_state()["v"], 1e-10)

    wrong = dict(snapshot, wte=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="wte"):
        original.load_state_dict(wrong)


@pytest.mark.parametrize("changes", [
    {"optimizer": "sgd"}, {"bias_correction": False}, {"zero_grad": False}, {"zero_grad_before": True},
    {"batch_size": 3, "lr_schedule": "cosine", "warmup_steps": 1},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_training_variants_follow_book_engine(changes):
    config = Config(n_layer=1, n_embd=8, n_head=2, block_size=8, num_steps=4, **changes)
    docs = ["anna", "bob", "cecilia", "dan", "eve", "frederica"]
    tokenizer = Tokenizer.from_docs(docs)
    runs = []
    for name in ("scalar", "torch"):
        engine = create_engine(name, config, tokenizer.vocab_size, random.Random(14))
        losses: list[float] = []
        train(engine, docs, tokenizer, config, on_step=lambda s, loss, lr, out=losses: out.append(loss) and False)
        runs.append((losses, engine.state_dict()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-12)
    assert_rel_close(runs[1][1], runs[0][1], 1e-10)


def test_unavailable_device_or_unknown_dtype_is_a_user_error():
    config = CONFIGS["short block"]
    unavailable = ["tpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        unavailable.append("mps")
    for device in unavailable:
        with pytest.raises(UserError, match="--device") as e:
            TorchEngine(config, VOCAB, random.Random(0), device=device)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="--dtype float64, float32, bfloat16"):
        TorchEngine(config, VOCAB, random.Random(0), dtype="float16")


def test_lower_precisions_train_close_to_float64():
    config = Config(num_steps=20)
    rng = random.Random(15)
    batches = [[example(rng, n) for n in (2, 9, 5)]] * 8  # one batch again and again: the loss must fall
    runs = {}
    for dtype in ("float64", "float32", "bfloat16"):
        engine = create_engine("torch", config, VOCAB, random.Random(16), dtype=dtype)
        runs[dtype] = train_steps(engine, batches, 0, config)
        if dtype == "bfloat16":
            # Autocast computes in bfloat16; weights and Adam's moments stay float32.
            assert {p.dtype for p in engine.model.parameters()} == {torch.float32}
            assert engine.m.dtype == engine.v.dtype == engine.flat_grad.dtype == torch.float32
        assert all(w.dtype == np.float64 for w in engine.state_dict().values())
    np.testing.assert_allclose(runs["float32"], runs["float64"], rtol=1e-5)
    np.testing.assert_allclose(runs["bfloat16"], runs["float64"], rtol=3e-2)
    assert runs["float64"][-1] < runs["float64"][0]


@pytest.mark.slow
def test_compiled_model_takes_the_same_step():
    config = CONFIGS["2 layers 2 heads"]
    rng = random.Random(17)
    batches = [[example(rng, 3), example(rng, 6)], [example(rng, 9), example(rng, 2)]]
    eager = create_engine("torch", config, VOCAB, random.Random(18))
    compiled = create_engine("torch", config, VOCAB, random.Random(18), compile=True)
    np.testing.assert_allclose(train_steps(compiled, batches, 0, config), train_steps(eager, batches, 0, config),
                               rtol=1e-12)
    assert_rel_close(compiled.state_dict(), eager.state_dict(), 1e-12)


def test_compile_failure_is_a_user_error(monkeypatch):
    def broken(module, **options):
        def call(*args):
            raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    engine = create_engine("torch", CONFIGS["short block"], VOCAB, random.Random(0), compile=True)
    with pytest.raises(UserError, match="torch.compile does not work here.*run without --compile"):
        engine.forward([example(random.Random(1), 3)])


@pytest.mark.slow
def test_default_run_matches_book_engine(book_run):
    """The faithful run (SPEC section 8) in float64 on CPU: the book engine's losses and samples."""
    run = default_run("torch", device="cpu", dtype="float64")
    assert len(run["losses"]) == 1000
    np.testing.assert_allclose(run["losses"], book_run["losses"], rtol=0, atol=1e-9)
    assert run["samples"] == book_run["samples"] == SPEC_SAMPLES
    assert [round(x, 4) for x in run["losses"][:5]] == SPEC_FIRST_LOSSES
    assert round(run["losses"][-1], 4) == SPEC_LAST_LOSS


def test_first_steps_of_default_run_match_spec():
    """Without the book engine's minutes: the first five losses of the faithful configuration."""
    config = Config()
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(NAMES), rng)
    tokenizer = Tokenizer.from_docs(docs)
    engine = create_engine("torch", config, tokenizer.vocab_size, rng)
    losses: list[float] = []
    train(engine, docs, tokenizer, config, on_step=lambda s, loss, lr: losses.append(loss) or s + 1 >= 5)
    assert [round(x, 4) for x in losses] == SPEC_FIRST_LOSSES
