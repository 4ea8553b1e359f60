/**
 * Faster JS kernels for TF.js backends built on the cpu backend's storage (our `cpu` backend; also usable on
 * TF.js's own `cpu`, the config's `tfjs-cpu`).
 *
 * Two kinds:
 * - Drop-ins for cpu kernels that are slow on a GPT step's shapes: broadcasting Add/Sub/Multiply/RealDiv (the cpu
 *   backend computes an index per element through arrays, ~200 ns each), Exp/Tanh/Square/Pow, Transpose, Sum/Max
 *   over leading or trailing axes, Softmax, GatherV2 of rows, UnsortedSegmentSum (one masked pass per segment on
 *   cpu: 50,257 for GPT-2's vocabulary).
 *   Same inputs, attributes and results as the cpu kernel of the same name; other dtypes or layouts fall back to it.
 * - Fused kernels under new names (`GeluTanh`, `LayerNorm`, `CausalSoftmax`, `SoftmaxCrossEntropy` and their
 *   gradients), reached through the fused ops of ../fused_ops.ts (fusedGelu, fusedLayerNorm, fusedCausalSoftmax,
 *   fusedCrossEntropy): each returns null when the active backend lacks the kernel, so model code can fall
 *   back to composed ops.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import { fastExp, fastTanh, KERNELS, OP, softmaxRow } from "./row_kernels.ts";
import { parallelFor, shared, sharedF32 } from "./pool.ts";

export { fastExp };

type Info = tf.TensorInfo;
type KernelArgs = {
  inputs: tf.NamedTensorInfoMap;
  backend: MathBackendCPU;
  attrs?: tf.NamedAttrMap;
};
type KernelFn = (args: KernelArgs) => Info | Info[];

function vals(backend: MathBackendCPU, t: Info): tf.TypedArray {
  return backend.data.get(t.dataId).values as tf.TypedArray;
}

function f32(backend: MathBackendCPU, t: Info): Float32Array {
  return vals(backend, t) as Float32Array;
}

/**
 * A Float32Array for a kernel's output: from the backend's pool where it has one (`CpuBackend.allocF32`; its
 * contents are arbitrary, so every kernel here writes every element), else a fresh one.
 */
export function alloc(backend: MathBackendCPU, n: number): Float32Array {
  const pooled = (backend as unknown as { allocF32?: (n: number) => Float32Array }).allocF32;
  return pooled ? pooled.call(backend, n) : new Float32Array(n);
}

function cpuKernel(name: string): KernelFn {
  const k = tf.getKernel(name, "cpu");
  if (!k) throw new Error(`fused_kernels: the cpu backend has no ${name} kernel`);
  return k.kernelFunc as unknown as KernelFn;
}

// ---------------------------------------------------------------------------------------------------------------
// Broadcasting binary ops. Dims are merged where both operands broadcast the same way, leaving a few dims with
// strides 0 (broadcast) or the operand's own; the innermost runs a tight loop per op.

type Inner = (
  out: Float32Array,
  o: number,
  a: Float32Array,
  ia: number,
  sa: number,
  b: Float32Array,
  ib: number,
  sb: number,
  n: number,
) => void;

// One literal per op, with a contiguous and a scalar-operand fast path: a shared loop calling the op through a
// closure is what makes the cpu backend's version slow (V8 stops inlining a call site that sees several callees).
const INNER: Record<string, Inner> = {
  Add: (out, o, a, ia, sa, b, ib, sb, n) => {
    if (sa === 1 && sb === 1) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] + b[ib + k]; }
    else if (sb === 0) {
      const y = b[ib];
      for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] + y;
    } else for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] + b[ib + k * sb];
  },
  Sub: (out, o, a, ia, sa, b, ib, sb, n) => {
    if (sa === 1 && sb === 1) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] - b[ib + k]; }
    else if (sb === 0) {
      const y = b[ib];
      for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] - y;
    } else for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] - b[ib + k * sb];
  },
  Multiply: (out, o, a, ia, sa, b, ib, sb, n) => {
    if (sa === 1 && sb === 1) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] * b[ib + k]; }
    else if (sb === 0) {
      const y = b[ib];
      for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] * y;
    } else for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] * b[ib + k * sb];
  },
  RealDiv: (out, o, a, ia, sa, b, ib, sb, n) => {
    if (sa === 1 && sb === 1) { for (let k = 0; k < n; k++) out[o + k] = a[ia + k] / b[ib + k]; }
    else if (sb === 0) {
      const y = b[ib];
      for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] / y;
    } else for (let k = 0; k < n; k++) out[o + k] = a[ia + k * sa] / b[ib + k * sb];
  },
};

interface Dim {
  n: number;
  sa: number;
  sb: number;
}

/** Merged loop dims of a broadcast of shapes a and b to `out` (outermost first, size-1 dims dropped). */
function broadcastDims(aShape: number[], bShape: number[], out: number[]): Dim[] {
  const r = out.length;
  const pa = [...new Array(r - aShape.length).fill(1), ...aShape];
  const pb = [...new Array(r - bShape.length).fill(1), ...bShape];
  const dims: Dim[] = [];
  let strideA = 1, strideB = 1;
  for (let d = r - 1; d >= 0; d--) {
    const n = out[d];
    if (n === 1) continue;
    const ua = pa[d] === n, ub = pb[d] === n;
    const last = dims[0];
    if (last && (last.sa !== 0) === ua && (last.sb !== 0) === ub) {
      last.n *= n; // same pattern as the dim inside it: one longer run
    } else {
      dims.unshift({ n, sa: ua ? strideA : 0, sb: ub ? strideB : 0 });
    }
    if (ua) strideA *= n;
    if (ub) strideB *= n;
  }
  return dims;
}

function binary(name: string): KernelFn {
  const fallback = cpuKernel(name);
  const inner = INNER[name];
  return (args) => {
    const { a, b } = args.inputs as { a: Info; b: Info };
    if (a.dtype !== "float32" || b.dtype !== "float32") return fallback(args);
    const { backend } = args;
    const shape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const out = alloc(backend, tf.util.sizeFromShape(shape));
    const av = f32(backend, a), bv = f32(backend, b);
    const dims = broadcastDims(a.shape, b.shape, shape);
    const op = OP[name as keyof typeof OP];
    const [d0, d1] = dims;
    if (dims.length === 1 && d0.sa === 1 && d0.sb === 1) { // same shapes: split across threads
      parallelFor("binary", [av, bv, out], [op], out.length);
    } else if (dims.length === 2 && d0.sa === d1.n && d0.sb === 0 && d1.sa === 1 && d1.sb === 1) {
      // a row vector (bias) on every row; a parameter's row may live in plain memory: share a copy
      parallelFor("binaryRows", [av, shared(bv), out], [op, d1.n], d0.n, d1.n);
    } else if (dims.length === 0) {
      if (out.length > 0) inner(out, 0, av, 0, 0, bv, 0, 0, 1);
    } else if (dims.length === 1) {
      inner(out, 0, av, 0, dims[0].sa, bv, 0, dims[0].sb, dims[0].n);
    } else {
      const last = dims[dims.length - 1], outer = dims.slice(0, -1);
      const idx = new Array<number>(outer.length).fill(0);
      let ia = 0, ib = 0;
      for (let o = 0; o < out.length; o += last.n) {
        inner(out, o, av, ia, last.sa, bv, ib, last.sb, last.n);
        for (let d = outer.length - 1; d >= 0; d--) { // odometer over the outer dims
          const dim = outer[d];
          ia += dim.sa, ib += dim.sb;
          if (++idx[d] < dim.n) break;
          ia -= dim.sa * dim.n, ib -= dim.sb * dim.n, idx[d] = 0;
        }
      }
    }
    return backend.makeTensorInfo(shape, "float32", out);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Element-wise unary ops, each with its own loop (the cpu backend calls one shared loop through a closure).

const UNARY: Record<string, (x: Float32Array, out: Float32Array) => void> = {
  Exp: (x, out) => {
    for (let i = 0; i < x.length; i++) out[i] = fastExp(x[i]);
  },
  Tanh: (x, out) => {
    for (let i = 0; i < x.length; i++) out[i] = fastTanh(x[i]);
  },
  Square: (x, out) => {
    for (let i = 0; i < x.length; i++) out[i] = x[i] * x[i];
  },
};

function unary(name: string): KernelFn {
  const fallback = cpuKernel(name);
  const loop = UNARY[name];
  return (args) => {
    const { x } = args.inputs as { x: Info };
    if (x.dtype !== "float32") return fallback(args);
    const xv = f32(args.backend, x), out = alloc(args.backend, xv.length);
    loop(xv, out);
    return args.backend.makeTensorInfo(x.shape, "float32", out);
  };
}

/** Pow with a scalar integer exponent 1–4 as products (GELU's x³); every other case takes the cpu kernel. */
function pow(): KernelFn {
  const fallback = cpuKernel("Pow");
  return (args) => {
    const { a, b } = args.inputs as { a: Info; b: Info };
    if (a.dtype !== "float32" || b.dtype !== "float32" || tf.util.sizeFromShape(b.shape) !== 1) {
      return fallback(args);
    }
    const e = f32(args.backend, b)[0];
    if (!(e === 1 || e === 2 || e === 3 || e === 4)) return fallback(args);
    const shape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const x = f32(args.backend, a), out = alloc(args.backend, x.length);
    if (e === 1) out.set(x);
    else if (e === 2) { for (let i = 0; i < x.length; i++) out[i] = x[i] * x[i]; }
    else if (e === 3) { for (let i = 0; i < x.length; i++) out[i] = x[i] * x[i] * x[i]; }
    else for (let i = 0; i < x.length; i++) out[i] = x[i] * x[i] * (x[i] * x[i]);
    return args.backend.makeTensorInfo(shape, "float32", out);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Transpose: output order with merged runs; the innermost run copies with the input stride of that dim.

function transpose(): KernelFn {
  const fallback = cpuKernel("Transpose");
  return (args) => {
    const { x } = args.inputs as { x: Info };
    if (x.dtype !== "float32") return fallback(args);
    const { backend } = args;
    const perm = (args.attrs as unknown as tf.TransposeAttrs).perm;
    const inStrides = new Array<number>(x.shape.length);
    for (let d = x.shape.length - 1, s = 1; d >= 0; s *= x.shape[d], d--) inStrides[d] = s;
    const shape = perm.map((p) => x.shape[p]);
    const dims: { n: number; s: number }[] = [];
    for (let d = 0; d < perm.length; d++) {
      const n = shape[d], s = inStrides[perm[d]];
      if (n === 1) continue;
      const prev = dims[dims.length - 1];
      if (prev && prev.s === s * n) prev.n *= n, prev.s = s; // contiguous in the input too: merge
      else dims.push({ n, s });
    }
    const xv = f32(backend, x);
    const out = alloc(backend, xv.length);
    if (dims.length <= 1) out.set(xv);
    else {
      const last = dims[dims.length - 1], runs = xv.length / last.n;
      const outer = dims.slice(0, -1).flatMap((d) => [d.n, d.s]);
      parallelFor("transposeRuns", [xv, out], [last.n, last.s, ...outer], runs, last.n);
    }
    return backend.makeTensorInfo(shape, "float32", out);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// GatherV2 of whole rows (the embedding lookup): one copy per row. The cpu kernel computes an index per element.

function gatherRows(): KernelFn {
  const fallback = cpuKernel("GatherV2");
  return (args) => {
    const { x, indices } = args.inputs as { x: Info; indices: Info };
    const { axis, batchDims } = args.attrs as unknown as tf.GatherV2Attrs;
    if (
      x.dtype !== "float32" || indices.dtype !== "int32" || batchDims !== 0 ||
      tf.util.parseAxisParam(axis, x.shape)[0] !== 0 || x.shape.length === 0
    ) return fallback(args);
    const { backend } = args;
    const rows = x.shape[0], C = tf.util.sizeFromShape(x.shape) / rows;
    const ids = vals(backend, indices) as Int32Array;
    for (const id of ids) if (!(id >= 0 && id < rows)) return fallback(args); // its error names the index
    const xv = f32(backend, x), out = alloc(backend, ids.length * C);
    for (let n = 0; n < ids.length; n++) {
      const o = ids[n] * C;
      for (let c = 0; c < C; c++) out[n * C + c] = xv[o + c];
    }
    return backend.makeTensorInfo([...indices.shape, ...x.shape.slice(1)], "float32", out);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Reductions over trailing axes (per row) or leading axes (per column), in double like the cpu backend.

/** Splits x's shape into [outer, reduced, inner] when `axes` are contiguous; null otherwise. */
function reduceSplit(shape: number[], axis: number | number[]): [number, number, number] | null {
  const axes = tf.util.parseAxisParam(axis, shape).sort((p, q) => p - q);
  if (axes.length === 0) return null;
  for (let i = 1; i < axes.length; i++) if (axes[i] !== axes[i - 1] + 1) return null;
  const lo = axes[0], hi = axes[axes.length - 1] + 1;
  const size = (s: number[]) => s.reduce((p, q) => p * q, 1);
  return [size(shape.slice(0, lo)), size(shape.slice(lo, hi)), size(shape.slice(hi))];
}

function reduction(name: "Sum" | "Max"): KernelFn {
  const fallback = cpuKernel(name);
  const isMax = name === "Max";
  return (args) => {
    const { x } = args.inputs as { x: Info };
    const attrs = args.attrs as unknown as {
      axis?: number | number[];
      reductionIndices?: number | number[];
    };
    const axis = (isMax ? attrs.reductionIndices : attrs.axis) ?? x.shape.map((_, i) => i); // null: all axes
    const keepDims = (args.attrs as { keepDims?: boolean }).keepDims ?? false;
    const split = x.dtype === "float32" ? reduceSplit(x.shape, axis) : null;
    if (!split || (split[0] > 1 && split[2] > 1) || split[1] === 0) return fallback(args);
    const [outer, red, inner] = split;
    const { backend } = args;
    const xv = f32(backend, x);
    const axes = tf.util.parseAxisParam(axis, x.shape);
    const shape = keepDims
      ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
      : x.shape.filter((_, i) => !axes.includes(i));
    let out: Float32Array;
    if (!isMax) { // rows (inner 1) or columns (outer 1), split across threads
      out = sharedF32(inner === 1 ? outer : inner);
      if (inner === 1) parallelFor("sumRows", [xv, out], [red], outer, red);
      else parallelFor("sumColumns", [xv, out], [inner, red], inner, red);
    } else if (inner === 1) { // the max of each row of `red` contiguous values
      out = new Float32Array(outer);
      for (let r = 0; r < outer; r++) {
        const o = r * red;
        let acc = xv[o];
        for (let k = 1; k < red; k++) {
          acc = xv[o + k] > acc || xv[o + k] !== xv[o + k] ? xv[o + k] : acc;
        }
        out[r] = acc;
      }
    } else { // outer === 1: reduce `red` rows of `inner` values into one row
      const acc = new Float64Array(inner);
      if (isMax) acc.set(xv.subarray(0, inner));
      for (let r = isMax ? 1 : 0; r < red; r++) {
        const o = r * inner;
        if (isMax) {
          for (let k = 0; k < inner; k++) {
            if (xv[o + k] > acc[k] || xv[o + k] !== xv[o + k]) acc[k] = xv[o + k];
          }
        } else for (let k = 0; k < inner; k++) acc[k] += xv[o + k];
      }
      out = Float32Array.from(acc);
    }
    return backend.makeTensorInfo(shape, "float32", out);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Softmax over the last axis: max, exp and sum in one pass per row, then a scale.

function softmax(): KernelFn {
  const fallback = cpuKernel("Softmax");
  return (args) => {
    const { logits } = args.inputs as { logits: Info };
    const dim = (args.attrs as unknown as tf.SoftmaxAttrs).dim;
    const r = logits.shape.length;
    if (logits.dtype !== "float32" || (dim !== -1 && dim !== r - 1)) return fallback(args);
    const n = logits.shape[r - 1], z = f32(args.backend, logits);
    const out = alloc(args.backend, z.length);
    for (let o = 0; n > 0 && o < z.length; o += n) softmaxRow(z, out, o, n);
    return args.backend.makeTensorInfo(logits.shape, "float32", out);
  };
}

// ---------------------------------------------------------------------------------------------------------------

/** UnsortedSegmentSum (the gradient of `gather`): adds each row of `x` into its segment in one pass. */
function unsortedSegmentSum({ inputs, backend, attrs }: KernelArgs): Info {
  const { x, segmentIds } = inputs as { x: Info; segmentIds: Info };
  const numSegments = (attrs as unknown as tf.UnsortedSegmentSumAttrs).numSegments;
  const rows = tf.util.sizeFromShape(segmentIds.shape);
  const inner = rows === 0 ? 0 : tf.util.sizeFromShape(x.shape) / rows;
  const outShape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
  const xv = vals(backend, x), ids = vals(backend, segmentIds) as Int32Array;
  if (x.dtype === "int32") {
    const out = new Int32Array(numSegments * inner);
    KERNELS.segmentSumColumns(
      [xv as Int32Array, ids, out],
      [inner, rows, numSegments],
      0,
      inner,
      0,
    );
    return backend.makeTensorInfo(outShape, x.dtype, out);
  }
  const out = alloc(backend, numSegments * inner);
  parallelFor("fill", [out], [0], out.length);
  // Split by columns: every thread adds all rows into its own columns, so no two write the same element.
  parallelFor(
    "segmentSumColumns",
    [xv as Float32Array, shared(ids), out],
    [inner, rows, numSegments],
    inner,
    rows,
  );
  return backend.makeTensorInfo(outShape, x.dtype, out);
}

// ---------------------------------------------------------------------------------------------------------------
// Fused kernels under new names.

/** GeluTanh: y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); also returns t = tanh(…) for the gradient. */
function geluTanh({ inputs, backend }: KernelArgs): Info[] {
  const { x } = inputs as { x: Info };
  const xv = f32(backend, x);
  const y = alloc(backend, xv.length), t = alloc(backend, xv.length);
  parallelFor("geluTanh", [xv, y, t], [], xv.length, 4);
  return [
    backend.makeTensorInfo(x.shape, "float32", y),
    backend.makeTensorInfo(x.shape, "float32", t),
  ];
}

/** GeluTanhGrad: dx = dy·(0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)). */
function geluTanhGrad({ inputs, backend }: KernelArgs): Info {
  const { dy, x, t } = inputs as { dy: Info; x: Info; t: Info };
  const g = f32(backend, dy), xv = f32(backend, x), tv = f32(backend, t);
  const dx = alloc(backend, xv.length);
  parallelFor("geluTanhGrad", [g, xv, tv, dx], [], xv.length, 2);
  return backend.makeTensorInfo(x.shape, "float32", dx);
}

/** LayerNorm over the last axis (biased variance): returns [y, mean, rstd], the last two per row. */
function layerNormKernel({ inputs, backend, attrs }: KernelArgs): Info[] {
  const { x, scale, shift } = inputs as { x: Info; scale: Info; shift: Info };
  const eps = (attrs as { eps: number }).eps;
  const C = x.shape[x.shape.length - 1], rows = tf.util.sizeFromShape(x.shape) / C;
  const xv = f32(backend, x), g = shared(f32(backend, scale)), b = shared(f32(backend, shift));
  const y = alloc(backend, xv.length), mean = sharedF32(rows), rstd = sharedF32(rows);
  parallelFor("layerNorm", [xv, g, b, y, mean, rstd], [C, eps], rows, 3 * C);
  const rowShape = x.shape.slice(0, -1);
  return [
    backend.makeTensorInfo(x.shape, "float32", y),
    backend.makeTensorInfo(rowShape, "float32", mean),
    backend.makeTensorInfo(rowShape, "float32", rstd),
  ];
}

/** LayerNormGrad: [dx, dscale, dshift] from dy, x, scale and the forward's per-row mean and rstd. */
function layerNormGrad({ inputs, backend }: KernelArgs): Info[] {
  const { dy, x, scale, mean, rstd } = inputs as {
    dy: Info;
    x: Info;
    scale: Info;
    mean: Info;
    rstd: Info;
  };
  const C = x.shape[x.shape.length - 1], rows = tf.util.sizeFromShape(x.shape) / C;
  const g = f32(backend, dy), xv = f32(backend, x), w = shared(f32(backend, scale));
  const mv = shared(f32(backend, mean)), rv = shared(f32(backend, rstd));
  const dx = alloc(backend, xv.length), dw = sharedF32(C), db = sharedF32(C);
  parallelFor("layerNormGradX", [g, xv, w, mv, rv, dx], [C], rows, 2 * C);
  parallelFor("layerNormGradW", [g, xv, mv, rv, dw, db], [C, rows], C, rows);
  return [
    backend.makeTensorInfo(x.shape, "float32", dx),
    backend.makeTensorInfo(scale.shape, "float32", dw),
    backend.makeTensorInfo(scale.shape, "float32", db),
  ];
}

/**
 * SoftmaxCrossEntropy: mean −log softmax(z)[target] over rows; returns [loss (scalar), its gradient for dy = 1,
 * (softmax(z) − onehot(target)) / N (N, V)], both from the one pass over the logits.
 */
function softmaxCrossEntropy({ inputs, backend }: KernelArgs): Info[] {
  const { logits, targets } = inputs as { logits: Info; targets: Info };
  const [N, V] = logits.shape;
  const z = f32(backend, logits), tv = shared(vals(backend, targets) as Int32Array);
  const d = alloc(backend, z.length), rowLoss = shared(new Float64Array(N));
  parallelFor("softmaxCrossEntropy", [z, tv, d, rowLoss], [V, 1 / N], N, 3 * V);
  let loss = 0;
  for (let r = 0; r < N; r++) loss += rowLoss[r];
  return [
    backend.makeTensorInfo([], "float32", new Float32Array([loss / N])),
    backend.makeTensorInfo(logits.shape, "float32", d),
  ];
}

/**
 * SoftmaxCrossEntropyGrad: dlogits = the forward's gradient · dy. For dy = 1 (a training loss) that is the
 * forward's array itself, shared rather than copied (400 MB at GPT-2's vocabulary and batch 8).
 */
function softmaxCrossEntropyGrad({ inputs, backend }: KernelArgs): Info {
  const { dy, grad } = inputs as { dy: Info; grad: Info };
  const k = f32(backend, dy)[0];
  if (k === 1) {
    backend.incRef(grad.dataId);
    return { dataId: grad.dataId, shape: grad.shape, dtype: "float32" };
  }
  const g = f32(backend, grad), d = alloc(backend, g.length);
  parallelFor("scale", [g, d], [k], g.length, 1);
  return backend.makeTensorInfo(grad.shape, "float32", d);
}

/**
 * CausalSoftmax: softmax over the last axis of `x`·scale for (…, T, T) attention scores, where row i (the query at
 * position i) sees keys 0…i only — the book's `masked_fill(-inf)` + scale + softmax in one pass. With a dropout
 * `mask` input (x's shape), returns [y ⊙ mask, y] (the dropped weights, and y for the gradient), else y.
 */
function causalSoftmax({ inputs, backend, attrs }: KernelArgs): Info | Info[] {
  const { x, mask } = inputs as { x: Info; mask?: Info };
  const scale = (attrs as { scale: number }).scale;
  const T = x.shape[x.shape.length - 1], rows = tf.util.sizeFromShape(x.shape) / T;
  const xv = f32(backend, x), y = alloc(backend, xv.length);
  if (!mask) {
    parallelFor("causalSoftmax", [xv, y], [T, scale], rows, 2 * T);
    return backend.makeTensorInfo(x.shape, "float32", y);
  }
  const out = alloc(backend, xv.length);
  parallelFor("causalSoftmax", [xv, y, f32(backend, mask), out], [T, scale], rows, 3 * T);
  return [
    backend.makeTensorInfo(x.shape, "float32", out),
    backend.makeTensorInfo(x.shape, "float32", y),
  ];
}

/**
 * CausalSoftmaxGrad: dx = scale · y ⊙ (g − Σ_k g·y) per row (zero where masked, since y is), with g = dy, or
 * dy ⊙ mask when a dropout `mask` input is given (the gradient through CausalSoftmax's dropped output).
 */
function causalSoftmaxGrad({ inputs, backend, attrs }: KernelArgs): Info {
  const { dy, y, mask } = inputs as { dy: Info; y: Info; mask?: Info };
  const scale = (attrs as { scale: number }).scale;
  const T = y.shape[y.shape.length - 1], rows = tf.util.sizeFromShape(y.shape) / T;
  const g = f32(backend, dy), yv = f32(backend, y), dx = alloc(backend, yv.length);
  const a = mask ? [g, yv, dx, f32(backend, mask)] : [g, yv, dx];
  parallelFor("causalSoftmaxGrad", a, [T, scale], rows, T);
  return backend.makeTensorInfo(y.shape, "float32", dx);
}

/** Kernels this module provides, by kernel name (drop-ins first, then the fused ones). */
export function fusedCpuKernels(): Record<string, KernelFn> {
  return {
    Add: binary("Add"),
    Sub: binary("Sub"),
    Multiply: binary("Multiply"),
    RealDiv: binary("RealDiv"),
    Exp: unary("Exp"),
    Tanh: unary("Tanh"),
    Square: unary("Square"),
    Pow: pow(),
    Transpose: transpose(),
    GatherV2: gatherRows(),
    Sum: reduction("Sum"),
    Max: reduction("Max"),
    Softmax: softmax(),
    UnsortedSegmentSum: unsortedSegmentSum,
    EmbeddingGrad: ({ inputs, backend, attrs }) =>
      unsortedSegmentSum({
        inputs: { x: inputs.dy, segmentIds: inputs.ids },
        backend,
        attrs: { numSegments: (attrs as { numSegments: number }).numSegments },
      }),
    GeluTanh: geluTanh,
    GeluTanhGrad: geluTanhGrad,
    CausalSoftmax: causalSoftmax,
    CausalSoftmaxGrad: causalSoftmaxGrad,
    LayerNorm: layerNormKernel,
    LayerNormGrad: layerNormGrad,
    SoftmaxCrossEntropy: softmaxCrossEntropy,
    SoftmaxCrossEntropyGrad: softmaxCrossEntropyGrad,
  };
}

/**
 * Registers {@link fusedCpuKernels} for `backendName` (a backend built on MathBackendCPU, e.g. ours or TF.js's `cpu`),
 * replacing its kernels of those names.
 */
export function registerFusedCpuKernels(backendName: string): void {
  for (const [kernelName, fn] of Object.entries(fusedCpuKernels())) {
    if (tf.getKernel(kernelName, backendName)) tf.unregisterKernel(kernelName, backendName);
    tf.registerKernel({ kernelName, backendName, kernelFunc: fn as unknown as tf.KernelFunc });
  }
}
