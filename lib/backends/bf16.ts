/**
 * bf16 operands of the `blas` backend's products in `bf16-mixed` (PyTorch's CPU autocast): each fp32 input is
 * rounded to bf16, round to nearest even, either to its 16 bits (for a library that multiplies bf16: oneDNN) or
 * back into an fp32 whose low 16 bits are zero (for one that does not: the product of two such values is exact in
 * fp32, so the fp32 product then accumulates the same terms). The model's weights are converted once per optimizer
 * step and kept; activations are converted into scratch arrays per product. Conversions run on every thread.
 */
import { type Arr, parallelFor, registerKernels, setParallelism } from "./pool.ts";

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

registerKernels({
  /** a[0]: fp32 source; a[1]: fp32 destination (rounded values). Units of CHUNK elements; s: [n]. */
  bf16Round: (a, s, lo, hi) => {
    const src = new Int32Array(a[0].buffer, a[0].byteOffset, s[0]);
    const dst = new Int32Array(a[1].buffer, a[1].byteOffset, s[0]);
    for (let i = lo * CHUNK, end = Math.min(hi * CHUNK, s[0]); i < end; i++) {
      dst[i] = rounded(src[i]);
    }
  },
  /** a[0]: fp32 source; a[1]: destination whose buffer holds n bf16 values (an Int32Array over them). s: [n]. */
  bf16Bits: (a, s, lo, hi) => {
    const src = new Int32Array(a[0].buffer, a[0].byteOffset, s[0]);
    const dst = new Uint16Array(a[1].buffer, a[1].byteOffset, s[0]);
    for (let i = lo * CHUNK, end = Math.min(hi * CHUNK, s[0]); i < end; i++) {
      dst[i] = rounded(src[i]) >>> 16;
    }
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

/** Converts `src` into `dst` (as {@link bf16Array} made it) on every thread; returns `dst`. */
export function toBf16(src: Float32Array, dst: Bf16Operand): Bf16Operand {
  const n = src.length;
  if (dst instanceof Float32Array) {
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
