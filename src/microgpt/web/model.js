/*
 * Chapters 4 and 6 once more, in JavaScript: the book's gpt() and its sampling, for the page.
 *
 * The page computes every prediction itself, from the weights it embeds, so a reader can type
 * any text and see what the model does with it. The functions are the book's (model.py and
 * sample.py), in the book's order of operations (SPEC 9: every sum left to right from 0, a / b
 * as a * b ** -1), so the logits agree with the Python engines to about 1e-12 and the page
 * draws the very documents that `microgpt sample` prints.
 *
 * A matrix is {rows, cols, data}, data row-major (a Float64Array, or a Float32Array when the
 * page keeps a large model's weights in single precision; the arithmetic is double either way).
 *
 * Exports (globals): linear, softmax, rmsnorm, relu, GPT, sampleProbs, sumLeftToRight, sampleDocument,
 * continueText.
 */
"use strict";

/** y[i] = sum_j w[i][j] * x[j]: one dot product per output row (no bias). */
function linear(x, w) {
  const y = new Array(w.rows);
  for (let i = 0; i < w.rows; i++) {
    const row = i * w.cols;
    let sum = 0;
    for (let j = 0; j < w.cols; j++) sum += w.data[row + j] * x[j];
    y[i] = sum;
  }
  return y;
}

/** Logits -> probabilities. Subtracting the max changes nothing but keeps exp() from overflowing. */
function softmax(logits) {
  let maxVal = -Infinity;
  for (const z of logits) if (z > maxVal) maxVal = z;
  const exps = logits.map((z) => Math.exp(z - maxVal));
  let total = 0;
  for (const e of exps) total += e;
  return exps.map((e) => e * total ** -1);
}

/** Rescale x to unit root-mean-square, so activations keep one size from layer to layer. */
function rmsnorm(x) {
  let ms = 0;
  for (const xi of x) ms += xi * xi;
  ms = ms * x.length ** -1;
  const scale = (ms + 1e-5) ** -0.5;
  return x.map((xi) => xi * scale);
}

/** max(0, x), as Python's max(0, x) returns it. */
function relu(x) {
  return x > 0 ? x : 0;
}

/** Row r of matrix w, as a plain array. */
function rowOf(w, r) {
  return Array.from(w.data.subarray(r * w.cols, (r + 1) * w.cols));
}

/** The model of chapter 4 over one state dict: name -> {rows, cols, data}. */
class GPT {
  constructor(config, stateDict) {
    this.config = config;
    this.stateDict = stateDict;
    this.headDim = config.n_embd / config.n_head;
  }

  /** An empty key/value cache: per layer, the keys and the values of the positions seen so far. */
  newCache() {
    const empty = () => Array.from({ length: this.config.n_layer }, () => []);
    return { keys: empty(), values: empty() };
  }

  /**
   * One position through the transformer: the logits of the next token. Appends this position's
   * keys and values to the cache; with `attention`, pushes each layer's per-head attention weights
   * over the cached positions onto it.
   */
  gpt(tokenId, posId, keys, values, attention = null) {
    const sd = this.stateDict;
    const { n_layer: nLayer, n_head: nHead } = this.config;
    const headDim = this.headDim;
    const tokEmb = rowOf(sd.wte, tokenId);
    const posEmb = rowOf(sd.wpe, posId);
    let x = tokEmb.map((t, i) => t + posEmb[i]);
    x = rmsnorm(x);

    for (let li = 0; li < nLayer; li++) {
      // 1) Multi-head attention: look back at every position seen so far.
      let xResidual = x;
      x = rmsnorm(x);
      const q = linear(x, sd[`layer${li}.attn_wq`]);
      const k = linear(x, sd[`layer${li}.attn_wk`]);
      const v = linear(x, sd[`layer${li}.attn_wv`]);
      keys[li].push(k);
      values[li].push(v);
      const xAttn = [];
      const heads = [];
      for (let h = 0; h < nHead; h++) {
        const hs = h * headDim;
        const attnLogits = keys[li].map((kt) => {
          let dot = 0;
          for (let j = 0; j < headDim; j++) dot += q[hs + j] * kt[hs + j];
          return dot * (headDim ** 0.5) ** -1;
        });
        const attnWeights = softmax(attnLogits);
        for (let j = 0; j < headDim; j++) {
          let sum = 0;
          for (let t = 0; t < attnWeights.length; t++) sum += attnWeights[t] * values[li][t][hs + j];
          xAttn.push(sum);
        }
        heads.push(attnWeights);
      }
      if (attention) attention.push(heads);
      x = linear(xAttn, sd[`layer${li}.attn_wo`]);
      x = x.map((a, i) => a + xResidual[i]);

      // 2) MLP: think about what attention gathered, one position at a time.
      xResidual = x;
      x = rmsnorm(x);
      x = linear(x, sd[`layer${li}.mlp_fc1`]);
      x = x.map(relu);
      x = linear(x, sd[`layer${li}.mlp_fc2`]);
      x = x.map((a, i) => a + xResidual[i]);
    }

    return linear(x, sd.lm_head);
  }

  /**
   * Every position of `tokens` (at most block_size) with one fresh cache: the logits at each
   * position, and attention[layer][head][position] = the weights over positions 0..position.
   */
  forward(tokens) {
    const { keys, values } = this.newCache();
    const logits = [];
    const perPosition = [];
    tokens.forEach((tokenId, posId) => {
      const layers = [];
      logits.push(this.gpt(tokenId, posId, keys, values, layers));
      perPosition.push(layers);
    });
    const attention = Array.from({ length: this.config.n_layer }, (_, li) =>
      Array.from({ length: this.config.n_head }, (_, h) => perPosition.map((layers) => layers[li][h])),
    );
    return { logits, attention };
  }

  /** The logits after `tokens` (at most block_size of them, at positions 0..): a fresh cache over the window. */
  windowLogits(tokens) {
    const { keys, values } = this.newCache();
    let logits = null;
    tokens.forEach((tokenId, posId) => {
      logits = this.gpt(tokenId, posId, keys, values);
    });
    return logits;
  }
}

// --- chapter 6: sampling ---------------------------------------------------------------------

/** A sum left to right from 0, as every sum of the book (SPEC 9) and sample.sample_probs. */
function sumLeftToRight(values) {
  let total = 0;
  for (const x of values) total += x;
  return total;
}

/** softmax(logits / temperature), optionally restricted to the topK likeliest tokens (sample.sample_probs). */
function sampleProbs(logits, temperature, topK = 0) {
  let scaled = logits.map((logit) => logit * temperature ** -1);
  if (topK > 0 && topK < scaled.length) {
    const cutoff = [...scaled].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0))[topK - 1];
    scaled = scaled.map((z) => (z >= cutoff ? z : -Infinity));
  }
  let maxVal = -Infinity;
  for (const z of scaled) if (z > maxVal) maxVal = z;
  const exps = scaled.map((z) => Math.exp(z - maxVal));
  const total = sumLeftToRight(exps);
  return exps.map((e) => e * total ** -1);
}

/**
 * One new document, as sample.sample draws it: BOS first, a fresh cache, the prompt's tokens fed
 * as given, then one draw per position until BOS or block_size. Returns the token ids drawn.
 * `onDraw(posId, probs, tokenId)` sees every draw (the tests use it to find close calls).
 */
function sampleDocument(model, rng, temperature, topK, promptIds, bos, onDraw = null) {
  const { keys, values } = model.newCache();
  let tokenId = bos;
  const out = [];
  for (let posId = 0; posId < model.config.block_size; posId++) {
    const logits = model.gpt(tokenId, posId, keys, values);
    if (posId < promptIds.length) {
      tokenId = promptIds[posId]; // the prompt is given, not drawn
    } else {
      const probs = sampleProbs(logits, temperature, topK);
      tokenId = rng.choices(probs);
      if (onDraw) onDraw(posId, probs, tokenId);
      if (tokenId === bos) break;
    }
    out.push(tokenId);
  }
  return out;
}

/**
 * Text mode (sample.continue_text): `maxTokens` new tokens after the prompt's last block_size
 * tokens; beyond block_size the context is cropped and run afresh. BOS, unused in text mode, is
 * never drawn. A generator: it yields each new token id, so the page can draw without freezing.
 */
function* continueText(model, rng, temperature, maxTokens, topK, promptIds, bos) {
  const blockSize = model.config.block_size;
  const context = promptIds.slice(-blockSize);
  const { keys, values } = model.newCache();
  context.slice(0, -1).forEach((tokenId, posId) => model.gpt(tokenId, posId, keys, values));
  for (let i = 0; i < maxTokens; i++) {
    let logits;
    if (context.length <= blockSize) {
      logits = model.gpt(context[context.length - 1], context.length - 1, keys, values);
    } else {
      logits = model.windowLogits(context.slice(-blockSize));
    }
    logits[bos] = -Infinity; // BOS is unused in text mode
    const tokenId = rng.choices(sampleProbs(logits, temperature, topK));
    context.push(tokenId);
    yield tokenId;
  }
}
