"""`microgpt gradcheck`: it passes on every engine's correct backward, and catches a broken one.

The oracles: the book engine's own backward() (for the numbers the command prints), and
derivatives broken on purpose, whose effect on each matrix follows from the chain rule.
"""

from __future__ import annotations

import re

import pytest
from conftest import NAMES, engine_params

from microgpt import gradcheck
from microgpt.autograd import Value
from microgpt.cli import main
from microgpt.config import Config
from microgpt.data import prepare
from microgpt.model import document_loss, init_params

# 424 weights: small enough that even the scalar engine checks every one in seconds.
TINY = ["--n-embd", "4", "--n-head", "2", "--block-size", "4"]
TINY_CONFIG = Config(n_embd=4, n_head=2, block_size=4)
MATRICES = ["wte", "wpe", "lm_head", "layer0.attn_wq", "layer0.attn_wk", "layer0.attn_wv", "layer0.attn_wo",
            "layer0.mlp_fc1", "layer0.mlp_fc2"]
EXAMPLE = re.compile(r"raising (\S+)\[(\d+)\]\[(\d+)\] by (\S+) (raises|lowers) the loss by (\S+); "
                     r"backward says (\S+) per unit, finite differences (\S+)")


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["gradcheck", "--data", str(NAMES), *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def verdicts(out: str) -> dict[str, str]:
    """matrix -> 'ok' or 'FAILED', from the table."""
    return {line.split()[0]: line.split()[-1] for line in out.splitlines()
            if line.split() and line.split()[0] in MATRICES and line.split()[-1] in ("ok", "FAILED")}


def book_gradients(doc: str, config: Config) -> dict[str, list[list[float]]]:
    """The book engine's gradient of the document's loss, computed here without the command: the same
    start as training (shuffle, then the book's init_params from the same generator)."""
    data, rng = prepare(config.validate())
    params = init_params(config, data.tokenizer.vocab_size, rng)
    document_loss(data.tokenizer.example(doc), params, config).backward()
    return {name: [[p.grad for p in row] for row in rows] for name, rows in params.items()}


@pytest.mark.parametrize("engine", engine_params())
def test_correct_backward_passes_on_every_engine(capsys, engine):
    rc, out, _ = run(capsys, "--engine", engine, *TINY, "--doc", "anna", "--max-params", "1000")
    assert rc == 0, out
    assert "checking every weight: 424 of 424" in out
    assert set(verdicts(out).values()) == {"ok"} and len(verdicts(out)) == len(MATRICES)
    assert "ok: all 424 gradients agree within 1e-05" in out
    assert len(EXAMPLE.findall(out)) == len(MATRICES)


def test_worked_examples_match_the_book_engine(capsys):
    """Each sentence names the matrix's largest gradient, with the book engine's value for it."""
    rc, out, _ = run(capsys, "--engine", "numpy", *TINY, "--doc", "anna")
    assert rc == 0
    book = book_gradients("anna", TINY_CONFIG)
    examples = EXAMPLE.findall(out)
    assert [e[0] for e in examples] == MATRICES
    for name, r, c, h, direction, change, analytic, numeric in examples:
        grads = book[name]
        largest = max(abs(g) for row in grads for g in row)
        assert abs(grads[int(r)][int(c)]) == pytest.approx(largest, rel=1e-9)
        assert float(analytic) == pytest.approx(grads[int(r)][int(c)], rel=1e-5)
        assert float(numeric) == pytest.approx(grads[int(r)][int(c)], rel=1e-5)
        # Moving the weight by h changes the loss by about h times the gradient, in its direction.
        assert float(change) == pytest.approx(abs(float(h) * grads[int(r)][int(c)]), rel=0.01)
        assert direction == ("raises" if grads[int(r)][int(c)] > 0 else "lowers")


def test_default_document_is_training_step_one(capsys):
    """Without --doc the loss is the first training step's (SPEC: 3.3660 for the book's defaults)."""
    rc, out, _ = run(capsys, "--max-params", "9")
    assert rc == 0
    data, _ = prepare(Config().validate())
    assert data.docs[0] == "yuheng"
    assert "document 'yuheng': 7 predictions, loss 3.3660 (training's step 1" in out


def test_the_packaged_names_need_no_data_flag(capsys):
    rc = main(["gradcheck", "--max-params", "9", "--seed", "3"])
    out, _ = capsys.readouterr()
    assert rc == 0
    data, _ = prepare(Config(seed=3).validate())
    assert f"document {data.docs[0]!r}" in out


def test_broken_relu_derivative_fails_the_matrices_behind_it(capsys, monkeypatch):
    """relu's local gradient halved: every matrix the gradient reaches through the MLP's hidden
    units is wrong; lm_head's and mlp_fc2's gradients need only forward values, so they stay right."""
    def relu_with_wrong_derivative(self: Value) -> Value:
        return Value(max(0, self.data), (self,), (0.5 * (self.data > 0),), "relu")

    monkeypatch.setattr(Value, "relu", relu_with_wrong_derivative)
    # n_embd 2: 160 weights, so the book engine checks them all quickly.
    rc, out, _ = run(capsys, "--engine", "scalar", "--n-embd", "2", "--n-head", "1", "--block-size", "4",
                     "--doc", "anna", "--max-params", "1000")
    assert rc == 1
    expected_ok = {"lm_head", "layer0.mlp_fc2"}
    assert verdicts(out) == {m: "ok" if m in expected_ok else "FAILED" for m in MATRICES}
    failed_line = next(line for line in out.splitlines() if line.startswith("FAILED:"))
    assert all(m in failed_line for m in MATRICES if m not in expected_ok)
    assert not any(m in failed_line for m in expected_ok)


def test_broken_rmsnorm_backward_fails_the_matrices_before_it(capsys, monkeypatch):
    """NumPy's rmsnorm backward without its second term (the scale depends on x too): wrong for
    everything before an rmsnorm whose input gets a gradient (the embeddings and attention);
    right for lm_head and the MLP, whose weight gradients never pass through one."""
    from microgpt.engines import numpy_engine

    monkeypatch.setattr(numpy_engine, "rmsnorm_backward", lambda dy, y, scale: scale * dy)
    rc, out, _ = run(capsys, "--engine", "numpy", *TINY, "--doc", "anna")
    assert rc == 1
    expected_ok = {"lm_head", "layer0.mlp_fc1", "layer0.mlp_fc2"}
    assert verdicts(out) == {m: "ok" if m in expected_ok else "FAILED" for m in MATRICES}


def test_sample_covers_every_matrix(capsys):
    rc, out, _ = run(capsys, "--engine", "numpy", *TINY, "--doc", "anna", "--max-params", "40")
    assert rc == 0
    assert "checking a random sample: 40 of 424" in out
    checked = {}
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] in MATRICES and "/" in fields[2]:
            checked[fields[0]] = int(fields[2].split("/")[0])
    assert set(checked) == set(MATRICES) and all(n >= 1 for n in checked.values())
    assert sum(checked.values()) == 40


def test_relative_error():
    floor = gradcheck.noise_floor(loss=3.0, h=1e-6, tolerance=1e-5)
    assert gradcheck.relative_error(0.0, 0.0, floor) == 0.0
    assert gradcheck.relative_error(0.25, 0.25 * (1 + 2e-6), floor) == pytest.approx(1e-6, rel=1e-3)
    assert gradcheck.relative_error(0.25, -0.25, floor) == 1.0
    # Two gradients as small as the rounding noise (6.6e-10 here) are not a relative error of 1.
    assert gradcheck.relative_error(3e-10, -3e-10, floor) < 1e-5
    assert gradcheck.relative_error(3e-6, -3e-6, floor) > 1e-5


@pytest.mark.parametrize("flags, message", [
    (["--n-embd", "6", "--n-head", "4"], "not divisible"),
    (["--h", "0"], "--h must be greater than 0"),
    (["--tolerance", "-1"], "--tolerance must be greater than 0"),
    (["--max-params", "3"], "fewer than the 9 parameter matrices"),
    (["--doc", "Zoë"], "not in the vocabulary"),
])
def test_bad_input_exits_2_with_one_line(capsys, flags, message):
    rc, out, err = run(capsys, *flags)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
