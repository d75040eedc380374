"""Chapter 4: the book's GPT on scalar `Value`s, checked against independent oracles.

The model's gradient is compared with central finite differences of its own forward pass, and
the loss and every gradient with a PyTorch float64 transformer written here from SPEC section 5
(whole sequence at once, causal mask), loaded with the same initial weights. The parameter
initialisation is checked against a fresh Random(42) drawn in SPEC section 4's order.
"""

from __future__ import annotations

import math
import random
import sys
import time

import pytest
from conftest import requires_torch

from microgpt.autograd import Value
from microgpt.config import Config
from microgpt.engines.base import param_shapes
from microgpt.engines.scalar import ScalarEngine, no_cycle_collection
from microgpt.model import document_loss, gpt, init_params, linear, rmsnorm, softmax
from microgpt.tokenizer import Tokenizer

try:  # the oracle of two tests; the others need nothing but the standard library
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
TINY = Config(n_layer=2, n_embd=8, n_head=2, block_size=8)


def random_doc(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def tiny_setup(doc_length: int, seed: int):
    """A tiny model with the names vocabulary (a-z + BOS) and one random document."""
    rng = random.Random(seed)
    tokenizer = Tokenizer(ALPHABET)
    params = init_params(TINY, tokenizer.vocab_size, rng)
    tokens = tokenizer.example(random_doc(rng, doc_length))
    return tokenizer, params, tokens


# ---------------------------------------------------------------------------------------------
# Gradient of the whole model against central finite differences.

# h = 1e-6 on an O(1) loss: rounding error ~ 1e-16 * 3 / 1e-6 ~ 3e-10 and truncation ~ h^2 ~ 1e-12,
# so gradients agree to about 1e-9 absolute. The bound below is 1e-7 + 1e-5 relative.
FD_H = 1e-6
FD_ATOL = 1e-7
FD_RTOL = 1e-5
FD_PER_MATRIX = 8  # entries probed in each of the 15 parameter matrices (all 2032 would take ~2 min)


def test_model_gradient_matches_finite_differences():
    tokenizer, params, tokens = tiny_setup(doc_length=7, seed=1)  # 8 positions: the whole block
    assert min(TINY.block_size, len(tokens) - 1) == TINY.block_size

    def loss_value() -> float:
        return document_loss(tokens, params, TINY).data

    pick = random.Random(2)
    checked = nonzero = 0
    with no_cycle_collection():
        document_loss(tokens, params, TINY).backward()
        for name, mat in params.items():
            rows, cols = len(mat), len(mat[0])
            # Half the probes where the gradient is non-zero, so rows the document never touches
            # (unused tokens in wte) cannot make the check vacuous; the rest anywhere.
            live = [(r, c) for r in range(rows) for c in range(cols) if mat[r][c].grad != 0]
            assert live, f"{name} has no gradient at all"
            probes = pick.sample(live, min(FD_PER_MATRIX // 2, len(live)))
            probes += [(pick.randrange(rows), pick.randrange(cols)) for _ in range(FD_PER_MATRIX - len(probes))]
            for r, c in probes:
                p = mat[r][c]
                original = p.data
                p.data = original + FD_H
                up = loss_value()
                p.data = original - FD_H
                down = loss_value()
                p.data = original
                fd = (up - down) / (2 * FD_H)
                assert abs(p.grad - fd) <= FD_ATOL + FD_RTOL * abs(fd), f"{name}[{r}][{c}]: grad {p.grad}, fd {fd}"
                checked += 1
                nonzero += fd != 0
    assert checked == FD_PER_MATRIX * len(params)
    assert nonzero >= checked // 2


# ---------------------------------------------------------------------------------------------
# An independent PyTorch float64 implementation of SPEC section 5, whole sequence at once.

def torch_rmsnorm(x):
    return x * (x.pow(2).mean(dim=-1, keepdim=True) + 1e-5).rsqrt()


def torch_gpt_logits(w: dict, inputs: list[int], config: Config):
    """SPEC section 5 over a whole sequence at once, with a causal mask: (T, vocab) logits."""
    n = len(inputs)
    n_head, head_dim = config.n_head, config.n_embd // config.n_head
    x = torch_rmsnorm(w["wte"][torch.tensor(inputs)] + w["wpe"][:n])  # (T, C)
    causal = torch.ones(n, n, dtype=torch.bool).tril()  # position t sees 0..t
    for i in range(config.n_layer):
        residual = x
        x = torch_rmsnorm(x)
        q = (x @ w[f"layer{i}.attn_wq"].T).view(n, n_head, head_dim).transpose(0, 1)  # (H, T, D)
        k = (x @ w[f"layer{i}.attn_wk"].T).view(n, n_head, head_dim).transpose(0, 1)  # (H, T, D)
        v = (x @ w[f"layer{i}.attn_wv"].T).view(n, n_head, head_dim).transpose(0, 1)  # (H, T, D)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(head_dim)  # (H, T, T)
        weights = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (H, T, T)
        attn = (weights @ v).transpose(0, 1).reshape(n, config.n_embd)  # (T, C)
        x = attn @ w[f"layer{i}.attn_wo"].T + residual
        residual = x
        x = torch_rmsnorm(x)
        x = torch.relu(x @ w[f"layer{i}.mlp_fc1"].T) @ w[f"layer{i}.mlp_fc2"].T + residual  # (T, C)
    return x @ w["lm_head"].T  # (T, V)


def torch_gpt_loss(w: dict, tokens: list[int], config: Config):
    """Mean cross-entropy of one example (SPEC section 3: at most block_size predictions)."""
    n = min(config.block_size, len(tokens) - 1)
    return F.cross_entropy(torch_gpt_logits(w, tokens[:n], config), torch.tensor(tokens[1:n + 1]))


LOSS_TOL = 1e-12  # absolute, on a loss of about 3.3
GRAD_RTOL = 1e-10  # relative to the largest gradient of the same matrix


@requires_torch
@pytest.mark.parametrize("doc_length, seed", [(11, 3), (3, 4)], ids=["truncated-to-block", "short"])
def test_model_matches_independent_torch_float64(doc_length, seed):
    tokenizer, params, tokens = tiny_setup(doc_length=doc_length, seed=seed)
    weights = {name: torch.tensor([[p.data for p in row] for row in mat], dtype=torch.float64, requires_grad=True)
               for name, mat in params.items()}

    loss = document_loss(tokens, params, TINY)
    loss.backward()
    ref = torch_gpt_loss(weights, tokens, TINY)
    ref.backward()

    assert abs(loss.data - ref.item()) <= LOSS_TOL, (loss.data, ref.item())
    for name, mat in params.items():
        got = torch.tensor([[p.grad for p in row] for row in mat], dtype=torch.float64)
        want = weights[name].grad
        scale = want.abs().max().item()
        assert scale > 0, f"{name} has no gradient"
        err = (got - want).abs().max().item()
        assert err <= GRAD_RTOL * scale, f"{name}: max gradient error {err:.3e} vs largest gradient {scale:.3e}"
    # Rows the example never reads get exactly no gradient: unused tokens, positions past n.
    n = min(TINY.block_size, len(tokens) - 1)
    used = set(tokens[:n])
    for t in range(tokenizer.vocab_size):
        assert any(p.grad != 0 for p in params["wte"][t]) == (t in used)
    for pos in range(TINY.block_size):
        assert any(p.grad != 0 for p in params["wpe"][pos]) == (pos < n)


@requires_torch
def test_gpt_with_cache_matches_torch_full_sequence():
    # gpt() one position at a time with a key/value cache is the causal full-sequence forward.
    tokenizer, params, tokens = tiny_setup(doc_length=6, seed=5)
    weights = {name: torch.tensor([[p.data for p in row] for row in mat], dtype=torch.float64)
               for name, mat in params.items()}
    inputs = tokens[:TINY.block_size]
    want = torch_gpt_logits(weights, inputs, TINY)  # (T, V)
    keys = [[] for _ in range(TINY.n_layer)]
    values = [[] for _ in range(TINY.n_layer)]
    for pos, token in enumerate(inputs):
        got = [v.data for v in gpt(token, pos, keys, values, params, TINY)]
        assert got == pytest.approx(want[pos].tolist(), rel=1e-12, abs=1e-13), f"position {pos}"
        assert all(len(cache) == pos + 1 for cache in keys + values)


# ---------------------------------------------------------------------------------------------
# A deep graph: backward() must not recurse.

def recursion_needed(root: Value) -> int:
    """How many nested calls a recursive depth-first topological sort from root would make.

    The recursive sort (operands left to right, each node once), with each call a generator that
    yields the calls it would make, so that Python's own stack stays flat while they are counted.
    """
    seen = set()

    def visit(node: Value):
        seen.add(node)
        for child in node._children:
            if child not in seen:
                yield child  # visit(child)

    calls, deepest = [visit(root)], 1
    while calls:
        child = next(calls[-1], None)
        if child is None:
            calls.pop()
        else:
            calls.append(visit(child))
            deepest = max(deepest, len(calls))
    return deepest


CPYTHON_DEFAULT_RECURSION_LIMIT = 1000


def test_backward_on_a_deep_graph_does_not_recurse():
    # 8 layers and 64 positions: a graph of about 5 million Values that a recursive topological
    # sort could not walk within Python's recursion limit. Width adds little depth but squares
    # the node count: 4 layers at n_embd 64 would be just as deep in places, for 8 GB and minutes.
    config = Config(n_layer=8, n_embd=16, n_head=4, block_size=64)
    tokenizer = Tokenizer(ALPHABET)
    rng = random.Random(6)
    params = init_params(config, tokenizer.vocab_size, rng)
    tokens = tokenizer.example(random_doc(rng, 70))
    with no_cycle_collection():
        start = time.perf_counter()
        loss = document_loss(tokens, params, config)
        forward = time.perf_counter() - start
        needed = recursion_needed(loss)
        # Hold backward() to CPython's default limit, whatever an earlier test or import set it to.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(CPYTHON_DEFAULT_RECURSION_LIMIT)
        try:
            start = time.perf_counter()
            loss.backward()
            backward = time.perf_counter() - start
        finally:
            sys.setrecursionlimit(limit)
        print(f"deep graph: {needed} nested calls for a recursive sort; forward {forward:.1f} s, "
              f"backward {backward:.1f} s")
        assert needed > CPYTHON_DEFAULT_RECURSION_LIMIT
        grads = [p.grad for mat in params.values() for row in mat for p in row]
        assert all(math.isfinite(g) for g in grads)
        assert all(p.grad != 0 for p in params["wpe"][63])  # the last position was trained on
        del loss


# ---------------------------------------------------------------------------------------------
# Initialisation order and size.

def test_init_params_draws_in_spec_order():
    config = Config()
    params = init_params(config, 27, random.Random(42))
    fresh = random.Random(42)
    draws = [fresh.gauss(0, 0.08) for _ in range(4192)]
    e, v = config.n_embd, 27
    # SPEC section 4: wte, wpe, lm_head, then each layer's q, k, v, o, fc1, fc2, each row by row.
    assert params["wte"][0][0].data == draws[0]
    assert params["wpe"][0][0].data == draws[v * e]
    assert params["lm_head"][0][0].data == draws[v * e + config.block_size * e]
    assert params["layer0.attn_wq"][0][0].data == draws[2 * v * e + config.block_size * e]
    # Every parameter, row by row, in the state dict's order; and not one draw more.
    flat = [p.data for mat in params.values() for row in mat for p in row]
    assert flat == draws
    assert list(params) == ["wte", "wpe", "lm_head", "layer0.attn_wq", "layer0.attn_wk", "layer0.attn_wv",
                            "layer0.attn_wo", "layer0.mlp_fc1", "layer0.mlp_fc2"]


def test_init_params_consumes_exactly_one_gauss_per_parameter():
    config = Config(n_layer=2)
    rng = random.Random(7)
    params = init_params(config, 5, rng)
    twin = random.Random(7)
    n = sum(len(row) for mat in params.values() for row in mat)
    for _ in range(n):
        twin.gauss(0, config.init_std)
    assert rng.getstate() == twin.getstate()
    assert {name: (len(mat), len(mat[0])) for name, mat in params.items()} == param_shapes(config, 5)


def test_default_config_has_4192_parameters():
    config = Config()
    params = init_params(config, 27, random.Random(42))
    # 27*16 + 16*16 + 27*16 + 4*16*16 + 2*64*16 = 432 + 256 + 432 + 1024 + 2048
    assert sum(len(row) for mat in params.values() for row in mat) == 4192
    assert ScalarEngine(config, 27, random.Random(42)).num_params == 4192


# ---------------------------------------------------------------------------------------------
# The building blocks.

def test_softmax_sums_to_one_and_matches_math():
    zs = [1.5, -2.0, 0.25, 3.0, 0.0]
    probs = softmax([Value(z) for z in zs])
    denom = sum(math.exp(z) for z in zs)
    for p, z in zip(probs, zs):
        assert p.data == pytest.approx(math.exp(z) / denom, rel=1e-14)
    assert sum(p.data for p in probs) == pytest.approx(1.0, abs=1e-15)


def test_softmax_is_stable_for_large_logits():
    probs = softmax([Value(1000.0), Value(999.0), Value(-1000.0)])
    want = [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0]
    assert [p.data for p in probs] == pytest.approx(want, rel=1e-14, abs=1e-300)


def test_rmsnorm_output_has_unit_rms():
    xs = [0.3, -1.2, 2.5, 0.0, -0.7, 1.1]
    out = [y.data for y in rmsnorm([Value(x) for x in xs])]
    ms = sum(x * x for x in xs) / len(xs)
    # Exactly sqrt(ms / (ms + 1e-5)), i.e. 1 up to the epsilon.
    rms = math.sqrt(sum(y * y for y in out) / len(out))
    assert rms == pytest.approx(math.sqrt(ms / (ms + 1e-5)), rel=1e-14)
    assert rms == pytest.approx(1.0, abs=1e-5)
    for y, x in zip(out, xs):
        assert y == pytest.approx(x / math.sqrt(ms + 1e-5), rel=1e-14)


def test_linear_is_matrix_times_vector():
    w = [[Value(1.0), Value(2.0), Value(-1.0)], [Value(0.5), Value(0.0), Value(4.0)]]
    y = linear([Value(3.0), Value(-1.0), Value(2.0)], w)
    assert [v.data for v in y] == [3.0 - 2.0 - 2.0, 1.5 + 0.0 + 8.0]
