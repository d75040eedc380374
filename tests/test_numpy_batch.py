"""The NumPy engine's batch pass: a whole batch in one forward and one backward, against oracles.

A batch of documents of different lengths is padded on the right to the longest one's prediction
count and runs as its real positions only (`Grid`); attention alone sees the padded (B, T) grid,
where the causal mask keeps every real position from the padding after it. The references:

- the book engine (`microgpt.engines.scalar`, `Value` autograd), which loops over the documents:
  loss and every gradient to 1e-9, as the engines' contract states (they agree to about 1e-15);
- the NumPy engine itself, one document per pass (what it did before batching), the gradients
  accumulated and divided by B: to 1e-12, since only the order of the sums differs;
- for each layer pair, the same pair called document by document on (T, C): to 1e-13.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from conftest import GOLDEN, run_cli, samples_of, start_run, step_records, write_docs

from microgpt.config import Config
from microgpt.data import prepare
from microgpt.engines.numpy_engine import (
    Grid,
    NumpyEngine,
    attention_backward,
    attention_forward,
    block_backward,
    block_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    mlp_backward,
    mlp_forward,
    pad_batch,
    rmsnorm_backward,
    rmsnorm_forward,
)
from microgpt.engines.scalar import ScalarEngine
from microgpt.train import TrainingDiverged, train

BOOK_TOL = 1e-9  # against the book engine
SELF_TOL = 1e-12  # against the NumPy engine one document per pass
LAYER_TOL = 1e-13  # a layer pair on a batch against the same pair per document

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


def assert_close(what: str, got, want, tol: float) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = float(np.abs(got - want).max()) if got.size else 0.0
    assert err <= tol, f"{what}: largest difference {err:.3e} > {tol:g}"


def one_document_per_pass(engine: NumpyEngine, batch: list[list[int]]) -> float:
    """What the engine did before batching: a forward/backward per document, gradients summed, then / B."""
    losses = []
    for tokens in batch:
        losses.append(engine.forward([tokens]))
        engine.backward()
    engine.scale_grad(1 / len(batch))
    return sum(losses) / len(batch)


# --- the whole batch against the book engine and against one document per pass -------------------


@pytest.mark.parametrize("name", list(CASES))
def test_batch_matches_the_book_engine(name):
    config, batch = case(name)
    book = ScalarEngine(config, VOCAB, random.Random(3))
    fast = NumpyEngine(config, VOCAB, random.Random(3))
    want_loss = book.forward(batch)
    book.backward()
    got_loss = fast.forward(batch)
    fast.backward()
    assert_close("loss", got_loss, want_loss, BOOK_TOL)
    want = gradients(book)
    for matrix, g in gradients(fast).items():
        assert_close(f"gradient of {matrix}", g, want[matrix], BOOK_TOL)
    assert any(np.abs(g).max() > 1e-3 for g in want.values())  # the comparison is not of zeros


@pytest.mark.parametrize("name", list(CASES))
def test_batch_matches_one_document_per_pass(name):
    config, batch = case(name)
    batched = NumpyEngine(config, VOCAB, random.Random(5))
    looped = NumpyEngine(config, VOCAB, random.Random(5))
    assert_close("loss", batched.forward(batch), one_document_per_pass(looped, batch), SELF_TOL)
    batched.backward()
    assert_close("gradients", batched.grads, looped.grads, SELF_TOL)


def test_a_batch_of_copies_is_the_document_alone():
    config, batch = case("book-model")
    alone, copies = NumpyEngine(config, VOCAB, random.Random(1)), NumpyEngine(config, VOCAB, random.Random(1))
    loss = alone.forward(batch[:1])
    alone.backward()
    assert_close("loss", copies.forward(batch[:1] * 4), loss, SELF_TOL)
    copies.backward()
    assert_close("gradients", copies.grads, alone.grads, SELF_TOL)


def test_gradients_accumulate_across_batches():
    config, batch = case("two-layers")
    engine = NumpyEngine(config, VOCAB, random.Random(2))
    engine.forward(batch)
    engine.backward()
    once = engine.grads.copy()
    engine.forward(batch)
    engine.backward()
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
        loss = engine.forward(batch)
        engine.backward()
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
        book, fast = ScalarEngine(config, vocab, random.Random(step)), NumpyEngine(config, vocab, random.Random(step))
        looped = NumpyEngine(config, vocab, random.Random(step))
        want = book.forward(batch)
        book.backward()
        got = fast.forward(batch)
        assert fast._saved.grid.index is None  # equal lengths: the batch is reshaped, not padded
        fast.backward()
        assert_close("loss", got, want, BOOK_TOL)
        for matrix, g in gradients(fast).items():
            assert_close(f"gradient of {matrix}", g, gradients(book)[matrix], BOOK_TOL)
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


# --- each layer pair takes a batch (B, T, C) as it takes one document (T, C) -----------------------


@pytest.fixture
def rs() -> np.random.Generator:
    return np.random.default_rng(0)


B, T, C, H = 3, 5, 8, 2


def per_document(f, *batched):
    """f on each document's slice of the batched arrays, the results stacked back (tuples element-wise)."""
    results = [f(*(a[b] for a in batched)) for b in range(len(batched[0]))]
    if isinstance(results[0], tuple):
        return tuple(np.stack(parts) for parts in zip(*results))
    return np.stack(results)


def test_embedding_pair_takes_a_batch(rs):
    wte, wpe = rs.normal(size=(6, C)), rs.normal(size=(T + 2, C))
    inputs = rs.integers(0, 6, size=(B, T))
    assert_close("forward", embedding_forward(wte, wpe, inputs), per_document(
        lambda i: embedding_forward(wte, wpe, i), inputs), LAYER_TOL)
    dx = rs.normal(size=(B, T, C))
    got = np.zeros_like(wte), np.zeros_like(wpe)
    embedding_backward(dx, inputs, *got)
    want = np.zeros_like(wte), np.zeros_like(wpe)
    for b in range(B):
        embedding_backward(dx[b], inputs[b], *want)
    assert_close("dwte", got[0], want[0], LAYER_TOL)
    assert_close("dwpe", got[1], want[1], LAYER_TOL)


def test_rmsnorm_and_linear_pairs_take_a_batch(rs):
    x, dy = rs.normal(size=(B, T, C)), rs.normal(size=(B, T, C))
    y, scale = rmsnorm_forward(x)
    assert y.shape == x.shape and scale.shape == (B, T, 1)
    assert_close("rmsnorm", y, per_document(lambda a: rmsnorm_forward(a)[0], x), LAYER_TOL)
    assert_close("rmsnorm backward", rmsnorm_backward(dy, y, scale),
                 per_document(lambda d, a: rmsnorm_backward(d, *rmsnorm_forward(a)), dy, x), LAYER_TOL)
    w = rs.normal(size=(6, C))
    assert_close("linear", linear_forward(x, w), per_document(lambda a: linear_forward(a, w), x), LAYER_TOL)
    dw, dw_each = np.zeros_like(w), np.zeros_like(w)
    dout = rs.normal(size=(B, T, 6))
    dx = linear_backward(dout, x, w, dw)
    assert_close("linear dx", dx, per_document(lambda d, a: linear_backward(d, a, w, dw_each), dout, x), LAYER_TOL)
    assert_close("linear dw", dw, dw_each, LAYER_TOL)


def test_attention_pair_takes_a_batch_and_a_packed_batch(rs):
    x, dout = rs.normal(size=(B, T, C)), rs.normal(size=(B, T, C))
    w_qkv, w_o = rs.normal(size=(3 * C, C)), rs.normal(size=(C, C))

    def one(d, a, dw_qkv, dw_o):
        out, cache = attention_forward(a, w_qkv, w_o, H)
        return out, attention_backward(d, cache, w_qkv, w_o, dw_qkv, dw_o)

    each = np.zeros_like(w_qkv), np.zeros_like(w_o)
    want_out, want_dx = per_document(lambda d, a: one(d, a, *each), dout, x)
    got = np.zeros_like(w_qkv), np.zeros_like(w_o)
    out, cache = attention_forward(x, w_qkv, w_o, H)
    assert_close("attention", out, want_out, LAYER_TOL)
    assert_close("attention dx", attention_backward(dout, cache, w_qkv, w_o, *got), want_dx, LAYER_TOL)
    assert_close("dw_qkv", got[0], each[0], LAYER_TOL)
    assert_close("dw_o", got[1], each[1], LAYER_TOL)

    # Packed: documents of 5, 2 and 4 positions as 11 rows; each is the document alone.
    counts = [5, 2, 4]
    grid = Grid(B, T, np.flatnonzero(np.arange(T) < np.array(counts)[:, None]))
    rows, drows = grid.pack(x), grid.pack(dout)
    packed = np.zeros_like(w_qkv), np.zeros_like(w_o)
    out, cache = attention_forward(rows, w_qkv, w_o, H, grid=grid)
    dx = attention_backward(drows, cache, w_qkv, w_o, *packed, grid=grid)
    alone = np.zeros_like(w_qkv), np.zeros_like(w_o)
    start = 0
    for b, n in enumerate(counts):
        want_out, want_dx = one(dout[b, :n], x[b, :n], *alone)
        assert_close(f"packed document {b}", out[start:start + n], want_out, LAYER_TOL)
        assert_close(f"packed document {b} dx", dx[start:start + n], want_dx, LAYER_TOL)
        start += n
    assert_close("packed dw_qkv", packed[0], alone[0], LAYER_TOL)
    assert_close("packed dw_o", packed[1], alone[1], LAYER_TOL)


def test_mlp_and_block_pairs_take_a_batch(rs):
    x, dy = rs.normal(size=(B, T, C)), rs.normal(size=(B, T, C))
    w1, w2 = rs.normal(size=(4 * C, C)), rs.normal(size=(C, 4 * C))
    y, cache = mlp_forward(x, w1, w2)
    assert_close("mlp", y, per_document(lambda a: mlp_forward(a, w1, w2)[0], x), LAYER_TOL)
    got, each = (np.zeros_like(w1), np.zeros_like(w2)), (np.zeros_like(w1), np.zeros_like(w2))
    dx = mlp_backward(dy, cache, w1, w2, *got)
    want = per_document(lambda d, a: mlp_backward(d, mlp_forward(a, w1, w2)[1], w1, w2, *each), dy, x)
    assert_close("mlp dx", dx, want, LAYER_TOL)
    assert_close("mlp dw", np.concatenate([g.ravel() for g in got]), np.concatenate([g.ravel() for g in each]),
                 LAYER_TOL)

    from microgpt.engines.numpy_engine import BlockWeights

    w = BlockWeights(rs.normal(size=(3 * C, C)) * 0.3, rs.normal(size=(C, C)) * 0.3, w1 * 0.3, w2 * 0.3)
    dw = BlockWeights(*(np.zeros_like(m) for m in w))
    dw_each = BlockWeights(*(np.zeros_like(m) for m in w))
    out, acts = block_forward(x, w, H)

    def one(d, a):
        o, one_acts = block_forward(a, w, H)
        return o, block_backward(d, one_acts, w, dw_each)

    want_out, want_dx = per_document(one, dy, x)
    assert_close("block", out, want_out, LAYER_TOL)
    assert_close("block dx", block_backward(dy, acts, w, dw), want_dx, LAYER_TOL)
    for name, g, ge in zip(BlockWeights._fields, dw, dw_each):
        assert_close(f"block d{name}", g, ge, LAYER_TOL)


def test_cross_entropy_pair_takes_a_batch_with_a_weight_per_position(rs):
    logits = rs.normal(size=(B, T, 7)) * 3
    targets = rs.integers(0, 7, size=(B, T))
    losses, probs = cross_entropy_forward(logits, targets)
    assert losses.shape == (B, T)
    assert_close("losses", losses, per_document(lambda z, t: cross_entropy_forward(z, t)[0], logits, targets),
                 LAYER_TOL)
    weights = rs.random(size=(B, T))  # d loss / d losses[b, t]
    onehot = np.eye(7)[targets]  # (B, T, 7)
    want = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) - onehot) * weights[..., None]
    assert_close("dlogits", cross_entropy_backward(probs, targets, weights), want, LAYER_TOL)
