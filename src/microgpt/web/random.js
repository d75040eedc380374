/*
 * Python's random.Random in JavaScript: the one generator of the book (SPEC 1), so the page
 * draws exactly the documents that `microgpt sample` prints.
 *
 * The Mersenne Twister MT19937 as CPython runs it: seeding from a non-negative integer
 * (init_by_array over the integer's 32-bit words, least significant first), setstate from
 * the 625 words of getstate() (624 words of state and the position), random() with 53 bits,
 * and the draw that choices(range(n), weights=w) makes.
 *
 * Exports (globals): PyRandom.
 */
"use strict";

const MT_N = 624;
const MT_M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

class PyRandom {
  /** random.Random(seed); seed: a non-negative integer (a Number or a BigInt, up to 2**64 and beyond). */
  constructor(seed) {
    this.mt = new Uint32Array(MT_N);
    this.index = MT_N + 1;
    if (seed !== undefined) this.seed(seed);
  }

  /** random.seed(n) for an integer n: the key is |n| cut into 32-bit words. */
  seed(n) {
    let rest = BigInt(n);
    if (rest < 0n) rest = -rest; // Python seeds from the absolute value
    const key = [];
    while (rest > 0n) {
      key.push(Number(rest & 0xffffffffn));
      rest >>= 32n;
    }
    if (key.length === 0) key.push(0);
    this.initByArray(key);
  }

  /** random.setstate((3, words, gauss_next)): the 624 words of state, then the position. */
  setState(words) {
    if (words.length !== MT_N + 1) throw new Error(`a generator state has ${MT_N + 1} words, got ${words.length}`);
    for (let i = 0; i < MT_N; i++) this.mt[i] = words[i];
    this.index = words[MT_N];
  }

  /** The 625 words of getstate()[1]. */
  getState() {
    return [...this.mt, this.index];
  }

  initGenrand(s) {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < MT_N; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      // Math.imul keeps the low 32 bits of the product, as C's unsigned arithmetic does.
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = MT_N;
  }

  initByArray(key) {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    const nextI = () => {
      // i runs over 1..MT_N-1; each time round, the last word is copied to the first.
      i++;
      if (i >= MT_N) {
        mt[0] = mt[MT_N - 1];
        i = 1;
      }
    };
    for (let k = Math.max(MT_N, key.length); k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1664525)) + key[j] + j) >>> 0;
      nextI();
      j++;
      if (j >= key.length) j = 0;
    }
    for (let k = MT_N - 1; k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      nextI();
    }
    mt[0] = UPPER_MASK; // assures a non-zero initial state
  }

  /** The next 32-bit output: regenerate the 624 words when used up, then temper one. */
  genrandUint32() {
    const mt = this.mt;
    if (this.index >= MT_N) {
      let kk = 0;
      for (; kk < MT_N - MT_M; kk++) {
        const y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
        mt[kk] = mt[kk + MT_M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      for (; kk < MT_N - 1; kk++) {
        const y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
        mt[kk] = mt[kk + (MT_M - MT_N)] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      }
      const y = (mt[MT_N - 1] & UPPER_MASK) | (mt[0] & LOWER_MASK);
      mt[MT_N - 1] = mt[MT_M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** random(): a float in [0, 1) from 53 random bits, the top 27 of one word and 26 of the next. */
  random() {
    const a = this.genrandUint32() >>> 5;
    const b = this.genrandUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /**
   * The index that choices(range(n), weights=weights)[0] returns: cumulative weights summed left
   * to right, random() * total, then bisect_right over the cumulative weights with hi = n - 1.
   */
  choices(weights) {
    const n = weights.length;
    const cum = new Array(n);
    let total = weights[0];
    cum[0] = total;
    for (let i = 1; i < n; i++) {
      total = total + weights[i];
      cum[i] = total;
    }
    total = cum[n - 1] + 0.0;
    if (!(total > 0) || !Number.isFinite(total)) throw new Error("the weights must sum to a positive finite number");
    return bisectRight(cum, this.random() * total, 0, n - 1);
  }
}

/** Python's bisect.bisect_right(a, x, lo, hi): the first index in lo..hi whose value exceeds x. */
function bisectRight(a, x, lo, hi) {
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (x < a[mid]) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}
