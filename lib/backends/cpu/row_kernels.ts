/**
 * The JS element and row kernels of a GPT step (GELU, LayerNorm, causal softmax, cross-entropy, AdamW, dropout
 * masks, sums, transposes, broadcasting arithmetic): plain functions of (arrays, scalars, lo, hi) over a range of
 * work units (elements or rows), registered with the helper-thread pool (pool.ts) so `parallelFor` can split them.
 * Their WebAssembly SIMD versions are in simd_kernels.ts; each kernel falls back to its JS loop where that is off. This
 * module imports only those, the pool and the dropout stream's jump-ahead, so the Workers load it quickly.
 */
import {
  simdAdamW,
  simdBinary,
  simdCausalSoftmax,
  simdCausalSoftmaxGrad,
  simdGelu,
  simdGeluGrad,
  simdLayerNorm,
  simdLayerNormGradX,
  simdSoftmaxCrossEntropy,
} from "./simd_kernels.ts";
import { type Arr, type RangeKernel, registerKernels } from "./pool.ts";
import { bf16Range } from "./bf16.ts";
import { xoshiroJump } from "./xoshiro.ts";

// ---------------------------------------------------------------------------------------------------------------
// exp in float32 precision, ~4× faster than Math.exp in V8: e^x = 2^(k/256) · e^r with k = round(x·256/ln 2),
// |r| ≤ ln2/512, e^r by a cubic (relative error < 1e-12), 2^(k/256) from two tables. Branch-free (selects only):
// early returns of other values stop V8 from inlining it into the kernels' loops.

const LOG2E_256 = 256 / Math.LN2, LN2_256 = Math.LN2 / 256;
const ROUND = 6755399441055744; // 1.5·2^52: adding and subtracting it rounds a double to an integer
const EXP_FRAC = new Float64Array(256).map((_, j) => 2 ** (j / 256));
const EXP_INT = new Float64Array(320).map((_, i) => 2 ** (i - 160));

/**
 * e^x with float32 accuracy: relative error below 1e-12 on [−103, 88.7]; inputs are clamped to [−104, 89], so
 * −Infinity gives ~7e-46 (0 in float32) and +Infinity ~4.5e38 (Infinity in float32); NaN stays NaN.
 */
export function fastExp(x: number): number {
  const c = x < -104 ? -104 : x > 89 ? 89 : x;
  const k = (c * LOG2E_256 + ROUND) - ROUND;
  const r = c - k * LN2_256;
  const ki = k | 0;
  return (1 + r + r * r * (0.5 + r * 0.16666666666666666)) * EXP_FRAC[ki & 255] *
    EXP_INT[(ki >> 8) + 160];
}

/**
 * tanh as (e − 1) / (e + 1), e = e^{2x}, with {@link fastExp}'s exp written out (V8 inlines one level, not two);
 * x − x³/3 near 0, where e − 1 cancels. Relative error below 1e-10.
 */
export function fastTanh(x: number): number {
  const c = x < -20 ? -40 : x > 20 ? 40 : 2 * x;
  const k = (c * LOG2E_256 + ROUND) - ROUND;
  const r = c - k * LN2_256;
  const ki = k | 0;
  const e = (1 + r + r * r * (0.5 + r * 0.16666666666666666)) * EXP_FRAC[ki & 255] *
    EXP_INT[(ki >> 8) + 160];
  const t = (e - 1) / (e + 1);
  return x * x < 1e-8 ? x - x * x * x / 3 : t;
}

const GELU_C = Math.sqrt(2 / Math.PI), GELU_A = 0.044715;

/**
 * out[o…o+n) = softmax of z[o…o+n), times `scale`: max, exp and sum in one pass, then a scale. Returns log Σ e^z
 * (the row's log-sum-exp), from which cross-entropy is lse − z[target].
 */
export function softmaxRow(z: Arr, out: Arr, o: number, n: number, scale = 1): number {
  let max = -Infinity;
  for (let k = 0; k < n; k++) if (z[o + k] > max) max = z[o + k];
  let sum = 0;
  for (let k = 0; k < n; k++) {
    const e = fastExp(z[o + k] - max);
    out[o + k] = e;
    sum += e;
  }
  const inv = scale / sum;
  for (let k = 0; k < n; k++) out[o + k] *= inv;
  return Math.log(sum) + max;
}

/** Binary op codes of the `binary*` kernels. */
export const OP = { Add: 0, Sub: 1, Multiply: 2, RealDiv: 3 } as const;

/** out[o…] = a[…] ∘ b[…] over n contiguous elements (one literal loop per op keeps each loop monomorphic). */
function binaryRun(
  op: number,
  out: Arr,
  o: number,
  a: Arr,
  ia: number,
  b: Arr,
  ib: number,
  n: number,
): void {
  if (op === 0) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] + b[ib + k]; }
  else if (op === 1) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] - b[ib + k]; }
  else if (op === 2) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] * b[ib + k]; }
  else for (let k = 0; k < n; k++) out[o + k] = a[ia + k] / b[ib + k];
}

/** The element and row kernels, by name. Each writes only its own units' outputs (or its own `part` slot). */
export const KERNELS: Record<string, RangeKernel> = {
  /**
   * [mask, end]: draws lo…hi of a keep-mask (0 with probability p, else 1/(1−p)) from the xoshiro128** stream at
   * state s[0…3]; the part that draws the last one leaves the state after it in `end`, elements.
   * s: [s0, s1, s2, s3, threshold (p·2^32), keep, n].
   */
  dropoutMask: ([out, end], [a0, a1, a2, a3, threshold, keep, n], lo, hi) => {
    const st = lo === 0 ? Uint32Array.of(a0, a1, a2, a3) : xoshiroJump([a0, a1, a2, a3], lo);
    // Everything in int32 (a uint32 above 2³¹ is a double in V8): y ≥ threshold unsigned is
    // (y ^ 2³¹) ≥ (threshold ^ 2³¹) signed. The same mask, ~1.3× faster.
    let s0 = st[0] | 0, s1 = st[1] | 0, s2 = st[2] | 0, s3 = st[3] | 0;
    const th = threshold ^ 0x80000000;
    for (let i = lo; i < hi; i++) {
      const x = Math.imul(s1, 5), y = Math.imul((x << 7) | (x >>> 25), 9);
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
      out[i] = (y ^ 0x80000000) >= th ? keep : 0;
    }
    if (hi === n) end[0] = s0, end[1] = s1, end[2] = s2, end[3] = s3;
  },

  /** [out] = value over elements. s: [value]. */
  fill: ([out], [value], lo, hi) => {
    out.fill(value, lo, hi);
  },

  /** [a, b, out] same shape, elements. s: [op]. */
  binary: ([a, b, out], [op], lo, hi) => {
    if (!simdBinary(op, a, b, out, lo, hi)) binaryRun(op, out, lo, a, lo, b, lo, hi - lo);
  },

  /** [a (rows, n), b (n), out] — a row vector broadcast over rows (a bias), rows. s: [op, n]. */
  binaryRows: ([a, b, out], [op, n], lo, hi) => {
    for (let r = lo; r < hi; r++) binaryRun(op, out, r * n, a, r * n, b, 0, n);
  },

  /** [x, y, t]: y = GPT-2's tanh-GELU of x, t = the tanh (kept for the gradient), elements. */
  geluTanh: ([x, y, t], _s, lo, hi) => {
    if (simdGelu(x, y, t, lo, hi)) return;
    for (let i = lo; i < hi; i++) {
      const v = x[i];
      const th = fastTanh(GELU_C * (v + GELU_A * v * v * v));
      t[i] = th;
      y[i] = 0.5 * v * (1 + th);
    }
  },

  /** [dy, x, t, dx]: dx = dy·(0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)), elements. */
  geluTanhGrad: ([g, x, tv, dx], _s, lo, hi) => {
    if (simdGeluGrad(g, x, tv, dx, lo, hi)) return;
    for (let i = lo; i < hi; i++) {
      const v = x[i], th = tv[i];
      dx[i] = g[i] *
        (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * GELU_C * (1 + 3 * GELU_A * v * v));
    }
  },

  /** [x, scale, shift, y, mean, rstd]: LayerNorm of rows of length C (biased variance), rows. s: [C, eps]. */
  layerNorm: ([x, g, b, y, mean, rstd], [Cd, eps], lo, hi) => {
    const C = Cd | 0; // an integer to V8 (s holds doubles), so indexing stays integer arithmetic
    if (simdLayerNorm(x, g, b, y, mean, rstd, C, eps, lo, hi)) return;
    for (let r = lo; r < hi; r++) {
      const o = r * C;
      let s = 0;
      for (let k = 0; k < C; k++) s += x[o + k];
      const m = s / C;
      let v = 0;
      for (let k = 0; k < C; k++) v += (x[o + k] - m) * (x[o + k] - m);
      const rs = 1 / Math.sqrt(v / C + eps);
      for (let k = 0; k < C; k++) y[o + k] = (x[o + k] - m) * rs * g[k] + b[k];
      mean[r] = m, rstd[r] = rs;
    }
  },

  /** [dy, x, scale, mean, rstd, dx]: LayerNorm's input gradient, rows. s: [C]. */
  layerNormGradX: ([g, x, w, mv, rv, dx], [Cd], lo, hi) => {
    const C = Cd | 0;
    if (simdLayerNormGradX(g, x, w, mv, rv, dx, C, lo, hi)) return;
    for (let r = lo; r < hi; r++) {
      const o = r * C, m = mv[r], rs = rv[r];
      let sumG = 0, sumGX = 0; // Σ dŷ and Σ dŷ·x̂ over the row, dŷ = dy·scale
      for (let k = 0; k < C; k++) {
        const dxh = g[o + k] * w[k];
        sumG += dxh, sumGX += dxh * ((x[o + k] - m) * rs);
      }
      const mG = sumG / C, mGX = sumGX / C;
      for (let k = 0; k < C; k++) {
        dx[o + k] = rs * (g[o + k] * w[k] - mG - (x[o + k] - m) * rs * mGX);
      }
    }
  },

  /** [dy, x, mean, rstd, dscale, dshift]: LayerNorm's parameter gradients, summed over `rows`, columns. s: [C, rows]. */
  layerNormGradW: ([g, x, mv, rv, dw, db], [Cd, rows], lo, hi) => {
    const C = Cd | 0;
    const n = hi - lo, accW = new Float64Array(n), accB = new Float64Array(n);
    for (let r = 0; r < rows; r++) {
      const o = r * C, m = mv[r], rs = rv[r];
      for (let k = 0; k < n; k++) {
        const gk = g[o + lo + k];
        accW[k] += gk * ((x[o + lo + k] - m) * rs), accB[k] += gk;
      }
    }
    for (let k = 0; k < n; k++) dw[lo + k] = accW[k], db[lo + k] = accB[k];
  },

  /**
   * [logits (N, V), targets, dlogits, rowLoss]: −log softmax(z)[target] per row, and the loss's gradient
   * (softmax(z) − onehot(target))·k, rows. s: [V, k].
   */
  softmaxCrossEntropy: ([z, tv, d, loss], [V, k], lo, hi) => {
    if (!simdSoftmaxCrossEntropy(z, tv, d, loss, V, k, lo, hi)) {
      for (let r = lo; r < hi; r++) loss[r] = softmaxRow(z, d, r * V, V, k) - z[r * V + tv[r]];
    }
    for (let r = lo; r < hi; r++) d[r * V + tv[r]] -= k;
  },

  /** [x, out]: out = x·k, elements. s: [k]. */
  scale: ([x, out], [k], lo, hi) => {
    for (let i = lo; i < hi; i++) out[i] = x[i] * k;
  },

  /**
   * [x, y] or [x, y, mask, out]: causal softmax y of x·scale over rows of (…, T, T) (row r sees keys 0…r mod T);
   * with a dropout mask also out = y ⊙ mask, rows. s: [T, scale].
   */
  causalSoftmax: ([x, out, mask, dropped], [Td, scale], lo, hi) => {
    const T = Td | 0;
    if (simdCausalSoftmax(x, out, mask, dropped, T, scale, lo, hi)) return;
    for (let r = lo; r < hi; r++) {
      const o = r * T, n = (r % T) + 1; // keys visible to this query
      let max = -Infinity;
      for (let k = 0; k < n; k++) if (x[o + k] > max) max = x[o + k];
      let sum = 0;
      for (let k = 0; k < n; k++) {
        const e = fastExp((x[o + k] - max) * scale);
        out[o + k] = e;
        sum += e;
      }
      const inv = 1 / sum;
      for (let k = 0; k < n; k++) out[o + k] *= inv;
      out.fill(0, o + n, o + T);
      if (mask) { for (let k = 0; k < T; k++) dropped[o + k] = out[o + k] * mask[o + k]; }
    }
  },

  /**
   * [x, out]: a transpose as runs of s[0] output elements, each read from x at stride s[1]; s[2…] are the outer
   * dims as (count, input stride) pairs, outermost first, runs.
   */
  transposeRuns: ([x, out], s, lo, hi) => {
    const n = s[0], st = s[1], nd = (s.length - 2) / 2;
    const idx = new Array<number>(nd);
    let i = 0;
    for (let d = nd - 1, rest = lo; d >= 0; d--) { // input offset of run lo
      const count = s[2 + 2 * d];
      idx[d] = rest % count;
      rest = (rest - idx[d]) / count;
      i += idx[d] * s[3 + 2 * d];
    }
    for (let r = lo; r < hi; r++) {
      const o = r * n;
      if (st === 1) { for (let k = 0; k < n; k++) out[o + k] = x[i + k]; }
      else for (let k = 0; k < n; k++) out[o + k] = x[i + k * st];
      for (let d = nd - 1; d >= 0; d--) {
        const count = s[2 + 2 * d], ds = s[3 + 2 * d];
        i += ds;
        if (++idx[d] < count) break;
        i -= ds * count, idx[d] = 0;
      }
    }
  },

  /** [x, out]: sums of `red` contiguous values per row (in double), rows. s: [red]. */
  sumRows: ([x, out], [red], lo, hi) => {
    for (let r = lo; r < hi; r++) {
      const o = r * red;
      let acc = 0;
      for (let k = 0; k < red; k++) acc += x[o + k];
      out[r] = acc;
    }
  },

  /** [x, out]: sums over `red` rows of `inner` values (in double; a bias gradient), columns. s: [inner, red]. */
  sumColumns: ([x, out], [inner, red], lo, hi) => {
    const n = hi - lo, acc = new Float64Array(n);
    let r = 0;
    // Four rows per sweep over acc (the same additions in the same order: bit-identical, ~1.8× faster).
    for (; r + 4 <= red; r += 4) {
      const o0 = r * inner + lo, o1 = o0 + inner, o2 = o1 + inner, o3 = o2 + inner;
      for (let k = 0; k < n; k++) acc[k] = acc[k] + x[o0 + k] + x[o1 + k] + x[o2 + k] + x[o3 + k];
    }
    for (; r < red; r++) {
      const o = r * inner + lo;
      for (let k = 0; k < n; k++) acc[k] += x[o + k];
    }
    for (let k = 0; k < n; k++) out[lo + k] = acc[k];
  },

  /**
   * [dy, y, dx] or [dy, y, dx, mask]: dx = scale · y ⊙ (g − Σ g·y) per row with g = dy, or dy ⊙ mask (the
   * gradient through a dropout of y), rows. s: [T, scale].
   */
  causalSoftmaxGrad: ([dy, y, dx, mask], [Td, scale], lo, hi) => {
    const T = Td | 0;
    if (simdCausalSoftmaxGrad(dy, y, mask, dx, T, scale, lo, hi)) return;
    const g = mask ? new Float32Array(T) : dy;
    for (let r = lo; r < hi; r++) {
      const o = r * T, n = (r % T) + 1, go = mask ? 0 : o;
      if (mask) { for (let k = 0; k < n; k++) g[k] = dy[o + k] * mask[o + k]; }
      let dot = 0;
      for (let k = 0; k < n; k++) dot += g[go + k] * y[o + k];
      for (let k = 0; k < n; k++) dx[o + k] = scale * y[o + k] * (g[go + k] - dot);
      dx.fill(0, o + n, o + T);
    }
  },

  /** [x (rows, C), ids (rows), out (segments, C)]: out[ids[r]] += x[r] for columns [lo, hi). s: [C, rows, segments]. */
  segmentSumColumns: ([x, ids, out], [C, rows, segments], lo, hi) => {
    for (let r = 0; r < rows; r++) {
      const s = ids[r];
      if (s < 0 || s >= segments) continue; // TF drops out-of-range ids
      const o = s * C, i = r * C;
      for (let k = lo; k < hi; k++) out[o + k] += x[i + k];
    }
  },

  /**
   * [p, g, m, v]: one AdamW step in place, elements: m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
   * p ← p·decay − s·m / (√v + e), with s = lr/(1−β1ᵗ)·√(1−β2ᵗ) and e = eps·√(1−β2ᵗ) (PyTorch's formula with
   * √(1−β2ᵗ) folded into the constants). Float32 like PyTorch (simd_kernels.ts; this JS loop, without it, in double).
   * s: [β1, 1−β1, β2, 1−β2, decay, s, e, copy]: where copy is 1 (bf16 bits, in an Int32Array over them) or 2
   * (rounded fp32), a fifth array receives the updated p's bf16 copy (bf16-mixed; see bf16.ts).
   */
  adamw: ([P, G, M, V, X], c, lo, hi) => {
    const copy = !X
      ? undefined
      : c[7] === 1
      ? new Uint16Array(X.buffer, X.byteOffset)
      : X as Float32Array;
    if (simdAdamW(P, G, M, V, c, lo, hi, copy)) return;
    const [b1, c1, b2, c2, decay, s, e] = c;
    for (let i = lo; i < hi; i++) {
      const gi = G[i];
      const mi = b1 * M[i] + c1 * gi;
      const vi = b2 * V[i] + c2 * gi * gi;
      M[i] = mi;
      V[i] = vi;
      P[i] = P[i] * decay - s * mi / (Math.sqrt(vi) + e);
    }
    if (copy) bf16Range(P as Float32Array, copy, lo, hi);
  },
};

registerKernels(KERNELS);
