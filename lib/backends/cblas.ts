/**
 * The CBLAS single-precision matrix product's signature, shared by the native library opened through FFI
 * (blas_lib.ts, and helper threads in gemm_split.ts) and the WebAssembly GEMM that stands in for it (gemm.ts).
 */

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
