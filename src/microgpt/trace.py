"""`microgpt trace`: one prediction, inside (chapters 4 and 5.2-5.4 made visible in the terminal).

A text becomes a training example (lines: `[BOS] + characters + [BOS]`; text mode: the characters
themselves), and every position of it asks the model one question: what comes next? For each
position this prints the input token, the target, the probability the model gave the target,
that position's cross-entropy loss, and the five likeliest next tokens. With --attention-png it
also draws every layer's and head's attention weights as heatmaps. The page that `microgpt
explain` writes shows the same numbers, computed there by its own forward pass.

Exports: `configure`, `main`, `Trace`, `Row`, `example_of`, `trace`, `format_table`, `shown`,
`write_attention_png`, `TOP`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .engines.base import Engine
from .errors import UserError
from .guard import check_output_file
from .plotting import save_figure
from .tokenizer import Tokenizer, TokenizerError

TOP = 5  # likeliest next tokens shown per position


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("One prediction, inside (chapter 4, and chapter 5.2-5.4): feed a text to a checkpoint's "
                          "model and show, for every position, the input, the target, p(target), the loss and the "
                          "five likeliest next tokens; --attention-png draws the attention weights of every head.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a checkpoint folder (train --out DIR)")
    parser.add_argument("--text", required=True, metavar="TEXT", help="the text to trace, e.g. emma (lines mode: "
                        "one document, wrapped in BOS; text mode: a stretch of text, at least 2 characters)")
    parser.add_argument("--snapshot", type=int, default=None, metavar="STEP",
                        help="use the weights kept at training step STEP (default: the checkpoint's latest)")
    parser.add_argument("--attention-png", metavar="FILE", help="also draw the attention weights, one heatmap per "
                        "layer and head, to FILE (a .png)")


# --- the numbers ------------------------------------------------------------------------------


@dataclass
class Row:
    """One position: its input and target token ids, p(target), the loss, and the TOP likeliest (id, p)."""

    pos: int
    input: int
    target: int
    p_target: float
    loss: float
    top: list[tuple[int, float]]


@dataclass
class Trace:
    """A text through the model: the example's tokens, one Row per position, and per layer the (H, T, T) attention."""

    tokens: list[int]
    rows: list[Row]
    attention: list[Any]

    @property
    def mean_loss(self) -> float:
        """The example's loss as training computes it: the mean over its positions."""
        return sum(row.loss for row in self.rows) / len(self.rows)


def example_of(tokenizer: Tokenizer, text: str, text_mode: bool, block_size: int) -> tuple[list[int], bool]:
    """The example a text makes (5.2), cut to block_size predictions; and whether it was cut.

    Raises UserError when the text has characters outside the vocabulary, or (text mode) is too
    short to predict anything.
    """
    try:
        tokens = tokenizer.encode(text) if text_mode else tokenizer.example(text)
    except TokenizerError as e:
        raise UserError(f"--text {text!r}: {e}") from None
    if len(tokens) < 2:
        raise UserError(f"--text {text!r} is too short: in text mode each position predicts the next character, "
                        "so give at least 2 characters")
    return tokens[:block_size + 1], len(tokens) > block_size + 1


def _softmax_rows(logits: Any) -> Any:
    import numpy as np

    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def trace(engine: Engine, tokens: list[int]) -> Trace:
    """Every position of `tokens` (inputs tokens[:-1], targets tokens[1:]) through the NumPy engine."""
    import numpy as np

    inputs, targets = tokens[:-1], tokens[1:]
    probs = _softmax_rows(engine.logits(inputs))  # (T, V)
    rows = []
    for pos, (inp, tgt) in enumerate(zip(inputs, targets)):
        p = probs[pos]
        # Likeliest first; equal probabilities in token order, as the page sorts them.
        order = sorted(range(len(p)), key=lambda i: (-p[i], i))[:TOP]
        rows.append(Row(pos, inp, tgt, float(p[tgt]), -math.log(p[tgt]) if p[tgt] > 0 else math.inf,
                        [(i, float(p[i])) for i in order]))
    attention = [np.asarray(a) for a in engine.attention(inputs)]
    return Trace(list(tokens), rows, attention)


# --- showing them -----------------------------------------------------------------------------


def shown(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as the table and the page show it: <BOS>, <sp> for a space, \\n and \\t escaped."""
    if token_id == tokenizer.BOS:
        return "<BOS>"
    ch = tokenizer.chars[token_id]
    if ch == " ":
        return "<sp>"
    return ch if ch.isprintable() else repr(ch)[1:-1]


def format_table(result: Trace, tokenizer: Tokenizer) -> str:
    """The table: position, input, target, p(target), loss, and the likeliest next tokens."""
    name = lambda i: shown(tokenizer, i)  # noqa: E731
    width = max(6, *(len(name(t)) for t in result.tokens))
    lines = [f"{'pos':>4}  {'input':<{width}}  {'target':<{width}}  {'p(target)':>9}  {'loss':>7}  "
             f"likeliest next tokens (top {TOP})"]
    for row in result.rows:
        top = "  ".join(f"{name(i)} {p:.4f}" for i, p in row.top)
        lines.append(f"{row.pos:>4}  {name(row.input):<{width}}  {name(row.target):<{width}}  {row.p_target:>9.4f}  "
                     f"{row.loss:>7.4f}  {top}")
    n = len(result.rows)
    lines.append(f"mean loss {result.mean_loss:.4f} over {n} position{'s' if n > 1 else ''} "
                 f"(a uniform guess: ln({tokenizer.vocab_size}) = {math.log(tokenizer.vocab_size):.4f})")
    return "\n".join(lines)


def write_attention_png(result: Trace, tokenizer: Tokenizer, path: Path, title: str) -> None:
    """One heatmap per layer (rows of the grid) and head (columns), written atomically as a PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_layer, n_head = len(result.attention), result.attention[0].shape[0]
    labels = [shown(tokenizer, t) for t in result.tokens[:-1]]
    T = len(labels)
    future = np.triu(np.ones((T, T), dtype=bool), 1)
    cell = max(1.6, min(3.2, 0.22 * T + 0.8))  # inches per heatmap: room for the token labels
    fig = Figure(figsize=(cell * n_head + 1.2, cell * n_layer + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    image = None
    for li in range(n_layer):
        for h in range(n_head):
            ax = axes[li][h]
            weights = np.where(future, np.nan, result.attention[li][h])  # blank where it may not look
            image = ax.imshow(weights, vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_title(f"layer {li} head {h}", fontsize=9)
            if T <= 32:  # beyond that the labels overlap; the axes still count positions
                ax.set_xticks(range(T), labels, fontsize=7, rotation=90)
                ax.set_yticks(range(T), labels, fontsize=7)
            if li == n_layer - 1:
                ax.set_xlabel("looks at position", fontsize=8)
            if h == 0:
                ax.set_ylabel("position attending", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=10, parse_math=False)  # the text is the user's: a "$" is a dollar sign
    save_figure(fig, path)


# --- the command --------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    from .evaluate import load_model

    png = None
    if args.attention_png:  # refused before any work is done
        png = check_output_file(args.attention_png, "--attention-png", "attention.png", (".png",))
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint.config
    tokenizer = Tokenizer(checkpoint.vocab)
    text_mode = config.data_format == "text"
    tokens, truncated = example_of(tokenizer, args.text, text_mode, config.block_size)
    engine, _ = load_model(checkpoint, "numpy", step=args.snapshot)
    try:
        result = trace(engine, tokens)
    finally:
        engine.close()
    step = checkpoint.step if args.snapshot is None else args.snapshot
    which = "the checkpoint's latest" if step == checkpoint.step else "a snapshot"
    print(f"{args.text!r} through the model of {checkpoint.path} at step {step} ({which}), "
          f"{len(result.rows)} position{'s' if len(result.rows) > 1 else ''}")
    if truncated:
        print(f"note: the text is longer than block_size; the model sees its first {config.block_size} "
              "predictions", file=sys.stderr)
    print(format_table(result, tokenizer))
    if png is not None:
        write_attention_png(result, tokenizer, png, f"attention over {args.text[:40]!r}, step {step}")
        print(f"wrote {png}: one heatmap per layer and head (rows: the position attending, columns: where it looks)")
    return 0
