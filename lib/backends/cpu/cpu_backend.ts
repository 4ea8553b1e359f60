/**
 * The `cpu` backend (formerly `blas`): TF.js's pure-JS cpu backend with its matrix products handed to a
 * `cblas_sgemm`: a native BLAS through Deno FFI (OpenBLAS, Accelerate) or oneDNN where one loads, else our
 * WebAssembly SIMD GEMM on every thread (matrix/libraries.ts). Every other kernel is the cpu backend's own, so
 * tensors, memory and gradients behave exactly as on TF.js's `cpu` (a config's `tfjs-cpu`); only `BatchMatMul` and `_FusedMatMul` (the forward products and every product of their gradients)
 * run at BLAS speed. Operands are the backend's Float32Arrays, passed to C without a copy. The single-pass JS
 * kernels of `fused_kernels.ts` replace the cpu backend's slow element-wise ones and add fused GELU, LayerNorm,
 * causal softmax and cross-entropy; large outputs come from a pool of recycled arrays (see {@link CpuBackend}).
 *
 * @example
 * ```ts
 * const r = registerCpuBackend();
 * if (r.ok) await tf.setBackend(CPU_BACKEND);
 * else console.warn(`cpu backend unavailable: ${r.reason}`);
 * ```
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import { alloc, registerFusedCpuKernels } from "./fused_kernels.ts";
import { isShared, parallelFor, setParallelism, sharedF32 } from "./pool.ts";
import type { Sgemm } from "./matrix/cblas.ts";
import { CAUSAL } from "./matrix/split_products.ts"; // and registers "sgemmHeads"
import {
  type BlasLib,
  forcedLibrary,
  type HeadsShape,
  LIBRARIES,
  type LibraryKind,
  type LoadBlasResult,
  loadDnnlBlas,
  loadNativeBlas,
  loadWasmBlas,
  type Precision,
  useForHeads,
} from "./matrix/libraries.ts";
import { loadBlas } from "./matrix/choice.ts";
import { Bf16Copies, type Bf16Form } from "./bf16.ts";

export {
  type BlasLib,
  loadBlas,
  type LoadBlasResult,
  loadDnnlBlas,
  loadNativeBlas,
  loadWasmBlas,
  type Precision,
};

tf.env().set("IS_NODE", false); // silences tfjs's "install tfjs-node" banner

/**
 * The name `registerCpuBackend` registers with TF.js, whose own pure-JS backend is already `cpu` (a config's
 * `tfjs-cpu`); users and run logs call this one `cpu`.
 */
export const CPU_BACKEND = "gpt-cpu";

const ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;

let active: BlasLib | null = null;

/** The matrix library the `cpu` backend's kernels call now, or null before registration. */
export function matrixLibrary(): BlasLib | null {
  return active;
}

function lib(): BlasLib {
  if (!active) throw new Error("cpu backend: no matrix library selected");
  return active;
}

/** How the active library was chosen: "auto" (measured, for a precision) or the kind a caller named. */
let chosenBy: "auto" | LibraryKind = "auto";

/**
 * Switches the `cpu` backend's matrix library: "auto" as at registration (`GPT_BLAS`'s, else the fastest
 * measured for `precision`), or "native", "dnnl", "wasm" (tests and benchmarks run several in one process).
 * Returns the library, or why it is not available (the current one is then kept).
 */
export function useMatrixLibrary(
  kind: "auto" | LibraryKind,
  precision: Precision = "fp32",
): LoadBlasResult {
  const res = kind === "auto" ? loadBlas(precision) : LIBRARIES[kind]();
  if (res.ok) {
    active = res.lib;
    chosenBy = kind;
    useForHeads(res.lib);
  }
  return res;
}

let precision: Precision = "fp32";
/** The bf16 copies of operands in bf16-mixed: the model's weights once per {@link weightsUpdated}. */
const copies = new Bf16Copies();

/**
 * Sets the precision of every later product, and which tensors are weights (converted once per update). Where the
 * library was chosen by measurement (`auto`, no `GPT_BLAS`), the fastest one for `p` is taken.
 */
export function setPrecision(p: Precision, weights: tf.Tensor[] = []): void {
  if (active && chosenBy === "auto" && !forcedLibrary() && p !== precision) {
    useMatrixLibrary("auto", p);
  }
  precision = p;
  copies.setWeights(weights.map((w) => w.dataId as object));
}

/**
 * Where the optimizer can write weight `t`'s bf16 copy while it updates it (bf16-mixed, a copy already made),
 * with its form for the `adamw` kernel (1: bits, 2: rounded fp32); null otherwise. The copy counts as made after
 * the next {@link weightsUpdated}.
 */
export function weightCopyTarget(
  t: tf.Tensor,
): { copy: Int32Array | Float32Array; form: number } | null {
  if (precision === "fp32") return null;
  const c = copies.nextWeightCopy(t.dataId, t.size);
  if (!c) return null;
  return c instanceof Uint16Array
    ? { copy: new Int32Array(c.buffer, c.byteOffset, Math.ceil(c.length / 2)), form: 1 }
    : { copy: c, form: 2 };
}

/** Says the weights changed (an optimizer step): their bf16 copies are made again on next use. */
export function weightsUpdated(): void {
  copies.weightsUpdated();
}

type Info = tf.TensorInfo;
type Backend = MathBackendCPU;

/** Products of at most this many multiply-adds (M·N·K) in a batch are shared out between threads, one each. */
const SMALL_PRODUCT = 1 << 23;

/** Arrays shorter than this are left to the allocator: the pool is for activations, where page faults cost. */
const POOL_MIN_LENGTH = 1 << 14;

/** The pool's default limit: a third of the machine's memory, at least 1 GiB and at most 8 GiB. */
export function defaultPoolLimit(): number {
  const GiB = 2 ** 30;
  try {
    return Math.min(8 * GiB, Math.max(GiB, Deno.systemMemoryInfo().total / 3));
  } catch {
    return GiB; // no --allow-sys
  }
}

/**
 * The cpu backend plus a pool of the float32 arrays its fast kernels allocate. A fresh 100 MB Float32Array costs
 * ~40 ms of page faults on first touch (measured, ~0.9 s per GPT-124M step); a training step allocates the same
 * shapes every step, so arrays freed by `disposeData` are handed out again. An array is recycled only while the
 * backend is sure nothing else holds it: never for arrays it did not allocate, nor once read out through
 * `readSync`/`read` (`dataSync()` returns the storage itself), nor when a view of it became another tensor
 * (`slice`). Pooled arrays are not zeroed: kernels that take one must write every element.
 */
export class CpuBackend extends MathBackendCPU {
  /**
   * Bytes the pool may hold; beyond that the oldest pooled arrays are dropped to the garbage collector. Default
   * {@link defaultPoolLimit}. A training step frees and asks for the same arrays every step, so in steady state the
   * pool holds what the next step will take and adds little to peak RSS (GPT-124M, measured: batch 2 4.84 GB with
   * 1 GiB, 4.75 GB with 3 GiB; batch 8 9.67 GB with 1 GiB, 9.64 GB with 8 GiB), while a pool smaller than a
   * step's activations sends the rest back to the OS to be page-faulted in again: batch 8 took 14.7–18.9 s per
   * step with 1 GiB and 13.0–13.9 s with 8 GiB.
   */
  poolLimitBytes: number;
  private pool = new Map<number, Float32Array[]>();
  private pooledBytes = 0;
  /** "fresh": handed out, not yet a tensor; "live": the storage of exactly one tensor; "escaped": never reuse. */
  private owned = new WeakMap<ArrayBufferLike, "fresh" | "live" | "escaped">();

  constructor(poolLimitBytes = defaultPoolLimit()) {
    super();
    this.poolLimitBytes = poolLimitBytes;
  }

  /** A Float32Array of length `n` with arbitrary contents, from the pool when one of that length is free. */
  allocF32(n: number): Float32Array {
    if (n < POOL_MIN_LENGTH) return sharedF32(n);
    const list = this.pool.get(n);
    let a = list?.pop();
    if (list) {
      this.pooledBytes -= a!.byteLength;
      if (list.length === 0) this.pool.delete(n);
    }
    // One pooled while a single thread ran is plain memory, which helpers cannot write: a split kernel would then
    // run on the calling thread alone (after a benchmark's 1-thread pass, the attention products did).
    if (!a || (!isShared(a) && setParallelism() > 1)) a = sharedF32(n);
    this.owned.set(a.buffer, "fresh");
    return a;
  }

  /** Pooled arrays and bytes, for benchmarks. */
  poolStats(): { arrays: number; bytes: number } {
    let arrays = 0;
    for (const l of this.pool.values()) arrays += l.length;
    return { arrays, bytes: this.pooledBytes };
  }

  /** Drops every pooled array. */
  releasePool(): void {
    this.pool.clear();
    this.pooledBytes = 0;
  }

  override write(
    values: tf.backend_util.BackendValues,
    shape: number[],
    dtype: tf.DataType,
  ): tf.DataId {
    const buf = (values as Float32Array).buffer;
    const state = buf ? this.owned.get(buf) : undefined;
    if (state !== undefined) {
      const whole = values instanceof Float32Array && values.byteOffset === 0 &&
        values.byteLength === buf.byteLength;
      this.owned.set(buf, state === "fresh" && whole ? "live" : "escaped");
    }
    return super.write(values, shape, dtype);
  }

  override readSync(dataId: tf.DataId): tf.backend_util.BackendValues {
    const values = super.readSync(dataId);
    const buf = (values as Float32Array).buffer;
    if (buf && this.owned.has(buf)) this.owned.set(buf, "escaped");
    return values;
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    const values = this.data.has(dataId) ? this.data.get(dataId).values : undefined;
    const deleted = super.disposeData(dataId, force);
    if (deleted && values instanceof Float32Array && this.owned.get(values.buffer) === "live") {
      this.owned.delete(values.buffer);
      this.recycle(values);
    }
    return deleted;
  }

  private recycle(a: Float32Array): void {
    if (a.byteLength > this.poolLimitBytes) return;
    while (this.pooledBytes + a.byteLength > this.poolLimitBytes) {
      const [n, list] = this.pool.entries().next().value!; // oldest length first
      this.pooledBytes -= list.pop()!.byteLength;
      if (list.length === 0) this.pool.delete(n);
    }
    const list = this.pool.get(a.length);
    if (list) list.push(a);
    else this.pool.set(a.length, [a]);
    this.pooledBytes += a.byteLength;
  }
}

/**
 * The storage of float32 tensor `t` as a Float32Array in shared memory, so that helper Workers can update it in
 * place (see pool.ts): on a {@link CpuBackend} the storage moves there once (one copy; the tensor keeps its
 * values), elsewhere (other backends, other dtypes) null.
 */
export function sharedHostView(t: tf.Tensor): Float32Array | null {
  const backend = tf.backend();
  if (!(backend instanceof CpuBackend) || t.dtype !== "float32" || t.isDisposed) return null;
  const entry = backend.data.get(t.dataId);
  const v = entry?.values;
  if (!(v instanceof Float32Array)) return null;
  if (setParallelism() <= 1 && !isShared(v)) return null; // one thread: plain memory (callers use hostView)
  return moveToShared(entry);
}

/** The entry's Float32Array values, moved (once, in place) to shared memory when more than one thread is in use. */
function moveToShared(entry: { values?: unknown }): Float32Array {
  const v = entry.values as Float32Array;
  if (isShared(v) || setParallelism() <= 1) return v;
  const copy = sharedF32(v.length);
  copy.set(v);
  entry.values = copy;
  return copy;
}

function f32(backend: Backend, t: Info): Float32Array {
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array ? v : Float32Array.from(v as ArrayLike<number>);
}

/**
 * A product's operand: float32 storage moves to shared memory in place (once per tensor), so that a product split
 * between threads (which needs its operands there) does not copy them on every call: the WebAssembly GEMM on two
 * threads copied the 154 MB output-head weight into a fresh SharedArrayBuffer per product of a model whose weights
 * were loaded or created outside the pool.
 */
function operand(backend: Backend, t: Info): Float32Array {
  const entry = backend.data.get(t.dataId);
  return entry.values instanceof Float32Array ? moveToShared(entry) : f32(backend, t);
}

/** Strides of a shape in elements, the last axis contiguous. */
function stridesOf(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  for (let i = shape.length - 1, acc = 1; i >= 0; acc *= shape[i], i--) s[i] = acc;
  return s;
}

/**
 * C (batch…, M, N) = op(A) · op(B) for float32 operands of any rank ≥ 2, with NumPy broadcasting of the batch
 * dims (the cpu backend wraps indices modulo the batch size instead, which agrees whenever one side's batch is
 * 1 or both are equal). When `c` is given it holds `beta`·C's initial value (a broadcast bias) on entry.
 */
function gemm(
  blas: BlasLib,
  backend: Backend,
  a: Info,
  b: Info,
  transA: boolean,
  transB: boolean,
  c?: Float32Array,
): { shape: number[]; values: Float32Array } {
  const ra = a.shape.length, rb = b.shape.length;
  const M = transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const K = transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kB = transB ? b.shape[rb - 1] : b.shape[rb - 2];
  const N = transB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (K !== kB) {
    throw new Error(
      `matMul: inner shapes ${K} and ${kB} of [${a.shape}] and [${b.shape}] ` +
        `(transposeA=${transA}, transposeB=${transB}) must match`,
    );
  }
  const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
  const outer = tf.backend_util.assertAndGetBroadcastShape(outerA, outerB);
  const batch = tf.util.sizeFromShape(outer);
  const shape = [...outer, M, N];
  const beta = c ? 1 : 0;
  c ??= alloc(backend, batch * M * N); // sgemm with beta = 0 overwrites every element
  if (batch === 0 || M === 0 || N === 0) return { shape, values: c };
  const d: Dims = { M, N, K, transA, transB, batch, outer, outerA, outerB, beta };
  const A = operand(backend, a), B = operand(backend, b);
  if (precision === "fp32") products(blas, A, B, c, d);
  else {
    // bf16-mixed: oneDNN multiplies bf16 bits; every other library multiplies the rounded values in fp32.
    const bits = operandForm(blas);
    const A16 = copies.of(a.dataId, A, bits), B16 = copies.of(b.dataId, B, bits);
    products(bits ? bitsLib(blas) : blas, A16 as Float32Array, B16 as Float32Array, c, d);
  }
  return { shape, values: c };
}

/**
 * How `blas` takes bf16-mixed operands: bf16 bits where it multiplies bf16 (made by its own converter where it has
 * one), else rounded fp32.
 */
function operandForm(blas: BlasLib): Bf16Form {
  return blas.gemmBf16 ? (blas.bf16Bits ?? true) : false;
}

/** The library `blas` with `sgemm` multiplying bf16 operands (Uint16Arrays passed where the signature says Float32Array). */
function bitsLib(blas: BlasLib): BlasLib {
  const g = blas.gemmBf16!;
  const sgemm: Sgemm = (_o, ...args) => g(...(args as unknown as Parameters<typeof g>));
  return { ...blas, sgemm, sgemv: null };
}

/** A product's sizes: C (outer…, M, N) = op(A) · op(B) (+ C when beta is 1), batch dims broadcast. */
interface Dims {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  batch: number;
  outer: number[];
  outerA: number[];
  outerB: number[];
  beta: number;
}

/** True where {@link products} shares the batch out between our threads (attention heads). */
function headsShape(blas: BlasLib, d: Dims): boolean {
  const batchA = tf.util.sizeFromShape(d.outerA), batchB = tf.util.sizeFromShape(d.outerB);
  return batchA === d.batch && batchB === d.batch && d.batch > 1 &&
    d.M * d.N * d.K <= SMALL_PRODUCT &&
    !!blas.setNumThreads && !!blas.getNumThreads;
}

/** The products of {@link gemm} on the library `blas`, into `c`. */
function products(blas: BlasLib, A: Float32Array, B: Float32Array, c: Float32Array, d: Dims): void {
  const { M, N, K, transA, transB, batch, outer, outerA, outerB, beta } = d;
  const batchA = tf.util.sizeFromShape(outerA), batchB = tf.util.sizeFromShape(outerB);
  const lda = transA ? M : K, ldb = transB ? K : N;
  const tA = transA ? TRANS : NO_TRANS, tB = transB ? TRANS : NO_TRANS;
  if (batchB === 1 && !transA && batch * M === 1 && blas.sgemv) {
    // One row (sampling with the KV cache): a matrix-vector product streams B once, without packing it.
    if (beta === 0) c.fill(0); // sgemv's beta = 0 need not overwrite NaN
    if (transB) blas.sgemv(ROW_MAJOR, NO_TRANS, N, K, 1, B, ldb, A, 1, beta, c, 1);
    else blas.sgemv(ROW_MAJOR, TRANS, K, N, 1, B, ldb, A, 1, beta, c, 1);
    return;
  }
  if (batchB === 1 && !transA) {
    // Stacked rows of A against one B: a single (batch·M, K) × (K, N) product.
    blas.sgemm(ROW_MAJOR, tA, tB, batch * M, N, K, 1, A, lda, B, ldb, beta, c, N);
    return;
  }
  if (headsShape(blas, d)) {
    // Attention heads: OpenBLAS takes about as long for one small product on two threads as on one, so each
    // product runs on one OpenBLAS thread and the heads are shared out between our threads (all on the calling
    // thread with GPT_JS_THREADS=1: the same products, so the same numbers).
    const blocks = [M * K, 0, lda, K * N, 0, ldb, M * N, 0, N]; // item i: the i-th block of each
    sgemmOnEachThread(blas, [A, B, c], [1, tA, tB, M, N, K, beta, ...blocks], batch, M * N * K);
    return;
  }
  const items = [tA, tB, M, N, K, lda, ldb, beta, M * K, K * N, M * N]; // sgemmItem's sizes
  // Per-batch products; each output batch index maps to its (broadcast) A and B batch indices.
  const sa = stridesOf(outerA), sb = stridesOf(outerB), so = stridesOf(outer);
  const offA = outer.length - outerA.length, offB = outer.length - outerB.length;
  for (let i = 0; i < batch; i++) {
    let ia = 0, ib = 0;
    if (batchA > 1 || batchB > 1) {
      for (let d = 0, rest = i; d < outer.length; d++) {
        const idx = Math.floor(rest / so[d]);
        rest -= idx * so[d];
        if (d >= offA && outerA[d - offA] !== 1) ia += idx * sa[d - offA];
        if (d >= offB && outerB[d - offB] !== 1) ib += idx * sb[d - offB];
      }
    }
    sgemmItem(blas.sgemm, items, A, ia, B, ib, c, i);
  }
}

/**
 * One product of a batch, row-major: C[ic] = op(A[ia])·op(B[ib]) + beta·C[ic], where X[i] is the i-th block of
 * X's size. s: [transA, transB, M, N, K, lda, ldb, beta, sizeA, sizeB, sizeC] (trans as CBLAS codes).
 */
function sgemmItem(
  f: Sgemm,
  s: number[],
  A: Float32Array,
  ia: number,
  B: Float32Array,
  ib: number,
  C: Float32Array,
  ic: number,
): void {
  const [tA, tB, M, N, K, lda, ldb, beta, sizeA, sizeB, sizeC] = s;
  const a = A.subarray(ia * sizeA, (ia + 1) * sizeA), b = B.subarray(ib * sizeB, (ib + 1) * sizeB);
  f(
    ROW_MAJOR,
    tA,
    tB,
    M,
    N,
    K,
    1,
    a,
    lda,
    b,
    ldb,
    beta,
    C.subarray(ic * sizeC, (ic + 1) * sizeC),
    N,
  );
}

/**
 * `items` products of `sgemmHeads` (s as there) shared out between our threads, with OpenBLAS on one thread for
 * them (OpenBLAS's own threads win nothing on products this small).
 */
function sgemmOnEachThread(
  blas: BlasLib,
  a: Float32Array[],
  s: number[],
  items: number,
  cost: number,
): void {
  const blasThreads = blas.getNumThreads?.();
  blas.setNumThreads?.(1);
  // bf16 operands (oneDNN's bits, typed as Float32Array by bitsLib's callers) go to the pool as word views.
  const [A, B, C] = a as unknown as (Float32Array | Uint16Array)[];
  const bits = A instanceof Uint16Array;
  const words = (x: Float32Array | Uint16Array) =>
    x instanceof Uint16Array ? new Int32Array(x.buffer, x.byteOffset, Math.ceil(x.length / 2)) : x;
  try {
    parallelFor(
      bits ? "sgemmHeadsBf16" : "sgemmHeads",
      [words(A), words(B), C as Float32Array],
      s,
      items,
      cost,
    );
  } finally {
    if (blasThreads !== undefined) blas.setNumThreads?.(blasThreads);
  }
}

/** `bias` broadcast to `shape` when it varies along the last axis only (or is a scalar); null otherwise. */
function fillBias(backend: Backend, bias: Info, shape: number[]): Float32Array | null {
  const N = shape[shape.length - 1];
  const leadingOnes = bias.shape.slice(0, -1).every((d) => d === 1);
  const n = tf.util.sizeFromShape(bias.shape);
  if (
    bias.shape.length === 0 || !leadingOnes || bias.shape.length > shape.length ||
    (n !== N && n !== 1)
  ) {
    return null;
  }
  const bv = f32(backend, bias);
  const out = alloc(backend, tf.util.sizeFromShape(shape));
  if (n === N) { for (let o = 0; o < out.length; o += N) out.set(bv, o); }
  else out.fill(bv[0]);
  return out;
}

type KernelFn = (
  args: { inputs: tf.NamedTensorInfoMap; backend: Backend; attrs?: tf.NamedAttrMap },
) => Info;

function cpuKernel(name: string): KernelFn {
  const k = tf.getKernel(name, "cpu");
  if (!k) throw new Error(`cpu backend: TF.js's cpu backend has no ${name} kernel`);
  return k.kernelFunc as unknown as KernelFn;
}

/** Applies a fused activation with the cpu backend's kernels (the rare non-linear case). */
function activate(
  backend: Backend,
  x: Info,
  activation: string,
  prelu: Info | undefined,
  alpha: number,
): Info {
  const run = (name: string, inputs: tf.NamedTensorInfoMap, attrs?: tf.NamedAttrMap) =>
    cpuKernel(name)({ inputs, backend, attrs });
  switch (activation) {
    case "linear":
      return x;
    case "relu":
      return run("Relu", { x });
    case "relu6":
      return run("Relu6", { x });
    case "elu":
      return run("Elu", { x });
    case "sigmoid":
      return run("Sigmoid", { x });
    case "leakyrelu":
      return run("LeakyRelu", { x }, { alpha });
    case "prelu":
      if (!prelu) throw new Error("fused matMul: prelu needs preluActivationWeights");
      return run("Prelu", { x, alpha: prelu });
    default:
      throw new Error(`fused matMul: unknown activation ${activation}`);
  }
}

function batchMatMulKernel(): KernelFn {
  const fallback = cpuKernel("BatchMatMul");
  return ({ inputs, backend, attrs }) => {
    const { a, b } = inputs as { a: Info; b: Info };
    if (a.dtype !== "float32" || b.dtype !== "float32") return fallback({ inputs, backend, attrs });
    const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
    const { shape, values } = gemm(lib(), backend, a, b, transposeA, transposeB);
    return backend.makeTensorInfo(shape, "float32", values);
  };
}

/** Attributes of `HeadsMatMul`: the products (strides are [per batch item, per head, leading dimension], in floats). */
export interface HeadsMatMulAttrs extends HeadsShape {
  /** The output's shape; the batch·heads blocks of C must cover all of it. */
  shape: number[];
  /** The part of each product a causal mask leaves (split_products.ts's `CAUSAL`); absent: all of it. */
  causal?: keyof typeof CAUSAL;
}

/**
 * HeadsMatMul: per (b, h) of batch × heads, C_bh = op(A_bh)·op(B_bh) on strided blocks of float32 a, b and the
 * output (attention heads read and written in place in (B·T, C) activations, no transposes). The heads are shared
 * out between our threads with OpenBLAS on one thread each, as for the batched products in `gemm`.
 */
function headsMatMulKernel(): KernelFn {
  return ({ inputs, backend, attrs }) => {
    const { a, b } = inputs as { a: Info; b: Info };
    const t = attrs as unknown as HeadsMatMulAttrs;
    const c = alloc(backend, tf.util.sizeFromShape(t.shape));
    const s = [
      t.heads,
      t.transA ? TRANS : NO_TRANS,
      t.transB ? TRANS : NO_TRANS,
      t.M,
      t.N,
      t.K,
      0,
      ...t.sa,
      ...t.sb,
      ...t.sc,
      CAUSAL[t.causal ?? "none"],
    ];
    const bits = precision !== "fp32" && operandForm(lib());
    const [A, B] = [a, b].map((x) => {
      const v = f32(backend, x);
      return precision === "fp32" ? v : copies.of(x.dataId, v, bits) as Float32Array;
    });
    // oneDNN multiplies every head's bf16 bits at once where it can (dnnl_matmul.ts); else the heads are shared out.
    const once = bits &&
      lib().headsBf16?.(t, A as unknown as Uint16Array, B as unknown as Uint16Array, c);
    if (!once) sgemmOnEachThread(lib(), [A, B, c], s, t.batch * t.heads, t.M * t.N * t.K);
    return backend.makeTensorInfo(t.shape, "float32", c);
  };
}

function fusedMatMulKernel(): KernelFn {
  const fallback = cpuKernel("_FusedMatMul");
  const add = cpuKernel("Add");
  return ({ inputs, backend, attrs }) => {
    const { a, b, bias, preluActivationWeights } = inputs as {
      a: Info;
      b: Info;
      bias?: Info;
      preluActivationWeights?: Info;
    };
    if (a.dtype !== "float32" || b.dtype !== "float32") return fallback({ inputs, backend, attrs });
    const { transposeA, transposeB, activation, leakyreluAlpha } =
      attrs as unknown as tf._FusedMatMulAttrs;
    // The output shape first, so that a last-axis bias can seed C and ride on sgemm's beta = 1.
    const ra = a.shape.length, rb = b.shape.length;
    const M = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
    const N = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
    const outer = tf.backend_util.assertAndGetBroadcastShape(
      a.shape.slice(0, -2),
      b.shape.slice(0, -2),
    );
    const seeded = bias ? fillBias(backend, bias, [...outer, M, N]) : null;
    const { shape, values } = gemm(
      lib(),
      backend,
      a,
      b,
      transposeA,
      transposeB,
      seeded ?? undefined,
    );
    let out = backend.makeTensorInfo(shape, "float32", values);
    if (bias && !seeded) {
      const sum = add({ inputs: { a: out, b: bias }, backend });
      backend.disposeIntermediateTensorInfo(out);
      out = sum;
    }
    if (activation && activation !== "linear") {
      const act = activate(backend, out, activation, preluActivationWeights, leakyreluAlpha ?? 0.2);
      backend.disposeIntermediateTensorInfo(out);
      out = act;
    }
    return out;
  };
}

/** The kernels the `cpu` backend replaces; all others are TF.js's cpu backend's. */
const REPLACED = ["BatchMatMul", "_FusedMatMul"];

/**
 * Registers the `cpu` backend (idempotent): a fresh cpu backend whose matrix products call `cblas_sgemm`.
 * Activate it with `await tf.setBackend(CPU_BACKEND)`. Returns `ok: false` with a one-line reason when no BLAS loads.
 * `priority` is TF.js's backend priority (cpu has 1); the default 0 leaves the choice to the caller.
 */
export function registerCpuBackend(priority = 0): { ok: boolean; reason: string } {
  if (!active) {
    const res = useMatrixLibrary("auto");
    if (!res.ok) return { ok: false, reason: res.reason };
  }
  if (tf.findBackendFactory(CPU_BACKEND)) {
    return { ok: true, reason: `already registered (${lib().describe()})` };
  }
  tf.registerBackend(CPU_BACKEND, () => new CpuBackend(), priority);
  for (const k of tf.getKernelsForBackend("cpu")) {
    if (!REPLACED.includes(k.kernelName)) tf.registerKernel({ ...k, backendName: CPU_BACKEND });
  }
  const kernels: Record<string, KernelFn> = {
    BatchMatMul: batchMatMulKernel(),
    _FusedMatMul: fusedMatMulKernel(),
    HeadsMatMul: headsMatMulKernel(),
  };
  for (const [kernelName, fn] of Object.entries(kernels)) {
    tf.registerKernel({
      kernelName,
      backendName: CPU_BACKEND,
      kernelFunc: fn as unknown as tf.KernelFunc,
    });
  }
  registerFusedCpuKernels(CPU_BACKEND);
  return { ok: true, reason: lib().describe() };
}
