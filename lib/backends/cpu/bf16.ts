/**
 * bf16 operands of the `cpu` backend's products in `bf16-mixed` (PyTorch's CPU autocast): each fp32 input is
 * rounded to bf16, round to nearest even, either to its 16 bits (for a library that multiplies bf16: oneDNN) or
 * back into an fp32 whose low 16 bits are zero (for one that does not: the product of two such values is exact in
 * fp32, so the fp32 product then accumulates the same terms). The model's weights are converted once per optimizer
 * step and kept ({@link Bf16Copies}); an activation's copy is kept while it is among the recent ones, since most
 * are operands of several products (a block's input of q, k and v and of their three weight gradients; the
 * output head's gradient of dx and dW). Conversions run on every thread.
 */
import { type Arr, parallelFor, registerKernels, setParallelism } from "./pool.ts";
import { simdBf16 } from "./simd_kernels.ts";

/**
 * The bf16 of fp32 bits `x` (as an int32), round to nearest even, still in the high half: a NaN stays a quiet
 * NaN. Int32 arithmetic throughout (V8 keeps it in registers; on uint32 values it fell back to doubles, 3–5×
 * slower): no finite value crosses zero or overflows when the rounding bias is added.
 */
function rounded(x: number): number {
  return (x & 0x7fffffff) > 0x7f800000 ? x | 0x400000 : (x + 0x7fff + ((x >> 16) & 1)) & -65536;
}

/** Units of work a conversion is cut into for the helpers (elements per unit). */
const CHUNK = 1 << 14;

/** bf16 of elements [lo, hi) of `src` into `dst` (rounded fp32, or bits), on this thread. */
export function bf16Range(
  src: Float32Array,
  dst: Float32Array | Uint16Array,
  lo: number,
  hi: number,
): void {
  if (simdBf16(src, dst, lo, hi)) return;
  const s = new Int32Array(src.buffer, src.byteOffset, src.length);
  if (dst instanceof Uint16Array) { for (let i = lo; i < hi; i++) dst[i] = rounded(s[i]) >>> 16; }
  else {
    const d = new Int32Array(dst.buffer, dst.byteOffset, dst.length);
    for (let i = lo; i < hi; i++) d[i] = rounded(s[i]);
  }
}

registerKernels({
  /** a[0]: fp32 source; a[1]: fp32 destination (rounded values). Units of CHUNK elements; s: [n]. */
  bf16Round: (a, s, lo, hi) =>
    bf16Range(a[0] as Float32Array, a[1] as Float32Array, lo * CHUNK, Math.min(hi * CHUNK, s[0])),
  /** a[0]: fp32 source; a[1]: destination whose buffer holds n bf16 values (an Int32Array over them). s: [n]. */
  bf16Bits: (a, s, lo, hi) => {
    const dst = new Uint16Array(a[1].buffer, a[1].byteOffset, s[0]);
    bf16Range(a[0] as Float32Array, dst, lo * CHUNK, Math.min(hi * CHUNK, s[0]));
  },
});

/** A bf16 operand: its 16 bits (oneDNN), or the rounded values as fp32 (every other library). */
export type Bf16Operand = Uint16Array | Float32Array;

function buffer(bytes: number): ArrayBuffer | SharedArrayBuffer {
  return setParallelism() > 1 ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
}

/** A destination for `n` converted elements: bf16 bits when `asBits`, else fp32 (shared when threads are in use). */
export function bf16Array(n: number, asBits: boolean): Bf16Operand {
  return asBits
    ? new Uint16Array(buffer(Math.ceil(n / 2) * 4), 0, n)
    : new Float32Array(buffer(n * 4));
}

/**
 * fp32 → bf16 bits by the matrix library itself (oneDNN's reorder, matrix/dnnl_reorder.ts), where it has one:
 * {@link bf16Range}'s values, except where that library's products differ from them in no result.
 */
export type Bf16Converter = (src: Float32Array, dst: Uint16Array) => void;

/**
 * How an operand is wanted: bf16 bits (`true`, or the library's own {@link Bf16Converter} that makes them), or
 * rounded fp32 (`false`).
 */
export type Bf16Form = boolean | Bf16Converter;

/**
 * Converts `src` into `dst` (as {@link bf16Array} made it) on every thread, or by `convert` where given for bits;
 * returns `dst`.
 */
export function toBf16(src: Float32Array, dst: Bf16Operand, convert?: Bf16Converter): Bf16Operand {
  const n = src.length;
  if (convert && dst instanceof Uint16Array && n > 0) convert(src, dst);
  else if (dst instanceof Float32Array) {
    parallelFor("bf16Round", [src, dst], [n], Math.ceil(n / CHUNK), CHUNK);
  } else {
    const words = new Int32Array(dst.buffer, dst.byteOffset, Math.ceil(n / 2));
    parallelFor("bf16Bits", [src, words as Arr], [n], Math.ceil(n / CHUNK), CHUNK);
  }
  return dst;
}

/** The bf16 value of `x` as a number (tests and references). */
export function roundToBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Int32Array(f.buffer);
  u[0] = rounded(u[0]);
  return f[0];
}

/** Bytes of recent activations' copies kept beyond the last two (the operands of the product being computed). */
export const RECENT_BYTES = 256 * 2 ** 20;

/** The bf16 copies of a run's operands: weights once per {@link Bf16Copies.weightsUpdated}, recent activations. */
export class Bf16Copies {
  private weights = new WeakMap<object, { version: number; data: Bf16Operand }>();
  private weightIds = new WeakSet<object>();
  private version = 0;
  /** Recent activations' copies by tensor id, oldest first. */
  private recent = new Map<object, { values: Float32Array; data: Bf16Operand }>();
  private recentBytes = 0;
  private free = new Map<string, Bf16Operand[]>();

  /** Marks the tensors (by id) whose values are weights, and forgets every copy. */
  setWeights(ids: object[]): void {
    this.weightIds = new WeakSet(ids);
    this.weights = new WeakMap();
    this.recent.clear(), this.recentBytes = 0, this.free.clear();
  }

  /**
   * The weights changed (an optimizer step): their copies are made again on next use. The activations' copies
   * are let go too: a step's activations are new tensors, and a tensor updated in place would otherwise keep an
   * old copy.
   */
  weightsUpdated(): void {
    this.version++;
    for (const [id, e] of this.recent) this.evict(id, e.data);
  }

  /**
   * The bf16 copy of `values`, the storage of tensor `id`: its 16 bits where `form` asks for bits, else rounded
   * fp32. Valid until the second next call (the two operands of one product are never evicted by each other).
   */
  of(id: object, values: Float32Array, form: Bf16Form): Bf16Operand {
    const bits = form !== false, convert = typeof form === "function" ? form : undefined;
    if (this.weightIds.has(id)) return this.weight(id, values, bits, convert);
    const hit = this.recent.get(id);
    if (hit && hit.values === values && isKind(hit.data, values.length, bits)) {
      this.recent.delete(id), this.recent.set(id, hit); // most recent again
      return hit.data;
    }
    if (hit) this.evict(id, hit.data);
    const key = `${bits ? "b" : "f"}${values.length}`;
    const data = toBf16(
      values,
      this.free.get(key)?.pop() ?? bf16Array(values.length, bits),
      convert,
    );
    this.recent.set(id, { values, data });
    this.recentBytes += data.byteLength;
    for (const [old, e] of this.recent) {
      if (this.recentBytes <= RECENT_BYTES || this.recent.size <= 2) break;
      this.evict(old, e.data);
    }
    return data;
  }

  /**
   * The copy of weight `id` for the optimizer to fill as it updates the weight (in the form the products take),
   * counted as made after the next {@link weightsUpdated}; null where the weight has none yet.
   */
  nextWeightCopy(id: object, n: number): Bf16Operand | null {
    const w = this.weights.get(id);
    if (!w || w.data.length !== n) return null;
    w.version = this.version + 1;
    return w.data;
  }

  private weight(
    id: object,
    values: Float32Array,
    bits: boolean,
    convert?: Bf16Converter,
  ): Bf16Operand {
    let w = this.weights.get(id);
    if (!w || !isKind(w.data, values.length, bits)) {
      this.weights.set(id, w = { version: -1, data: bf16Array(values.length, bits) });
    }
    if (w.version !== this.version) toBf16(values, w.data, convert), w.version = this.version;
    return w.data;
  }

  private evict(id: object, data: Bf16Operand): void {
    this.recent.delete(id);
    this.recentBytes -= data.byteLength;
    const key = `${data instanceof Uint16Array ? "b" : "f"}${data.length}`;
    const list = this.free.get(key);
    if (list) list.push(data);
    else this.free.set(key, [data]);
  }
}

function isKind(x: Bf16Operand, n: number, bits: boolean): boolean {
  return x.length === n && (x instanceof Uint16Array) === bits;
}
