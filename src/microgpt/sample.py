"""Chapter 6: inference, sampling new documents from the trained parameters.

Start from BOS with an empty key/value cache, ask the model for the next token's logits,
sharpen them with the temperature, draw one token, feed it back; stop at BOS or after
block_size tokens. The arithmetic follows the book's `softmax` exactly, so every engine draws
the same names from the same random generator.

A model trained on a text stream (text mode) continues a prompt instead (default: a newline),
for as many characters as asked: beyond block_size the context is cropped to its last
block_size characters and run through the model afresh for each new one, as nanoGPT's
`generate` does. BOS, unused in text mode, is never drawn there. Standard library only.

Exports: `sample`, `continue_text`, `sample_probs`, `draw`, `default_prompt`, `SamplingError`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from .engines.base import Engine
from .errors import UserError
from .tokenizer import Tokenizer


def sample_probs(logits: list[float], temperature: float, top_k: int = 0) -> list[float]:
    """softmax(logits / temperature), optionally restricted to the top_k likeliest tokens."""
    scaled = [logit * temperature ** -1 for logit in logits]
    if 0 < top_k < len(scaled):
        cutoff = sorted(scaled, reverse=True)[top_k - 1]
        scaled = [z if z >= cutoff else -math.inf for z in scaled]
    max_val = max(scaled)
    exps = [math.exp(z - max_val) for z in scaled]
    total = 0.0
    for e in exps:  # left to right (SPEC 9): Python 3.12's sum() of floats compensates its rounding
        total += e
    return [e * total ** -1 for e in exps]


class SamplingError(UserError):
    """Logits so large that the probabilities are not numbers: the weights are broken."""


def draw(rng: random.Random, probs: list[float]) -> int:
    """One token id drawn with the book's `choices(range(vocab_size), weights=probs)`."""
    if not all(math.isfinite(p) for p in probs):
        raise SamplingError("the model's next-token probabilities are not finite numbers (its weights are far too "
                            "large): sample from another checkpoint or snapshot")
    return rng.choices(range(len(probs)), weights=probs)[0]


def default_prompt(tokenizer: Tokenizer) -> str:
    """Text mode starts from a newline; a text that has none starts from a space, else its first character."""
    return next((ch for ch in ("\n", " ") if ch in tokenizer.chars), tokenizer.chars[0])


def sample(engine: Engine, tokenizer: Tokenizer, rng: random.Random, temperature: float,
           top_k: int = 0, prompt: str = "") -> str:
    """One new document. A prompt's characters are fed first and start the result."""
    block_size = engine.config.block_size
    prompt_ids = tokenizer.encode(prompt)
    cache = engine.new_cache()
    token_id = tokenizer.BOS
    out: list[int] = []
    for pos_id in range(block_size):
        logits = engine.next_logits(token_id, pos_id, cache)
        if pos_id < len(prompt_ids):
            token_id = prompt_ids[pos_id]  # the prompt is given, not drawn
        else:
            token_id = draw(rng, sample_probs(logits, temperature, top_k))
            if token_id == tokenizer.BOS:
                break
        out.append(token_id)
    return tokenizer.decode(out)


def continue_text(engine: Engine, tokenizer: Tokenizer, rng: random.Random, temperature: float, max_tokens: int,
                  top_k: int = 0, prompt: str | None = None, on_text: Callable[[str], None] | None = None) -> str:
    """Text mode: `max_tokens` new characters after `prompt` (default: `default_prompt`; its last
    block_size characters are the context).

    `on_text` gets each new character as soon as it is drawn.
    """
    block_size = engine.config.block_size
    context = tokenizer.encode(default_prompt(tokenizer) if prompt is None else prompt)[-block_size:]
    cache = engine.new_cache()
    for pos_id, token_id in enumerate(context[:-1]):  # the prompt but its last character, into the cache
        engine.next_logits(token_id, pos_id, cache)
    out: list[int] = []
    for _ in range(max_tokens):
        if len(context) <= block_size:
            logits = engine.next_logits(context[-1], len(context) - 1, cache)
        else:  # past block_size: the last block_size characters, through the model afresh
            logits = engine.window_logits(context[-block_size:])
        logits = list(logits)
        logits[tokenizer.BOS] = -math.inf  # BOS is unused in text mode
        token_id = draw(rng, sample_probs(logits, temperature, top_k))
        context.append(token_id)
        out.append(token_id)
        if on_text is not None:
            on_text(tokenizer.chars[token_id])
    return tokenizer.decode(out)
