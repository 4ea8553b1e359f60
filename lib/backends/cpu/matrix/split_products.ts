/**
 * Matrix products on every thread of the pool (../pool.ts). Batches of products (attention heads) go to
 * `sgemmHeads`: OpenBLAS spends as long on one head's small product with two threads as with one, so each thread
 * takes a share of the heads with OpenBLAS on one thread. The WebAssembly GEMM, which has no threads of its own,
 * splits one product's C into tiles that the threads claim as they go (`parallelWasmSgemm`), and a one-row
 * product's output into ranges of rows of B (`parallelWasmSgemv`).
 */
import { gemmBlock, gemvBlock, gemvFits, wasmSgemm, wasmSgemv } from "./wasm_gemm.ts";
import { type Sgemm, SGEMM_SYMBOLS, type Sgemv } from "./cblas.ts";
import { type Dnnl, openDnnl } from "./dnnl.ts";
import type { GemmBf16 } from "./libraries.ts";
import {
  type Arr,
  helperSetting,
  parallelFor,
  type RangeKernel,
  registerKernels,
  setHelperSetting,
  setParallelism,
  shared,
} from "../pool.ts";

/** The helper setting that names the library the cpu backend loaded; helpers open it themselves for `sgemmHeads`. */
const BLAS_SETTING = "blas";
let sgemm: Sgemm | null = null;
/** The library `sgemm` belongs to on this thread. */
let opened: string | null = null;

/** Called by the cpu backend once it has loaded `path`: `sgemmHeads` calls `fn` here, and the library in helpers. */
export function setSgemm(path: string, fn: Sgemm): void {
  setHelperSetting(BLAS_SETTING, path);
  opened = path, sgemm = fn;
}

/** The library name {@link setSgemm} takes for the WebAssembly GEMM (wasm_gemm.ts), which every thread has built in. */
export const WASM_GEMM = "wasm";

/** The library name {@link setSgemm} takes for oneDNN (dnnl.ts), which helpers open on one OpenMP thread each. */
export const DNNL_GEMM = "dnnl";

/** This thread's `cblas_sgemm` of the library the caller named (a helper opens it on first use, or on a switch). */
function helperSgemm(): Sgemm {
  const path = helperSetting(BLAS_SETTING);
  if (!sgemm || opened !== path) {
    if (!path) throw new Error("sgemmHeads: no BLAS library was named");
    sgemm = path === WASM_GEMM
      ? wasmSgemm
      : path === DNNL_GEMM
      ? dnnlSgemm()
      : Deno.dlopen(path, SGEMM_SYMBOLS).symbols.cblas_sgemm as unknown as Sgemm;
    opened = path;
  }
  return sgemm;
}

/** oneDNN on this helper, on one OpenMP thread: the heads are already shared out between our threads. */
function dnnlOnOneThread(): Dnnl {
  const d = openDnnl(1);
  if (typeof d === "string") throw new Error(`sgemmHeads: ${d}`);
  return d;
}

function dnnlSgemm(): Sgemm {
  return dnnlOnOneThread().sgemm;
}

let gemmBf16: GemmBf16 | null = null;

/** This thread's oneDNN bf16 product (the only library with one the helpers open). */
function helperGemmBf16(): GemmBf16 {
  if (helperSetting(BLAS_SETTING) !== DNNL_GEMM) {
    throw new Error("sgemmHeadsBf16: oneDNN is not the library");
  }
  return gemmBf16 ??= dnnlOnOneThread().gemmBf16;
}

/** The bf16 values of a word view (two bf16 to an Int32, as bf16.ts's conversions write them). */
const bf16Of = (w: Arr) => new Uint16Array(w.buffer, w.byteOffset, w.length * 2);

/** Products smaller than this (M·N·K) stay on the calling thread in {@link parallelWasmSgemm}. */
const WASM_SPLIT_MIN = 1 << 18;
let wasmThreads = 8;

/** Caps the threads {@link parallelWasmSgemm} uses (benchmarks compare 1 and 2); returns the cap in force. */
export function setWasmGemmThreads(n?: number): number {
  if (n !== undefined) wasmThreads = Math.max(1, Math.floor(n));
  return Math.min(wasmThreads, setParallelism());
}

/**
 * Staging and packing one element of a tile's operands, in multiply-adds of time: ≈ 6 measured on one core, about
 * twice that with both threads packing at once (the 768×768 products' CPU time on 2 threads rose 14–25 % with
 * 128×128 tiles, 3–15 % with the fixed halves).
 */
const PACK_COST = 12;
/** Expected idle time at the end of a product, in tiles: threads claiming tiles finish at most one apart. */
const TAIL_TILES = 0.25;
/** Largest tile sides: one slab of the module (gemm.c's SLAB_ROWS and NC). */
const TILE_ROWS_MAX = 512, TILE_COLS_MAX = 512;

/**
 * Rows and columns of the tiles {@link parallelWasmSgemm} cuts an M × N product into for `threads` threads:
 * the sizes (multiples of 16 rows and 64 columns, at most one slab) that minimise the work of the busiest thread,
 * counted as its share of whole tiles plus {@link TAIL_TILES}, times a tile's multiply-adds plus its packing (each
 * tile stages and packs its rows of A and its columns of B once per 256-deep slice of K). Small tiles balance
 * better; large ones pack less.
 */
export function gemmTiles(M: number, N: number, threads: number): [number, number] {
  let best: [number, number] = [M, N], cost = Infinity;
  for (let r = 16; r < TILE_ROWS_MAX + 16; r += 16) {
    const nR = Math.ceil(M / r), rows = Math.ceil(M / nR / 16) * 16; // equal tiles
    for (let c = 64; c < TILE_COLS_MAX + 64; c += 64) {
      const nC = Math.ceil(N / c), cols = Math.ceil(N / nC / 64) * 64;
      const share = Math.ceil((nR * nC) / threads) + TAIL_TILES;
      const work = share * (Math.min(rows, M) * Math.min(cols, N) + PACK_COST * (rows + cols));
      if (work < cost) cost = work, best = [rows, cols];
    }
  }
  return best;
}

/** The next tile to claim in a {@link parallelWasmSgemm} call (one call at a time: the caller waits for it). */
const nextTile = new Int32Array(new SharedArrayBuffer(4));

/**
 * `cblas_sgemm` in the WebAssembly GEMM on every thread: C is cut into tiles ({@link gemmTiles}) that the threads
 * claim one at a time until none is left, so a thread that starts late or runs slower (another process, a GC)
 * takes fewer, and a wide product's columns of B are packed by one thread each. Operands outside shared memory are
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
  const [rows, cols] = gemmTiles(M, N, t);
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
    rows,
    cols,
  ];
  Atomics.store(nextTile, 0, 0);
  // One unit per thread: each unit is a thread claiming tiles (parts of the pool beyond t get none).
  parallelFor("gemmTiles", [shared(A), shared(B), c, nextTile], s, t, (M * N * K) / t);
  if (c !== C) C.set(c);
};

/** One-row products with fewer multiply-adds than this (M·N) stay on the calling thread in {@link parallelWasmSgemv}. */
const WASM_GEMV_SPLIT_MIN = 1 << 16;

/**
 * `cblas_sgemv` in the WebAssembly GEMM on every thread: y = A·x (A's rows contiguous, as the weights of x·Wᵀ are)
 * is cut into ranges of A's rows shared out between the helpers, each streaming its own part of A. Transposed
 * products and rows too long for the module go to {@link wasmSgemv} on the calling thread.
 */
export const parallelWasmSgemv: Sgemv = (o, tr, M, N, alpha, A, lda, X, incX, beta, Y, incY) => {
  const t = setWasmGemmThreads();
  if (
    t <= 1 || tr !== 111 || incX !== 1 || incY !== 1 || M * N < WASM_GEMV_SPLIT_MIN || !gemvFits(N)
  ) return wasmSgemv(o, tr, M, N, alpha, A, lda, X, incX, beta, Y, incY);
  const y = shared(Y);
  parallelFor("gemvRows", [shared(A), shared(X), y], [M, N, alpha, lda, beta], M, N);
  if (y !== Y) Y.set(y);
};

/** What a causal mask leaves of a head's product (`HeadsMatMul`'s `causal`): where the rest is zero or unread. */
export const CAUSAL = {
  /** The whole product. */
  none: 0,
  /** Only C's lower triangle is read (scores Q·Kᵀ, their gradient dctx·Vᵀ): column j ≤ row i. */
  lowerC: 1,
  /** op(A) is lower-triangular (weights·V, ds·K): row i sums over k ≤ i. */
  lowerA: 2,
  /** op(A) is upper-triangular, a lower one transposed (dsᵀ·Q, wᵀ·dctx): row i sums over k ≥ i. */
  upperA: 3,
} as const;

/** Rows per part of a causal product: 64 cuts a 256-square's work to 5/8 in four calls. */
const CAUSAL_ROWS = 64;

/** Where one part of a head's product starts in A, B and C (elements), and its M × N × K. */
type PartFn = (offA: number, offB: number, offC: number, m: number, n: number, k: number) => void;

/**
 * Calls `f` for each part of the products of items [lo, hi) (s: `sgemmHeads`'s) that the causal kind needs, by
 * blocks of {@link CAUSAL_ROWS} rows of C: rows [r0, r1), columns [0, c1) and depth [k0, k1) of item i = (b, h).
 * The terms left out are products with exact zeros (or outputs nobody reads), and each part sums its k in the same
 * order as the whole product, from the first non-zero term.
 */
function eachHeadPart(s: number[], lo: number, hi: number, f: PartFn): void {
  const [H, tA, tB, M, N, K] = s, [sAb, sAh, lda, sBb, sBh, ldb, sCb, sCh, ldc] = s.slice(7, 16);
  const kind = s[16] ?? CAUSAL.none, rows = kind === CAUSAL.none ? M : CAUSAL_ROWS;
  for (let i = lo; i < hi; i++) {
    const b = Math.floor(i / H), h = i - b * H;
    const oA = b * sAb + h * sAh, oB = b * sBb + h * sBh, oC = b * sCb + h * sCh;
    for (let r0 = 0; r0 < M; r0 += rows) {
      const r1 = Math.min(M, r0 + rows);
      const [c1, k0, k1] = kind === CAUSAL.lowerC
        ? [Math.min(N, r1), 0, K]
        : kind === CAUSAL.lowerA
        ? [N, 0, Math.min(K, r1)]
        : kind === CAUSAL.upperA
        ? [N, r0, K]
        : [N, 0, K];
      const pA = tA === 111 ? r0 * lda + k0 : k0 * lda + r0, pB = tB === 111 ? k0 * ldb : k0;
      f(oA + pA, oB + pB, oC + r0 * ldc, r1 - r0, c1, k1 - k0);
    }
  }
}

/** The kernels of the matrix products, by name (see {@link registerKernels}). */
const GEMM_KERNELS: Record<string, RangeKernel> = {
  /**
   * [A, B, C]: C_i = op(A_i)·op(B_i) + beta·C_i for items i = (b, h) of a batch of (items / H)·H, where X_i starts
   * at b·sXb + h·sXh with leading dimension ldX: strided views, e.g. one attention head's (T, D) columns of a
   * (B·T, C) activation, or (H = 1) the blocks of a contiguous batch, items.
   * s: [H, transA, transB, M, N, K, beta, sAb, sAh, lda, sBb, sBh, ldb, sCb, sCh, ldc, causal?] (trans as CBLAS
   * codes; causal as {@link eachHeadPart} takes it, 0 or absent for the whole product).
   */
  sgemmHeads: ([A, B, C], s, lo, hi) => {
    const f = helperSgemm(), a = A as Float32Array, b = B as Float32Array, c = C as Float32Array;
    const [tA, tB, lda, ldb, beta, ldc] = [s[1], s[2], s[9], s[12], s[6], s[15]];
    eachHeadPart(s, lo, hi, (oA, oB, oC, m, n, k) => {
      f(
        101,
        tA,
        tB,
        m,
        n,
        k,
        1,
        a.subarray(oA),
        lda,
        b.subarray(oB),
        ldb,
        beta,
        c.subarray(oC),
        ldc,
      );
    });
  },

  /** {@link GEMM_KERNELS.sgemmHeads} on bf16 operands (word views over their bits) in oneDNN, fp32 C. */
  sgemmHeadsBf16: ([A, B, C], s, lo, hi) => {
    const f = helperGemmBf16(), a = bf16Of(A), b = bf16Of(B), c = C as Float32Array;
    const [tA, tB, lda, ldb, beta, ldc] = [s[1], s[2], s[9], s[12], s[6], s[15]];
    eachHeadPart(s, lo, hi, (oA, oB, oC, m, n, k) => {
      f(tA, tB, m, n, k, 1, a.subarray(oA), lda, b.subarray(oB), ldb, beta, c.subarray(oC), ldc);
    });
  },

  /**
   * [A, B, C, next]: tiles of C = alpha·op(A)·op(B) + beta·C in the WebAssembly GEMM, `rows` × `cols` each (row
   * by row of tiles), claimed from the counter `next` until none is left, by each part that got a unit.
   * s: [transA, transB, M, N, K, alpha, lda, ldb, beta, ldc, rows, cols] (trans as 0/1).
   */
  gemmTiles: (
    [A, B, C, next],
    [tA, tB, M, N, K, alpha, lda, ldb, beta, ldc, rows, cols],
    lo,
    hi,
  ) => {
    if (hi <= lo) return;
    const f = (a: unknown) => a as Float32Array;
    const g = { transA: tA === 1, transB: tB === 1, M, N, K, alpha, lda, ldb, beta, ldc };
    const args = { ...g, A: f(A), B: f(B), C: f(C) };
    const perRow = Math.ceil(N / cols), tiles = Math.ceil(M / rows) * perRow;
    const claim = () => Atomics.add(next as Int32Array, 0, 1);
    for (let i = claim(); i < tiles; i = claim()) {
      const r = Math.floor(i / perRow) * rows, c = (i % perRow) * cols;
      gemmBlock(args, r, Math.min(M, r + rows), c, Math.min(N, c + cols));
    }
  },

  /** [B, x, y]: rows lo…hi of y = alpha·B·x + beta·y, B's rows K long. s: [N, K, alpha, ldb, beta] (N: B's rows). */
  gemvRows: ([B, x, y], [N, K, alpha, ldb, beta], lo, hi) => {
    const f = (a: unknown) => a as Float32Array;
    gemvBlock({ N, K, alpha, B: f(B), ldb, x: f(x), beta, y: f(y) }, lo, hi);
  },
};

registerKernels(GEMM_KERNELS);
