"""Parity: every engine of the registry computes the book's numbers.

In the manner of llm.c's test_gpt2.c: one reference per check, one checking helper
(`assert_parity`), and each engine's tolerance written beside its name in `TOLERANCES`. The
references are nobody's engine under test:

- the book's own code, `microgpt.model` on `Value`s (SPEC sections 4-5), called directly here,
  for one forward/backward and the sampling logits;
- `tests/golden/book_engine.json`, the losses and samples the book engine produced before the
  engines were reshaped (30-step runs of each training variant, and the faithful 1,000-step run of
  SPEC section 8), run here through the real command line;
- SPEC section 8's rounded figures.

Every test is parametrised over `microgpt.engines.ENGINES`: an engine added to the registry is
tested by all of them once its tolerance is added below.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    GOLDEN,
    SPEC_FIRST_LOSSES,
    SPEC_LAST_LOSS,
    SPEC_SAMPLES,
    default_run,
    engine_marks,
    engine_params,
    run_cli,
    run_cli_interrupted,
    run_headers,
    samples_of,
    step_records,
)

from microgpt.autograd import Value
from microgpt.config import Config
from microgpt.engines import ENGINES, create_engine
from microgpt.engines.base import param_shapes
from microgpt.model import document_loss, gpt, init_params


@dataclass(frozen=True)
class Tolerance:
    """How far an engine may be from the reference. Samples must always be identical."""

    loss: float  # |loss - reference| at every step of a run of up to 30 steps (and for one forward)
    long_loss: float  # |loss - reference| at every step of the 1,000-step faithful run
    grad: float  # per matrix: max |g - reference| / max |reference|
    quick_variants: tuple[str, ...] | None = None  # None: every golden variant runs outside `slow`


TOLERANCES = {
    # The book engine is the reference's own code: bit for bit. Its 30-step runs of the default
    # model take seconds each, so only two variants run outside `slow` (all run in CI).
    "scalar": Tolerance(loss=0.0, long_loss=0.0, grad=0.0, quick_variants=("book30", "shape")),
    # float64 with the book's operation order where it matters (SPEC 9); whole-array sums
    # reorder the rest, so a step differs by ~1e-15 and the differences grow over 1,000 steps.
    "numpy": Tolerance(loss=1e-12, long_loss=1e-9, grad=1e-10),
    "torch": Tolerance(loss=1e-12, long_loss=1e-9, grad=1e-10),
}


def tolerance(engine: str) -> Tolerance:
    assert engine in TOLERANCES, f"engine {engine!r} is in the registry but has no tolerance: add it to TOLERANCES"
    return TOLERANCES[engine]


def assert_parity(what: str, got, want, tol: float, relative: bool = False) -> None:
    """`got` agrees with the reference `want` within `tol` (0: bit for bit).

    Numbers and arrays compare by their largest absolute difference; with `relative`, that
    difference is divided by the reference's largest magnitude (a reference of zeros must then be
    matched exactly). Dicts (name -> matrix) compare matrix by matrix, in the reference's order.
    """
    if isinstance(want, dict):
        assert list(got) == list(want), f"{what}: matrices {list(got)}, expected {list(want)}"
        for name in want:
            assert_parity(f"{what} {name}", got[name], want[name], tol, relative)
        return
    got_a, want_a = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got_a.shape == want_a.shape, f"{what}: shape {got_a.shape}, expected {want_a.shape}"
    if tol == 0:
        assert np.array_equal(got_a, want_a), f"{what}: not bit for bit (largest difference " \
                                              f"{np.abs(got_a - want_a).max():.3e})"
        return
    err = float(np.abs(got_a - want_a).max()) if got_a.size else 0.0
    scale = float(np.abs(want_a).max()) if relative and want_a.size else 1.0
    if relative and scale == 0:
        assert err == 0, f"{what}: the reference is all zeros, the engine's largest entry is {err:.3e}"
        return
    worst = int(np.abs(got_a - want_a).argmax()) if got_a.size else 0
    assert err <= tol * scale, (f"{what}: {'relative ' if relative else ''}error {err / scale:.3e} > {tol:g} "
                                f"(at flat index {worst}: {got_a.flat[worst]!r} vs {want_a.flat[worst]!r})")


def test_every_engine_has_a_tolerance():
    assert set(TOLERANCES) == set(ENGINES)


def test_the_checking_helper_can_fail():
    x = 3.3659669475848504
    assert_parity("same", [x, 1.0], [x, 1.0], 0)
    with pytest.raises(AssertionError, match="not bit for bit"):
        assert_parity("one ulp", [np.nextafter(x, 4.0)], [x], 0)
    assert_parity("within", [x + 5e-13], [x], 1e-12)
    with pytest.raises(AssertionError, match=r"error 2\.000e-12 > 1e-12"):
        assert_parity("beyond", [x + 2e-12], [x], 1e-12)
    with pytest.raises(AssertionError, match="relative error"):
        assert_parity("matrix", {"w": [[1.0, 2e-10]]}, {"w": [[1.0 + 2e-10, 2e-10]]}, 1e-10, relative=True)
    with pytest.raises(AssertionError, match="all zeros"):
        assert_parity("zeros", {"w": [[1e-300]]}, {"w": [[0.0]]}, 1e-10, relative=True)
    with pytest.raises(AssertionError, match="matrices"):
        assert_parity("names", {"a": [[0.0]]}, {"b": [[0.0]]}, 0)
    with pytest.raises(AssertionError, match="shape"):
        assert_parity("shape", [[0.0, 0.0]], [[0.0], [0.0]], 1)


# --- one forward/backward against the book's code -------------------------------------------------

VOCAB = 11  # 10 characters and BOS
BOS = VOCAB - 1

CASES = {
    # name: (n_layer, n_embd, n_head, block_size, the characters of each document of the batch)
    "book-model": (1, 16, 4, 16, [12]),
    "one-head-truncated": (1, 8, 1, 6, [14]),  # longer than block_size: its first 6 predictions count
    "two-layers-batch": (2, 8, 2, 5, [9, 3, 6]),  # documents of different lengths, one truncated
    "three-layers": (3, 12, 4, 8, [11, 2]),  # head_dim 3
    "wide": (1, 32, 2, 5, [8]),
    "empty-document": (1, 4, 1, 3, [0, 5]),  # [BOS, BOS]: one prediction
}


def batch_for(name: str, lengths: list[int]) -> list[list[int]]:
    """Examples [BOS] + random character ids + [BOS], seeded by the case's name."""
    rng = random.Random(name)
    return [[BOS] + [rng.randrange(BOS) for _ in range(n)] + [BOS] for n in lengths]


def book_loss_and_gradients(config: Config, seed: int, batch: list[list[int]]):
    """The book's code: init_params, document_loss per example (their mean for a batch), backward()."""
    params = init_params(config, VOCAB, random.Random(seed))
    losses = [document_loss(tokens, params, config) for tokens in batch]
    loss = losses[0] if len(losses) == 1 else (1 / len(losses)) * sum(losses)
    loss.backward()
    weights = {name: [[p.data for p in row] for row in mat] for name, mat in params.items()}
    grads = {name: [[float(p.grad) for p in row] for row in mat] for name, mat in params.items()}
    return loss.data, weights, grads


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("engine", engine_params())
def test_one_forward_backward_matches_the_book(engine, case):
    n_layer, n_embd, n_head, block_size, lengths = CASES[case]
    config = Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size).validate()
    batch = batch_for(case, lengths)
    want_loss, want_weights, want_grads = book_loss_and_gradients(config, 7, batch)
    tol = tolerance(engine)

    fast = create_engine(engine, config, VOCAB, random.Random(7))
    assert_parity("initial weights", fast.state_dict(), want_weights, 0)  # the same gauss draws, in place
    assert_parity("loss", fast.forward(batch), want_loss, tol.loss)
    fast.backward()
    assert_parity("gradient", fast.optimizer_state()["grad"], want_grads, tol.grad, relative=True)
    # evaluate() is one example's loss without gradients: the book's document_loss.
    for tokens in batch:
        params = init_params(config, VOCAB, random.Random(7))
        assert_parity("evaluate", fast.evaluate(tokens), document_loss(tokens, params, config).data, tol.loss)
    fast.close()


@pytest.mark.parametrize("engine", engine_params())
def test_matrix_statistics_match_the_book_engine_with_weight_decay(engine):
    """Per matrix: gradient, weight and update norms. The update is the optimizer's move alone, in
    every engine; with a large weight decay, counting the decay too would differ by far more than
    the tolerance."""
    config = Config(weight_decay=0.5).validate()
    batch = batch_for("stats", [5, 9])
    engines = [create_engine(name, config, VOCAB, random.Random(3)) for name in ("scalar", engine)]
    for e in engines:
        e.want_stats = True
        e.forward(batch)
        e.backward()
        e.step(0.01, 0)
    book, fast = (e.last_stats for e in engines)
    assert list(fast) == list(book)
    for name in book:
        assert_parity(f"{name} statistics", fast[name], book[name], tolerance(engine).grad, relative=True)
    for e in engines:
        e.close()


@pytest.mark.parametrize("shape", [(1, 16, 4, 16), (2, 12, 3, 7)], ids=["book-model", "two-layers"])
@pytest.mark.parametrize("engine", engine_params())
def test_sampling_logits_match_the_book(engine, shape):
    """next_logits with the engine's cache is the book's gpt() one position at a time, on weights
    large enough that attention is far from uniform."""
    n_layer, n_embd, n_head, block_size = shape
    config = Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size).validate()
    rng = random.Random(11)
    weights = {name: [[rng.gauss(0, 0.5) for _ in range(cols)] for _ in range(rows)]
               for name, (rows, cols) in param_shapes(config, VOCAB).items()}
    params = {name: [[Value(x) for x in row] for row in mat] for name, mat in weights.items()}
    tokens = [BOS] + [rng.randrange(BOS) for _ in range(block_size - 1)]
    fast = create_engine(engine, config, VOCAB, random.Random(0))
    fast.load_state_dict(weights)
    cache, keys, values = fast.new_cache(), [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
    for pos, token in enumerate(tokens):
        got = fast.next_logits(token, pos, cache)
        assert isinstance(got, list) and len(got) == VOCAB
        want = [v.data for v in gpt(token, pos, keys, values, params, config)]
        assert_parity(f"logits at position {pos}", got, want, tolerance(engine).loss)
    fast.close()


# --- the golden runs, through the command line ----------------------------------------------------

VARIANTS = GOLDEN["variants"]


def variant_params() -> list:
    params = []
    for engine in ENGINES:
        quick = TOLERANCES[engine].quick_variants if engine in TOLERANCES else None
        for name in VARIANTS:
            slow = [pytest.mark.slow] if quick is not None and name not in quick else []
            params.append(pytest.param(engine, name, marks=engine_marks(engine) + slow, id=f"{engine}-{name}"))
    return params


def train_cli(tmp_path: Path, *args) -> tuple[list[float], list[str], str]:
    """`microgpt train ARGS` with a metrics file; the losses it logged (full precision) and the samples it printed."""
    metrics = tmp_path / "metrics.jsonl"
    rc, out, err = run_cli("train", *args, "--metrics", metrics, "--stats-every", "off", "--quiet")
    assert rc == 0, err
    return [r["loss"] for r in step_records(metrics)], samples_of(out), out


@pytest.mark.parametrize("engine,variant", variant_params())
def test_golden_variant(tmp_path, engine, variant):
    """A 30-step run with the variant's flags: the book engine's losses (recorded before the reshape)
    at every step, and its five samples."""
    golden, tol = VARIANTS[variant], tolerance(engine)
    losses, samples, _ = train_cli(tmp_path, "--engine", engine, *golden["flags"])
    assert len(losses) == len(golden["losses"]) == 30
    assert_parity(f"{variant} losses", losses, golden["losses"], tol.loss)
    assert samples == golden["samples"]


def checkpoint_pairs() -> list:
    return [pytest.param(writer, reader, marks=engine_marks(writer) + engine_marks(reader), id=f"{writer}-to-{reader}")
            for writer in ENGINES for reader in ENGINES]


@pytest.mark.parametrize("writer,reader", checkpoint_pairs())
def test_checkpoints_are_interchangeable(tmp_path, writer, reader):
    """A run interrupted on one engine and resumed on another (`train --resume DIR --engine OTHER`) is
    the golden run: every loss within the looser of the two tolerances, the same samples."""
    golden = VARIANTS["shape"]  # two layers, a small model: quick on the book engine too
    ck, metrics, stop = tmp_path / "ck", tmp_path / "m.jsonl", 11
    run_cli_interrupted("train", "--engine", writer, *golden["flags"], "--out", ck, "--metrics", metrics,
                        "--stats-every", "off", "--quiet", step=stop)
    rc, out, err = run_cli("train", "--resume", ck, "--engine", reader, "--metrics", metrics, "--stats-every", "off",
                           "--quiet")
    assert rc == 0, err
    assert [h["engine"] for h in run_headers(metrics)] == [writer, reader]
    records = step_records(metrics)
    assert [r["step"] for r in records] == list(range(1, 31))
    tol = max(tolerance(writer).loss, tolerance(reader).loss)
    assert_parity("losses", [r["loss"] for r in records], golden["losses"], tol)
    assert samples_of(out) == golden["samples"]


# --- the faithful run of SPEC section 8, once per engine -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("engine", engine_params())
def test_faithful_run(engine):
    """The default configuration, seed 42, names.txt, 1,000 steps: the book engine's 1,000 losses and
    20 samples, and SPEC section 8's figures as the SPEC rounds them."""
    golden, tol = GOLDEN["default"], tolerance(engine)
    run = default_run(engine)
    assert len(run["docs"]) == 32033
    assert run["tokenizer"].vocab_size == 27
    assert run["engine"].num_params == 4192
    assert len(run["losses"]) == len(golden["losses"]) == 1000
    assert_parity("losses", run["losses"], golden["losses"], tol.long_loss)
    assert run["samples"] == golden["samples"] == SPEC_SAMPLES
    assert [round(x, 4) for x in run["losses"][:5]] == SPEC_FIRST_LOSSES
    assert round(run["losses"][-1], 4) == SPEC_LAST_LOSS
    run["engine"].close()
