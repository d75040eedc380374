"""The NumPy engine's batch pass: a whole batch in one forward and one backward, against oracles.

A batch of documents of different lengths is padded on the right to the longest one's prediction
count and runs as its real positions only (`Grid`); attention alone sees the padded (B, T) grid,
where the causal mask keeps every real position from the padding after it. The references:

- the book engine (`microgpt.engines.scalar`, `Value` autograd), which loops over the documents:
  loss and every gradient to 1e-9, as the engines' contract states (they agree to about 1e-15);
- the NumPy engine itself, one document per pass (what it did before batching), the gradients
  accumulated and divided by B: to 1e-12, since only the order of the sums differs.

Each layer pair on a batch against the same pair document by document: test_numpy_engine.py.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from conftest import GOLDEN, assert_close, run_cli, samples_of, start_run, step_records, write_docs

from microgpt.config import Config
from microgpt.data import prepare
from microgpt.engines.numpy_engine import Grid, NumpyEngine, pad_batch
from microgpt.engines.scalar import ScalarEngine
from microgpt.train import TrainingDiverged, train

BOOK_TOL = 1e-9  # against the book engine
SELF_TOL = 1e-12  # against the NumPy engine one document per pass

VOCAB = 11  # 10 characters and BOS
BOS = VOCAB - 1


def example(rng: random.Random, n: int) -> list[int]:
    """[BOS] + n random character ids + [BOS]: n + 1 predictions before truncation."""
    return [BOS] + [rng.randrange(BOS) for _ in range(n)] + [BOS]


# name: (n_layer, n_embd, n_head, block_size, the characters of each document of the batch)
CASES = {
    "book-model": (1, 16, 4, 16, [12, 3, 20, 0, 7]),  # one longer than block_size, one [BOS, BOS]
    "two-layers": (2, 8, 2, 5, [9, 3, 6, 1]),  # two truncated
    "three-layers-head-dim-3": (3, 12, 4, 8, [11, 2, 8, 5, 5, 0]),
    "one-head-wide": (1, 32, 1, 6, [2, 14]),
    "all-truncated": (2, 8, 2, 4, [6, 9, 12]),  # every document longer: nothing is padded
    "equal-lengths": (1, 8, 2, 10, [4, 4, 4]),
}


def case(name: str) -> tuple[Config, list[list[int]]]:
    n_layer, n_embd, n_head, block_size, lengths = CASES[name]
    config = Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size).validate()
    rng = random.Random(name)
    return config, [example(rng, n) for n in lengths]


def gradients(engine) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in engine.optimizer_state()["grad"].items()}


def twins(config: Config, seed: int, *engine_classes, vocab_size: int = VOCAB) -> list:
    """One engine of each class, all starting from the same weights (each draws from a generator seeded alike)."""
    return [cls(config, vocab_size, random.Random(seed)) for cls in engine_classes]


def forward_backward(engine, batch: list[list[int]]) -> float:
    """One forward and one backward pass over the batch; its loss."""
    loss = engine.forward(batch)
    engine.backward()
    return loss


def assert_gradients_close(got_engine, want_engine, tol: float) -> None:
    want = gradients(want_engine)
    for matrix, g in gradients(got_engine).items():
        assert_close(f"gradient of {matrix}", g, want[matrix], tol)


def one_document_per_pass(engine: NumpyEngine, batch: list[list[int]]) -> float:
    """What the engine did before batching: a forward/backward per document, gradients summed, then / B."""
    losses = [forward_backward(engine, [tokens]) for tokens in batch]
    engine.scale_grad(1 / len(batch))
    return sum(losses) / len(batch)


# --- the whole batch against the book engine and against one document per pass -------------------


# reference -> (its engine, how it takes the batch, the tolerance, the seed of both engines' weights)
REFERENCES = {
    "book-engine": (ScalarEngine, forward_backward, BOOK_TOL, 3),
    "one-document-per-pass": (NumpyEngine, one_document_per_pass, SELF_TOL, 5),
}


@pytest.mark.parametrize("reference", list(REFERENCES))
@pytest.mark.parametrize("name", list(CASES))
def test_batch_matches_the_reference(name, reference):
    """The batch's loss and every gradient, in one pass, against the reference's."""
    engine_class, reference_pass, tol, seed = REFERENCES[reference]
    config, batch = case(name)
    want, got = twins(config, seed, engine_class, NumpyEngine)
    assert_close("loss", forward_backward(got, batch), reference_pass(want, batch), tol)
    assert_gradients_close(got, want, tol)
    assert any(np.abs(g).max() > 1e-3 for g in gradients(want).values())  # the comparison is not of zeros


def test_a_batch_of_copies_is_the_document_alone():
    config, batch = case("book-model")
    alone, copies = twins(config, 1, NumpyEngine, NumpyEngine)
    assert_close("loss", forward_backward(copies, batch[:1] * 4), forward_backward(alone, batch[:1]), SELF_TOL)
    assert_close("gradients", copies.grads, alone.grads, SELF_TOL)


def test_gradients_accumulate_across_batches():
    config, batch = case("two-layers")
    engine = NumpyEngine(config, VOCAB, random.Random(2))
    forward_backward(engine, batch)
    once = engine.grads.copy()
    forward_backward(engine, batch)
    assert_close("twice", engine.grads, 2 * once, SELF_TOL)
    twice = engine.grads.copy()
    engine.backward()  # nothing saved any more: adds nothing
    assert_close("after a second backward", engine.grads, twice, 0)


def test_padded_positions_never_reach_the_loss():
    """A padded position's target (token 0 here) has probability exactly 0 under these weights, so
    scoring it would give -log(0) = inf, and weighting that by 0 would give NaN. The batch's loss and
    gradients must be those of its real positions only."""
    config = Config(n_layer=1, n_embd=8, n_head=2, block_size=8).validate()
    engine = NumpyEngine(config, VOCAB, random.Random(0))
    weights = {k: np.zeros_like(v) for k, v in engine.state_dict().items()}  # the blocks add nothing
    weights["wte"][:, 0] = 1.0  # every position's final x points along the first axis
    weights["lm_head"][0, 0] = -1e3  # token 0: logit about -2800, probability 0; the others share the rest
    engine.load_state_dict(weights)
    rng = random.Random(4)
    batch = [[BOS] + [rng.randrange(1, BOS) for _ in range(n)] + [BOS] for n in (6, 1, 3)]  # no token 0
    assert pad_batch(batch, config.block_size)[1][1, -1] == 0  # the padding's target is token 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = forward_backward(engine, batch)
    assert np.isfinite(loss) and np.isfinite(engine.grads).all()
    reference = NumpyEngine(config, VOCAB, random.Random(0))
    reference.load_state_dict(weights)
    assert_close("loss", loss, one_document_per_pass(reference, batch), SELF_TOL)
    assert_close("gradients", engine.grads, reference.grads, SELF_TOL)


def test_pad_batch_pads_on_the_right_to_the_longest_prediction_count():
    batch = [[9, 1, 2, 9], [9, 9], [9, 1, 2, 3, 4, 5, 6, 9]]  # 3, 1 and 7 predictions
    inputs, targets, counts = pad_batch(batch, block_size=5)  # the last is cut to its first 5
    assert counts.tolist() == [3, 1, 5]
    assert inputs.tolist() == [[9, 1, 2, 0, 0], [9, 0, 0, 0, 0], [9, 1, 2, 3, 4]]
    assert targets.tolist() == [[1, 2, 9, 0, 0], [9, 0, 0, 0, 0], [1, 2, 3, 4, 5]]


def test_grid_packs_the_real_positions_in_order_and_pads_with_zeros():
    x = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2) + 1
    grid = Grid(2, 3, np.flatnonzero(np.arange(3) < np.array([[3], [1]])))
    rows = grid.pack(x)
    assert rows.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]  # document 0's three positions, then document 1's
    assert grid.pad(rows).tolist() == [[[1, 2], [3, 4], [5, 6]], [[7, 8], [0, 0], [0, 0]]]
    whole = Grid(2, 3, None)  # nothing padded: reshapes only
    assert np.array_equal(whole.pad(whole.pack(x)), x)


# --- text mode: equal-length windows, nothing to pad ----------------------------------------------

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


def test_text_mode_windows_match_the_book_engine(tmp_path):
    config = Config(data_format="text", n_layer=2, n_embd=8, n_head=2, block_size=8, batch_size=4).validate()
    path = write_docs(tmp_path / "play.txt", [TEXT])
    data, _ = prepare(config, path)
    vocab = data.tokenizer.vocab_size
    for step in range(3):
        batch = data.examples(step)
        assert {len(tokens) for tokens in batch} == {config.block_size + 1}
        book, fast, looped = twins(config, step, ScalarEngine, NumpyEngine, NumpyEngine, vocab_size=vocab)
        got = fast.forward(batch)
        assert fast._saved.grid.index is None  # equal lengths: the batch is reshaped, not padded
        fast.backward()
        assert_close("loss", got, forward_backward(book, batch), BOOK_TOL)
        assert_gradients_close(fast, book, BOOK_TOL)
        assert_close("loss, one window per pass", got, one_document_per_pass(looped, batch), SELF_TOL)
        assert_close("gradients, one window per pass", fast.grads, looped.grads, SELF_TOL)


# --- training runs --------------------------------------------------------------------------------


def test_training_with_batch_8_matches_the_book_engine():
    """Twelve steps of batches of 8 names: every loss, then the weights and Adam's moments, to 1e-9."""
    config = Config(n_layer=1, n_embd=8, n_head=2, block_size=8, batch_size=8, num_steps=12).validate()
    runs = {}
    for name in ("scalar", "numpy"):
        engine, data, _ = start_run(name, config)
        losses: list[float] = []
        train(engine, data, config, on_step=lambda step, loss, lr, out=losses: out.append(loss) and False)
        runs[name] = (losses, engine)
    (want, book), (got, fast) = runs["scalar"], runs["numpy"]
    assert len(got) == len(want) == 12
    assert_close("losses", got, want, BOOK_TOL)
    for matrix, w in book.state_dict().items():
        assert_close(f"weights {matrix}", fast.state_dict()[matrix], w, BOOK_TOL)
    for kind in ("m", "v"):
        for matrix, w in book.optimizer_state()[kind].items():
            assert_close(f"{kind} {matrix}", fast.optimizer_state()[kind][matrix], w, BOOK_TOL)


def test_golden_batch3_variant_through_the_command_line(tmp_path):
    """The book engine's 30 steps with --batch-size 3, recorded in tests/golden: every loss to 1e-9, the samples."""
    golden = GOLDEN["variants"]["batch3"]
    metrics = tmp_path / "metrics.jsonl"
    rc, out, err = run_cli("train", "--engine", "numpy", *golden["flags"], "--metrics", metrics,
                           "--stats-every", "off", "--quiet")
    assert rc == 0, err
    losses = [r["loss"] for r in step_records(metrics)]
    assert len(losses) == len(golden["losses"]) == 30
    assert_close("batch3 losses", losses, golden["losses"], BOOK_TOL)
    assert samples_of(out) == golden["samples"]


def test_a_diverging_batch_gives_an_infinite_loss_without_warnings():
    config = Config(n_layer=1, n_embd=8, n_head=2, block_size=8, batch_size=4, num_steps=3).validate()
    engine, data, _ = start_run("numpy", config)
    weights = engine.state_dict()
    weights["lm_head"] *= 1e300  # logits so far apart that a target's probability is 0
    engine.load_state_dict(weights)
    batch = data.examples(0)
    assert len({len(tokens) for tokens in batch}) > 1  # documents of different lengths: padded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = engine.forward(batch)
        assert not np.isfinite(loss)
        engine.backward()
        with pytest.raises(TrainingDiverged):
            train(engine, data, config)
