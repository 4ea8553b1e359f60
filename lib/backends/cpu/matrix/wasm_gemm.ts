/**
 * The portable matrix product: a single-precision GEMM in WebAssembly SIMD (../wasm_src/gemm.c), for machines where no
 * native BLAS loads. Each thread (the main one, each helper Worker) instantiates its own module, whose memory holds
 * only bounded scratch (≈ 3 MB): blocks of the operands are copied in, packed, multiplied into a slab of C and
 * copied back, so tensors of any size stay in JS memory.
 *
 * The relaxed-SIMD build (one FMA per multiply-add) is used where the runtime validates it, else the SIMD128
 * build; `GPT_GEMM_SIMD=plain` forces the latter. Results do not depend on how C is split between threads.
 */
import { GEMM_PLAIN_BASE64, GEMM_RELAXED_BASE64, SOURCE_SHA256 } from "./wasm_gemm_binary.ts";
import type { Sgemm, Sgemv } from "./cblas.ts";

/** SHA-256 of the gemm.c the generated module was built from (tests compare it with the source). */
export const GEMM_BUILT_FROM = SOURCE_SHA256;

interface Exports {
  layout(i: number): number;
  pack_a(ta: number, mc: number, kc: number, alpha: number): void;
  pack_b(tb: number, kc: number, nc: number): void;
  macro(mc: number, nc: number, kc: number, row0: number, ldc: number): void;
  scale_slab(n: number, beta: number): void;
  gemv_rows(n: number, k: number, row0: number): void;
}

/** One thread's module: its exports, its memory as floats, and the block sizes gemm.c was built with. */
interface Module {
  x: Exports;
  mem: Float32Array;
  /** Float offsets of the A and B staging arrays and of the slab. */
  stageA: number;
  stageB: number;
  slab: number;
  MR: number;
  NR: number;
  KC: number;
  NC: number;
  MC: number;
  SLAB_ROWS: number;
  relaxed: boolean;
}

/** Which build is in use on this thread: "relaxed" (FMA), "plain" (SIMD128), or null (no WebAssembly SIMD). */
export type GemmBuild = "relaxed" | "plain";

let mod: Module | null | undefined;

function bytesOf(b64: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

let forced: GemmBuild | null = null;

/**
 * Re-instantiates this thread's module as `build` ("auto": relaxed where it validates, else plain), for tests
 * that check both builds; returns the build now in use, or null where that one is not available.
 */
export function useGemmBuild(build: GemmBuild | "auto"): GemmBuild | null {
  forced = build === "auto" ? null : build;
  mod = instantiate();
  const now = gemmBuild();
  return build === "auto" || now === build ? now : null;
}

function wanted(): GemmBuild[] {
  if (forced) return [forced];
  try {
    if (Deno.env.get("GPT_GEMM_SIMD") === "plain") return ["plain"];
  } catch {
    // no --allow-env: both
  }
  return ["relaxed", "plain"];
}

function instantiate(): Module | null {
  for (const build of wanted()) {
    const bytes = bytesOf(build === "relaxed" ? GEMM_RELAXED_BASE64 : GEMM_PLAIN_BASE64);
    if (!WebAssembly.validate(bytes)) continue;
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
    const x = inst.exports as unknown as Exports;
    const mem = new Float32Array((inst.exports.memory as WebAssembly.Memory).buffer);
    const L = (i: number) => x.layout(i);
    return {
      x,
      mem,
      stageA: L(0) / 4,
      stageB: L(1) / 4,
      slab: L(2) / 4,
      MR: L(3),
      NR: L(4),
      KC: L(5),
      NC: L(6),
      MC: L(7),
      SLAB_ROWS: L(8),
      relaxed: L(9) === 1,
    };
  }
  return null;
}

function gemmModule(): Module | null {
  return mod === undefined ? (mod = instantiate()) : mod;
}

/** The build this thread uses, or null where the runtime has no WebAssembly SIMD. */
export function gemmBuild(): GemmBuild | null {
  const m = gemmModule();
  return m ? (m.relaxed ? "relaxed" : "plain") : null;
}

/** A product's operands, row-major (CBLAS's names); `C` holds beta·C on entry where beta ≠ 0. */
export interface GemmArgs {
  transA: boolean;
  transB: boolean;
  M: number;
  N: number;
  K: number;
  alpha: number;
  A: Float32Array;
  lda: number;
  B: Float32Array;
  ldb: number;
  beta: number;
  C: Float32Array;
  ldc: number;
}

/**
 * C[r0:r1, c0:c1] = alpha·op(A)·op(B) + beta·C over that block of C only (all of it by default), on this thread.
 * Throws where the runtime has no WebAssembly SIMD.
 */
export function gemmBlock(g: GemmArgs, r0 = 0, r1 = g.M, c0 = 0, c1 = g.N): void {
  const m = gemmModule();
  if (!m) throw new Error("the WebAssembly GEMM needs WebAssembly SIMD, which this runtime lacks");
  for (let rc = r0; rc < r1; rc += m.SLAB_ROWS) {
    const rows = Math.min(m.SLAB_ROWS, r1 - rc);
    for (let jc = c0; jc < c1; jc += m.NC) {
      const nc = Math.min(m.NC, c1 - jc), ldS = Math.ceil(nc / m.NR) * m.NR;
      loadSlab(m, g, rc, rows, jc, nc, ldS);
      for (let pc = 0; pc < g.K; pc += m.KC) {
        const kc = Math.min(m.KC, g.K - pc);
        stageB(m, g, pc, kc, jc, nc);
        m.x.pack_b(g.transB ? 1 : 0, kc, nc);
        for (let ic = 0; ic < rows; ic += m.MC) {
          const mc = Math.min(m.MC, rows - ic);
          stageA(m, g, rc + ic, mc, pc, kc);
          m.x.pack_a(g.transA ? 1 : 0, mc, kc, g.alpha);
          m.x.macro(mc, nc, kc, ic, ldS);
        }
      }
      const { mem, slab } = m;
      for (let i = 0; i < rows; i++) {
        g.C.set(mem.subarray(slab + i * ldS, slab + i * ldS + nc), (rc + i) * g.ldc + jc);
      }
    }
  }
}

/** The slab (rows × nc of C from (r, c), row stride ldS) = beta·C, zeros where beta is 0. */
function loadSlab(
  m: Module,
  g: GemmArgs,
  r: number,
  rows: number,
  c: number,
  nc: number,
  ldS: number,
) {
  const padded = Math.ceil(rows / m.MR) * m.MR * ldS;
  if (g.beta === 0) return m.x.scale_slab(padded, 0);
  for (let i = 0; i < rows; i++) {
    const o = (r + i) * g.ldc + c;
    m.mem.set(g.C.subarray(o, o + nc), m.slab + i * ldS);
  }
  if (g.beta !== 1) m.x.scale_slab(padded, g.beta);
}

/** Copies op(B)[p:p+kc, c:c+nc] to the B staging array: as rows of op(B), or (transB) as its columns. */
function stageB(m: Module, g: GemmArgs, p: number, kc: number, c: number, nc: number): void {
  const { B, ldb } = g, dst = m.stageB;
  if (!g.transB) {
    for (let k = 0; k < kc; k++) {
      m.mem.set(B.subarray((p + k) * ldb + c, (p + k) * ldb + c + nc), dst + k * nc);
    }
  } else {
    for (let j = 0; j < nc; j++) {
      m.mem.set(B.subarray((c + j) * ldb + p, (c + j) * ldb + p + kc), dst + j * kc);
    }
  }
}

/** Copies op(A)[r:r+mc, p:p+kc] to the A staging array: as rows of op(A), or (transA) as its columns. */
function stageA(m: Module, g: GemmArgs, r: number, mc: number, p: number, kc: number): void {
  const { A, lda } = g, dst = m.stageA;
  if (!g.transA) {
    for (let i = 0; i < mc; i++) {
      m.mem.set(A.subarray((r + i) * lda + p, (r + i) * lda + p + kc), dst + i * kc);
    }
  } else {
    for (let k = 0; k < kc; k++) {
      m.mem.set(A.subarray((p + k) * lda + r, (p + k) * lda + r + mc), dst + k * mc);
    }
  }
}

const TRANS = 112;

/**
 * `cblas_sgemm` (row-major only; `order` is ignored) on this thread: the same signature as the native one, so
 * callers of a BLAS take either.
 */
export const wasmSgemm: Sgemm = (_o, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) => {
  if (M === 0 || N === 0) return;
  const transA = tA === TRANS, transB = tB === TRANS;
  gemmBlock({ transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc });
};

/** A one-row product y = alpha·x·Bᵀ + beta·y: B has N rows of K (row stride ldb), x has K values, y has N. */
export interface GemvArgs {
  N: number;
  K: number;
  alpha: number;
  B: Float32Array;
  ldb: number;
  x: Float32Array;
  beta: number;
  y: Float32Array;
}

/** Rows `gemv_rows` takes at once: a call's row count is a multiple of it, except in the last call. */
const GEMV_ROWS = 16;

/** Rows of B staged per `gemv_rows` call, or 0 where x or {@link GEMV_ROWS} rows do not fit the staging arrays. */
function gemvBlockRows(m: Module, K: number): number {
  if (K > m.MC * m.KC) return 0;
  return Math.floor((m.KC * m.NC) / K / GEMV_ROWS) * GEMV_ROWS;
}

/** True where {@link gemvBlock} takes rows of length K (else the product goes through {@link gemmBlock}). */
export function gemvFits(K: number): boolean {
  const m = gemmModule();
  return m !== null && gemvBlockRows(m, K) > 0;
}

/**
 * y[r0:r1] = alpha·B[r0:r1]·x + beta·y[r0:r1] on this thread: rows of B are copied in whole (no packing) and each
 * y[j] sums its K products in order with one multiply-add each, so the bits are those {@link gemmBlock} gives for
 * the product x·Bᵀ of one row, whatever the split. Needs {@link gemvFits}(K).
 */
export function gemvBlock(v: GemvArgs, r0 = 0, r1 = v.N): void {
  const m = gemmModule();
  const block = m ? gemvBlockRows(m, v.K) : 0;
  if (!m || block === 0) throw new Error(`gemvBlock: rows of ${v.K} do not fit the module`);
  const { K, B, ldb, y } = v, x = m.mem.subarray(m.stageA, m.stageA + K);
  x.set(v.x.subarray(0, K));
  if (v.alpha !== 1) { for (let p = 0; p < K; p++) x[p] *= v.alpha; // as pack_a scales A
   }
  const cap = m.SLAB_ROWS * m.NC - GEMV_ROWS;
  for (let s0 = r0; s0 < r1; s0 += cap) {
    const s1 = Math.min(r1, s0 + cap), padded = Math.ceil((s1 - s0) / GEMV_ROWS) * GEMV_ROWS;
    if (v.beta === 0) m.x.scale_slab(padded, 0);
    else {
      m.mem.set(y.subarray(s0, s1), m.slab);
      if (v.beta !== 1) m.x.scale_slab(padded, v.beta);
    }
    for (let j = s0; j < s1; j += block) {
      const rows = Math.min(block, s1 - j);
      if (ldb === K) m.mem.set(B.subarray(j * K, (j + rows) * K), m.stageB);
      else {
        for (let i = 0; i < rows; i++) {
          m.mem.set(B.subarray((j + i) * ldb, (j + i) * ldb + K), m.stageB + i * K);
        }
      }
      m.x.gemv_rows(rows, K, j - s0);
    }
    y.set(m.mem.subarray(m.slab, m.slab + s1 - s0), s0);
  }
}

/**
 * `cblas_sgemv` (row-major, unit strides) on this thread. Without transposition (y = A·x, A's rows contiguous)
 * through {@link gemvBlock}; transposed, or rows too long for it, as the one-row product of {@link wasmSgemm}.
 */
export const wasmSgemv: Sgemv = (_o, trans, M, N, alpha, A, lda, X, incX, beta, Y, incY) => {
  if (incX !== 1 || incY !== 1) throw new Error("wasmSgemv: only unit strides");
  if (trans === TRANS) return wasmSgemm(101, 111, 111, 1, N, M, alpha, X, M, A, lda, beta, Y, N);
  if (!gemvFits(N)) return wasmSgemm(101, 111, TRANS, 1, M, N, alpha, X, N, A, lda, beta, Y, M);
  gemvBlock({ N: M, K: N, alpha, B: A, ldb: lda, x: X, beta, y: Y });
};
