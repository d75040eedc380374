"""Chapter 6: inference, sampling new documents from the trained parameters.

Start from BOS with an empty key/value cache, ask the model for the next token's logits,
sharpen them with the temperature, draw one token, feed it back; stop at BOS or after
block_size tokens. The arithmetic follows the book's `softmax` exactly, so every engine draws
the same names from the same random generator. Standard library only.

Exports: `sample`, `sample_probs`.
"""

from __future__ import annotations

import math
import random

from .engines.base import Engine
from .tokenizer import Tokenizer


def sample_probs(logits: list[float], temperature: float, top_k: int = 0) -> list[float]:
    """softmax(logits / temperature), optionally restricted to the top_k likeliest tokens."""
    scaled = [logit * temperature ** -1 for logit in logits]
    if 0 < top_k < len(scaled):
        cutoff = sorted(scaled, reverse=True)[top_k - 1]
        scaled = [z if z >= cutoff else -math.inf for z in scaled]
    max_val = max(scaled)
    exps = [math.exp(z - max_val) for z in scaled]
    total = sum(exps)
    return [e * total ** -1 for e in exps]


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
            probs = sample_probs(logits, temperature, top_k)
            token_id = rng.choices(range(tokenizer.vocab_size), weights=probs)[0]
            if token_id == tokenizer.BOS:
                break
        out.append(token_id)
    return tokenizer.decode(out)
