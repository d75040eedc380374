"""What is the PyTorch engine's own: its parameters under the book's names, padded batches (the mean
of their documents, whatever the padding holds), the block read as two lines, dropout from a
generator of its own, precision options, compile, and the errors of its device options.

Its numbers against the book (loss, gradients, sampling logits, every golden run, checkpoints
read by other engines) are checked in test_parity.py; two processes under DDP in test_ddp.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch engine needs PyTorch (pip install -e \".[torch]\")")

from conftest import SMALL, LossRecorder, start_run  # noqa: E402

from microgpt.config import Config  # noqa: E402
from microgpt.engines import create_engine  # noqa: E402
from microgpt.engines.base import param_shapes  # noqa: E402
from microgpt.engines.torch_engine import Block, TorchEngine, pad_batch  # noqa: E402
from microgpt.errors import UserError  # noqa: E402
from microgpt.train import train  # noqa: E402

pytestmark = pytest.mark.torch

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


def torch_engine(config_name: str, seed: int):
    """A torch engine of CONFIGS[config_name], its initial weights drawn from random.Random(seed)."""
    return create_engine("torch", CONFIGS[config_name], VOCAB, random.Random(seed))


def random_batch(seed: int, *lengths: int) -> list[list[int]]:
    """Examples of these numbers of characters, drawn from random.Random(seed)."""
    rng = random.Random(seed)
    return [example(rng, n) for n in lengths]


def loss_and_grads(engine, batch: list[list[int]]) -> tuple[float, dict[str, np.ndarray]]:
    engine.zero_grad()
    loss = engine.forward(batch)
    engine.backward()
    return loss, arrays(engine.optimizer_state()["grad"])


def test_parameters_carry_the_book_names_and_are_views_of_the_flat_arrays():
    config = CONFIGS["2 layers 2 heads"]
    engine = create_engine("torch", config, VOCAB, random.Random(5))
    params = dict(engine.model.named_parameters())
    assert [(k, tuple(p.shape)) for k, p in params.items()] == list(param_shapes(config, VOCAB).items())
    views = engine.layout.views(engine.flat)
    for k, p in params.items():
        assert p.data_ptr() == views[k].data_ptr(), k  # the weights live in the one flat tensor
        assert p.grad is not None and p.grad.data_ptr() == engine.layout.views(engine.flat_grad)[k].data_ptr()
    with torch.no_grad():
        engine.flat[engine.layout.offsets["wpe"]] = 7.0
    assert params["wpe"][0, 0].item() == 7.0


def test_padded_batch_is_the_mean_of_its_documents():
    engine = torch_engine("2 layers 2 heads", 3)
    batch = random_batch(4, 1, 12, 5, 3)  # 12 is cut to block_size 8
    singles = [loss_and_grads(engine, [tokens]) for tokens in batch]
    loss, grads = loss_and_grads(engine, batch)
    assert loss == pytest.approx(sum(s[0] for s in singles) / len(batch), rel=1e-12, abs=0)
    mean_grads = {k: sum(s[1][k] for s in singles) / len(batch) for k in grads}
    assert_rel_close(grads, mean_grads, 1e-12)


def test_padding_values_never_matter():
    engine = torch_engine("2 layers 2 heads", 6)
    batch = random_batch(7, 2, 7, 4)
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
    engine = torch_engine("short block", 8)
    a, b = ([tokens] for tokens in random_batch(9, 4, 6))
    _, grads_a = loss_and_grads(engine, a)
    _, grads_b = loss_and_grads(engine, b)
    engine.zero_grad()
    for batch in (a, b):
        engine.forward(batch)
        engine.backward()
    assert_rel_close(engine.optimizer_state()["grad"], {k: grads_a[k] + grads_b[k] for k in grads_a}, 1e-15)
    engine.zero_grad()
    assert all(not g.any() for g in engine.optimizer_state()["grad"].values())


def test_block_forward_is_attention_then_mlp_each_with_a_residual():
    """Block.forward reads as nanoGPT's two lines; here they are written out with the block's own parts."""
    engine = torch_engine("2 layers 2 heads", 6)
    block: Block = engine.model.layers[1]
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def rms(v):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5)

    h = block.attn(rms(x)) + x
    want = block.mlp(rms(h)) + h
    torch.testing.assert_close(block(x), want, rtol=1e-13, atol=1e-14)
    # The MLP works on each position alone; attention lets position t see 0..t only.
    torch.testing.assert_close(block.mlp(x[:, 2:3]), block.mlp(x)[:, 2:3], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(block.attn(x[:, :3]), block.attn(x)[:, :3], rtol=1e-12, atol=1e-13)
    assert not torch.allclose(block.attn(x[:, :4])[:, 3], block.attn(torch.flip(x, [1]))[:, 3])


def test_logits_with_a_cache_one_position_at_a_time_is_the_whole_sequence():
    config = CONFIGS["2 layers 2 heads"]
    engine = create_engine("torch", config, VOCAB, random.Random(7))
    tokens = example(random.Random(8), 10)[:config.block_size]
    with torch.no_grad():
        whole = engine.model.logits(torch.tensor([tokens]))[0]  # (T, V)
        cache = engine.new_cache()
        for pos, token in enumerate(tokens):
            step = engine.model.logits(torch.tensor([[token]]), pos, cache)[0, 0]
            torch.testing.assert_close(step, whole[pos], rtol=0, atol=1e-12)
    assert all(k.shape == (1, 2, len(tokens), 4) for k, _ in cache)  # (B, H, t, hd) per layer
    assert engine.window_logits(tokens[:5]) == pytest.approx(whole[4].tolist(), abs=1e-12)


def test_pad_batch_right_pads_to_the_longest_document():
    inputs, targets, inv_n = pad_batch([[8, 1, 8], [8, 1, 2, 3, 4, 5, 8], [8, 8]], block_size=4, pad_id=0)
    assert inputs == [[8, 1, 0, 0], [8, 1, 2, 3], [8, 0, 0, 0]]
    assert targets == [[1, 8, -100, -100], [1, 2, 3, 4], [8, -100, -100, -100]]
    assert inv_n == [1 / 2, 1 / 4, 1]


def train_steps(engine, batches: list[list[list[int]]], start: int, config: Config) -> list[float]:
    losses = []
    for step, batch in enumerate(batches, start):
        engine.zero_grad()
        losses.append(engine.forward(batch))
        engine.backward()
        engine.step(config.learning_rate * (1 - step / config.num_steps), step)
    return losses


def test_state_round_trip_continues_identically():
    config = CONFIGS["2 layers 2 heads"]
    rng = random.Random(12)
    first, then = [[example(rng, 6)], [example(rng, 3)]], [[example(rng, 5)], [example(rng, 9)]]
    original = create_engine("torch", config, VOCAB, random.Random(13))
    train_steps(original, first, 0, config)
    snapshot = original.state_dict()
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float64 and w.ndim == 2 for w in snapshot.values())

    restored = create_engine("torch", config, VOCAB, random.Random(99))  # other initial weights
    restored.load_state_dict(snapshot)
    restored.load_optimizer_state(original.optimizer_state())
    losses = train_steps(original, then, 2, config)
    assert train_steps(restored, then, 2, config) == losses
    for k, w in restored.state_dict().items():
        np.testing.assert_array_equal(w, original.state_dict()[k])
    assert not np.array_equal(snapshot["wte"], original.state_dict()["wte"])  # a snapshot, not a live view

    wrong = dict(snapshot, wte=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="wte"):
        original.load_state_dict(wrong)


# --- dropout ------------------------------------------------------------------------------------


DROPOUT = Config(**SMALL, num_steps=6, dropout=0.3)


def test_dropout_draws_from_its_own_generator():
    """Training with dropout leaves the book's one generator and PyTorch's global generator alone."""
    engine, data, rng = start_run("torch", DROPOUT)
    book_state, torch_state = rng.getstate(), torch.random.get_rng_state()
    recorder = LossRecorder()
    train(engine, data, DROPOUT, on_step=recorder)
    assert rng.getstate() == book_state
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    # Without dropout the same start gives other losses from step 1 on: the masks were applied.
    plain = Config(**SMALL, num_steps=6)
    engine0, data0, _ = start_run("torch", plain)
    reference = LossRecorder()
    train(engine0, data0, plain, on_step=reference)
    assert all(a != b for a, b in zip(recorder.losses, reference.losses))


def test_dropout_is_seeded_and_off_outside_training():
    a, data, _ = start_run("torch", DROPOUT)
    b, _, _ = start_run("torch", DROPOUT)
    batch = data.examples(0)
    assert a.forward(batch) == b.forward(batch)  # the same seed, the same masks
    assert a.forward(batch) != b.forward(data.examples(1))
    # evaluate and sampling use every unit: the loss of an engine without dropout on the same weights.
    plain = create_engine("torch", Config(**SMALL, num_steps=6), a.vocab_size, random.Random(0))
    plain.load_state_dict(a.state_dict())
    assert a.evaluate(batch[0]) == plain.evaluate(batch[0])
    assert a.next_logits(batch[0][0], 0, a.new_cache()) == plain.next_logits(batch[0][0], 0, plain.new_cache())
    seeded = create_engine("torch", Config(**SMALL, num_steps=6, dropout=0.3, seed=7), a.vocab_size,
                           random.Random(0))
    seeded.load_state_dict(b.state_dict())
    assert seeded.forward(batch) != b.forward(batch)  # another --seed, other masks


def test_dropout_state_continues_exactly_on_another_engine():
    """extra_state carries the dropout generator: a restored engine draws the masks the original would."""
    original, data, _ = start_run("torch", DROPOUT)
    for step in range(2):
        original.forward(data.examples(step))
        original.backward()
        original.step(0.01, step)
        original.zero_grad()
    assert set(original.extra_state()) == {"dropout_rng"}
    restored = create_engine("torch", DROPOUT, original.vocab_size, random.Random(1))
    restored.load_state_dict(original.state_dict())
    restored.load_optimizer_state(original.optimizer_state())
    restored.load_extra_state(original.extra_state())
    for step in range(2, 4):
        assert restored.forward(data.examples(step)) == original.forward(data.examples(step))
    assert create_engine("torch", Config(**SMALL), 9, random.Random(0)).extra_state() == {}


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
