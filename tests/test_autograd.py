"""Chapter 3: the scalar `Value`, checked against two oracles nobody here wrote.

Every operation's forward value is compared with `math` on plain floats and its gradient with
central finite differences; a mixed expression is compared with PyTorch's autograd in float64.
The rest pins the semantics the training loop relies on: gradients accumulate with +=, a value
used twice receives both contributions, backward() never recurses, and `topological_order` is the
recursive depth-first post-order of SPEC section 9 (operands left to right, each node once),
written here the obvious recursive way, on random expression graphs.
"""

from __future__ import annotations

import math
import random
import sys

import pytest
from conftest import requires_torch

from microgpt.autograd import Value, topological_order

# Central differences: truncation error ~ h^2 * f''' and rounding error ~ 1e-16 * |f| / h; with
# h = 1e-6 both stay below 1e-8 for the smooth, O(1) functions below, so 1e-6 leaves margin.
H = 1e-6
FD_TOL = 1e-6


def finite_difference(f, xs: list[float], i: int) -> float:
    """d f / d xs[i] by central differences, evaluating f on fresh Values."""
    plus = [x + H if j == i else x for j, x in enumerate(xs)]
    minus = [x - H if j == i else x for j, x in enumerate(xs)]
    return (f(*[Value(x) for x in plus]).data - f(*[Value(x) for x in minus]).data) / (2 * H)


def close(got: float, want: float, tol: float) -> bool:
    return abs(got - want) <= tol * max(1.0, abs(want))


# (name, function on Values, the same function on floats via math, inputs)
UNARY_AND_BINARY = [
    ("a+b", lambda a, b: a + b, lambda a, b: a + b, [1.3, -0.7]),
    ("a+2", lambda a: a + 2, lambda a: a + 2, [1.3]),
    ("2+a", lambda a: 2 + a, lambda a: 2 + a, [1.3]),
    ("a-b", lambda a, b: a - b, lambda a, b: a - b, [1.3, -0.7]),
    ("a-2", lambda a: a - 2, lambda a: a - 2, [1.3]),
    ("2-a", lambda a: 2 - a, lambda a: 2 - a, [1.3]),
    ("a*b", lambda a, b: a * b, lambda a, b: a * b, [1.3, -0.7]),
    ("a*3", lambda a: a * 3, lambda a: a * 3, [1.3]),
    ("2*a", lambda a: 2 * a, lambda a: 2 * a, [1.3]),
    ("a/b", lambda a, b: a / b, lambda a, b: a / b, [1.3, -0.7]),
    ("a/4", lambda a: a / 4, lambda a: a / 4, [1.3]),
    ("2/a", lambda a: 2 / a, lambda a: 2 / a, [1.3]),
    ("2/a negative", lambda a: 2 / a, lambda a: 2 / a, [-0.6]),
    ("a**2", lambda a: a ** 2, lambda a: a ** 2, [-1.3]),
    ("a**3", lambda a: a ** 3, lambda a: a ** 3, [-1.3]),
    ("a**-1", lambda a: a ** -1, lambda a: a ** -1, [-1.3]),
    ("a**-2", lambda a: a ** -2, lambda a: a ** -2, [0.9]),
    ("a**0.5", lambda a: a ** 0.5, lambda a: math.sqrt(a), [1.7]),
    ("a**-0.5", lambda a: a ** -0.5, lambda a: 1 / math.sqrt(a), [1.7]),
    ("a**1.5", lambda a: a ** 1.5, lambda a: a * math.sqrt(a), [1.7]),
    ("a**-2.5", lambda a: a ** -2.5, lambda a: a ** -2.5, [0.8]),
    ("-a", lambda a: -a, lambda a: -a, [1.3]),
    ("log", lambda a: a.log(), math.log, [0.35]),
    ("exp", lambda a: a.exp(), math.exp, [-1.1]),
    ("exp large", lambda a: a.exp(), math.exp, [3.2]),
    ("relu positive", lambda a: a.relu(), lambda a: max(a, 0.0), [0.8]),
    ("relu negative", lambda a: a.relu(), lambda a: max(a, 0.0), [-0.8]),
    ("a*a (same value twice)", lambda a: a * a, lambda a: a * a, [-1.3]),
    ("a+a (same value twice)", lambda a: a + a, lambda a: a + a, [-1.3]),
]


@pytest.mark.parametrize("name, f, f_float, xs", UNARY_AND_BINARY, ids=[case[0] for case in UNARY_AND_BINARY])
def test_op_value_and_gradient(name, f, f_float, xs):
    leaves = [Value(x) for x in xs]
    out = f(*leaves)
    assert out.data == pytest.approx(f_float(*xs), rel=1e-15, abs=1e-15)
    out.backward()
    for i, leaf in enumerate(leaves):
        fd = finite_difference(f, xs, i)
        assert close(leaf.grad, fd, FD_TOL), f"{name}: d/dx{i} is {leaf.grad}, finite differences give {fd}"


def test_op_gradients_are_the_textbook_derivatives():
    # Exact closed forms (SPEC section 9), not just "close to finite differences".
    a, b = Value(1.5), Value(-0.5)
    (a * b).backward()
    assert (a.grad, b.grad) == (-0.5, 1.5)
    a = Value(2.0)
    (a ** -1.5).backward()
    assert a.grad == -1.5 * 2.0 ** -2.5
    a = Value(0.25)
    a.log().backward()
    assert a.grad == 4.0
    a = Value(0.3)
    a.exp().backward()
    assert a.grad == math.exp(0.3)


def test_relu_at_zero_has_zero_gradient():
    # SPEC section 9: d relu a = 1 if a > 0 else 0, so the kink itself passes nothing back.
    a = Value(0.0)
    out = a.relu()
    out.backward()
    assert out.data == 0
    assert a.grad == 0


def test_relu_gradient_on_both_sides_is_exact():
    pos, neg = Value(0.7), Value(-0.7)
    (pos.relu() + neg.relu()).backward()
    assert (pos.grad, neg.grad) == (1, 0)


def test_exponent_must_be_a_number():
    with pytest.raises(TypeError):
        Value(2.0) ** Value(3.0)


def test_gradients_accumulate_across_two_backward_calls():
    # Two graphs that share a leaf, as two training steps without zero_grad: grads add up.
    x = Value(1.5)
    first = x * x  # d/dx = 2x = 3
    first.backward()
    assert x.grad == 3.0
    second = x.exp()  # d/dx = exp(1.5)
    second.backward()
    assert x.grad == pytest.approx(3.0 + math.exp(1.5), rel=1e-15)


def test_leaf_grad_is_added_to_not_overwritten():
    x = Value(2.0)
    x.grad = 10.0
    (x * 3).backward()
    assert x.grad == 13.0


def test_value_used_twice_gets_both_contributions():
    x, y = Value(-3.0), Value(2.0)
    # z = x*x + x*y: dz/dx = 2x + y = -4, dz/dy = x = -3.
    z = x * x + x * y
    z.backward()
    assert (x.grad, y.grad) == (-4.0, -3.0)


def test_diamond_graph_counts_each_path_once():
    x = Value(0.5)
    a = x.exp()
    b = a * a + a  # both branches read a; a must pass on its full gradient exactly once
    b.backward()
    want = 2 * math.exp(1.0) + math.exp(0.5)  # d/dx (e^{2x} + e^x)
    assert x.grad == pytest.approx(want, rel=1e-15)


def test_long_chain_backward_does_not_recurse():
    n = 100_000
    x = Value(1.0)
    total = Value(0.0)
    for _ in range(n):
        total = total + x  # a chain n nodes deep
    # Far past CPython's default limit, which backward() is held to whatever else raised it.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        total.backward()
    finally:
        sys.setrecursionlimit(limit)
    assert total.data == n
    assert x.grad == n


def _expression(a, b, c, d):
    """Uses every op, reflected ones included; works on Values and on torch tensors alike."""
    e = a * b + c ** 2 - d / a
    f = (2 + e).relu() + (2 - b) * (2 * c) + 2 / d
    g = (f * a).exp() + (c * c + 1).log() - (-d) ** 3
    h = (b - 1.5).relu() + (a * 0.5).relu() + g ** -0.5 + (g + 1) ** 1.5 + e ** -2
    return h * f + h / (f ** 2 + 1) - a * a


@requires_torch
def test_expression_matches_torch_float64():
    import torch

    xs = [0.8, -1.3, 0.6, 1.7]
    leaves = [Value(x) for x in xs]
    out = _expression(*leaves)
    out.backward()

    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    ref = _expression(*tensors)
    ref.backward()

    # Same operations in the same order in IEEE double: agreement to a few ulps.
    assert out.data == pytest.approx(ref.item(), rel=1e-13)
    for i, (leaf, t) in enumerate(zip(leaves, tensors)):
        assert leaf.grad == pytest.approx(t.grad.item(), rel=1e-12, abs=1e-14), f"leaf {i}"
    # The expression is not trivially flat: every leaf has a real gradient to compare.
    assert all(abs(t.grad.item()) > 1e-3 for t in tensors)


@requires_torch
def test_micrograd_style_expression_matches_torch():
    import torch

    # The relu branches here sit on both sides of 0.
    def expr(x):
        z = 2 * x + 2 + x
        q = z.relu() + z * x
        h = (z * z).relu()
        return h + q + q * x

    for x0 in (-4.0, 0.25, 3.0):
        x = Value(x0)
        y = expr(x)
        y.backward()
        xt = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        yt = expr(xt)
        yt.backward()
        assert y.data == pytest.approx(yt.item(), rel=1e-14)
        assert x.grad == pytest.approx(xt.grad.item(), rel=1e-14)


# --- the topological order ------------------------------------------------------------------------


def recursive_post_order(root: Value) -> list[Value]:
    """SPEC section 9's order, the obvious recursive way: visit each operand left to right, each node
    once (marked when first reached), and list a node after its operands."""
    order: list[Value] = []
    seen: set[int] = set()

    def visit(v: Value) -> None:
        seen.add(id(v))
        for child in v._children:
            if id(child) not in seen:
                visit(child)
        order.append(v)

    visit(root)
    return order


# Operations that keep every value finite over a few dozen steps, with operands reused at random, so
# the graphs share nodes (diamonds, a value used twice by one operation) as the model's graph does.
OPS = [
    lambda a, b: a + b,
    lambda a, b: a * b,
    lambda a, b: a - b,
    lambda a, b: a * 0.5 + 1,
    lambda a, b: a.relu(),
    lambda a, b: (a * a + 1) ** -0.5,
    lambda a, b: (b * b + 1).log(),
    lambda a, b: a * a,
    lambda a, b: 3 - b,
]


def random_graph(seed: int) -> Value:
    rng = random.Random(seed)
    pool = [Value(rng.uniform(-2, 2)) for _ in range(rng.randint(1, 6))]
    for _ in range(rng.randint(1, 80)):
        a, b = rng.choice(pool[-8:]), rng.choice(pool)  # recent values, so the graph grows deep too
        pool.append(rng.choice(OPS)(a, b))
    # The root sums a few of the values, some of them perhaps not reachable otherwise.
    return sum(rng.sample(pool, min(len(pool), 3)), pool[-1])


@pytest.fixture(params=range(25), ids=str)
def root(request) -> Value:
    """The root of random_graph(seed), for 25 seeds."""
    return random_graph(request.param)


def test_topological_order_is_the_recursive_post_order(root):
    order = topological_order(root)
    assert [id(v) for v in order] == [id(v) for v in recursive_post_order(root)]
    assert len({id(v) for v in order}) == len(order)  # each node once
    assert order[-1] is root
    position = {id(v): i for i, v in enumerate(order)}
    assert all(position[id(c)] < position[id(v)] for v in order for c in v._children)  # operands first


def test_backward_accumulates_in_the_recursive_order(root):
    """backward() is the chain rule applied in reverse post-order: the same sums, bit for bit."""
    order = recursive_post_order(root)
    want = {id(root): 1}  # d root / d v, kept here rather than in the Values
    for v in reversed(order):
        for child, local in zip(v._children, v._local_grads):
            want[id(child)] = want.get(id(child), 0) + local * want.get(id(v), 0)
    root.backward()
    assert [v.grad for v in order] == [want.get(id(v), 0) for v in order]


def test_topological_order_of_a_leaf_and_of_a_deep_chain():
    leaf = Value(1.0)
    assert topological_order(leaf) == [leaf]
    x, total = Value(1.0), Value(0.0)
    chain = [total]
    for _ in range(5000):
        total = total + x
        chain.append(total)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        order = topological_order(total)
    finally:
        sys.setrecursionlimit(limit)
    # The first sum's operands (the 0 and x), then every partial sum in the order it was built.
    assert order[:2] == [chain[0], x] and order[2:] == chain[1:]
