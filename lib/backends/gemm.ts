/**
 * The portable matrix product: a single-precision GEMM in WebAssembly SIMD (simd/gemm.c), for machines where no
 * native BLAS loads. Each thread (the main one, each helper Worker) instantiates its own module, whose memory holds
 * only bounded scratch (≈ 3 MB): blocks of the operands are copied in, packed, multiplied into a slab of C and
 * copied back, so tensors of any size stay in JS memory.
 *
 * The relaxed-SIMD build (one FMA per multiply-add) is used where the runtime validates it, else the SIMD128
 * build; `GPT_GEMM_SIMD=plain` forces the latter. Results do not depend on how C is split between threads.
 */
import { GEMM_PLAIN_BASE64, GEMM_RELAXED_BASE64, SOURCE_SHA256 } from "./gemm_wasm.ts";
import type { Sgemm } from "./cblas.ts";

/** SHA-256 of the gemm.c the generated module was built from (tests compare it with the source). */
export const GEMM_BUILT_FROM = SOURCE_SHA256;

interface Exports {
  layout(i: number): number;
  pack_a(ta: number, mc: number, kc: number, alpha: number): void;
  pack_b(tb: number, kc: number, nc: number): void;
  macro(mc: number, nc: number, kc: number, row0: number, ldc: number): void;
  scale_slab(n: number, beta: number): void;
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
