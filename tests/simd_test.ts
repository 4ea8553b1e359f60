/**
 * The WebAssembly SIMD kernels (lib/backends/cpu/simd_kernels.ts) against the JS loops they replace: same kernels of
 * row_kernels.ts run once with the module and once without, on seeded data with the shapes of a GPT step and the
 * awkward cases (rows not a multiple of 4, several chunks, extreme inputs).
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { KERNELS } from "../lib/backends/cpu/row_kernels.ts";
import { BUILT_FROM, useSimd } from "../lib/backends/cpu/simd_kernels.ts";
import { sourceSha256 } from "../tasks/build_wasm.ts";

const simd = useSimd();

function seeded(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2147483648 - 1) * scale;
  }
  return out;
}

/** Runs `KERNELS[name]` over [0, n) with the SIMD module and without; returns both sets of arrays. */
function both(
  name: string,
  arrays: () => (Float32Array | Float64Array | Int32Array)[],
  s: number[],
  n: number,
) {
  const run = (on: boolean) => {
    useSimd(on);
    const a = arrays();
    KERNELS[name](a, s, 0, n, 0);
    return a;
  };
  try {
    return { fast: run(true), ref: run(false) };
  } finally {
    useSimd(true);
  }
}

/** max |got − want| / (1 + |want|) over outputs `which`; NaN and ±∞ must match exactly. */
function worst(fast: ArrayLike<number>[], ref: ArrayLike<number>[], which: number[]): number {
  let w = 0;
  for (const i of which) {
    assertEquals(fast[i].length, ref[i].length);
    for (let k = 0; k < ref[i].length; k++) {
      const a = fast[i][k], b = ref[i][k];
      if (!Number.isFinite(b)) ok(Object.is(a, b), `output ${i}[${k}]: ${a}, want ${b}`);
      else w = Math.max(w, Math.abs(a - b) / (1 + Math.abs(b)));
    }
  }
  return w;
}

Deno.test("the embedded wasm module is built from the current kernels.c (else: deno task build-wasm)", async () => {
  const text = await Deno.readTextFile(
    new URL("../lib/backends/cpu/wasm_src/row_kernels.c", import.meta.url),
  );
  assertEquals(BUILT_FROM, await sourceSha256(text));
});

Deno.test("WebAssembly SIMD is available and in use by default", () => {
  ok(simd, "the module instantiates");
});

const opts = { ignore: !simd };

Deno.test({
  name: "SIMD GELU and its gradient match the JS loops to float32 rounding, extremes included",
  ...opts,
  fn: () => {
    const n = 65536 * 2 + 37; // three chunks, a ragged end
    const x = seeded(n, 1, 6);
    x.set([0, -0, 1e-8, -1e-8, 0.6249, 0.6251, 9.9, -10.1, 40, -40, 1e20, -3e38, NaN], 0);
    const { fast, ref } = both(
      "geluTanh",
      () => [x, new Float32Array(n), new Float32Array(n)],
      [],
      n,
    );
    const w = worst(fast, ref, [1, 2]);
    ok(w < 5e-7, `GELU: max relative difference ${w}`);
    ok(Number.isNaN(fast[1][12]), "NaN in, NaN out");
    const g = seeded(n, 2);
    const t = fast[2] as Float32Array;
    const grad = both("geluTanhGrad", () => [g, x, t, new Float32Array(n)], [], n);
    const wg = worst(grad.fast, grad.ref, [3]);
    ok(wg < 5e-7, `GELU grad: max relative difference ${wg}`);
  },
});

Deno.test({
  name:
    "SIMD add, subtract, multiply and divide give the JS loop's bits, zeros, NaN and infinities included",
  ...opts,
  fn: () => {
    const n = 65536 + 4099; // two chunks, a ragged end
    const a = seeded(n, 3, 1e3), b = seeded(n, 4, 1e-3);
    a.set([0, -0, 1, NaN, Infinity, 3e38, 1e-45, -1]);
    b.set([-0, -0, 0, 2, Infinity, 3e38, 3, 1e-45]);
    for (const op of [0, 1, 2, 3]) { // row_kernels.ts's OP
      const { fast, ref } = both("binary", () => [a, b, new Float32Array(n)], [op], n);
      const first = (fast[2] as Float32Array).findIndex((x, i) => !Object.is(x, ref[2][i]));
      ok(
        first < 0,
        `op ${op}: first difference at ${first}: ${fast[2][first]}, want ${ref[2][first]}`,
      );
    }
  },
});

Deno.test({
  name:
    "SIMD cross-entropy and its gradient match the JS loop (GPT-2's vocabulary, and short rows)",
  ...opts,
  fn: () => {
    for (const [V, rows] of [[50257, 3], [10, 7000], [3, 5]]) {
      const z = seeded(V * rows, V, 8);
      z[1] = 60, z[V + 2] = -1e30; // a dominant logit, a vanishing one
      const tv = Int32Array.from({ length: rows }, (_, r) => (r * 7919) % V);
      const { fast, ref } = both(
        "softmaxCrossEntropy",
        () => [z, tv, new Float32Array(V * rows), new Float64Array(rows)],
        [V, 1 / rows],
        rows,
      );
      const wp = worst(fast, ref, [2]), wl = worst(fast, ref, [3]);
      ok(wp < 5e-7 && wl < 5e-7, `V=${V}: probs ${wp}, losses ${wl}`);
    }
  },
});

Deno.test({
  name: "SIMD causal softmax and its gradient match the JS loops on (B, H, T, T) scores",
  ...opts,
  fn: () => {
    for (const T of [256, 12]) {
      const rows = 3 * T + 5; // a range that starts and ends mid-matrix below
      const x = seeded(rows * T, T, 10);
      const { fast, ref } = both(
        "causalSoftmax",
        () => [x, new Float32Array(rows * T)],
        [T, 0.125],
        rows,
      );
      const w = worst(fast, ref, [1]);
      ok(w < 5e-7, `T=${T}: ${w}`);
      const g = seeded(rows * T, 3);
      const y = fast[1] as Float32Array;
      const grad = both(
        "causalSoftmaxGrad",
        () => [g, y, new Float32Array(rows * T)],
        [T, 0.125],
        rows,
      );
      const wg = worst(grad.fast, grad.ref, [2]);
      ok(wg < 5e-7, `T=${T} grad: ${wg}`);
      // A range starting at row 7 (mid-matrix) gives the rows a whole-tensor call gives.
      useSimd(true);
      const part = new Float32Array(rows * T);
      KERNELS.causalSoftmax([x, part], [T, 0.125], 7, rows, 0);
      assertEquals(part.subarray(7 * T), (fast[1] as Float32Array).subarray(7 * T));
    }
  },
});

Deno.test({
  name: "SIMD LayerNorm and its input gradient match the JS loops",
  ...opts,
  fn: () => {
    for (const C of [768, 12]) {
      const rows = 200;
      const x = seeded(rows * C, C, 3), g = seeded(C, 5), b = seeded(C, 6);
      for (let k = 0; k < C; k++) x[C + k] = 1000 + x[C + k] * 1e-3; // a large mean, a small spread
      const { fast, ref } = both(
        "layerNorm",
        () => [x, g, b, new Float32Array(rows * C), new Float32Array(rows), new Float32Array(rows)],
        [C, 1e-5],
        rows,
      );
      const w = worst(fast, ref, [3, 4, 5]);
      ok(w < 5e-7, `C=${C}: ${w}`);
      const dy = seeded(rows * C, 7);
      const [, , , , mean, rstd] = fast as Float32Array[];
      const grad = both(
        "layerNormGradX",
        () => [dy, x, g, mean, rstd, new Float32Array(rows * C)],
        [C],
        rows,
      );
      const wg = worst(grad.fast, grad.ref, [5]);
      ok(wg < 5e-7, `C=${C} grad: ${wg}`);
    }
  },
});

Deno.test({
  name: "SIMD AdamW matches the JS loop (float32 against double) over several chunks",
  ...opts,
  fn: () => {
    const n = 16384 * 3 + 5;
    const p = seeded(n, 8), g = seeded(n, 9, 0.1), m = seeded(n, 10, 0.01);
    const v = seeded(n, 11, 1e-4).map(Math.abs);
    g[0] = 0, m[0] = 0, v[0] = 0; // a parameter without gradient: only the decay moves it
    // step 3 of lr 4e-4, weight decay 0.1 (PyTorch's constants as AdamW folds them)
    const t = 3, lr = 4e-4, c2 = Math.sqrt(1 - 0.999 ** t);
    const s = [0.9, 0.1, 0.999, 0.001, 1 - lr * 0.1, (lr / (1 - 0.9 ** t)) * c2, 1e-8 * c2];
    const { fast, ref } = both("adamw", () => [p.slice(), g, m.slice(), v.slice()], s, n);
    const w = worst(fast, ref, [0, 2, 3]);
    ok(w < 5e-7, `AdamW: ${w}`);
    ok(fast[0].some((x, i) => x !== p[i]), "the parameters moved");
  },
});
