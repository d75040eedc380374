"""Chapter 4: the model, a GPT-2-like transformer written with scalar `Value`s.

`gpt(token_id, pos_id, keys, values)` takes one token at one position and returns the logits
of the next token; `keys` and `values` hold, per layer, what earlier positions left behind,
so attention can look back at them. Standard library only.

Exports: `init_params`, `linear`, `softmax`, `rmsnorm`, `gpt`, `document_loss`.
"""

from __future__ import annotations

import random

from .autograd import Value
from .config import Config

Matrix = list  # list of rows, each a list of Value


def matrix(rng: random.Random, n_out: int, n_in: int, std: float) -> Matrix:
    """A (n_out, n_in) matrix filled row by row with gauss(0, std)."""
    return [[Value(rng.gauss(0, std)) for _ in range(n_in)] for _ in range(n_out)]


def init_params(config: Config, vocab_size: int, rng: random.Random) -> dict[str, Matrix]:
    """The state dict, in the book's order; that order decides which random number lands where."""
    c, std = config, config.init_std
    state_dict = {
        "wte": matrix(rng, vocab_size, c.n_embd, std),  # token embeddings
        "wpe": matrix(rng, c.block_size, c.n_embd, std),  # position embeddings
        "lm_head": matrix(rng, vocab_size, c.n_embd, std),  # last hidden state -> logits
    }
    for i in range(c.n_layer):
        state_dict[f"layer{i}.attn_wq"] = matrix(rng, c.n_embd, c.n_embd, std)
        state_dict[f"layer{i}.attn_wk"] = matrix(rng, c.n_embd, c.n_embd, std)
        state_dict[f"layer{i}.attn_wv"] = matrix(rng, c.n_embd, c.n_embd, std)
        state_dict[f"layer{i}.attn_wo"] = matrix(rng, c.n_embd, c.n_embd, std)
        state_dict[f"layer{i}.mlp_fc1"] = matrix(rng, 4 * c.n_embd, c.n_embd, std)
        state_dict[f"layer{i}.mlp_fc2"] = matrix(rng, c.n_embd, 4 * c.n_embd, std)
    return state_dict


def linear(x: list[Value], w: Matrix) -> list[Value]:
    """y[i] = sum_j w[i][j] * x[j]: one dot product per output row (no bias)."""
    return [sum(wi * xi for wi, xi in zip(wo, x)) for wo in w]


def softmax(logits: list[Value]) -> list[Value]:
    """Logits -> probabilities. Subtracting the max changes nothing but keeps exp() from overflowing."""
    max_val = max(val.data for val in logits)
    exps = [(val - max_val).exp() for val in logits]
    total = sum(exps)
    return [e / total for e in exps]


def rmsnorm(x: list[Value]) -> list[Value]:
    """Rescale x to unit root-mean-square, so activations keep one size from layer to layer."""
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def gpt(token_id: int, pos_id: int, keys: list[list], values: list[list],
        state_dict: dict[str, Matrix], config: Config) -> list[Value]:
    """One position through the transformer; appends this position's keys and values to the cache."""
    n_head, head_dim = config.n_head, config.head_dim
    tok_emb = state_dict["wte"][token_id]
    pos_emb = state_dict["wpe"][pos_id]
    x = [t + p for t, p in zip(tok_emb, pos_emb)]
    x = rmsnorm(x)

    for li in range(config.n_layer):
        # 1) Multi-head attention: look back at every position seen so far.
        x_residual = x
        x = rmsnorm(x)
        q = linear(x, state_dict[f"layer{li}.attn_wq"])
        k = linear(x, state_dict[f"layer{li}.attn_wk"])
        v = linear(x, state_dict[f"layer{li}.attn_wv"])
        keys[li].append(k)
        values[li].append(v)
        x_attn = []
        for h in range(n_head):
            hs = h * head_dim
            q_h = q[hs:hs + head_dim]
            k_h = [ki[hs:hs + head_dim] for ki in keys[li]]
            v_h = [vi[hs:hs + head_dim] for vi in values[li]]
            attn_logits = [sum(q_h[j] * k_h[t][j] for j in range(head_dim)) / head_dim ** 0.5
                           for t in range(len(k_h))]
            attn_weights = softmax(attn_logits)
            head_out = [sum(attn_weights[t] * v_h[t][j] for t in range(len(v_h))) for j in range(head_dim)]
            x_attn.extend(head_out)
        x = linear(x_attn, state_dict[f"layer{li}.attn_wo"])
        x = [a + b for a, b in zip(x, x_residual)]

        # 2) MLP: think about what attention gathered, one position at a time.
        x_residual = x
        x = rmsnorm(x)
        x = linear(x, state_dict[f"layer{li}.mlp_fc1"])
        x = [xi.relu() for xi in x]
        x = linear(x, state_dict[f"layer{li}.mlp_fc2"])
        x = [a + b for a, b in zip(x, x_residual)]

    logits = linear(x, state_dict["lm_head"])
    return logits


def document_loss(tokens: list[int], state_dict: dict[str, Matrix], config: Config) -> Value:
    """5.3 and 5.4: forward every position of one example and average the cross-entropy.

    The forward pass does two jobs at once: it computes the predictions, and every Value
    operation inside it records its operands, building the graph that backward() walks.
    """
    n = min(config.block_size, len(tokens) - 1)  # 5.2: at most block_size predictions
    keys: list[list] = [[] for _ in range(config.n_layer)]
    values: list[list] = [[] for _ in range(config.n_layer)]
    losses = []
    for pos_id in range(n):
        token_id, target_id = tokens[pos_id], tokens[pos_id + 1]
        logits = gpt(token_id, pos_id, keys, values, state_dict, config)
        probs = softmax(logits)
        # Cross-entropy: 0 when the model is sure of the truth, unbounded when it rules it out.
        loss_t = -probs[target_id].log()
        losses.append(loss_t)
    return (1 / n) * sum(losses)
