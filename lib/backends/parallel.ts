/**
 * Element-wise and row-wise JS kernels split across the machine's cores. OpenBLAS already spreads the matrix
 * products over every core; between products the JS kernels (GELU, LayerNorm, softmax, cross-entropy, AdamW, …)
 * would otherwise run on one. `parallelFor` hands a range of a kernel's work to helper Workers that share the
 * arrays' memory (SharedArrayBuffer) and runs the rest itself, then waits (Atomics) until all parts are done.
 *
 * The kernels are plain functions of (arrays, scalars, lo, hi) over a range of work units (elements or rows) in
 * this module, which imports only simd.ts (their WebAssembly SIMD versions), so the Workers (parallel_worker.ts)
 * load them quickly. Arrays not backed by a SharedArrayBuffer, small amounts of work, or Workers that are not up
 * yet: the whole range runs on the calling thread, with the same result (each unit is computed by the same code
 * either way, so results are bit-identical). Workers start on first use and close themselves after
 * {@link IDLE_MS} without work, so a finished program exits.
 */
import {
  simdAdamW,
  simdCausalSoftmax,
  simdCausalSoftmaxGrad,
  simdGelu,
  simdGeluGrad,
  simdLayerNorm,
  simdLayerNormGradX,
  simdSoftmaxCrossEntropy,
} from "./simd.ts";
import { gemmBlock, wasmSgemm } from "./gemm.ts";

/** A typed array a kernel reads or writes; shared ones can be handed to Workers without a copy. */
export type Arr = Float32Array | Float64Array | Int32Array;

/** A kernel over work units [lo, hi): `part` is the index of the range (0 = the caller's). */
export type RangeKernel = (a: Arr[], s: number[], lo: number, hi: number, part: number) => void;

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

// ---------------------------------------------------------------------------------------------------------------
// Matrix products of a batch (attention heads) on every thread: OpenBLAS spends as long on one head's small
// product with two threads as with one, so each thread takes a share of the heads with OpenBLAS on one thread
// (`sgemmHeads`).

/** `cblas_sgemm` for Deno.dlopen: order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc. */
export const SGEMM_SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
} as const;

/** cblas_sgemm (row-major): transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc. */
export type Sgemm = (
  order: number,
  transA: number,
  transB: number,
  M: number,
  N: number,
  K: number,
  alpha: number,
  A: Float32Array,
  lda: number,
  B: Float32Array,
  ldb: number,
  beta: number,
  C: Float32Array,
  ldc: number,
) => void;

let sgemm: Sgemm | null = null;
/** The library the blas backend loaded; helpers open it themselves for `sgemmHeads`. */
let blasPath: string | null = null;

/** Called by the blas backend once it has loaded `path`: `sgemmHeads` calls `fn` here, and the library in helpers. */
export function setSgemm(path: string, fn: Sgemm): void {
  blasPath = path, sgemm = fn;
}

/** The library name {@link setSgemm} takes for the WebAssembly GEMM (gemm.ts), which every thread has built in. */
export const WASM_GEMM = "wasm";

function helperSgemm(): Sgemm {
  if (!sgemm) {
    if (!blasPath) throw new Error("sgemmHeads: no BLAS library was named");
    sgemm = blasPath === WASM_GEMM
      ? wasmSgemm
      : Deno.dlopen(blasPath, SGEMM_SYMBOLS).symbols.cblas_sgemm as unknown as Sgemm;
  }
  return sgemm;
}

/** Products smaller than this (M·N·K) stay on the calling thread in {@link parallelWasmSgemm}. */
const WASM_SPLIT_MIN = 1 << 18;
let wasmThreads = 8;

/** Caps the threads {@link parallelWasmSgemm} uses (benchmarks compare 1 and 2); returns the cap in force. */
export function setWasmGemmThreads(n?: number): number {
  if (n !== undefined) wasmThreads = Math.max(1, Math.floor(n));
  return Math.min(wasmThreads, threads ?? setParallelism());
}

/**
 * `cblas_sgemm` in the WebAssembly GEMM on every thread: C is cut into blocks of 16 rows (or, for products with
 * few rows such as sampling's, 64 columns) shared out between the helpers. Operands outside shared memory are
 * copied there first (helpers cannot see the rest).
 */
export const parallelWasmSgemm: Sgemm = (
  o,
  tA,
  tB,
  M,
  N,
  K,
  alpha,
  A,
  lda,
  B,
  ldb,
  beta,
  C,
  ldc,
) => {
  const t = setWasmGemmThreads();
  if (t <= 1 || M * N * K < WASM_SPLIT_MIN) {
    return wasmSgemm(o, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  const c = shared(C);
  const byCols = M < 32 * t, unit = byCols ? 64 : 16;
  const s = [
    tA === 112 ? 1 : 0,
    tB === 112 ? 1 : 0,
    M,
    N,
    K,
    alpha,
    lda,
    ldb,
    beta,
    ldc,
    unit,
    +byCols,
  ];
  const units = Math.ceil((byCols ? N : M) / unit);
  parallelFor("gemmBlocks", [shared(A), shared(B), c], s, units, unit * (byCols ? M : N) * K);
  if (c !== C) C.set(c);
};

// ---------------------------------------------------------------------------------------------------------------
// Dropout masks from one xoshiro128** stream, split across threads: its state transition is linear over GF(2), so
// the state k draws ahead is a 128×128 bit matrix (a product of precomputed M^(2^b)) times the state.

/** xoshiro128**'s state transition (no output) on s, in place. */
function xoshiroStep(s: Uint32Array): void {
  const t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = (s[3] << 11) | (s[3] >>> 21);
}

/** JUMPS[b]: the transition applied 2^b times, as 128 columns (the images of the unit states) of 4 words. */
const JUMPS: Uint32Array[] = [];

/** m · v over GF(2): the XOR of the columns of m where v has a bit set. */
function matVec(m: Uint32Array, v: Uint32Array): Uint32Array {
  const r = new Uint32Array(4);
  for (let j = 0; j < 128; j++) {
    if ((v[j >>> 5] >>> (j & 31)) & 1) {
      const o = j * 4;
      r[0] ^= m[o], r[1] ^= m[o + 1], r[2] ^= m[o + 2], r[3] ^= m[o + 3];
    }
  }
  return r;
}

function jumpMatrix(b: number): Uint32Array {
  while (JUMPS.length <= b) {
    const m = new Uint32Array(512), prev = JUMPS[JUMPS.length - 1];
    for (let j = 0; j < 128; j++) {
      let col: Uint32Array = new Uint32Array(4);
      col[j >>> 5] = 1 << (j & 31);
      if (prev) col = matVec(prev, matVec(prev, col));
      else xoshiroStep(col);
      m.set(col, j * 4);
    }
    JUMPS.push(m);
  }
  return JUMPS[b];
}

/** The xoshiro128** state `k` draws after `s` (k < 2^53). */
export function xoshiroJump(s: ArrayLike<number>, k: number): Uint32Array {
  let v: Uint32Array = Uint32Array.from(s);
  for (let b = 0; k > 0; b++, k = Math.floor(k / 2)) if (k % 2) v = matVec(jumpMatrix(b), v);
  return v;
}

/** The kernels Workers can run, by name. Each writes only its own units' outputs (or its own `part` slot). */
export const KERNELS: Record<string, RangeKernel> = {
  /**
   * [mask, end]: draws lo…hi of a keep-mask (0 with probability p, else 1/(1−p)) from the xoshiro128** stream at
   * state s[0…3]; the part that draws the last one leaves the state after it in `end`, elements.
   * s: [s0, s1, s2, s3, threshold (p·2^32), keep, n].
   */
  dropoutMask: ([out, end], [a0, a1, a2, a3, threshold, keep, n], lo, hi) => {
    const st = lo === 0 ? Uint32Array.of(a0, a1, a2, a3) : xoshiroJump([a0, a1, a2, a3], lo);
    let s0 = st[0], s1 = st[1], s2 = st[2], s3 = st[3];
    for (let i = lo; i < hi; i++) {
      const x = Math.imul(s1, 5), y = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
      out[i] = y >= threshold ? keep : 0;
    }
    if (hi === n) end[0] = s0, end[1] = s1, end[2] = s2, end[3] = s3;
  },

  /**
   * [A, B, C]: C_i = op(A_i)·op(B_i) + beta·C_i for items i = (b, h) of a batch of (items / H)·H, where X_i starts
   * at b·sXb + h·sXh with leading dimension ldX: strided views, e.g. one attention head's (T, D) columns of a
   * (B·T, C) activation, or (H = 1) the blocks of a contiguous batch, items.
   * s: [H, transA, transB, M, N, K, beta, sAb, sAh, lda, sBb, sBh, ldb, sCb, sCh, ldc] (trans as CBLAS codes).
   */
  sgemmHeads: ([A, B, C], s, lo, hi) => {
    const f = helperSgemm();
    const [H, tA, tB, M, N, K, beta, sAb, sAh, lda, sBb, sBh, ldb, sCb, sCh, ldc] = s;
    for (let i = lo; i < hi; i++) {
      const b = Math.floor(i / H), h = i - b * H;
      const a = (A as Float32Array).subarray(b * sAb + h * sAh);
      const bb = (B as Float32Array).subarray(b * sBb + h * sBh);
      f(
        101,
        tA,
        tB,
        M,
        N,
        K,
        1,
        a,
        lda,
        bb,
        ldb,
        beta,
        (C as Float32Array).subarray(b * sCb + h * sCh),
        ldc,
      );
    }
  },

  /**
   * [A, B, C]: blocks lo…hi of C = alpha·op(A)·op(B) + beta·C in the WebAssembly GEMM, a block being `unit` rows
   * of C (byCols 0) or `unit` columns (byCols 1). s: [transA, transB, M, N, K, alpha, lda, ldb, beta, ldc, unit,
   * byCols] (trans as 0/1).
   */
  gemmBlocks: ([A, B, C], [tA, tB, M, N, K, alpha, lda, ldb, beta, ldc, unit, byCols], lo, hi) => {
    const g = {
      transA: tA === 1,
      transB: tB === 1,
      M,
      N,
      K,
      alpha,
      A: A as Float32Array,
      lda,
      B: B as Float32Array,
      ldb,
      beta,
      C: C as Float32Array,
      ldc,
    };
    if (byCols) gemmBlock(g, 0, M, lo * unit, Math.min(N, hi * unit));
    else gemmBlock(g, lo * unit, Math.min(M, hi * unit), 0, N);
  },

  /** [out] = value over elements. s: [value]. */
  fill: ([out], [value], lo, hi) => {
    out.fill(value, lo, hi);
  },

  /** [a, b, out] same shape, elements. s: [op]. */
  binary: ([a, b, out], [op], lo, hi) => binaryRun(op, out, lo, a, lo, b, lo, hi - lo),

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
    for (let r = 0; r < red; r++) {
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
   * √(1−β2ᵗ) folded into the constants). Float32 like PyTorch (simd.ts; this JS loop, without it, in double).
   * s: [β1, 1−β1, β2, 1−β2, decay, s, e].
   */
  adamw: ([P, G, M, V], c, lo, hi) => {
    if (simdAdamW(P, G, M, V, c, lo, hi)) return;
    const [b1, c1, b2, c2, decay, s, e] = c;
    for (let i = lo; i < hi; i++) {
      const gi = G[i];
      const mi = b1 * M[i] + c1 * gi;
      const vi = b2 * V[i] + c2 * gi * gi;
      M[i] = mi;
      V[i] = vi;
      P[i] = P[i] * decay - s * mi / (Math.sqrt(vi) + e);
    }
  },
};

// ---------------------------------------------------------------------------------------------------------------
// The dispatcher.

/**
 * A helper Worker closes itself after this long without work (so that a finished program can exit), unless
 * {@link holdHelpers} holds it open.
 */
export const IDLE_MS = 1000;

/** [holds]: while positive, idle helpers stay open; shared with every helper. */
const hold = new Int32Array(new SharedArrayBuffer(4));

/** Worker states, in `state[0]`. */
const IDLE = 1, BUSY = 2, CLOSED = 3; // 0: starting

interface Helper {
  worker: Worker;
  /** [state, done, failed] */
  state: Int32Array;
}

let helpers: Helper[] = [];
let threads: number | null = null;
/** Work (units × cost per unit) below which a call runs on the calling thread only, unless set otherwise. */
export const DEFAULT_MIN_WORK = 1 << 16;
let minWork = DEFAULT_MIN_WORK;
let workersBroken = false;
let splits = 0;

/** How many `parallelFor` calls so far had helpers take part (tests check that the split really happens). */
export function splitCalls(): number {
  return splits;
}

/**
 * One thread per core (at most 8), or `GPT_JS_THREADS` when set. OpenBLAS uses every core for the products; the
 * helpers take the JS kernels between them (GPT-124M on our 2-core VM, steps alternating: batch 8 18.0–20.7 s
 * instead of 21.6–23.6 s with one thread; same peak RSS). The lost helper that once kept this off was a stale
 * notify read as a failure (see the wait in `parallelFor`).
 */
function defaultThreads(): number {
  let n = Math.max(1, navigator.hardwareConcurrency ?? 1);
  try {
    const env = Deno.env.get("GPT_JS_THREADS");
    if (env) n = Math.max(1, Math.floor(Number(env)) || 1);
  } catch {
    // no --allow-env: one per core
  }
  return Math.min(n, 8);
}

/**
 * Sets how many threads `parallelFor` uses (the caller counts as one; 1 = no Workers) and, optionally, the work
 * below which it stays on the calling thread (tests lower it to exercise the split on small arrays). Returns the
 * thread count in force. Default: one per core, or `GPT_JS_THREADS` when set; at most 8.
 */
export function setParallelism(n?: number, minWorkUnits?: number): number {
  if (n !== undefined) {
    threads = Math.max(1, Math.floor(n));
    for (const h of helpers.slice(threads - 1)) {
      if (Atomics.compareExchange(h.state, 0, IDLE, CLOSED) === IDLE) h.worker.terminate();
    }
    helpers = helpers.slice(0, threads - 1);
  }
  if (minWorkUnits !== undefined) minWork = minWorkUnits;
  return threads ??= defaultThreads();
}

/** True when `a` lives in shared memory (a Worker can write it). */
export function isShared(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer !== "undefined" && a.buffer instanceof SharedArrayBuffer;
}

/** A zeroed Float32Array, in shared memory when more than one thread is in use (else plain: less RSS). */
export function sharedF32(n: number): Float32Array {
  return (threads ?? setParallelism()) > 1
    ? new Float32Array(new SharedArrayBuffer(n * 4))
    : new Float32Array(n);
}

/** `a` itself when shared or single-threaded, else a shared copy (for small read-only inputs such as ids). */
export function shared<T extends Arr>(a: T): T {
  if (isShared(a) || (threads ?? setParallelism()) <= 1) return a;
  const C = a.constructor as new (b: SharedArrayBuffer) => T;
  const c = new C(new SharedArrayBuffer(a.byteLength));
  c.set(a as never);
  return c;
}

function startHelper(): Helper | null {
  if (workersBroken) return null;
  try {
    const state = new Int32Array(new SharedArrayBuffer(12));
    const worker = new Worker(new URL("./parallel_worker.ts", import.meta.url).href, {
      type: "module",
    });
    worker.onerror = (e) => {
      e.preventDefault(); // a Worker that cannot load (permissions): stay on one thread
      workersBroken = true;
      Atomics.store(state, 0, CLOSED);
    };
    worker.postMessage({ state, hold });
    return { worker, state };
  } catch {
    workersBroken = true;
    return null;
  }
}

/**
 * Runs `KERNELS[name]` over work units [0, n): the caller takes the first share, each ready helper Worker one of
 * the others. `cost` is the work per unit (e.g. a row's length) for the small-work cutoff. Runs everything on the
 * calling thread when the work is small, when any array is not shared, or when no Worker is ready.
 */
export function parallelFor(name: string, a: Arr[], s: number[], n: number, cost = 1): void {
  const kernel = KERNELS[name];
  const t = threads ?? setParallelism();
  if (t <= 1 || n < 2 || n * cost < minWork || !a.every(isShared)) return kernel(a, s, 0, n, 0);
  // Claim the idle helpers (start missing or closed ones for next time).
  const ready: Helper[] = [];
  for (let i = 0; i < t - 1; i++) {
    let h = helpers[i];
    if (!h || Atomics.load(h.state, 0) === CLOSED) {
      const fresh = startHelper();
      if (!fresh) break;
      helpers[i] = h = fresh;
    }
    if (Atomics.compareExchange(h.state, 0, IDLE, BUSY) === IDLE) ready.push(h);
  }
  if (ready.length === 0) return kernel(a, s, 0, n, 0);
  splits++;
  const parts = ready.length + 1;
  const bound = (p: number) => Math.round((n * p) / parts);
  ready.forEach((h, i) => {
    Atomics.store(h.state, 1, 0);
    h.worker.postMessage({
      k: name,
      a,
      s,
      lo: bound(i + 1),
      hi: bound(i + 2),
      part: i + 1,
      lib: blasPath,
    });
  });
  let error: unknown = null;
  try {
    kernel(a, s, 0, bound(1), 0);
  } catch (err) {
    error = err;
  }
  for (const h of ready) {
    // The done flag decides, not the wake-up: a helper stores the flag, then notifies, so a wake-up can be the late
    // notify of its previous job, which the caller already saw done through the flag.
    while (Atomics.load(h.state, 1) === 0) {
      const woke = Atomics.wait(h.state, 1, 0, 60_000);
      if (woke === "timed-out" && Atomics.load(h.state, 0) === CLOSED) break; // died without finishing
    }
    if (Atomics.load(h.state, 2) !== 0 || Atomics.load(h.state, 1) === 0) {
      Atomics.store(h.state, 2, 0);
      error ??= new Error(`parallelFor(${name}): a helper Worker failed`);
    }
  }
  if (error) throw error;
}

/**
 * Starts the helper Workers that are not running and resolves once each is ready for work (or could not start):
 * `parallelFor` never waits for a starting helper, so a caller that wants the first call split (tests) waits here.
 * Returns how many helpers are ready.
 */
export async function readyHelpers(timeoutMs = 30_000): Promise<number> {
  const t = threads ?? setParallelism();
  for (let i = 0; i < t - 1; i++) {
    if (!helpers[i] || Atomics.load(helpers[i].state, 0) === CLOSED) {
      const fresh = startHelper();
      if (!fresh) break;
      helpers[i] = fresh;
    }
  }
  const deadline = performance.now() + timeoutMs;
  while (helpers.some((h) => Atomics.load(h.state, 0) === 0) && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  return helpers.filter((h) => Atomics.load(h.state, 0) === IDLE).length;
}

/**
 * Runs `f` with the helper Workers held open: without work for longer than {@link IDLE_MS} (a batch-8 step's
 * largest BLAS products take longer than that) they would close and the next kernel would find them starting
 * again, and run on one thread. Holds nest; once none is left, idle helpers close after IDLE_MS as before.
 */
export async function holdHelpers<T>(f: () => Promise<T>): Promise<T> {
  Atomics.add(hold, 0, 1);
  try {
    return await f();
  } finally {
    Atomics.sub(hold, 0, 1);
  }
}

/**
 * The Worker side (parallel_worker.ts calls this): marks itself idle, runs posted ranges, signals completion and
 * closes itself after {@link IDLE_MS} without work — unless the caller claimed it in the meantime.
 */
export function serveWorker(scope: {
  onmessage: ((e: MessageEvent) => void) | null;
  close(): void;
}): void {
  let state: Int32Array | null = null;
  let held: Int32Array | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const idle = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (held && Atomics.load(held, 0) > 0) return idle();
      if (state && Atomics.compareExchange(state, 0, IDLE, CLOSED) === IDLE) scope.close();
    }, IDLE_MS);
  };
  scope.onmessage = (e: MessageEvent) => {
    const d = e.data;
    if (d.state) {
      state = d.state as Int32Array;
      held = d.hold as Int32Array;
      Atomics.store(state, 0, IDLE);
      idle();
      return;
    }
    const st = state!;
    if (d.lib !== blasPath) blasPath = d.lib, sgemm = null; // the caller switched libraries
    try {
      KERNELS[d.k](d.a, d.s, d.lo, d.hi, d.part);
    } catch {
      Atomics.store(st, 2, 1);
    }
    Atomics.store(st, 0, IDLE);
    Atomics.store(st, 1, 1);
    Atomics.notify(st, 1);
    idle();
  };
}
