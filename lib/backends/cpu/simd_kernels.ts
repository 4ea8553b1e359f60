/**
 * WebAssembly SIMD versions of the hot row and element kernels of row_kernels.ts (GELU, LayerNorm, causal softmax,
 * the cross-entropy's softmax and their gradients): V8 runs the JS loops one double at a time, 6–20 ns per
 * element here, the SIMD ones (wasm_src/row_kernels.c) four floats at a time at a few ns per element, copies included.
 *
 * Each thread (the main one, each helper Worker) instantiates its own module. A call copies chunks of its range
 * into the module's scratch arrays, runs the kernel there and copies the results back. Each function returns false
 * when the module is not in use (no WebAssembly SIMD, `GPT_WASM_SIMD=0`, or a shape it does not take), and the
 * caller then runs its JS loop. Results agree with the JS loops to float32 rounding (tests/simd_test.ts).
 */
import { SOURCE_SHA256, WASM_BASE64 } from "./simd_kernels_wasm.ts";

type Arr = Float32Array | Float64Array | Int32Array;

interface Exports {
  buf(i: number): number;
  binary(a: number, b: number, out: number, n: number, op: number): void;
  bf16_round(x: number, bits: number, n: number): void;
  gelu_tanh(x: number, y: number, t: number, n: number): void;
  gelu_tanh_grad(g: number, x: number, t: number, dx: number, n: number): void;
  softmax_rows(z: number, p: number, rows: number, n: number, k: number, out: number): void;
  causal_softmax(
    x: number,
    y: number,
    mask: number,
    out: number,
    rows: number,
    T: number,
    r0: number,
    scale: number,
  ): void;
  causal_softmax_grad(
    g: number,
    y: number,
    mask: number,
    dx: number,
    rows: number,
    T: number,
    r0: number,
    scale: number,
  ): void;
  layer_norm(
    x: number,
    g: number,
    b: number,
    y: number,
    mean: number,
    rstd: number,
    rows: number,
    C: number,
    eps: number,
  ): void;
  adamw(
    p: number,
    g: number,
    m: number,
    v: number,
    n: number,
    b1: number,
    c1: number,
    b2: number,
    c2: number,
    decay: number,
    s: number,
    e: number,
  ): void;
  layer_norm_grad_x(
    g: number,
    x: number,
    w: number,
    mean: number,
    rstd: number,
    dx: number,
    rows: number,
    C: number,
  ): void;
}

interface Module {
  k: Exports;
  /** Floats in each scratch array (kernels.c's CHUNK: the distance between two of them). */
  chunk: number;
  /** Byte offsets of the scratch arrays and Float32Array views of them. */
  ptr: number[];
  buf: Float32Array[];
}

let mod: Module | null | undefined;
let enabled: boolean | undefined;

function instantiate(): Module | null {
  try {
    const bin = atob(WASM_BASE64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
    const k = inst.exports as unknown as Exports;
    const memory = inst.exports.memory as WebAssembly.Memory;
    const ptr = [0, 1, 2, 3, 4, 5].map((i) => k.buf(i));
    const chunk = (ptr[1] - ptr[0]) / 4;
    return { k, chunk, ptr, buf: ptr.map((p) => new Float32Array(memory.buffer, p, chunk)) };
  } catch {
    return null; // no WebAssembly SIMD here: the JS loops
  }
}

/** The module, or null when not in use on this thread. */
function wasm(): Module | null {
  if (enabled === undefined) {
    try {
      enabled = Deno.env.get("GPT_WASM_SIMD") !== "0";
    } catch {
      enabled = true; // no --allow-env
    }
  }
  if (!enabled) return null;
  return mod === undefined ? (mod = instantiate()) : mod;
}

/**
 * Turns the SIMD kernels on or off on this thread (tests compare them with the JS loops); returns whether they
 * are in use now. Default: on where WebAssembly SIMD is, unless `GPT_WASM_SIMD=0`.
 */
export function useSimd(on?: boolean): boolean {
  if (on !== undefined) enabled = on;
  return wasm() !== null;
}

/** The SHA-256 of the kernels.c that the embedded module was built from. */
export const BUILT_FROM = SOURCE_SHA256;

const up4 = (n: number) => (n + 3) & ~3;

/**
 * Runs a kernel over units [lo, hi) (elements or rows of `size` floats) in chunks of at most `per` units: copies
 * each input's chunk into its scratch array (by index), calls `kernel(first unit, units)`, copies each output's
 * chunk back from its scratch array.
 */
function chunked(
  w: Module,
  lo: number,
  hi: number,
  per: number,
  size: number,
  ins: [Arr, number][],
  outs: [Arr, number][],
  kernel: (r: number, n: number) => void,
): true {
  for (let r = lo; r < hi; r += per) {
    const n = Math.min(per, hi - r), a = r * size, b = a + n * size;
    for (const [arr, i] of ins) w.buf[i].set(arr.subarray(a, b));
    kernel(r, n);
    for (const [arr, i] of outs) arr.set(w.buf[i].subarray(0, n * size), a);
  }
  return true;
}

/**
 * bf16 of elements [lo, hi) of fp32 `src`, round to nearest even: into `dst` as rounded fp32 (a Float32Array), or
 * as its 16 bits (a Uint16Array).
 */
export function simdBf16(
  src: Float32Array,
  dst: Float32Array | Uint16Array,
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w) return false;
  const [px, pb] = w.ptr, bits = dst instanceof Uint16Array;
  const out = new Uint16Array(w.buf[1].buffer, pb, w.chunk * 2);
  for (let a = lo; a < hi; a += w.chunk) {
    const n = Math.min(w.chunk, hi - a);
    w.buf[0].set(src.subarray(a, a + n));
    w.k.bf16_round(px, bits ? pb : 0, (n + 7) & ~7);
    if (bits) dst.set(out.subarray(0, n), a);
    else dst.set(w.buf[0].subarray(0, n), a);
  }
  return true;
}

/** out = a ∘ b over elements [lo, hi), op as row_kernels.ts's OP: the same bits as the JS loop (IEEE float32). */
export function simdBinary(op: number, a: Arr, b: Arr, out: Arr, lo: number, hi: number): boolean {
  const w = wasm();
  if (!w) return false;
  const [pa, pb, po] = w.ptr;
  return chunked(w, lo, hi, w.chunk, 1, [[a, 0], [b, 1]], [[out, 2]], (_, n) => {
    w.k.binary(pa, pb, po, up4(n), op);
  });
}

/** y, t = GELU and its tanh over elements [lo, hi) of x. */
export function simdGelu(x: Arr, y: Arr, t: Arr, lo: number, hi: number): boolean {
  const w = wasm();
  if (!w) return false;
  const [px, py, pt] = w.ptr;
  return chunked(w, lo, hi, w.chunk, 1, [[x, 0]], [[y, 1], [t, 2]], (_, n) => {
    w.k.gelu_tanh(px, py, pt, up4(n));
  });
}

/** dx = GELU's gradient over elements [lo, hi) from dy, x and the forward's tanh. */
export function simdGeluGrad(g: Arr, x: Arr, t: Arr, dx: Arr, lo: number, hi: number): boolean {
  const w = wasm();
  if (!w) return false;
  const [pg, px, pt, pd] = w.ptr;
  return chunked(w, lo, hi, w.chunk, 1, [[g, 0], [x, 1], [t, 2]], [[dx, 3]], (_, n) => {
    w.k.gelu_tanh_grad(pg, px, pt, pd, up4(n));
  });
}

/**
 * Softmax of rows [lo, hi) of z (rows of V), times k, into p, with loss[r] = log Σ e^z − z[target] (the
 * cross-entropy). Rows longer than a scratch array are left to the JS loop.
 */
export function simdSoftmaxCrossEntropy(
  z: Arr,
  targets: Arr,
  p: Arr,
  loss: Arr,
  V: number,
  k: number,
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w || up4(V) > w.chunk) return false;
  const [bz] = w.buf, [pz, , , , , pout] = w.ptr;
  const per = Math.floor(w.chunk / up4(V));
  const out = new Float64Array(w.buf[5].buffer, pout, 2 * per);
  for (let r = lo; r < hi; r += per) {
    const rows = Math.min(per, hi - r);
    for (let i = 0; i < rows; i++) bz.set(z.subarray((r + i) * V, (r + i + 1) * V), i * up4(V));
    w.k.softmax_rows(pz, pz, rows, V, k, pout);
    for (let i = 0; i < rows; i++) {
      p.set(bz.subarray(i * up4(V), i * up4(V) + V), (r + i) * V);
      const lse = Math.log(out[2 * i]) + out[2 * i + 1];
      loss[r + i] = lse - z[(r + i) * V + targets[r + i]];
    }
  }
  return true;
}

/** Causal softmax y of x·scale over rows [lo, hi) of T (a multiple of 4); with a dropout mask, out = y ⊙ mask. */
export function simdCausalSoftmax(
  x: Arr,
  y: Arr,
  mask: Arr | undefined,
  out: Arr | undefined,
  T: number,
  scale: number,
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w || T % 4 !== 0 || T > w.chunk) return false;
  const [px, py, pm, po] = w.ptr;
  const ins: [Arr, number][] = mask ? [[x, 0], [mask, 2]] : [[x, 0]];
  const outs: [Arr, number][] = mask ? [[y, 1], [out!, 3]] : [[y, 1]];
  return chunked(w, lo, hi, Math.floor(w.chunk / T), T, ins, outs, (r, n) => {
    w.k.causal_softmax(px, py, mask ? pm : 0, mask ? po : 0, n, T, r % T, scale);
  });
}

/** The causal softmax's input gradient over rows [lo, hi) of T (a multiple of 4); dy ⊙ mask with a mask. */
export function simdCausalSoftmaxGrad(
  g: Arr,
  y: Arr,
  mask: Arr | undefined,
  dx: Arr,
  T: number,
  scale: number,
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w || T % 4 !== 0 || T > w.chunk) return false;
  const [pg, py, pd, pm] = w.ptr;
  const ins: [Arr, number][] = mask ? [[g, 0], [y, 1], [mask, 3]] : [[g, 0], [y, 1]];
  return chunked(w, lo, hi, Math.floor(w.chunk / T), T, ins, [[dx, 2]], (r, n) => {
    w.k.causal_softmax_grad(pg, py, mask ? pm : 0, pd, n, T, r % T, scale);
  });
}

/**
 * LayerNorm of rows [lo, hi) of C (a multiple of 4) values; mean and rstd per row (scratch array 4 holds them,
 * rstd from its middle).
 */
export function simdLayerNorm(
  x: Arr,
  g: Arr,
  b: Arr,
  y: Arr,
  mean: Arr,
  rstd: Arr,
  C: number,
  eps: number,
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w || C % 4 !== 0 || C > w.chunk) return false;
  const [px, pg, pb, py, ps] = w.ptr, half = w.chunk / 2, bs = w.buf[4];
  w.buf[1].set(g.subarray(0, C));
  w.buf[2].set(b.subarray(0, C));
  return chunked(
    w,
    lo,
    hi,
    Math.min(Math.floor(w.chunk / C), half),
    C,
    [[x, 0]],
    [[y, 3]],
    (r, n) => {
      w.k.layer_norm(px, pg, pb, py, ps, ps + 4 * half, n, C, eps);
      mean.set(bs.subarray(0, n), r);
      rstd.set(bs.subarray(half, half + n), r);
    },
  );
}

/** LayerNorm's input gradient over rows [lo, hi) of C (a multiple of 4). */
export function simdLayerNormGradX(
  g: Arr,
  x: Arr,
  wt: Arr,
  mean: Arr,
  rstd: Arr,
  dx: Arr,
  C: number,
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w || C % 4 !== 0 || C > w.chunk) return false;
  const [pg, px, pw, ps, pd] = w.ptr, half = w.chunk / 2, bs = w.buf[3];
  w.buf[2].set(wt.subarray(0, C));
  const per = Math.min(Math.floor(w.chunk / C), half);
  return chunked(w, lo, hi, per, C, [[g, 0], [x, 1]], [[dx, 4]], (r, n) => {
    bs.set(mean.subarray(r, r + n));
    bs.set(rstd.subarray(r, r + n), half);
    w.k.layer_norm_grad_x(pg, px, pw, ps, ps + 4 * half, pd, n, C);
  });
}

/** Floats per AdamW chunk: its four arrays stay in the L2 cache between the copies and the kernel. */
const ADAM_CHUNK = 16384;

/** One AdamW step over parameters [lo, hi) in place. c: [β1, 1−β1, β2, 1−β2, decay, s, e] as in row_kernels.ts. */
export function simdAdamW(
  P: Arr,
  G: Arr,
  M: Arr,
  V: Arr,
  c: number[],
  lo: number,
  hi: number,
  copy?: Float32Array | Uint16Array,
): boolean {
  const w = wasm();
  if (!w) return false;
  const [pp, pg, pm, pv, pb] = w.ptr;
  const bits = new Uint16Array(w.buf[4].buffer, pb, ADAM_CHUNK);
  for (let a = lo; a < hi; a += ADAM_CHUNK) {
    const n = Math.min(ADAM_CHUNK, hi - a), b = a + n;
    for (const [arr, i] of [[P, 0], [G, 1], [M, 2], [V, 3]] as const) {
      w.buf[i].set(arr.subarray(a, b));
    }
    w.k.adamw(pp, pg, pm, pv, up4(n), c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
    for (const [arr, i] of [[P, 0], [M, 2], [V, 3]] as const) arr.set(w.buf[i].subarray(0, n), a);
    if (!copy) continue;
    // bf16-mixed: the updated weights' bf16 copy while they are in the module (bf16.ts).
    w.k.bf16_round(pp, copy instanceof Uint16Array ? pb : 0, (n + 7) & ~7);
    copy.set(copy instanceof Uint16Array ? bits.subarray(0, n) : w.buf[0].subarray(0, n), a);
  }
  return true;
}
