"""`microgpt graph`: its counts against independent ones, and the files it writes or refuses to write.

The oracles: a recursive traversal written here (fine for a tiny graph), the operation counts
that follow from the model's definition (SPEC section 5), and Graphviz itself for the files.
"""

from __future__ import annotations

import functools
import random
import re
import shlex
import subprocess
import sys

import pytest
from conftest import NAMES

from microgpt import graph
from microgpt.cli import main
from microgpt.config import Config
from microgpt.data import load_docs, shuffled
from microgpt.model import document_loss, init_params
from microgpt.tokenizer import Tokenizer

TINY = ["--n-embd", "4", "--n-head", "2", "--block-size", "4"]
TINY_CONFIG = Config(n_embd=4, n_head=2, block_size=4)
DOC = "anna"  # 4 positions (BOS a n n), 3 distinct input tokens
# Small enough for Graphviz to draw in about a second.
DRAWABLE = ["--n-embd", "2", "--n-head", "1", "--block-size", "2"]
DRAWABLE_CONFIG = Config(n_embd=2, n_head=1, block_size=2)

def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["graph", "--data", str(NAMES), *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def book_graph(config: Config, doc: str):
    """The loss Value of one training step, its parameters, and the tokens, built here directly."""
    rng = random.Random(config.seed)
    docs = shuffled(load_docs(NAMES), rng)
    tokenizer = Tokenizer.from_docs(docs)
    params = init_params(config, tokenizer.vocab_size, rng)
    tokens = tokenizer.example(doc)
    return document_loss(tokens, params, config), params, tokens, tokenizer.vocab_size


def all_nodes(root) -> dict[int, object]:
    """Every node under root, by a recursive walk (a tiny graph stays within the recursion limit)."""
    found = {}

    def visit(node) -> None:
        if id(node) not in found:
            found[id(node)] = node
            for child in node._children:
                visit(child)

    visit(root)
    return found


def table_value(out: str, label: str) -> int:
    line = next(line for line in out.splitlines() if line.startswith(label + " "))
    return int(line[len(label):].split()[0].replace(",", ""))


def test_counts_match_an_independent_traversal_and_the_model(capsys):
    rc, out, _ = run(capsys, *TINY, "--doc", DOC)
    assert rc == 0
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


def test_depth_matches_a_recursive_longest_path(capsys):
    rc, out, _ = run(capsys, *TINY, "--doc", DOC)
    loss, *_ = book_graph(TINY_CONFIG, DOC)

    @functools.cache
    def longest(node) -> int:
        return max((1 + longest(child) for child in node._children), default=0)

    # The reference recurses: raise the limit for it alone, so later tests see the usual one.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        expected = longest(loss)
    finally:
        sys.setrecursionlimit(limit)
    assert f"depth: {expected:,} operations" in out
    order = graph.topological_order(loss)
    assert graph.depth(order) == expected
    # backward()'s order: every node after its operands.
    position = {id(node): i for i, node in enumerate(order)}
    assert all(position[id(child)] < position[id(node)] for node in order for child in node._children)


def test_growth_table_counts_and_trend(capsys):
    rc, out, _ = run(capsys, *TINY, "--doc", "annabel")  # 8 tokens, cut to block_size 4 positions
    assert rc == 0
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


def test_dot_file_holds_every_node_and_renders(capsys, tmp_path):
    path = tmp_path / "step.dot"
    rc, out, _ = run(capsys, *DRAWABLE, "--doc", DOC, "-o", path)
    assert rc == 0
    loss, params, tokens, _ = book_graph(DRAWABLE_CONFIG, DOC)
    nodes = all_nodes(loss)
    text = path.read_text()
    node_lines = re.findall(r"^  n\d+ \[label=\"([^\"]*)\"", text, flags=re.M)
    assert len(node_lines) == len(nodes)
    assert len(re.findall(r"^  n\d+ -> n\d+;$", text, flags=re.M)) == sum(len(n._children) for n in nodes.values())
    assert f"{len(nodes)} nodes" in text.splitlines()[0] and f"wrote {path} ({len(nodes):,} nodes)" in out
    # Parameters are named, and carry their data and grad after backward().
    bos = tokens[0]  # the first input, so its embedding row is in the graph
    assert f"wte[{bos}][0]\\ndata {params['wte'][bos][0].data:.4g}\\ngrad" in text
    assert any(label.startswith("loss (") for label in node_lines)
    result = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, timeout=120)
    assert result.returncode == 0 and b"<svg" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["step.dot"]  # no temporary file left behind


def test_svg_of_a_tiny_graph(capsys, tmp_path):
    path = tmp_path / "step.svg"
    rc, out, err = run(capsys, *DRAWABLE, "--doc", "ab", "-o", path)
    assert rc == 0, err
    assert "<svg" in path.read_text()


def test_too_large_to_draw_is_refused_with_a_suggestion_that_fits(capsys, tmp_path):
    rc, out, err = run(capsys, "-o", tmp_path / "big.svg")
    assert rc == 2 and out == ""
    assert "too many to draw" in err and "write -o FILE.dot" in err
    assert not (tmp_path / "big.svg").exists()
    suggestion = re.search(r"try (.+?), which gives ([\d,]+) nodes", err)
    flags, promised = shlex.split(suggestion.group(1)), int(suggestion.group(2).replace(",", ""))
    assert promised <= graph.RENDER_LIMIT
    rc, out, err = run(capsys, *flags, "-o", tmp_path / "small.svg")
    assert rc == 0, err
    assert f"the forward pass built {promised:,} Values" in out
    assert "<svg" in (tmp_path / "small.svg").read_text()


def test_missing_dot_program_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    rc, out, err = run(capsys, *TINY, "--doc", DOC, "-o", tmp_path / "step.png")
    assert rc == 2
    assert err.strip() == ("microgpt: error: Graphviz's dot program is not installed: apt-get install graphviz "
                           "(Debian/Ubuntu) or brew install graphviz, or write -o FILE.dot")
    # DOT needs no Graphviz.
    rc, _, _ = run(capsys, *TINY, "--doc", DOC, "-o", tmp_path / "step.dot")
    assert rc == 0 and (tmp_path / "step.dot").exists()


@pytest.mark.parametrize("flags, message", [
    (["-o", "graph.pdf"], "must end in .dot, .svg or .png"),
    (["--n-embd", "6", "--n-head", "4"], "not divisible"),
    (["--doc", "Zoë"], "not in the vocabulary"),
])
def test_bad_input_exits_2(capsys, flags, message):
    rc, out, err = run(capsys, *flags)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
