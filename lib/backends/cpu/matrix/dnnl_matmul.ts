/**
 * oneDNN's matmul primitive for the bf16-mixed products of 16 rows or more. Its BLAS-like `dnnl_gemm_bf16bf16f32`
 * (dnnl.ts) runs AMX kernels too, but the primitive's (`brg:avx512_core_amx_bf16`) are faster on the training step's
 * shapes: measured on the Intel Xeon kind, 2 threads, the b2 step's bf16 `BatchMatMul`s took 447 ms a step against
 * 565 ms. For fewer rows (sampling) the BLAS-like call is faster and keeps them: the output head's one-row product
 * takes 2.2 ms there against 4.1 ms.
 *
 * A primitive is made per shape, layout, `beta` and thread count (oneDNN's OpenMP kernels plan for the thread
 * count they were made with), kept in a small cache that frees the least recently used. Its results do not depend
 * on the thread count (tests/bf16_test.ts). `beta` = 1 (a bias already in C) is oneDNN's sum post-op.
 */
import type { GemmBf16 } from "./libraries.ts";
import { withoutSignals } from "./signal_mask.ts";
import {
  ARG_DST,
  ARG_SRC,
  ARG_WEIGHTS,
  BF16,
  check,
  created,
  destroy,
  type DnnlSession,
  execute,
  F32,
  memoryDesc,
  openSession,
  type Primitive,
  primitive,
} from "./dnnl_primitives.ts";

/** Products with fewer rows stay on the BLAS-like call. */
export const MATMUL_MIN_ROWS = 16;
/** Primitives kept; a training run uses about 20 shapes, sampling without the KV cache one per prompt length. */
export const MATMUL_CACHED = 64;
/** Bytes for one dnnl_matmul_desc_t (four memory descriptors and two ints: 2,792 in 2.6), with room to spare. */
const OP_BYTES = 8192;
const TRANS = 112;

/** A product's layout and sizes, as the cache's key names them. */
interface Shape {
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  lda: number;
  ldb: number;
  ldc: number;
  beta: number;
}

/** The attributes for C += A·B: a sum post-op (the caller destroys them). */
function sumAttr(s: DnnlSession): Deno.PointerObject {
  const out = new BigUint64Array(1);
  const attr = created(s.lib.dnnl_primitive_attr_create(out), out, "primitive_attr_create");
  const ops = created(s.lib.dnnl_post_ops_create(out), out, "post_ops_create");
  try {
    check(s.lib.dnnl_post_ops_append_sum(ops, 1), "post_ops_append_sum");
    check(s.lib.dnnl_primitive_attr_set_post_ops(attr, ops), "primitive_attr_set_post_ops");
  } finally {
    s.lib.dnnl_post_ops_destroy(ops);
  }
  return attr;
}

/** The matmul primitive of one shape: A (M, K) and B (K, N) in bf16, transposed by their strides; C (M, N) fp32. */
function makeMatmul(s: DnnlSession, d: Shape): Primitive {
  const { lib } = s;
  const a = memoryDesc(lib, BF16, [d.M, d.K], d.tA ? [1, d.lda] : [d.lda, 1]);
  const b = memoryDesc(lib, BF16, [d.K, d.N], d.tB ? [1, d.ldb] : [d.ldb, 1]);
  const c = memoryDesc(lib, F32, [d.M, d.N], [d.ldc, 1]);
  const op = new Uint8Array(OP_BYTES), out = new BigUint64Array(1);
  check(lib.dnnl_matmul_desc_init(op, a, b, null, c), "matmul_desc_init");
  const attr = d.beta ? sumAttr(s) : null;
  try {
    const pd = created(
      lib.dnnl_primitive_desc_create(out, op, attr, s.engine, null),
      out,
      "matmul",
    );
    return primitive(s, pd, [[ARG_SRC, a], [ARG_WEIGHTS, b], [ARG_DST, c]]);
  } finally {
    if (attr) lib.dnnl_primitive_attr_destroy(attr);
  }
}

function madeOrNull(s: DnnlSession, d: Shape): Primitive | null {
  try {
    return makeMatmul(s, d);
  } catch {
    return null;
  }
}

/**
 * `gemm` (the library's BLAS-like bf16 product) with products of {@link MATMUL_MIN_ROWS} rows or more, alpha 1
 * and beta 0 or 1 run by matmul primitives instead, on this thread's `threads()` OpenMP threads; null where the
 * library at `path` is not oneDNN 2.x or its primitives do not set up.
 */
export function openDnnlMatmul(
  path: string,
  version: string,
  gemm: GemmBf16,
  threads: () => number,
): GemmBf16 | null {
  if (!version.startsWith("oneDNN 2.")) return null;
  let s: DnnlSession;
  try {
    s = openSession(path);
  } catch {
    return null;
  }
  // In order of use, the least recent first; null where oneDNN has no primitive for the shape (the call runs it).
  const cache = new Map<string, Primitive | null>();
  const matmul = (d: Shape): Primitive | null => {
    const key = `${Object.values(d).join(",")},${threads()}`;
    let p = cache.get(key);
    if (p !== undefined) cache.delete(key);
    else p = madeOrNull(s, d);
    cache.set(key, p);
    if (cache.size > MATMUL_CACHED) {
      const [oldest, q] = cache.entries().next().value!;
      cache.delete(oldest);
      if (q) destroy(s, q);
    }
    return p;
  };
  return withoutSignals((tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) => {
    if (M < MATMUL_MIN_ROWS || alpha !== 1 || (beta !== 0 && beta !== 1)) {
      return gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    const p = matmul({ tA: tA === TRANS, tB: tB === TRANS, M, N, K, lda, ldb, ldc, beta });
    if (p) execute(s, p, [A, B, C], "matmul");
    else gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  });
}
