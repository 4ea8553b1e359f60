/**
 * WebAssembly SIMD versions of the hot row and element kernels of parallel.ts (GELU, LayerNorm, causal softmax,
 * the cross-entropy's softmax and their gradients): V8 runs the JS loops one double at a time, 6–20 ns per
 * element here, the SIMD ones (simd/kernels.c) four floats at a time at a few ns per element, copies included.
 *
 * Each thread (the main one, each helper Worker) instantiates its own module. A call copies chunks of its range
 * into the module's scratch arrays, runs the kernel there and copies the results back. Each function returns false
 * when the module is not in use (no WebAssembly SIMD, `GPT_WASM_SIMD=0`, or a shape it does not take), and the
 * caller then runs its JS loop. Results agree with the JS loops to float32 rounding (tests/simd_test.ts).
 */
import { SOURCE_SHA256, WASM_BASE64 } from "./simd_wasm.ts";

type Arr = Float32Array | Float64Array | Int32Array;

interface Exports {
  buf(i: number): number;
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

/** Floats in each scratch array (kernels.c's CHUNK). */
const CHUNK = 65536;

interface Module {
  k: Exports;
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
    return { k, ptr, buf: ptr.map((p) => new Float32Array(memory.buffer, p, CHUNK)) };
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

/** y, t = GELU and its tanh over elements [lo, hi) of x. */
export function simdGelu(x: Arr, y: Arr, t: Arr, lo: number, hi: number): boolean {
  const w = wasm();
  if (!w) return false;
  const [bx, by, bt] = w.buf, [px, py, pt] = w.ptr;
  for (let i = lo; i < hi; i += CHUNK) {
    const m = Math.min(CHUNK, hi - i);
    bx.set(x.subarray(i, i + m));
    w.k.gelu_tanh(px, py, pt, up4(m));
    y.set(by.subarray(0, m), i);
    t.set(bt.subarray(0, m), i);
  }
  return true;
}

/** dx = GELU's gradient over elements [lo, hi) from dy, x and the forward's tanh. */
export function simdGeluGrad(g: Arr, x: Arr, t: Arr, dx: Arr, lo: number, hi: number): boolean {
  const w = wasm();
  if (!w) return false;
  const [bg, bx, bt, bd] = w.buf, [pg, px, pt, pd] = w.ptr;
  for (let i = lo; i < hi; i += CHUNK) {
    const m = Math.min(CHUNK, hi - i);
    bg.set(g.subarray(i, i + m));
    bx.set(x.subarray(i, i + m));
    bt.set(t.subarray(i, i + m));
    w.k.gelu_tanh_grad(pg, px, pt, pd, up4(m));
    dx.set(bd.subarray(0, m), i);
  }
  return true;
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
  if (!w || up4(V) > CHUNK) return false;
  const [bz] = w.buf, [pz, , , , , pout] = w.ptr;
  const per = Math.floor(CHUNK / up4(V));
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
  if (!w || T % 4 !== 0 || T > CHUNK) return false;
  const [bx, by, bm, bo] = w.buf, [px, py, pm, po] = w.ptr, per = Math.floor(CHUNK / T);
  for (let r = lo; r < hi; r += per) {
    const rows = Math.min(per, hi - r), a = r * T, b = (r + rows) * T;
    bx.set(x.subarray(a, b));
    if (mask) bm.set(mask.subarray(a, b));
    w.k.causal_softmax(px, py, mask ? pm : 0, mask ? po : 0, rows, T, r % T, scale);
    y.set(by.subarray(0, rows * T), a);
    if (mask) out!.set(bo.subarray(0, rows * T), a);
  }
  return true;
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
  if (!w || T % 4 !== 0 || T > CHUNK) return false;
  const [bg, by, bd, bm] = w.buf, [pg, py, pd, pm] = w.ptr, per = Math.floor(CHUNK / T);
  for (let r = lo; r < hi; r += per) {
    const rows = Math.min(per, hi - r), a = r * T, b = (r + rows) * T;
    bg.set(g.subarray(a, b));
    by.set(y.subarray(a, b));
    if (mask) bm.set(mask.subarray(a, b));
    w.k.causal_softmax_grad(pg, py, mask ? pm : 0, pd, rows, T, r % T, scale);
    dx.set(bd.subarray(0, rows * T), a);
  }
  return true;
}

/** LayerNorm of rows [lo, hi) of C (a multiple of 4) values; mean and rstd per row. */
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
  if (!w || C % 4 !== 0 || C > CHUNK) return false;
  const [bx, bg, bb, by, bs] = w.buf, [px, pg, pb, py, ps] = w.ptr;
  const per = Math.min(Math.floor(CHUNK / C), CHUNK / 2);
  bg.set(g.subarray(0, C));
  bb.set(b.subarray(0, C));
  for (let r = lo; r < hi; r += per) {
    const rows = Math.min(per, hi - r);
    bx.set(x.subarray(r * C, (r + rows) * C));
    w.k.layer_norm(px, pg, pb, py, ps, ps + 4 * (CHUNK / 2), rows, C, eps);
    y.set(by.subarray(0, rows * C), r * C);
    mean.set(bs.subarray(0, rows), r);
    rstd.set(bs.subarray(CHUNK / 2, CHUNK / 2 + rows), r);
  }
  return true;
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
  if (!w || C % 4 !== 0 || C > CHUNK) return false;
  const [bg, bx, bw, bs, bd] = w.buf, [pg, px, pw, ps, pd] = w.ptr;
  const per = Math.min(Math.floor(CHUNK / C), CHUNK / 2);
  bw.set(wt.subarray(0, C));
  for (let r = lo; r < hi; r += per) {
    const rows = Math.min(per, hi - r);
    bg.set(g.subarray(r * C, (r + rows) * C));
    bx.set(x.subarray(r * C, (r + rows) * C));
    bs.set(mean.subarray(r, r + rows));
    bs.set(rstd.subarray(r, r + rows), CHUNK / 2);
    w.k.layer_norm_grad_x(pg, px, pw, ps, ps + 4 * (CHUNK / 2), pd, rows, C);
    dx.set(bd.subarray(0, rows * C), r * C);
  }
  return true;
}

/** Floats per AdamW chunk: its four arrays stay in the L2 cache between the copies and the kernel. */
const ADAM_CHUNK = 16384;

/** One AdamW step over parameters [lo, hi) in place. c: [β1, 1−β1, β2, 1−β2, decay, s, e] as in parallel.ts. */
export function simdAdamW(
  P: Arr,
  G: Arr,
  M: Arr,
  V: Arr,
  c: number[],
  lo: number,
  hi: number,
): boolean {
  const w = wasm();
  if (!w) return false;
  const [bp, bg, bm, bv] = w.buf, [pp, pg, pm, pv] = w.ptr;
  for (let i = lo; i < hi; i += ADAM_CHUNK) {
    const n = Math.min(ADAM_CHUNK, hi - i), j = i + n;
    bp.set(P.subarray(i, j)),
      bg.set(G.subarray(i, j)),
      bm.set(M.subarray(i, j)),
      bv.set(V.subarray(i, j));
    w.k.adamw(pp, pg, pm, pv, up4(n), c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
    P.set(bp.subarray(0, n), i), M.set(bm.subarray(0, n), i), V.set(bv.subarray(0, n), i);
  }
  return true;
}
