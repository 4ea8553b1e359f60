import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { CPU_BACKEND, registerCpuBackend } from "../lib/backends/cpu/cpu_backend.ts";
import { fastExp } from "../lib/backends/cpu/fused_kernels.ts";
import {
  fusedAttention,
  fusedCausalSoftmax,
  fusedCrossEntropy,
  fusedGelu,
  fusedLayerNorm,
} from "../lib/backends/backend.ts";
import { readyHelpers, splitCalls } from "../lib/backends/cpu/pool.ts";

const blas = registerCpuBackend();
if (!blas.ok) console.warn(`fused_cpu_test: kernel tests skipped: ${blas.reason}`);
const opts = { ignore: !blas.ok, sanitizeResources: false, sanitizeOps: false };

function seeded(shape: number[], seed: number, scale = 1): Float32Array {
  const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2147483648 - 1) * scale;
  }
  return out;
}

type Input = {
  shape: number[];
  seed: number;
  scale?: number;
  dtype?: "float32" | "int32";
  values?: number[];
};

async function on(
  backend: string,
  inputs: Input[],
  fn: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[] | null,
) {
  await tf.setBackend(backend);
  const xs = inputs.map((i) =>
    i.values
      ? tf.tensor(i.values, i.shape, i.dtype ?? "float32")
      : tf.tensor(seeded(i.shape, i.seed, i.scale), i.shape)
  );
  const out = tf.tidy(() => {
    const r = fn(...xs);
    if (r === null) throw new Error(`fused op missing on ${backend}`);
    return r;
  });
  const outs = Array.isArray(out) ? out : [out];
  const res = outs.map((t) => ({ shape: t.shape, values: Float32Array.from(t.dataSync()) }));
  tf.dispose([...xs, ...outs]);
  return res;
}

function assertClose(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  assertEquals(got.length, want.length, what);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    if (Number.isNaN(want[i]) || !Number.isFinite(want[i])) {
      assert(Object.is(got[i], want[i]), `${what}: element ${i} is ${got[i]}, want ${want[i]}`);
      continue;
    }
    worst = Math.max(worst, Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i])));
  }
  assert(worst <= tol, `${what}: max relative difference ${worst} > ${tol}`);
}

/** Runs `fast` on our cpu backend and `ref` on TF.js's cpu (the same function unless given) and compares every output. */
async function compare(
  what: string,
  inputs: Input[],
  fast: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[] | null,
  ref = fast,
  tol = 1e-6,
): Promise<void> {
  const want = await on("cpu", inputs, ref);
  const got = await on(CPU_BACKEND, inputs, fast);
  assertEquals(got.length, want.length, what);
  for (let i = 0; i < got.length; i++) {
    assertEquals(got[i].shape, want[i].shape, what);
    assertClose(got[i].values, want[i].values, tol, `${what} [output ${i}]`);
  }
}

Deno.test("fastExp stays within float32 precision of Math.exp and keeps the float32 limits", () => {
  let worst = 0;
  for (let x = -103; x < 88.7; x += 0.00137) {
    worst = Math.max(worst, Math.abs(fastExp(x) / Math.exp(x) - 1));
  }
  assert(worst < 1e-9, `relative error ${worst}`);
  assertEquals(fastExp(0), 1);
  const f32 = (x: number) => Math.fround(fastExp(x));
  assertEquals([f32(-1000), f32(-Infinity), f32(1000), f32(Infinity)], [0, 0, Infinity, Infinity]);
  assert(Number.isNaN(fastExp(NaN)));
});

Deno.test({
  name: "broadcasting Add/Sub/Multiply/RealDiv match the cpu backend on every broadcast pattern",
  ...opts,
  fn: async () => {
    const pairs: [number[], number[]][] = [
      [[6, 7], [6, 7]],
      [[6, 7], [7]], // bias row
      [[6, 7], [6, 1]], // per-row column (LayerNorm mean)
      [[6, 7], []], // scalar
      [[], [6, 7]],
      [[1, 7], [6, 1]], // both broadcast
      [[2, 3, 4, 5], [4, 5]], // causal mask on scores
      [[2, 3, 4, 5], [2, 1, 4, 1]],
      [[2, 1, 4, 1], [1, 3, 1, 5]],
      [[3, 1, 5], [3, 4, 5]],
      [[0, 5], [5]], // empty
    ];
    const ops: [string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor][] = [
      ["add", tf.add],
      ["sub", tf.sub],
      ["mul", tf.mul],
      ["div", tf.div],
    ];
    for (const [sa, sb] of pairs) {
      for (const [name, op] of ops) {
        await compare(
          `${name} [${sa}] [${sb}]`,
          [{ shape: sa, seed: 1 }, { shape: sb, seed: 2 }],
          op,
        );
      }
    }
    // Infinities and NaN flow through like on cpu; int32 takes the cpu kernel.
    await compare(
      "add with -Infinity mask",
      [{ shape: [2, 2], seed: 3 }, { shape: [2, 2], seed: 0, values: [0, -Infinity, 0, 0] }],
      tf.add,
    );
    await compare(
      "int32 add",
      [{ shape: [3], seed: 0, dtype: "int32", values: [1, 2, 3] }, {
        shape: [1],
        seed: 0,
        dtype: "int32",
        values: [5],
      }],
      tf.add,
    );
  },
});

Deno.test({
  name: "Exp, Tanh, Square and Pow match the cpu backend",
  ...opts,
  fn: async () => {
    const x = { shape: [40, 50], seed: 20, scale: 12 };
    const special = {
      shape: [9],
      seed: 0,
      values: [0, -0, 1e-9, -3e-5, 1e-3, NaN, Infinity, -Infinity, -90],
    };
    for (const input of [x, special]) {
      await compare("exp", [input], (v) => tf.exp(v), undefined, 1e-6);
      await compare("tanh", [input], (v) => tf.tanh(v), undefined, 1e-6);
      await compare("square", [input], (v) => tf.square(v));
      for (const e of [1, 2, 3, 4, 0.5]) await compare(`pow ${e}`, [input], (v) => tf.pow(v, e));
    }
  },
});

Deno.test({
  name: "Transpose, Sum and Max match the cpu backend",
  ...opts,
  fn: async () => {
    const helpers = await readyHelpers(); // so that the large cases below are split (one per core)
    const splitsBefore = splitCalls();
    for (
      const [shape, perm] of [
        [[2, 5, 3, 4], [0, 2, 1, 3]], // attention heads: short contiguous runs
        [[2, 3, 2, 5000], [0, 2, 1, 3]], // runs long enough to be copied with set()
        [[6, 7], [1, 0]],
        [[2, 3, 4], [2, 0, 1]],
        [[2, 1, 3], [1, 0, 2]],
        [[4, 64, 12, 64], [0, 2, 1, 3]], // large enough to be split across threads
      ]
    ) {
      await compare(
        `transpose [${shape}] [${perm}]`,
        [{ shape, seed: 4 }],
        (x) => tf.transpose(tf.add(x, 0), perm), // an Add's output lives in shared memory: splittable
      );
    }
    const reductions: [number[], number | number[], boolean][] = [
      [[6, 7], -1, false],
      [[6, 7], 0, false], // bias gradient
      [[2, 3, 7], [0, 1], false],
      [[2, 3, 7], [1, 2], true],
      [[2, 3, 7], 1, false], // middle axis: cpu fallback
      [[6, 7], [0, 1], false],
      [[3000, 40], 0, false], // columns split across threads
      [[40, 3000], -1, false], // rows split across threads
    ];
    for (const [shape, axis, keep] of reductions) {
      await compare(
        `sum [${shape}] ${axis} ${keep}`,
        [{ shape, seed: 5 }],
        (x) => tf.sum(tf.add(x, 0), axis, keep),
      );
      await compare(
        `max [${shape}] ${axis} ${keep}`,
        [{ shape, seed: 6 }],
        (x) => tf.max(x, axis, keep),
      );
    }
    if (helpers > 0) assert(splitCalls() - splitsBefore >= 3, "the large cases were split");
  },
});

Deno.test({
  name: "GatherV2 of rows matches the cpu backend; an index out of range is the cpu kernel's error",
  ...opts,
  fn: async () => {
    const ids = { shape: [2, 3], seed: 0, dtype: "int32" as const, values: [4, 0, 4, 9, 2, 1] };
    await compare(
      "gather rows (10, 3, 2)",
      [{ shape: [10, 3, 2], seed: 11 }, ids],
      (x, i) => tf.gather(x, i),
    );
    await compare(
      "gather columns: cpu kernel",
      [{ shape: [3, 10], seed: 12 }, ids],
      (x, i) => tf.gather(x, i, 1),
    );
    await tf.setBackend(CPU_BACKEND);
    const errorOf = (backend: string) => {
      tf.setBackend(backend);
      try {
        tf.gather(tf.zeros([3, 2]), tf.tensor1d([1, 3], "int32")).dataSync();
        return "no error";
      } catch (err) {
        return String(err);
      }
    };
    const want = errorOf("cpu");
    assert(want !== "no error");
    assertEquals(errorOf(CPU_BACKEND), want);
  },
});

Deno.test({
  name: "Softmax and UnsortedSegmentSum match the cpu backend",
  ...opts,
  fn: async () => {
    await compare(
      "softmax rank 4",
      [{ shape: [2, 3, 5, 9], seed: 7, scale: 8 }],
      (x) => tf.softmax(x),
    );
    await compare(
      "softmax with a -Infinity mask",
      [{ shape: [3, 3], seed: 8 }, {
        shape: [3, 3],
        seed: 0,
        values: [0, -Infinity, -Infinity, 0, 0, -Infinity, 0, 0, 0],
      }],
      (x, m) => tf.softmax(tf.add(x, m)),
    );
    await compare(
      "unsortedSegmentSum with repeated ids",
      [{ shape: [5, 4], seed: 9 }, {
        shape: [5],
        seed: 0,
        dtype: "int32",
        values: [3, 0, 3, 6, 3],
      }],
      (x, ids) => tf.unsortedSegmentSum(x, ids as tf.Tensor1D, 7),
    );
  },
});

const C_GELU = Math.sqrt(2 / Math.PI);
const composedGelu = (x: tf.Tensor) =>
  tf.mul(
    tf.mul(x, 0.5),
    tf.add(tf.tanh(tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), C_GELU)), 1),
  );
function composedLayerNorm(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-5))), w), b);
}
const composedCrossEntropy = (z: tf.Tensor, t: tf.Tensor) =>
  tf.neg(tf.mean(tf.sum(tf.mul(tf.logSoftmax(z), tf.oneHot(t as tf.Tensor1D, z.shape[1]!)), -1)));

Deno.test({
  name: "fused GELU, LayerNorm and cross-entropy equal the composed ops, forward and gradients",
  ...opts,
  fn: async () => {
    const x = { shape: [6, 16], seed: 10, scale: 4 };
    await compare("gelu", [x], (v) => fusedGelu(v), composedGelu, 1e-6);
    await compare(
      "gelu grad",
      [x, { shape: [6, 16], seed: 11 }],
      (v, w) => tf.grad((u: tf.Tensor) => tf.sum(tf.mul(fusedGelu(u)!, w)))(v),
      (v, w) => tf.grad((u: tf.Tensor) => tf.sum(tf.mul(composedGelu(u), w)))(v),
      1e-5,
    );
    const ln = [x, { shape: [16], seed: 12 }, { shape: [16], seed: 13 }, {
      shape: [6, 16],
      seed: 14,
    }];
    await compare(
      "layerNorm",
      ln.slice(0, 3),
      (a, w, b) => fusedLayerNorm(a, w, b),
      composedLayerNorm,
      1e-5,
    );
    await compare(
      "layerNorm grads",
      ln,
      (a, w, b, r) =>
        tf.grads((p: tf.Tensor, q: tf.Tensor, s: tf.Tensor) =>
          tf.sum(tf.mul(fusedLayerNorm(p, q, s)!, r))
        )([a, w, b]),
      (a, w, b, r) =>
        tf.grads((p: tf.Tensor, q: tf.Tensor, s: tf.Tensor) =>
          tf.sum(tf.mul(composedLayerNorm(p, q, s), r))
        )([
          a,
          w,
          b,
        ]),
      1e-5,
    );
    const ce = [{ shape: [5, 11], seed: 15, scale: 6 }, {
      shape: [5],
      seed: 0,
      dtype: "int32" as const,
      values: [0, 10, 3, 3, 7],
    }];
    await compare(
      "crossEntropy",
      ce,
      (z, t) => fusedCrossEntropy(z as tf.Tensor2D, t as tf.Tensor1D),
      composedCrossEntropy,
      1e-6,
    );
    await compare(
      "crossEntropy grad (the loss itself: the forward's array, shared)",
      ce,
      (z, t) =>
        tf.grad((u: tf.Tensor) => fusedCrossEntropy(u as tf.Tensor2D, t as tf.Tensor1D)!)(z),
      (z, t) => tf.grad((u: tf.Tensor) => composedCrossEntropy(u, t))(z),
      1e-6,
    );
    await compare(
      "crossEntropy grad (scaled loss)",
      ce,
      (z, t) =>
        tf.grad((u: tf.Tensor) =>
          tf.mul(fusedCrossEntropy(u as tf.Tensor2D, t as tf.Tensor1D)!, 3)
        )(z),
      (z, t) => tf.grad((u: tf.Tensor) => tf.mul(composedCrossEntropy(u, t), 3))(z),
      1e-6,
    );
  },
});

/** The book's attention weights: softmax((scores + causal −∞ mask) / √d) with composed ops. */
function composedCausalSoftmax(s: tf.Tensor, scale: number): tf.Tensor {
  const T = s.shape[s.shape.length - 1];
  const m = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = -Infinity;
  return tf.softmax(tf.mul(tf.add(s, tf.tensor2d(m, [T, T])), scale));
}

Deno.test({
  name: "fused causal softmax equals mask + scale + softmax, forward and gradient",
  ...opts,
  fn: async () => {
    const scale = 1 / Math.sqrt(8);
    for (const T of [7, 8]) { // 8: the SIMD kernels; 7: the JS loops (the dropout paths: fused attention below)
      const s = { shape: [2, 3, T, T], seed: 30, scale: 5 }, w = { shape: [2, 3, T, T], seed: 31 };
      await compare(
        `causal softmax T=${T}`,
        [s],
        (x) => fusedCausalSoftmax(x, scale),
        (x) => composedCausalSoftmax(x, scale),
      );
      await compare(
        `causal softmax grad T=${T}`,
        [s, w],
        (x, r) => tf.grad((u: tf.Tensor) => tf.sum(tf.mul(fusedCausalSoftmax(u, scale)!, r)))(x),
        (x, r) => tf.grad((u: tf.Tensor) => tf.sum(tf.mul(composedCausalSoftmax(u, scale), r)))(x),
        1e-6,
      );
    }
  },
});

/** The book's attention core with composed ops: heads split by transposes, masked softmax, dropout, heads merged. */
function composedAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  B: number,
  H: number,
  mask: tf.Tensor | null,
): tf.Tensor {
  const [N, C] = q.shape, T = N / B, D = C / H;
  const heads = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [B, T, H, D]), [0, 2, 1, 3]);
  let w = composedCausalSoftmax(tf.matMul(heads(q), heads(k), false, true), 1 / Math.sqrt(D));
  if (mask) w = tf.mul(w, mask);
  return tf.reshape(tf.transpose(tf.matMul(w, heads(v)), [0, 2, 1, 3]), [N, C]);
}

Deno.test({
  name:
    "fused attention (heads in place, with and without dropout) equals the composed ops, forward and gradients",
  ...opts,
  fn: async () => {
    // SIMD softmax rows, then the JS ones; T = 132: the heads' products in causal parts of 64 rows (64, 64, 4)
    for (const [B, T, H, D] of [[2, 8, 3, 4], [3, 5, 2, 6], [1, 132, 2, 4]]) {
      const N = B * T, C = H * D;
      const q = { shape: [N, C], seed: 40, scale: 2 }, k = { shape: [N, C], seed: 41, scale: 2 };
      const v = { shape: [N, C], seed: 42 }, r = { shape: [N, C], seed: 43 };
      const keep = Array.from(seeded([B * H * T * T], 44), (u) => (u > -0.8 ? 1 / 0.9 : 0));
      const m = { shape: [B, H, T, T], seed: 0, values: keep };
      const what = `B=${B} T=${T} H=${H} D=${D}`;
      for (const withMask of [false, true]) {
        const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, mk: tf.Tensor) =>
          fusedAttention(
            a as tf.Tensor2D,
            b as tf.Tensor2D,
            c as tf.Tensor2D,
            B,
            H,
            1 / Math.sqrt(D),
            withMask ? mk : null,
          );
        const g = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, mk: tf.Tensor) =>
          composedAttention(a, b, c, B, H, withMask ? mk : null);
        await compare(`attention ${what} mask=${withMask}`, [q, k, v, m], f, g);
        type Attn = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, mk: tf.Tensor) => tf.Tensor | null;
        const grads =
          (fn: Attn) => (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, mk: tf.Tensor, w: tf.Tensor) =>
            tf.grads((x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) =>
              tf.sum(tf.mul(fn(x, y, z, mk)!, w))
            )([a, b, c]);
        await compare(
          `attention grads ${what} mask=${withMask}`,
          [q, k, v, m, r],
          grads(f),
          grads(g),
          1e-5,
        );
      }
    }
  },
});

Deno.test({
  name: "fused ops return null where the backend lacks their kernels",
  ...opts,
  fn: async () => {
    await tf.setBackend("cpu");
    const x = tf.ones([2, 4]);
    assertEquals(fusedGelu(x), null);
    assertEquals(fusedCausalSoftmax(x, 1), null);
    assertEquals(
      fusedAttention(x as tf.Tensor2D, x as tf.Tensor2D, x as tf.Tensor2D, 1, 1, 1, null),
      null,
    );
    assertEquals(fusedLayerNorm(x, tf.ones([4]), tf.zeros([4])), null);
    assertEquals(fusedCrossEntropy(x as tf.Tensor2D, tf.tensor1d([0, 1], "int32")), null);
    x.dispose();
  },
});
