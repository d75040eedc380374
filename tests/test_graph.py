"""`microgpt graph`: its counts against independent ones, and the files it writes or refuses to write.

The oracles: a recursive traversal written here (fine for these graphs' depths), the operation
counts that follow from the model's definition (SPEC sections 5 and 9), an attribution of every
Value to its part of the model computed here by another route, and the files themselves: the
PNG's IHDR, the SVG's width and height, and the boxes and numbers Graphviz drew.
"""

from __future__ import annotations

import functools
import html
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import NAMES, assert_one_line_error, needs, run_cli, run_cli_ok

from microgpt import graph
from microgpt.autograd import topological_order
from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.model import document_loss, init_params
from microgpt.tokenizer import Tokenizer

TINY = ["--n-embd", "4", "--n-head", "2", "--block-size", "4"]
TINY_CONFIG = Config(n_embd=4, n_head=2, block_size=4)
DOC = "anna"  # 4 positions (BOS a n n), 3 distinct input tokens
DRAWABLE = ["--n-embd", "2", "--n-head", "1", "--block-size", "2"]
DRAWABLE_CONFIG = Config(n_embd=2, n_head=1, block_size=2)
# The chapter's smallest model: a vocabulary of a, b and BOS, width 1, one position.
AB_FLAGS = ["--n-embd", "1", "--n-head", "1", "--block-size", "1", "--doc", "ab"]
LAYER = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")
P, K = graph.PARAMETERS, graph.CONSTANTS


def run(*args) -> tuple[int, str, str]:
    return run_cli("graph", "--data", NAMES, *args)


def run_ok(*args) -> str:
    """`microgpt graph --data NAMES ARGS`, which must succeed; what it printed."""
    return run_cli_ok("graph", "--data", NAMES, *args)


def first_doc() -> str:
    """Training's first document: the packaged names shuffled with seed 42 (SPEC 1)."""
    return shuffled(load_docs(NAMES), random.Random(42))[0]


def book_graph(config: Config, doc: str, data=NAMES):
    """The loss Value of one training step, its parameters, and the tokens, built here directly."""
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(data), rng)
    tokenizer = Tokenizer.from_docs(docs)
    params = init_params(config, tokenizer.vocab_size, rng)
    tokens = tokenizer.example(doc)
    return document_loss(tokens, params, config), params, tokens, tokenizer.vocab_size


def with_recursion(function):
    """Run a recursive reference with a higher recursion limit, restoring the usual one after."""
    @functools.wraps(function)
    def wrapper(*args):
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10_000))
        try:
            return function(*args)
        finally:
            sys.setrecursionlimit(limit)
    return wrapper


@with_recursion
def all_nodes(root) -> dict[int, object]:
    """Every node under root, by a recursive walk."""
    found = {}

    def visit(node) -> None:
        if id(node) not in found:
            found[id(node)] = node
            for child in node._children:
                visit(child)

    visit(root)
    return found


@with_recursion
def post_order(root) -> list:
    """Every node under root after its operands: a recursive depth-first post-order."""
    seen, order = set(), []

    def visit(node) -> None:
        if id(node) not in seen:
            seen.add(id(node))
            for child in node._children:
                visit(child)
            order.append(node)

    visit(root)
    return order


def table_value(out: str, label: str) -> int:
    line = next(line for line in out.splitlines() if line.startswith(label + " "))
    return int(line[len(label):].split()[0].replace(",", ""))


def expected_counts(C: int, H: int, T: int, V: int, L: int, distinct: int) -> dict[tuple[str, str], int]:
    """Values per (part, operation) for T positions, worked out from the model's definition alone.

    Each sum starts from a constant 0 and adds its terms one by one, a / b is a * b**-1 with a
    fresh b**-1 each time, and a part holds what its weight matrix is the latest matrix behind
    (so each rmsnorm lands with the part before it). C = n_embd, H heads, V vocabulary, L layers,
    `distinct` input tokens.
    """
    head_dim, pairs = C // H, T * (T + 1) // 2  # pairs: (position, a position so far) attention scores

    def rmsnorm() -> Counter:  # x*x, their sum, * 1/n, + 1e-5, **-0.5, x * scale
        return Counter({"*": (2 * C + 1) * T, "+": (C + 1) * T, K: 3 * T, "**-0.5": T})

    def linear(n_out: int, n_in: int) -> Counter:
        return Counter({"*": n_out * n_in * T, "+": n_out * n_in * T, K: n_out * T, P: n_out * n_in})

    parts = {"embeddings": Counter({P: distinct * C + T * C, "+": C * T}) + rmsnorm() + rmsnorm()}
    for i in range(L):
        layer = f"layer{i}."
        parts[layer + "attn_wq"] = linear(C, C)
        # Per head and pair: head_dim products summed, * 1/sqrt(head_dim), - max, exp, one share of
        # the sum of exps, and * (sum)**-1; per head and position: the 0 that sum starts from.
        parts[layer + "attn_wk"] = linear(C, C) + Counter({
            "*": H * pairs * (head_dim + 2), "+": H * pairs * (head_dim + 2), K: 3 * H * pairs + H * T,
            "exp": H * pairs, "**-1": H * pairs})
        parts[layer + "attn_wv"] = linear(C, C) + Counter({"*": C * pairs, "+": C * pairs, K: C * T})
        parts[layer + "attn_wo"] = linear(C, C) + Counter({"+": C * T}) + rmsnorm()
        parts[layer + "mlp_fc1"] = linear(4 * C, C) + Counter({"relu": 4 * C * T})
        parts[layer + "mlp_fc2"] = linear(C, 4 * C) + Counter({"+": C * T}) + (rmsnorm() if i + 1 < L else Counter())
    # Softmax over V logits, of which only the target's probability reaches the loss; -log p is
    # log and * -1; the mean is a sum over positions and * 1/n.
    parts["lm_head"] = linear(V, C) + Counter({"+": 2 * V * T + T, K: V * T + 2 * T + 2, "exp": V * T,
                                              "**-1": T, "*": 2 * T + 1, "log": T})
    return {(part, kind): n for part, counts in parts.items() for kind, n in counts.items()}


@with_recursion
def reference_groups(loss, params, n_layer: int) -> dict[int, tuple[str, str]]:
    """Each Value's (part, operation), by the set of matrices behind it, found recursively."""
    forward = ["wte", "wpe", *(f"layer{i}.{m}" for i in range(n_layer) for m in LAYER), "lm_head"]
    matrix_of = {id(p): name for name, rows in params.items() for row in rows for p in row}

    @functools.cache
    def behind(node) -> frozenset:
        if not node._children:
            return frozenset({matrix_of[id(node)]} if id(node) in matrix_of else ())
        return frozenset().union(*(behind(child) for child in node._children))

    nodes = all_nodes(loss).values()
    user = {id(child): node for node in nodes for child in node._children}
    parts = {}
    for node in nodes:
        matrices = behind(node) or behind(user[id(node)])  # a constant goes where it is used
        latest = max(matrices, key=forward.index)
        parts[id(node)] = ("embeddings" if latest in ("wte", "wpe") else latest,
                           node._op or (P if id(node) in matrix_of else K))
    return parts


def sublayer_of(part: str) -> str:
    if not part.startswith("layer"):
        return part
    layer, name = part.split(".")
    return f"{layer}.{'attention' if name.startswith('attn') else 'mlp'}"


def svg_pixels(text: str) -> tuple[float, float]:
    """The SVG's width and height in CSS pixels (Graphviz writes points, 4/3 of a pixel)."""
    found = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', text)
    assert found, text[:400]
    return float(found.group(1)) * 4 / 3, float(found.group(2)) * 4 / 3


def png_pixels(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, the first after the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def image_pixels(path: Path) -> tuple[float, float]:
    """Width and height of an SVG or PNG drawing, read from the file itself."""
    return svg_pixels(path.read_text()) if path.suffix == ".svg" else png_pixels(path.read_bytes())


def svg_boxes(text: str) -> list[list[str]]:
    """The text lines of every node Graphviz drew, runs of spaces (some written as &#160;) as one."""
    blocks = re.findall(r'<g id="node\d+" class="node">(.*?)</g>', text, flags=re.S)
    return [[" ".join(html.unescape(line).split()) for line in re.findall(r"<text[^>]*>([^<]*)</text>", block)]
            for block in blocks]


def box_kind(first_line: str) -> str:
    word = first_line.split()[0]
    return {"weights": P, "constants": K}.get(word, word)


def reported_size(out: str) -> tuple[int, int]:
    found = re.search(r"; ([\d,]+) x ([\d,]+) pixels$", out.strip())
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


def assert_within_the_cap_as_reported(path: Path, out: str) -> tuple[float, float]:
    """The drawing fits in graph.MAX_PIXELS and is the size the command printed; its width and height."""
    width, height = image_pixels(path)
    assert max(width, height) <= graph.MAX_PIXELS
    slack = 1 if path.suffix == ".svg" else 0  # an SVG's size is in points, the printed one rounded to pixels
    assert reported_size(out) == (pytest.approx(width, abs=slack), pytest.approx(height, abs=slack))
    return width, height


# --- the report ---------------------------------------------------------------------------


def test_counts_match_an_independent_traversal_and_the_model():
    out = run_ok(*TINY, "--doc", DOC)
    loss, params, tokens, V = book_graph(TINY_CONFIG, DOC)
    nodes = all_nodes(loss).values()
    param_ids = {id(p) for rows in params.values() for row in rows for p in row}
    by_op = {}
    for node in nodes:
        key = node._op or ("leaves: parameters" if id(node) in param_ids else "leaves: constants")
        by_op[key] = by_op.get(key, 0) + 1
    assert f"the forward pass built {len(nodes):,} Values" in out
    assert table_value(out, "total") == len(nodes)
    for key, count in by_op.items():
        assert table_value(out, key) == count, key

    # What the model's definition implies, for T positions, C = n_embd, H heads, one layer.
    T, C, H, L = 4, 4, 2, 1
    attention_weights = L * H * T * (T + 1) // 2  # position t attends to t positions, in every head
    assert by_op["log"] == T
    assert by_op["relu"] == L * T * 4 * C
    assert by_op["exp"] == T * V + attention_weights
    assert by_op["**-1"] == T + attention_weights  # only the target's probability reaches the loss
    assert by_op["**-0.5"] == T * (1 + 2 * L)
    used_tokens = len(set(tokens[:T]))
    expected_params = used_tokens * C + T * C + V * C + L * 12 * C * C
    assert by_op["leaves: parameters"] == expected_params
    assert f"parameters reached: {expected_params:,} of" in out
    assert f"wte rows of the {used_tokens} distinct input tokens" in out


def test_depth_matches_a_recursive_longest_path():
    rc, out, _ = run(*TINY, "--doc", DOC)
    loss, *_ = book_graph(TINY_CONFIG, DOC)

    @functools.cache
    def longest(node) -> int:
        return max((1 + longest(child) for child in node._children), default=0)

    expected = with_recursion(longest)(loss)
    assert f"depth: {expected:,} operations" in out
    order = topological_order(loss)
    assert graph.depth(order) == expected
    # backward()'s order: every node after its operands.
    position = {id(node): i for i, node in enumerate(order)}
    assert all(position[id(child)] < position[id(node)] for node in order for child in node._children)


def test_growth_table_counts_and_trend():
    out = run_ok(*TINY, "--doc", "annabel")  # 8 tokens, cut to block_size 4 positions
    header = next(line for line in out.splitlines() if line.strip().startswith("positions"))
    assert header.split()[1:] == ["1", "2", "4"]
    rows = {n: [int(x.replace(",", "")) for x in line.split()[2:]]
            for n in (1, 2, 3) for line in out.splitlines() if line.strip().startswith(f"n_layer {n} ")}
    for n_layer in (1, 2, 3):
        for p, count in zip((1, 2, 4), rows[n_layer], strict=True):
            # The other way to cut the document to p positions: block_size p.
            loss, *_ = book_graph(Config(n_embd=4, n_head=2, block_size=p, n_layer=n_layer), "annabel")
            assert count == len(all_nodes(loss)), (n_layer, p)
    # Layers add a constant amount; positions add more and more (attention looks back).
    assert rows[3][-1] - rows[2][-1] == rows[2][-1] - rows[1][-1]
    assert (rows[1][2] - rows[1][1]) / 2 > rows[1][1] - rows[1][0]
    assert "faster than linearly in positions" in out


# --- one level up: the groups -------------------------------------------------------------


@pytest.mark.parametrize("config", [
    Config(n_embd=4, n_head=2, block_size=1, n_layer=2),  # one position
    Config(n_embd=4, n_head=2, block_size=4, n_layer=2),  # four: attention looks back
], ids=["1 position", "4 positions"])
def test_groups_match_the_model_and_an_independent_attribution(config):
    loss, params, tokens, V = book_graph(config, DOC)
    order = post_order(loss)
    everything = all_nodes(loss)
    T, C, H, L = config.block_size, config.n_embd, config.n_head, config.n_layer
    groups = graph.attribute(order, params)
    nodes, edges = graph.group_counts(order, groups)

    # Every Value in exactly one group; the groups add up to the Value-level counts.
    assert set(groups) == set(everything) and sum(nodes.values()) == len(everything)
    per_kind = Counter()
    for (_, kind), count in nodes.items():
        per_kind[kind] += count
    param_ids = {id(p) for rows in params.values() for row in rows for p in row}
    assert per_kind == graph.operation_counts(everything.values(), param_ids)
    assert sum(edges.values()) == sum(len(node._children) for node in everything.values())

    # Each group's count as the model's shapes give it, and each Value where another route puts it.
    assert dict(nodes) == expected_counts(C, H, T, V, L, len(set(tokens[:T])))
    assert groups == reference_groups(loss, params, L)

    # Arrows between groups: every query element meets the key of every position so far, and
    # every weight of a linear layer is used once per position.
    pairs = T * (T + 1) // 2
    for i in range(L):
        assert edges[((f"layer{i}.attn_wq", "+"), (f"layer{i}.attn_wk", "*"))] == C * pairs
        assert edges[((f"layer{i}.mlp_fc1", P), (f"layer{i}.mlp_fc1", "*"))] == 4 * C * C * T

    # One level coarser, each layer's attention and MLP hold the sums of their matrices' groups.
    coarse, _ = graph.group_counts(order, graph.attribute(order, params, "sublayer"))
    summed = Counter()
    for (part, kind), count in nodes.items():
        summed[(sublayer_of(part), kind)] += count
    assert coarse == summed


def test_grouped_dot_needs_no_graphviz_and_full_dot_takes_any_size(tmp_path, monkeypatch):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    doc = first_doc()
    loss, params, tokens, V = book_graph(Config(), doc)
    count = len(all_nodes(loss))
    out = run_ok("-o", tmp_path / "step.dot")
    labels = re.findall(r'^    g\d+ \[label="([^"]*)"', (tmp_path / "step.dot").read_text(), flags=re.M)
    lines = [label.split("\\n") for label in labels]  # DOT's line breaks, written as backslash n
    drawn = sorted((box_kind(first), int(count.replace(",", ""))) for first, count, *_ in lines)
    expected = expected_counts(16, 4, len(tokens) - 1, V, 1, len(set(tokens[:-1])))
    assert drawn == sorted((kind, n) for (_, kind), n in expected.items())
    assert f"wrote {tmp_path / 'step.dot'}: {count:,} Values as {len(expected)} boxes" in out

    # The whole graph, one node per Value, as DOT: no drawing, so no limit.
    out = run_ok("--full", "-o", tmp_path / "full.dot")
    text = (tmp_path / "full.dot").read_text()
    assert len(re.findall(r"^  n\d+ \[label=", text, flags=re.M)) == count
    assert f"wrote {tmp_path / 'full.dot'}: {count:,} nodes" in out


# --- drawings -----------------------------------------------------------------------------


def assert_legible_with_a_box_per_operation(text: str) -> None:
    """The default model's SVG: legible at its size, one box per (part, operation) with its count."""
    # Legible: drawn at scale 1, nothing under 10 points (13 pixels).
    assert re.search(r'class="graph" transform="scale\(1 1\)', text)
    sizes = [float(s) for s in re.findall(r'font-size="([\d.]+)"', text)]
    assert sizes and min(sizes) >= 10
    # One box per (part, operation) with its count, as the model's shapes give them.
    doc = first_doc()
    _, _, tokens, V = book_graph(Config(), doc)
    expected = expected_counts(16, 4, len(tokens) - 1, V, 1, len(set(tokens[:-1])))
    boxes = svg_boxes(text)
    assert sorted((box_kind(lines[0]), int(lines[1].replace(",", ""))) for lines in boxes) == \
        sorted((kind, n) for (_, kind), n in expected.items())
    assert sum(1 for lines in boxes if "the loss among them" in lines) == 1
    assert f"{sum(expected.values()):,} Values in {len(expected)} boxes" in text


@needs("dot", "the README's graph example draws with Graphviz")
@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_readme_example_draws_the_default_model_within_the_cap(tmp_path, suffix):
    path = tmp_path / f"graph.{suffix}"
    # As the README writes it: no --data (the packaged names, no network), the default model.
    out = run_cli_ok("graph", "-o", path)
    assert min(assert_within_the_cap_as_reported(path, out)) >= 500
    assert "one per operation and weight matrix" in out
    if suffix == "svg":
        assert_legible_with_a_box_per_operation(path.read_text())


@needs("dot", "the grouped drawing uses Graphviz")
def test_svg_of_a_tiny_graph(tmp_path):
    path = tmp_path / "step.svg"
    run_ok(*DRAWABLE, "--doc", "ab", "-o", path)
    loss, params, _, _ = book_graph(DRAWABLE_CONFIG, "ab")
    order = post_order(loss)
    nodes, _ = graph.group_counts(order, graph.attribute(order, params))
    assert len(svg_boxes(path.read_text())) == len(nodes)


@needs("dot", "the full drawing uses Graphviz")
def test_full_draws_every_value_of_a_tiny_model(tmp_path):
    data = tmp_path / "ab.txt"
    data.write_text("ab\n")
    for suffix in ("svg", "png"):
        path = tmp_path / f"step.{suffix}"
        run_cli_ok("graph", "--data", data, *AB_FLAGS, "--full", "-o", path)
        assert max(image_pixels(path)) <= graph.MAX_PIXELS
    loss, params, tokens, _ = book_graph(Config(n_embd=1, n_head=1, block_size=1), "ab", data)
    boxes = svg_boxes((tmp_path / "step.svg").read_text())
    assert len(boxes) == len(all_nodes(loss))
    assert [f"loss (*) data {loss.data:.4g}", "grad 1"] in boxes
    bos = tokens[0]
    assert any(lines[0].startswith(f"wte[{bos}][0] data ") for lines in boxes)


@needs("dot", "the refusals come after checking that Graphviz is there")
def test_full_is_refused_for_graphs_too_big_to_read(tmp_path):
    # The default model: too many Values to even ask Graphviz.
    proc = run("--full", "-o", tmp_path / "big.svg")
    line = assert_one_line_error(proc, "59,647 Values", "--full", "-o FILE.dot")
    assert proc[1] == "" and "leave out --full" in line
    # Few enough Values, but the drawing would exceed the cap: measured, then refused.
    data = tmp_path / "ab.txt"
    data.write_text("ab\n")
    proc = run_cli("graph", "--data", data, "--n-embd", "2", "--n-head", "1", "--block-size", "2", "--doc", "ab",
                   "--full", "-o", tmp_path / "mid.png")
    line = assert_one_line_error(proc, "pixels", f"{graph.MAX_PIXELS:,}", "leave out --full")
    sizes = [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) x ([\d,]+) pixels", line)[0]]
    assert max(sizes) > graph.MAX_PIXELS
    assert list(tmp_path.iterdir()) == [data]


@needs("dot", "the grouped drawing uses Graphviz")
def test_more_layers_draw_coarser_then_are_refused(tmp_path):
    small = ["--n-embd", "4", "--n-head", "1", "--block-size", "2", "--doc", "ab"]
    out = run_ok(*small, "--n-layer", "3", "-o", tmp_path / "three.svg")
    assert "one per operation in each layer's attention and MLP" in out
    assert max(image_pixels(tmp_path / "three.svg")) <= graph.MAX_PIXELS
    loss, params, _, _ = book_graph(Config(n_embd=4, n_head=1, block_size=2, n_layer=3), "ab")
    order = post_order(loss)
    coarse, _ = graph.group_counts(order, graph.attribute(order, params, "sublayer"))
    assert len(svg_boxes((tmp_path / "three.svg").read_text())) == len(coarse)

    proc = run(*small, "--n-layer", "6", "-o", tmp_path / "six.svg")
    assert_one_line_error(proc, "6 layers", "pixels", "--n-layer", "-o FILE.dot")
    assert not (tmp_path / "six.svg").exists()


@needs("dot", "the DOT file is checked by drawing it")
def test_full_dot_file_holds_every_node_and_renders(tmp_path):
    path = tmp_path / "step.dot"
    out = run_ok(*DRAWABLE, "--doc", DOC, "--full", "-o", path)
    loss, params, tokens, _ = book_graph(DRAWABLE_CONFIG, DOC)
    nodes = all_nodes(loss)
    text = path.read_text()
    node_lines = re.findall(r"^  n\d+ \[label=\"([^\"]*)\"", text, flags=re.M)
    assert len(node_lines) == len(nodes)
    assert len(re.findall(r"^  n\d+ -> n\d+;$", text, flags=re.M)) == sum(len(n._children) for n in nodes.values())
    assert f"{len(nodes)} nodes" in text.splitlines()[0] and f"wrote {path}: {len(nodes):,} nodes" in out
    # Parameters are named, and carry their data and grad after backward().
    bos = tokens[0]  # the first input, so its embedding row is in the graph
    assert f"wte[{bos}][0]  data {params['wte'][bos][0].data:.4g}\\ngrad" in text
    assert any(label.startswith("loss (") for label in node_lines)
    result = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, timeout=120)
    assert result.returncode == 0 and b"<svg" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["step.dot"]  # no temporary file left behind


def test_missing_dot_program_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    proc = run(*TINY, "--doc", DOC, "-o", tmp_path / "step.png")
    assert assert_one_line_error(proc) == (
        "microgpt: error: Graphviz's dot program is not installed: apt-get install graphviz "
        "(Debian/Ubuntu) or brew install graphviz, or write -o FILE.dot")
    # DOT needs no Graphviz.
    rc, _, _ = run(*TINY, "--doc", DOC, "-o", tmp_path / "step.dot")
    assert rc == 0 and (tmp_path / "step.dot").exists()


@pytest.mark.parametrize("flags, message", [
    (["-o", "graph.pdf"], "must end in .dot, .svg or .png"),
    (["--n-embd", "6", "--n-head", "4"], "not divisible"),
    (["--doc", "Zoë"], "not in the vocabulary"),
    (["--full"], "add -o FILE.svg"),
])
def test_bad_input_exits_2(flags, message):
    assert_one_line_error(run(*flags), message)
