/**
 * oneDNN's matmul primitive for the bf16-mixed products of 16 rows or more. Its BLAS-like `dnnl_gemm_bf16bf16f32`
 * (dnnl.ts) runs AMX kernels too, but the primitive's (`brg:avx512_core_amx_bf16`) are faster on the training step's
 * shapes: measured on the Intel Xeon kind, 2 threads, the b2 step's bf16 `BatchMatMul`s took 440–469 ms a step
 * against 531–595 ms. For fewer rows (sampling) the BLAS-like call is faster and keeps them: the output head's one-row product
 * takes 2.2 ms there against 4.1 ms.
 *
 * Attention's heads, a batch of small strided products, go to one batched primitive each: the 24 heads of a b2
 * step's product took 0.3–0.5 ms there, against 0.8–1.5 ms as 24 BLAS-like calls on one thread.
 *
 * A primitive is made per layout, `beta` and thread count (oneDNN's OpenMP kernels plan for the thread count they
 * were made with), kept in a small cache that frees the least recently used. It splits a product's depth between
 * the threads for some shapes, so its bits depend on the thread count; they are the same run to run
 * (tests/bf16_test.ts). `beta` = 1 (a bias already in C) is oneDNN's sum post-op.
 */
import type { GemmBf16, HeadsBf16, HeadsShape } from "./libraries.ts";
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

/** Products with fewer rows stay on the BLAS-like call (and heads on our threads). */
export const MATMUL_MIN_ROWS = 16;
/** Primitives kept; a training run uses about 30 layouts, sampling without the KV cache more per prompt length. */
export const MATMUL_CACHED = 64;
/** Bytes for one dnnl_matmul_desc_t (four memory descriptors and two ints: 2,792 in 2.6), with room to spare. */
const OP_BYTES = 8192;
const TRANS = 112;

/** One operand's dimensions and strides in elements: batch dimensions first, then its rows and columns. */
interface Layout {
  dims: number[];
  strides: number[];
}

/** op(X)'s (rows, cols) of a row-major X with leading dimension ld, transposed by its strides. */
const matrix = (rows: number, cols: number, ld: number, trans: boolean): Layout => ({
  dims: [rows, cols],
  strides: trans ? [1, ld] : [ld, 1],
});

/** `m` under batch dimensions `dims` with `strides`. */
const batched = (dims: number[], strides: number[], m: Layout): Layout => ({
  dims: [...dims, ...m.dims],
  strides: [...strides, ...m.strides],
});

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

/** The matmul primitive C = A·B (+ C where beta is 1): A and B in bf16, C in fp32. */
function makeMatmul(s: DnnlSession, [a, b, c]: Layout[], beta: number): Primitive {
  const { lib } = s;
  const [am, bm] = [a, b].map((x) => memoryDesc(lib, BF16, x.dims, x.strides));
  const cm = memoryDesc(lib, F32, c.dims, c.strides);
  const op = new Uint8Array(OP_BYTES), out = new BigUint64Array(1);
  check(lib.dnnl_matmul_desc_init(op, am, bm, null, cm), "matmul_desc_init");
  const attr = beta ? sumAttr(s) : null;
  try {
    const pd = created(
      lib.dnnl_primitive_desc_create(out, op, attr, s.engine, null),
      out,
      "matmul",
    );
    return primitive(s, pd, [[ARG_SRC, am], [ARG_WEIGHTS, bm], [ARG_DST, cm]]);
  } finally {
    if (attr) lib.dnnl_primitive_attr_destroy(attr);
  }
}

/** {@link makeMatmul}'s primitive, or null where oneDNN makes none for these layouts. */
function madeOrNull(s: DnnlSession, layouts: Layout[], beta: number): Primitive | null {
  try {
    return makeMatmul(s, layouts, beta);
  } catch {
    return null;
  }
}

/** oneDNN's matmul primitives by layout, the least recently used freed past {@link MATMUL_CACHED}. */
function primitiveCache(s: DnnlSession, threads: () => number) {
  // In order of use, the least recent first; null where oneDNN has no primitive for the layout (the caller runs it).
  const cache = new Map<string, Primitive | null>();
  return (layouts: Layout[], beta: number): Primitive | null => {
    const key = `${layouts.map((l) => `${l.dims}/${l.strides}`).join(";")};${beta};${threads()}`;
    let p = cache.get(key);
    if (p !== undefined) cache.delete(key);
    else p = madeOrNull(s, layouts, beta);
    cache.set(key, p);
    if (cache.size > MATMUL_CACHED) {
      const [oldest, q] = cache.entries().next().value!;
      cache.delete(oldest);
      if (q) destroy(s, q);
    }
    return p;
  };
}

/** oneDNN's bf16 products by matmul primitive: `gemm`'s and the heads' (see the module's comment). */
export interface DnnlMatmul {
  gemmBf16: GemmBf16;
  headsBf16: HeadsBf16;
}

/**
 * `gemm` (the library's BLAS-like bf16 product) with products of {@link MATMUL_MIN_ROWS} rows or more, alpha 1
 * and beta 0 or 1 run by matmul primitives instead, and attention's heads by one batched primitive each, on this
 * thread's `threads()` OpenMP threads; null where the library at `path` is not oneDNN 2.x or does not set up.
 */
export function openDnnlMatmul(
  path: string,
  version: string,
  gemm: GemmBf16,
  threads: () => number,
): DnnlMatmul | null {
  if (!version.startsWith("oneDNN 2.")) return null;
  let s: DnnlSession;
  try {
    s = openSession(path);
  } catch {
    return null;
  }
  const matmul = primitiveCache(s, threads);
  const gemmBf16: GemmBf16 = (tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) => {
    const p = M >= MATMUL_MIN_ROWS && alpha === 1 && (beta === 0 || beta === 1) &&
      matmul([
        matrix(M, K, lda, tA === TRANS),
        matrix(K, N, ldb, tB === TRANS),
        matrix(M, N, ldc, false),
      ], beta);
    if (p) execute(s, p, [A, B, C], "matmul");
    else gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  };
  const headsBf16: HeadsBf16 = (h, A, B, C) => {
    const p = h.M >= MATMUL_MIN_ROWS && matmul(headLayouts(h), 0);
    if (!p) return false;
    execute(s, p, [A, B, C], "batched matmul");
    return true;
  };
  return { gemmBf16: withoutSignals(gemmBf16), headsBf16: withoutSignals(headsBf16) };
}

/** A, B and C of every (batch item, head) as one batched product's layouts. */
function headLayouts(h: HeadsShape): Layout[] {
  const bh = [h.batch, h.heads];
  return [
    batched(bh, h.sa.slice(0, 2), matrix(h.M, h.K, h.sa[2], h.transA)),
    batched(bh, h.sb.slice(0, 2), matrix(h.K, h.N, h.sb[2], h.transB)),
    batched(bh, h.sc.slice(0, 2), matrix(h.M, h.N, h.sc[2], false)),
  ];
}
