/**
 * The CBLAS single-precision matrix product's and matrix-vector product's signatures, shared by the native library opened through FFI
 * (libraries.ts, and helper threads in split_products.ts) and the WebAssembly GEMM that stands in for it (wasm_gemm.ts).
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

/** `cblas_sgemv` for Deno.dlopen: order, trans, M, N, alpha, A, lda, X, incX, beta, Y, incY. */
export const SGEMV_SYMBOLS = {
  cblas_sgemv: {
    parameters: [
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

/** cblas_sgemv: Y = alpha·op(A)·X + beta·Y, A (M, N) with leading dimension lda; trans as CBLAS codes. */
export type Sgemv = (
  order: number,
  trans: number,
  M: number,
  N: number,
  alpha: number,
  A: Float32Array,
  lda: number,
  X: Float32Array,
  incX: number,
  beta: number,
  Y: Float32Array,
  incY: number,
) => void;
