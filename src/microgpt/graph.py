"""`microgpt graph`: chapter 5.3 made visible, the graph that one forward pass builds.

Every `Value` operation in the book engine records its operands, so computing one document's
loss also builds a graph with the loss at the top and the weights and constants at the leaves;
`backward()` walks it in reverse. This command builds that graph for one training step and
reports its size: nodes by operation, the weights it reaches, its depth, and how it grows with
the number of positions and layers.

It can also write the graph as Graphviz DOT, or draw it. The default model's step holds tens of
thousands of Values, far too many to draw one by one, so the drawing goes one level up: one box
per operation in each part of the model (a weight matrix and what is computed from it before the
next matrix joins), labelled with how many Values it stands for. `--full` draws every Value, which only a tiny model
keeps legible. A drawing is refused, never shrunk, when it would exceed `MAX_PIXELS`.

Exports: `configure`, `main`, `build`, `operation_counts`, `depth`, `forward_matrices`,
`attribute`, `group_counts`, `to_grouped_dot`, `to_dot`, `MAX_PIXELS`, `FULL_LIMIT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Container
from pathlib import Path

from .autograd import Value, topological_order
from .cli import add_config_arguments, config_from_args, step_arguments, step_example
from .config import Config
from .data import write_atomic
from .errors import UserError
from .model import document_loss, init_params

# An image's longer side, in pixels (CSS pixels for SVG): more and viewers refuse it or shrink the
# text past reading. The cap is kept by drawing less, never by scaling a drawing down.
MAX_PIXELS = 4000
# Beyond this many Values --full is refused without asking Graphviz, whose layout would take
# minutes only to come out far over MAX_PIXELS.
FULL_LIMIT = 1000
# Graphviz measures in points and rasterises PNGs at 96 dpi, so a point is 4/3 of a pixel.
PIXELS_PER_POINT = 96 / 72
FORMATS = (".dot", ".svg", ".png")
NO_DOT = ("Graphviz's dot program is not installed: apt-get install graphviz (Debian/Ubuntu) or "
          "brew install graphviz, or write -o FILE.dot")
PARAMETERS, CONSTANTS = "parameters", "constants"
GROUPED_FIX = "leave out --full to draw one box per operation and part of the model, or write --full -o FILE.dot"

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
    CONSTANTS: "numbers (leaves): the 0 each sum starts from, 1e-5, -max, 1/n, 1/sqrt(head_dim), -1",
}

# A word for each operation in the drawing's boxes, beside the operation as `Value._op` spells it.
WORDS = {"*": "products", "+": "sums", "**-1": "reciprocals", "**-0.5": "1/sqrt", PARAMETERS: "weights",
         CONSTANTS: "constants"}

# One layer's matrices in the order gpt() first uses them.
LAYER_MATRICES = ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")
# How finely the drawing splits the model, finest first: a part per weight matrix, or per
# attention and MLP of each layer (for models whose finer drawing would not fit).
LEVELS = ("matrix", "sublayer")


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = (
        "Build the computation graph of one training step with the book engine (chapter 5.3) and report\n"
        "its size: nodes by operation, parameters reached, depth, and how it grows with positions and\n"
        "layers. -o writes it as DOT, or draws it with Graphviz: one box per operation in each part of\n"
        "the model, labelled with how many Values it stands for (--full: one box per Value).")
    group = parser.add_argument_group("graph")
    step_arguments(group)
    group.add_argument("-o", "--output", metavar="FILE", help="write the graph: FILE.dot (any size), or "
                       f"FILE.svg / FILE.png drawn by Graphviz's dot (at most {MAX_PIXELS:,} pixels a side)")
    group.add_argument("--full", action="store_true", help="one box per Value instead of per operation and part "
                       f"of the model: legible for tiny models only (a drawing takes at most {FULL_LIMIT:,} Values)")
    add_config_arguments(parser, groups=("model",))


# --- walking the graph ------------------------------------------------------------------------


def operation_counts(nodes: list[Value], parameter_ids: set[int]) -> Counter:
    """Nodes by operation (`+`, `*`, `**-1`, `exp`, ...); leaves split into parameters and constants."""
    return Counter(_kind(node, parameter_ids) for node in nodes)


def _kind(node: Value, parameter_ids: Container[int]) -> str:
    return node._op or (PARAMETERS if id(node) in parameter_ids else CONSTANTS)


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
    return len(topological_order(build(config, vocab_size, tokens, 0)[0]))


def growth(config: Config, vocab_size: int, tokens: list[int]) -> tuple[list[int], dict[int, list[int]]]:
    """Node counts for n_layer 1..3 and the document cut to 1, 2, 4, ... positions (and all of them)."""
    n = min(config.block_size, len(tokens) - 1)
    positions = [p for p in (2 ** i for i in range(n.bit_length())) if p < n] + [n]
    table = {}
    for n_layer in (1, 2, 3):
        c = dataclasses.replace(config, n_layer=n_layer)
        table[n_layer] = [size_of(c, vocab_size, tokens[:p + 1]) for p in positions]
    return positions, table



# --- one level up: Values grouped by part of the model and operation ------------------------


def forward_matrices(params: dict[str, list]) -> list[str]:
    """The weight matrices in the order the forward pass first uses them (lm_head last, unlike init)."""
    n_layer = sum(1 for name in params if name.endswith(".attn_wq"))
    layers = [f"layer{i}.{m}" for i in range(n_layer) for m in LAYER_MATRICES]
    return [name for name in ("wte", "wpe", *layers, "lm_head") if name in params]


def _part(matrix: str, level: str) -> str:
    """The part of the drawing a matrix's Values go to: the embeddings, lm_head, or part of a layer."""
    if matrix in ("wte", "wpe"):
        return "embeddings"  # wte[token] + wpe[position] is their first use, so wte alone holds only leaves
    if matrix == "lm_head" or level == "matrix":
        return matrix
    layer, name = matrix.split(".")
    return f"{layer}.{'attention' if name.startswith('attn') else 'mlp'}"


def attribute(order: list[Value], params: dict[str, list], level: str = "matrix") -> dict[int, tuple[str, str]]:
    """Each Value's group, by id: (the part of the model that computed it, its operation).

    A Value's part is the latest matrix, in forward order, among the weights it was computed from:
    the query products follow attn_wq, the scores q.k and their softmax attn_wk, and so on. A weight
    belongs to its own matrix, a constant to the part that uses it. One sweep in topological order
    finds them all, since every node comes after its operands. Operations are `Value._op`, and
    leaves are split into parameters and constants as in `operation_counts`.
    """
    matrices = forward_matrices(params)
    rank = {id(p): i for i, name in enumerate(matrices) for row in params[name] for p in row}
    latest: dict[int, int | None] = {}
    for node in order:
        if not node._children:
            latest[id(node)] = rank.get(id(node))  # None for a constant until its user is reached
            continue
        here = max((latest[id(c)] for c in node._children if latest[id(c)] is not None), default=0)
        latest[id(node)] = here
        for child in node._children:
            if latest[id(child)] is None:
                latest[id(child)] = here
    return {id(node): (_part(matrices[latest[id(node)] or 0], level), _kind(node, rank))
            for node in order}


def group_counts(order: list[Value], groups: dict[int, tuple[str, str]]) -> tuple[Counter, Counter]:
    """(Values per group, operand edges per (operand's group, result's group)), from `attribute`."""
    nodes = Counter(groups[id(node)] for node in order)
    edges = Counter((groups[id(child)], groups[id(node)]) for node in order for child in node._children)
    return nodes, edges


def _part_title(part: str, n_layer: int) -> list[str]:
    """What a part computes, in the chapter's terms, as short lines for a frame of the drawing.

    The latest-matrix rule puts each rmsnorm with the part before it, so the titles say so.
    """
    if part == "embeddings":
        return ["embeddings (wte, wpe)", "x = rmsnorm(wte[token] + wpe[position])", "layer 0's rmsnorm"]
    if part == "lm_head":
        return ["output (lm_head)", "logits = linear(x, lm_head), softmax", "loss = mean of -log p(target)"]
    layer, name = part.split(".")
    i = int(layer.removeprefix("layer"))
    after = [f"layer {i + 1}'s rmsnorm"] if i + 1 < n_layer else []
    titles = {
        "attn_wq": ["attention", "q = linear(x, attn_wq)"],
        "attn_wk": ["attention", "k = linear(x, attn_wk)", "scores q.k / sqrt(head_dim)", "for every position so far",
                    "their softmax"],
        "attn_wv": ["attention", "v = linear(x, attn_wv)", "each head's sum of weight * v"],
        "attn_wo": ["attention", "x = linear(heads, attn_wo) + residual", "the MLP's rmsnorm"],
        "mlp_fc1": ["MLP", "h = relu(linear(x, mlp_fc1))"],
        "mlp_fc2": ["MLP", "x = linear(h, mlp_fc2) + residual", *after],
        "attention": ["attention", "q, k, v = linear(x, attn_wq / wk / wv)", "softmax(q.k / sqrt(head_dim))",
                      "for every position so far", "sums of weight * v", "x = linear(heads, attn_wo) + residual",
                      "the MLP's rmsnorm"],
        "mlp": ["MLP", "h = relu(linear(x, mlp_fc1))", "x = linear(h, mlp_fc2) + residual", *after],
    }
    heading, *lines = titles[name]
    where = f" ({name})" if name in LAYER_MATRICES else ""
    return [f"layer {i} {heading}{where}", *lines]


def _quote(text: str) -> str:
    """Text inside a DOT string: backslashes and quotes escaped, newlines as DOT's centred line breaks."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_grouped_dot(nodes: Counter, edges: Counter, parts: list[str], n_layer: int, root: tuple[str, str],
                   title: str) -> str:
    """Graphviz DOT one level up: a frame per part, a box per group with its count, an arrow per pair.

    `nodes` and `edges` come from `group_counts`, `parts` is the frames' order, `root` the loss's
    group. An arrow's width grows with the log of the operands it stands for; operands passed
    within a group (a running sum adding its next term) would only loop back, so they are counted
    in the header comment but not drawn. Weights and constants sit beside the box they feed.
    """
    names = {group: f"g{i}" for i, group in enumerate(sorted(nodes, key=lambda g: (parts.index(g[0]), g[1])))}
    inner = sum(count for (a, b), count in edges.items() if a == b)
    lines = [f"// one training step of microgpt: {sum(nodes.values())} Values in {len(nodes)} groups, "
             f"{sum(edges.values())} operand edges ({inner} of them within a group, not drawn)",
             "digraph microgpt {",
             "  rankdir=TB; ranksep=0.3; nodesep=0.25; newrank=true;",
             f'  labelloc=t; fontname="Helvetica"; fontsize=16; label="{_quote(title)}";',
             '  node [fontname="Helvetica", fontsize=12, shape=box, style="rounded,filled", fillcolor=white];',
             '  edge [fontname="Helvetica", fontsize=10, color="#555555"];']
    for i, part in enumerate(parts):
        members = [group for group in names if group[0] == part]
        if not members:
            continue
        # \l ends a left-justified line in DOT: the title reads like a short list.
        heading = "".join(_quote(line) + "\\l" for line in _part_title(part, n_layer))
        lines.append(f'  subgraph cluster_{i} {{ label="{heading}"; labeljust=l; '
                     'fontsize=13; style=filled; fillcolor="#f2f2f2"; color="#b0b0b0";')
        for group in members:
            _, kind = group
            word = WORDS.get(kind, "")
            name = word if kind in (PARAMETERS, CONSTANTS) else f"{kind} {word}".strip()
            label = f"{name}\\n{nodes[group]:,}"
            if kind == PARAMETERS:
                attrs = 'style=filled, fillcolor=lightblue'
            elif kind == CONSTANTS:
                attrs = 'style=dashed'
            else:
                attrs = ""
            if group == root:
                label += "\\nthe loss among them"
                attrs = "fillcolor=gold"
            lines.append(f'    {names[group]} [label="{label}"{", " + attrs if attrs else ""}];')
        for group in members:
            if group[1] in (PARAMETERS, CONSTANTS):
                # A leaf beside the box it feeds most, not above it: above, it would share a row with
                # the part before and push the parts into a staircase twice as wide.
                users = [(count, -list(names).index(b), b) for (a, b), count in edges.items() if a == group != b]
                if users:
                    lines.append(f"    {{ rank=same; {names[group]}; {names[max(users)[2]]}; }}")
        lines.append("  }")
    for (a, b), count in edges.items():
        if a != b:
            lines.append(f'  {names[a]} -> {names[b]} [label="{count:,}", penwidth={0.6 + math.log10(count):.2f}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- every Value ----------------------------------------------------------------------------


def to_dot(order: list[Value], names: dict[int, str]) -> str:
    """Graphviz DOT: one node per Value (its operation or name, data and grad), an edge per operand.

    Top to bottom with small gaps and two-line boxes: the graph is much deeper than it is wide
    (the chapter's smallest model is 56 operations deep), so its height is what must fit.
    """
    index = {id(node): i for i, node in enumerate(order)}
    edges = sum(len(node._children) for node in order)
    lines = [f"// one training step of microgpt: {len(order)} nodes, {edges} edges (operand -> result)",
             "digraph microgpt {", "  rankdir=TB; ranksep=0.2; nodesep=0.1;",
             '  node [fontname="Helvetica", fontsize=10, shape=box, margin="0.04,0.02", height=0.3];']
    root = order[-1]
    for i, node in enumerate(order):
        numbers = f"  data {node.data:.4g}\\ngrad {node.grad:.4g}"  # two lines, not three: shorter ranks
        if node is root:
            attrs = f'label="loss ({node._op}){numbers}", style=filled, fillcolor=gold'
        elif node._op:
            attrs = f'label="{node._op}{numbers}", style=rounded'
        elif id(node) in names:
            attrs = f'label="{names[id(node)]}{numbers}", style=filled, fillcolor=lightblue'
        else:
            attrs = f'label="const{numbers}", style=dashed'
        lines.append(f"  n{i} [{attrs}];")
    for i, node in enumerate(order):
        for child in node._children:
            lines.append(f"  n{index[id(child)]} -> n{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- drawing ------------------------------------------------------------------------------

_UNITS = {"": 1.0, "px": 1.0, "pt": PIXELS_PER_POINT, "in": 96.0}


def _image_size(image: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) in pixels: a PNG's IHDR, or an SVG's width and height attributes."""
    if fmt == "png":
        if image[:8] != b"\x89PNG\r\n\x1a\n" or image[12:16] != b"IHDR":
            raise UserError("Graphviz's dot wrote something that is not a PNG: write -o FILE.dot instead")
        return int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
    head = image[:4000].decode("utf-8", "replace")
    found = re.search(r'<svg\b[^>]*?\bwidth="([\d.]+)(\w*)"[^>]*?\bheight="([\d.]+)(\w*)"', head, flags=re.S)
    if not found or found.group(2) not in _UNITS or found.group(4) not in _UNITS:
        raise UserError("Graphviz's dot wrote an SVG without a width and height in pt or px: write -o FILE.dot "
                        "instead")
    return (math.ceil(float(found.group(1)) * _UNITS[found.group(2)]),
            math.ceil(float(found.group(3)) * _UNITS[found.group(4)]))


def _draw(dot: str, fmt: str) -> tuple[bytes, int, int]:
    """Graphviz's drawing of `dot` as svg or png, and its width and height in pixels."""
    try:
        result = subprocess.run(["dot", f"-T{fmt}"], input=dot.encode("utf-8"), capture_output=True, check=False,
                                timeout=300)
    except subprocess.TimeoutExpired:
        raise UserError("Graphviz's dot took over 5 minutes to draw the graph: write -o FILE.dot instead") from None
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"]
        raise UserError(f"Graphviz's dot failed to draw the graph ({reason[0]}): write -o FILE.dot instead")
    return (result.stdout, *_image_size(result.stdout, fmt))


def _too_big(width: int, height: int) -> str:
    return (f"would be {width:,} x {height:,} pixels, more than the {MAX_PIXELS:,} on its longer side that "
            "keeps an image legible")


def _render(dots: list[str], fmt: str) -> tuple[bytes, int, int, int]:
    """The first of `dots` (finest first) whose drawing fits MAX_PIXELS: (image, width, height, its index).

    Every candidate is laid out as SVG to be measured, which is quick; a PNG is then drawn once
    and measured again, so the cap holds for the file actually written.
    """
    for i, dot in enumerate(dots):
        image, width, height = _draw(dot, "svg")
        if max(width, height) <= MAX_PIXELS:
            break
        if i == len(dots) - 1:
            raise _Oversize(width, height)
    if fmt == "png":
        image, width, height = _draw(dots[i], "png")
        if max(width, height) > MAX_PIXELS:
            raise _Oversize(width, height)
    return image, width, height, i


class _Oversize(Exception):
    """A drawing over MAX_PIXELS; the caller words the refusal for what it tried to draw."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__(width, height)
        self.width, self.height = width, height


# --- the command --------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    path = Path(args.output) if args.output else None
    if args.full and path is None:
        raise UserError("--full chooses what -o draws: add -o FILE.svg, FILE.png or FILE.dot")
    if path is not None:
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"-o {path}: the file name must end in .dot, .svg or .png")
        if path.suffix.lower() != ".dot" and shutil.which("dot") is None:
            raise UserError(NO_DOT)

    # The same start as training: shuffle with the one generator, then initialise from it.
    data, rng, doc, tokens = step_example(args, config)
    tokenizer = data.tokenizer
    params = init_params(config, tokenizer.vocab_size, rng)
    loss = document_loss(tokens, params, config)  # 5.3: the forward pass builds the graph...
    loss.backward()  # ...and 5.5: backward() walks it, leaving a grad in every node
    order = topological_order(loss)
    where = {id(p): (name, r, c) for name, rows in params.items() for r, row in enumerate(rows)
             for c, p in enumerate(row)}  # each parameter's matrix, row and column

    # Drawn before the report, so that a refused drawing prints nothing but its one line.
    drawing = None
    if path is not None:
        fmt = path.suffix.lower()[1:]
        if args.full:
            names = {key: f"{m}[{r}][{c}]" for key, (m, r, c) in where.items()}
            drawing = _draw_full(order, names, fmt)
        else:
            drawing = _draw_grouped(order, params, config, doc, tokens, fmt)
    _report(config, tokenizer.vocab_size, doc, tokens, loss, order, where)
    if drawing is not None:
        write_atomic(path, drawing[0])
        print(f"\nwrote {path}: {drawing[1]}")
    return 0


def _draw_full(order: list[Value], names: dict[int, str], fmt: str) -> tuple[bytes, str]:
    """Every Value as a box: the file's bytes and what it holds."""
    if fmt != "dot" and len(order) > FULL_LIMIT:
        raise UserError(f"the graph has {len(order):,} Values, too many to draw one box each (--full draws at "
                        f"most {FULL_LIMIT:,}): {GROUPED_FIX}")
    dot = to_dot(order, names)
    if fmt == "dot":
        return dot.encode("utf-8"), f"{len(order):,} nodes, one per Value"
    try:
        image, width, height, _ = _render([dot], fmt)
    except _Oversize as big:
        raise UserError(f"drawn one box per Value (--full), the graph {_too_big(big.width, big.height)}: "
                        f"{GROUPED_FIX}") from None
    return image, f"{len(order):,} boxes, one per Value; {width:,} x {height:,} pixels"


def _draw_grouped(order: list[Value], params: dict[str, list], config: Config, doc: str, tokens: list[int],
                  fmt: str) -> tuple[bytes, str]:
    """The graph one level up, as finely as fits: the file's bytes and what it holds."""
    n = min(config.block_size, len(tokens) - 1)
    dots, boxes = [], []
    for level in LEVELS:
        groups = attribute(order, params, level)
        nodes, edges = group_counts(order, groups)
        parts = list(dict.fromkeys(_part(m, level) for m in forward_matrices(params)))
        title = (f"one training step of microgpt: the loss of {doc!r} ({n} position{'s' if n > 1 else ''}), "
                 f"n_layer {config.n_layer}, n_embd {config.n_embd}, n_head {config.n_head}\n"
                 f"{len(order):,} Values in {len(nodes)} boxes. A box: the Values of one operation "
                 "in one part of the model, and how many.\nAn arrow: the operands one box passes to another, "
                 "and how many (those passed within a box, as a running sum's, are not drawn).")
        dots.append(to_grouped_dot(nodes, edges, parts, config.n_layer, groups[id(order[-1])], title))
        boxes.append(len(nodes))
    per = {"matrix": "operation and weight matrix", "sublayer": "operation in each layer's attention and MLP"}
    if fmt == "dot":
        return dots[0].encode("utf-8"), f"{len(order):,} Values as {boxes[0]} boxes, one per {per[LEVELS[0]]}"
    try:
        image, width, height, i = _render(dots, fmt)
    except _Oversize as big:
        raise UserError(f"drawn with one box per {per[LEVELS[-1]]}, the graph of {config.n_layer} layers "
                        f"{_too_big(big.width, big.height)}: draw fewer layers (--n-layer) or write -o FILE.dot"
                        ) from None
    coarser = f" (one per {per[LEVELS[0]]} would be too large to draw)" if i else ""
    return image, (f"{len(order):,} Values as {boxes[i]} boxes, one per {per[LEVELS[i]]}{coarser}; "
                   f"{width:,} x {height:,} pixels")


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
