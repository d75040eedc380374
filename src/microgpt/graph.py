"""`microgpt graph`: chapter 5.3 made visible, the graph that one forward pass builds.

Every `Value` operation in the book engine records its operands, so computing one document's
loss also builds a graph with the loss at the top and the weights and constants at the leaves;
`backward()` walks it in reverse. This command builds that graph for one training step and
reports its size: nodes by operation, the weights it reaches, its depth, and how it grows with
the number of positions and layers. It can write the graph as Graphviz DOT, or draw it.

Exports: `configure`, `main`, `topological_order`, `count_nodes`, `operation_counts`, `depth`,
`to_dot`, `RENDER_LIMIT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from .autograd import Value, topological_order
from .cli import add_config_arguments, config_from_args, step_arguments
from .config import Config
from .data import prepare, write_atomic
from .errors import UserError
from .model import document_loss, init_params

# Above this many nodes Graphviz takes minutes and the drawing is unreadable anyway.
RENDER_LIMIT = 3000
FORMATS = (".dot", ".svg", ".png")
NO_DOT = ("Graphviz's dot program is not installed: apt-get install graphviz (Debian/Ubuntu) or "
          "brew install graphviz, or write -o FILE.dot")
PARAMETERS, CONSTANTS = "parameters", "constants"

# Where each kind of node comes from in the model, for the table.
ORIGINS = {
    "*": "products: weight times input, q.k, attention weight times v, rmsnorm's rescale",
    "+": "sums: dot products, softmax denominators, residual connections",
    "**-0.5": "rmsnorm's 1 / sqrt(mean(x^2) + 1e-5)",
    "**-1": "softmax's division by the sum, one per probability the loss uses",
    "exp": "softmax: attention weights and next-token probabilities",
    "log": "cross-entropy, one per position",
    "relu": "the MLP's hidden units",
    PARAMETERS: "weights (leaves) this document reaches",
    CONSTANTS: "numbers (leaves): the 0 each sum starts from, 1e-5, -max, 1/n, -1",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "Build the computation graph of one training step with the book engine (chapter 5.3) and report\n"
        "its size: nodes by operation, parameters reached, depth, and how it grows with positions and\n"
        "layers. -o writes it as DOT, or draws it with Graphviz (small graphs only).")
    group = parser.add_argument_group("graph")
    step_arguments(group)
    group.add_argument("-o", "--output", metavar="FILE", help="write the graph: FILE.dot (any size), or "
                       f"FILE.svg / FILE.png drawn by Graphviz's dot (up to {RENDER_LIMIT:,} nodes)")
    add_config_arguments(parser, groups=("model",))


# --- walking the graph ------------------------------------------------------------------------


def count_nodes(root: Value) -> int:
    """How many distinct Values the graph below `root` holds (no order needed, so a plain search)."""
    seen = {id(root)}
    todo = [root]
    while todo:
        for child in todo.pop()._children:
            if id(child) not in seen:
                seen.add(id(child))
                todo.append(child)
    return len(seen)


def operation_counts(nodes: list[Value], parameter_ids: set[int]) -> Counter:
    """Nodes by operation (`+`, `*`, `**-1`, `exp`, ...); leaves split into parameters and constants."""
    counts: Counter = Counter()
    for node in nodes:
        if node._op:
            counts[node._op] += 1
        else:
            counts[PARAMETERS if id(node) in parameter_ids else CONSTANTS] += 1
    return counts


def depth(order: list[Value]) -> int:
    """The longest path, in operations, from the root (last in `order`) down to a leaf.

    Going from the root toward the leaves in reverse topological order, each node's distance
    is final before it is passed on, so one sweep suffices.
    """
    distance = {id(order[-1]): 0}
    for node in reversed(order):
        d = distance[id(node)] + 1
        for child in node._children:
            if distance.get(id(child), -1) < d:
                distance[id(child)] = d
    return max(distance.values())


# --- building one training step -------------------------------------------------------------


def build(config: Config, vocab_size: int, tokens: list[int], seed: int) -> tuple[Value, dict[str, list]]:
    """The loss of one document on freshly initialised weights: the graph a training step walks."""
    params = init_params(config, vocab_size, random.Random(seed))
    return document_loss(tokens, params, config), params


def size_of(config: Config, vocab_size: int, tokens: list[int]) -> int:
    """Node count of one step's graph; the count does not depend on the weights' values."""
    return count_nodes(build(config, vocab_size, tokens, 0)[0])


def growth(config: Config, vocab_size: int, tokens: list[int]) -> tuple[list[int], dict[int, list[int]]]:
    """Node counts for n_layer 1..3 and the document cut to 1, 2, 4, ... positions (and all of them)."""
    n = min(config.block_size, len(tokens) - 1)
    positions = [p for p in (2 ** i for i in range(n.bit_length())) if p < n] + [n]
    table = {}
    for n_layer in (1, 2, 3):
        c = dataclasses.replace(config, n_layer=n_layer)
        table[n_layer] = [size_of(c, vocab_size, tokens[:p + 1]) for p in positions]
    return positions, table


def suggest(config: Config, vocab_size: int, tokens: list[int]) -> tuple[Config, int] | None:
    """A smaller model whose graph can be drawn: shrink layers, then positions, then width.

    Returns the first config that fits RENDER_LIMIT (block_size cut to the positions kept) and
    its node count, or None when even the smallest model does not fit.
    """
    c = dataclasses.replace(config, block_size=min(config.block_size, len(tokens) - 1))
    while True:
        if c.n_layer > 1:
            c = dataclasses.replace(c, n_layer=1)
        elif c.block_size > 2:
            c = dataclasses.replace(c, block_size=max(2, c.block_size // 2))
        elif c.n_embd > 4 or (c.n_embd > 1 and c.block_size == 1):
            n_embd = c.n_embd // 2
            c = dataclasses.replace(c, n_embd=n_embd, n_head=max(h for h in range(1, c.n_head + 1) if n_embd % h == 0))
        elif c.block_size > 1:
            c = dataclasses.replace(c, block_size=1)
        else:
            return None
        count = size_of(c, vocab_size, tokens)
        if count <= RENDER_LIMIT:
            return c, count


# --- DOT ----------------------------------------------------------------------------------


def to_dot(order: list[Value], names: dict[int, str]) -> str:
    """Graphviz DOT: one node per Value (its operation or name, data and grad), an edge per operand."""
    index = {id(node): i for i, node in enumerate(order)}
    edges = sum(len(node._children) for node in order)
    lines = [f"// one training step of microgpt: {len(order)} nodes, {edges} edges (operand -> result)",
             "digraph microgpt {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
    root = order[-1]
    for i, node in enumerate(order):
        numbers = f"data {node.data:.4g}\\ngrad {node.grad:.4g}"
        if node is root:
            attrs = f'label="loss ({node._op})\\n{numbers}", shape=box, style=filled, fillcolor=gold'
        elif node._op:
            attrs = f'label="{node._op}\\n{numbers}", shape=ellipse'
        elif id(node) in names:
            attrs = f'label="{names[id(node)]}\\n{numbers}", shape=box, style=filled, fillcolor=lightblue'
        else:
            attrs = f'label="const\\n{numbers}", shape=box, style=dashed'
        lines.append(f"  n{i} [{attrs}];")
    for i, node in enumerate(order):
        for child in node._children:
            lines.append(f"  n{index[id(child)]} -> n{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write(path: Path, dot: str) -> None:
    """DOT as is, or drawn by Graphviz; either way the file appears whole or not at all."""
    if path.suffix.lower() == ".dot":
        write_atomic(path, dot.encode("utf-8"))
        return
    result = subprocess.run(["dot", f"-T{path.suffix.lower()[1:]}"], input=dot.encode("utf-8"),
                            capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"]
        raise UserError(f"Graphviz's dot failed to draw {path} ({reason[0]}): write -o FILE.dot instead")
    write_atomic(path, result.stdout)


# --- the command --------------------------------------------------------------------------


def _model_flags(config: Config) -> str:
    return (f"--n-layer {config.n_layer} --n-embd {config.n_embd} --n-head {config.n_head} "
            f"--block-size {config.block_size}")


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    path = Path(args.output) if args.output else None
    if path is not None:
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"-o {path}: the file name must end in .dot, .svg or .png")
        if path.suffix.lower() != ".dot" and shutil.which("dot") is None:
            raise UserError(NO_DOT)

    # The same start as training: shuffle with the one generator, then initialise from it.
    data, rng = prepare(config, args.data, sha256=args.sha256)
    tokenizer = data.tokenizer
    doc = data.docs[0] if args.doc is None else args.doc
    tokens = tokenizer.example(doc)
    params = init_params(config, tokenizer.vocab_size, rng)
    loss = document_loss(tokens, params, config)  # 5.3: the forward pass builds the graph...
    loss.backward()  # ...and 5.5: backward() walks it, leaving a grad in every node
    order = topological_order(loss)

    if path is not None and path.suffix.lower() != ".dot" and len(order) > RENDER_LIMIT:
        fit = suggest(config, tokenizer.vocab_size, tokens)
        advice = ""
        if fit:
            advice = f"try {_model_flags(fit[0])} --doc {shlex.quote(doc)}, which gives {fit[1]:,} nodes, or "
        raise UserError(f"the graph has {len(order):,} nodes, too many to draw (at most {RENDER_LIMIT:,}): "
                        f"{advice}write -o FILE.dot")

    where = {id(p): (name, r, c) for name, rows in params.items() for r, row in enumerate(rows)
             for c, p in enumerate(row)}  # each parameter's matrix, row and column
    _report(config, tokenizer.vocab_size, doc, tokens, loss, order, where)

    if path is not None:
        _write(path, to_dot(order, {key: f"{m}[{r}][{c}]" for key, (m, r, c) in where.items()}))
        print(f"\nwrote {path} ({len(order):,} nodes)")
    return 0


def _report(config: Config, vocab_size: int, doc: str, tokens: list[int], loss: Value, order: list[Value],
            where: dict[int, tuple[str, int, int]]) -> None:
    n = min(config.block_size, len(tokens) - 1)
    counts = operation_counts(order, set(where))
    print(f"graph of one training step: n_layer {config.n_layer}, n_embd {config.n_embd}, n_head {config.n_head}, "
          f"block_size {config.block_size}; document {doc!r} ({n} position{'s' if n > 1 else ''}), "
          f"loss {loss.data:.4f}")
    print(f"the forward pass built {len(order):,} Values; backward() then gave each of them a grad")
    print()
    ops = sorted((k for k in counts if k not in (PARAMETERS, CONSTANTS)), key=lambda k: -counts[k])
    rows = [(k, counts[k]) for k in ops] + [(f"leaves: {k}", counts[k]) for k in (PARAMETERS, CONSTANTS)]
    width = max(len(k) for k, _ in rows)
    print(f"{'node':<{width}}  {'count':>8}  {'share':>6}  where it comes from")
    for label, count in rows:
        origin = ORIGINS.get(label.removeprefix("leaves: "), "")
        print(f"{label:<{width}}  {count:>8,}  {count / len(order):>6.1%}  {origin}")
    print(f"{'total':<{width}}  {len(order):>8,}")
    print()

    reached = [where[id(node)] for node in order if id(node) in where]  # (matrix, row, column)
    rows_of = {m: len({r for name, r, _ in reached if name == m}) for m in ("wte", "wpe")}
    others = len({name for name, _, _ in reached}) - 2
    tokens_s = "token" if rows_of["wte"] == 1 else "tokens"
    positions_s = "position" if rows_of["wpe"] == 1 else "positions"
    print(f"parameters reached: {counts[PARAMETERS]:,} of {len(where):,}: the wte rows of the {rows_of['wte']} "
          f"distinct input {tokens_s} (of {vocab_size}), the wpe rows of {rows_of['wpe']} {positions_s} "
          f"(of {config.block_size}), and every weight of the other {others} matrices")
    print(f"depth: {depth(order):,} operations on the longest path from the loss down to a leaf; backward() "
          f"must take them one after another")
    print()

    positions, table = growth(config, vocab_size, tokens)
    print("nodes per training step, by positions (the document cut short) and layers:")
    print(f"{'positions':>10}" + "".join(f"{p:>10}" for p in positions))
    for n_layer, sizes in table.items():
        print(f"{'n_layer ' + str(n_layer):>10}" + "".join(f"{s:>10,}" for s in sizes))
    print(_trend(positions, table))


def _trend(positions: list[int], table: dict[int, list[int]]) -> str:
    """One sentence on what the growth table shows, with its numbers."""
    per_layer = table[2][-1] - table[1][-1]
    at = f"{positions[-1]} position{'s' if positions[-1] > 1 else ''}"
    layers = (f"Each layer adds the same operations again ({per_layer:,} nodes at {at}), "
              "so the count grows linearly in n_layer.")
    if len(positions) < 3:
        return f"{layers} A longer --doc (and --block-size) shows how the count grows with positions."
    sizes = table[1]
    first = (sizes[1] - sizes[0]) / (positions[1] - positions[0])
    last = (sizes[-1] - sizes[-2]) / (positions[-1] - positions[-2])
    return (f"With 1 layer, going from {positions[0]} to {positions[1]} positions adds {first:,.0f} nodes per "
            f"position, from {positions[-2]} to {positions[-1]} adds {last:,.0f} per position: every position "
            f"repeats the same linear layers and MLP, but its attention also looks back at every earlier "
            f"position, so the count grows faster than linearly in positions (quadratically, once attention "
            f"dominates). {layers}")
