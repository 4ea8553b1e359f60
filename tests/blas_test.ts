import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { fusedGelu, fusedLayerNorm } from "../lib/backends/backend.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  CPU_BACKEND,
  type CpuBackend,
  loadBlas,
  matrixLibrary,
  registerCpuBackend,
  useMatrixLibrary,
} from "../lib/backends/cpu/cpu_backend.ts";
import { isShared, setParallelism } from "../lib/backends/cpu/pool.ts";

const blas = registerCpuBackend();
if (!blas.ok) console.warn(`blas_test: skipped: ${blas.reason}`);
// Without OpenBLAS these tests pass on the WebAssembly GEMM: say which matrix library they ran on.
else console.warn(`blas_test: the blas backend runs on ${matrixLibrary()!.describe()}`);

/** Seeded uniform values in [-1, 1) so that every run compares the same numbers. */
function randn(shape: number[], seed: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2147483648 - 1;
  }
  return out;
}

/** Runs `fn` on `backend` with fresh tensors built from the same host data; returns each output's values. */
async function on(
  backend: string,
  inputs: { shape: number[]; seed: number }[],
  fn: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
): Promise<{ shape: number[]; values: Float32Array }[]> {
  await tf.setBackend(backend);
  const xs = inputs.map((i) => tf.tensor(randn(i.shape, i.seed), i.shape));
  const out = tf.tidy(() => fn(...xs));
  const outs = Array.isArray(out) ? out : [out];
  const res = outs.map((t) => ({ shape: t.shape, values: t.dataSync() as Float32Array }));
  tf.dispose([...xs, ...outs]);
  return res;
}

function assertClose(got: Float32Array, want: Float32Array, tol = 1e-4): void {
  assertEquals(got.length, want.length);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i])));
  }
  assert(worst <= tol, `max relative difference ${worst} > ${tol}`);
}

/** Compares the blas backend with the cpu backend on the same function and inputs. */
async function sameAsCpu(
  inputs: { shape: number[]; seed: number }[],
  fn: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
): Promise<void> {
  const want = await on("cpu", inputs, fn);
  const got = await on(CPU_BACKEND, inputs, fn);
  assertEquals(got.length, want.length);
  for (let i = 0; i < got.length; i++) {
    assertEquals(got[i].shape, want[i].shape);
    assertClose(got[i].values, want[i].values);
  }
}

const opts = { ignore: !blas.ok, sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "loadBlas finds cblas_sgemm and registering twice is harmless",
  ...opts,
  fn: () => {
    const res = loadBlas();
    assert(res.ok);
    assert(registerCpuBackend().ok);
  },
});

Deno.test({
  name: "blas matMul matches cpu for all four transpose combinations",
  ...opts,
  fn: async () => {
    const [M, K, N] = [37, 53, 29];
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        const a = { shape: tA ? [K, M] : [M, K], seed: 1 };
        const b = { shape: tB ? [N, K] : [K, N], seed: 2 };
        await sameAsCpu([a, b], (x, y) => tf.matMul(x, y, tA, tB));
      }
    }
  },
});

Deno.test({
  name: "blas one-row matMul (sampling's matrix-vector products) matches cpu on both libraries",
  ...opts,
  fn: async () => {
    try {
      for (const kind of ["native", "wasm"] as const) {
        if (!useMatrixLibrary(kind).ok) continue;
        for (const [K, N] of [[768, 1031], [53, 29]]) {
          for (const tB of [false, true]) {
            const b = { shape: tB ? [N, K] : [K, N], seed: 2 };
            await sameAsCpu([{ shape: [1, K], seed: 1 }, b], (x, y) => tf.matMul(x, y, false, tB));
            await sameAsCpu(
              [{ shape: [1, 1, K], seed: 3 }, b, { shape: [N], seed: 4 }],
              (x, y, c) => tf.fused.matMul({ a: x, b: y, transposeB: tB, bias: c }),
            );
          }
        }
      }
    } finally {
      useMatrixLibrary("auto");
    }
  },
});

Deno.test({
  name: "blas matMul is exact on a small hand-checked product",
  ...opts,
  fn: async () => {
    await tf.setBackend(CPU_BACKEND);
    const c = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5, 6], [7, 8]]));
    assertEquals(Array.from(c.dataSync()), [19, 22, 43, 50]);
    const ct = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5, 6], [7, 8]]), true, true);
    assertEquals(Array.from(ct.dataSync()), [23, 31, 34, 46]); // Aᵀ Bᵀ
    tf.dispose([c, ct]);
  },
});

Deno.test({
  name: "blas batched matMul matches cpu: rank 3, rank 4, broadcast batch dims, transposes",
  ...opts,
  fn: async () => {
    const cases: [number[], number[], boolean, boolean][] = [
      [[4, 8, 16], [4, 16, 8], false, false],
      [[2, 3, 8, 16], [2, 3, 8, 16], false, true], // attention scores q kᵀ
      [[2, 3, 8, 16], [2, 3, 8, 16], true, false],
      [[2, 3, 8, 8], [2, 3, 8, 16], false, false], // weights @ v
      [[4, 8, 16], [16, 5], false, false], // rank 3 against one matrix: a single sgemm
      [[4, 16, 8], [16, 5], true, false],
      [[8, 16], [3, 16, 5], false, false], // one matrix against a batch
      [[1, 8, 16], [6, 5, 16], false, true],
      [[1, 3, 8, 16], [2, 3, 16, 5], false, false], // broadcast inside rank 4
      [[3, 8, 16], [2, 3, 5, 16], false, true], // rank 3 broadcast against rank 4
    ];
    for (const [sa, sb, tA, tB] of cases) {
      await sameAsCpu(
        [{ shape: sa, seed: 3 }, { shape: sb, seed: 4 }],
        (x, y) => tf.matMul(x, y, tA, tB),
      );
    }
  },
});

Deno.test({
  // The cpu backend wraps batch indices modulo each side's batch size, which pairs the wrong matrices here;
  // blas broadcasts like NumPy, checked against explicitly tiled operands.
  name: "blas broadcasts [2,1] × [1,3] and [2,1] × [2,3] batch dims like NumPy",
  ...opts,
  fn: async () => {
    await tf.setBackend(CPU_BACKEND);
    for (
      const [sa, sb, ta, tb] of [
        [[2, 1, 4, 5], [1, 3, 5, 6], [1, 3, 1, 1], [2, 1, 1, 1]],
        [[2, 1, 4, 5], [2, 3, 5, 6], [1, 3, 1, 1], [1, 1, 1, 1]],
      ]
    ) {
      const a = tf.tensor(randn(sa, 5), sa), b = tf.tensor(randn(sb, 6), sb);
      const got = tf.matMul(a, b);
      const want = tf.matMul(tf.tile(a, ta), tf.tile(b, tb)); // equal batches: no broadcast involved
      assertEquals(got.shape, [2, 3, 4, 6]);
      assertClose(got.dataSync() as Float32Array, want.dataSync() as Float32Array, 1e-6);
      tf.dispose([a, b, got, want]);
    }
  },
});

Deno.test({
  name: "gradients through matMul equal the cpu backend's (2-D and batched)",
  ...opts,
  fn: async () => {
    for (const [tA, tB] of [[false, false], [false, true], [true, false], [true, true]]) {
      const a = { shape: tA ? [12, 9] : [9, 12], seed: 7 };
      const b = { shape: tB ? [10, 12] : [12, 10], seed: 8 };
      await sameAsCpu(
        [a, b],
        (x, y) =>
          tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.square(tf.matMul(p, q, tA, tB))))([
            x,
            y,
          ]),
      );
    }
    await sameAsCpu(
      [{ shape: [2, 3, 8, 4], seed: 9 }, { shape: [2, 3, 8, 4], seed: 10 }],
      (q, k) =>
        tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.softmax(tf.matMul(x, y, false, true))))([
          q,
          k,
        ]),
    );
  },
});

Deno.test({
  name: "_FusedMatMul with bias (and relu) matches cpu, forward and gradients",
  ...opts,
  fn: async () => {
    const x = { shape: [11, 16], seed: 11 },
      w = { shape: [7, 16], seed: 12 },
      bias = { shape: [7], seed: 13 };
    await sameAsCpu(
      [x, w, bias],
      (a, b, c) => tf.fused.matMul({ a, b, transposeB: true, bias: c }),
    );
    await sameAsCpu(
      [x, w, bias],
      (a, b, c) => tf.fused.matMul({ a, b, transposeB: true, bias: c, activation: "relu" }),
    );
    await sameAsCpu(
      [x, w, { shape: [11, 1], seed: 14 }], // a column bias takes the Add fallback
      (a, b, c) => tf.fused.matMul({ a, b, transposeB: true, bias: c }),
    );
    await sameAsCpu(
      [x, w, bias],
      (a, b, c) =>
        tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) =>
          tf.sum(tf.square(tf.fused.matMul({ a: p, b: q, transposeB: true, bias: r })))
        )([a, b, c]),
    );
  },
});

Deno.test({
  name: "the blas backend keeps no stray tensors after a matMul gradient",
  ...opts,
  fn: async () => {
    await tf.setBackend(CPU_BACKEND);
    const a = tf.tensor(randn([6, 5], 15), [6, 5]), b = tf.tensor(randn([4, 5], 16), [4, 5]);
    const before = tf.memory().numTensors;
    const g = tf.grads((p: tf.Tensor, q: tf.Tensor) =>
      tf.sum(
        tf.fused.matMul({
          a: p,
          b: q,
          transposeB: true,
          bias: tf.onesLike(q).slice([0, 0], [4, 1]).reshape([4]),
        }),
      )
    )([a, b]);
    assertEquals(tf.memory().numTensors, before + 2);
    tf.dispose([a, b, ...g]);
  },
});

/** Storage of a tensor on the blas backend without marking it as read out (what kernels see). */
function storage(t: tf.Tensor): Float32Array {
  // deno-lint-ignore no-explicit-any
  return (tf.backend() as any).data.get(t.dataId).values;
}

Deno.test({
  name: "pooled arrays: kernels overwrite stale (NaN) contents, and reuse happens",
  ...opts,
  fn: async () => {
    await tf.setBackend(CPU_BACKEND);
    const backend = tf.backend() as CpuBackend;
    const x = tf.tensor(randn([128, 256], 17), [128, 256]);
    const w = tf.tensor(randn([256, 256], 18), [256, 256]);
    const ops: [string, () => tf.Tensor][] = [
      ["matMul", () => tf.matMul(x, w)],
      [
        "fused matMul + bias",
        () => tf.fused.matMul({ a: x, b: w, bias: tf.tensor1d(randn([256], 19)) }),
      ],
      ["add", () => tf.add(x, tf.tensor1d(randn([256], 20)))],
      ["exp", () => tf.exp(x)],
      ["softmax", () => tf.softmax(x)],
      ["transpose", () => tf.transpose(x)],
      ["gelu", () => fusedGelu(x)!],
      ["layerNorm", () => fusedLayerNorm(x, tf.ones([256]), tf.zeros([256]))!],
      [
        "unsortedSegmentSum",
        () => tf.unsortedSegmentSum(x, tf.tensor1d([...Array(128).keys()], "int32"), 128),
      ],
    ];
    for (const [name, op] of ops) {
      const want = tf.tidy(op).dataSync().slice();
      for (let i = 0; i < 3; i++) { // leave NaN-filled arrays of every size in the pool
        const t = tf.tidy(op);
        storage(t).fill(NaN);
        t.dispose();
      }
      const before = backend.poolStats().arrays;
      const got = tf.tidy(op);
      assert(backend.poolStats().arrays < before, `${name}: the pool was not used`);
      assertEquals(Array.from(got.dataSync()), Array.from(want), name);
      got.dispose();
    }
    tf.dispose([x, w]);
  },
});

Deno.test({
  name: "pooled arrays: data read out with dataSync and slices keep their values after dispose",
  ...opts,
  fn: async () => {
    await tf.setBackend(CPU_BACKEND);
    const x = tf.tensor(randn([128, 256], 21), [128, 256]);
    const w = tf.tensor(randn([256, 256], 22), [256, 256]);
    const nx = tf.neg(x);
    // The same-sized products below would take a recycled array and overwrite it with other values.
    const a = tf.matMul(x, w);
    const read = a.dataSync(); // the storage itself on cpu-like backends
    const copy = read.slice();
    a.dispose();
    const c = tf.matMul(nx, w);
    assert(
      read.every((v, i) => v === copy[i]),
      "a recycled array overwrote data read out with dataSync",
    );
    const b = tf.matMul(x, w);
    const s = tf.slice(b, [0, 0], [64, 256]); // a view of b's storage
    const sCopy = storage(s).slice();
    b.dispose();
    const d = tf.matMul(nx, w);
    assert(storage(s).every((v, i) => v === sCopy[i]), "a recycled array overwrote a slice's view");
    tf.dispose([x, w, nx, c, d, s]);
  },
});

Deno.test({
  name:
    "pooled arrays: one pooled while a single thread ran is not handed out to a kernel split between threads",
  ...opts,
  fn: async () => {
    const threadsBefore = setParallelism();
    try {
      await tf.setBackend(CPU_BACKEND);
      // An output size no other test pools (97 × 331), so that the first product allocates it fresh.
      const x = tf.tensor(randn([97, 64], 25), [97, 64]);
      const w = tf.tensor(randn([64, 331], 26), [64, 331]);
      setParallelism(1);
      const want = tf.matMul(x, w);
      const plain = storage(want), values = plain.slice();
      assert(!isShared(plain));
      want.dispose(); // to the pool, in plain memory
      setParallelism(2);
      const got = tf.matMul(x, w);
      assert(storage(got) !== plain, "the plain array pooled on one thread came back");
      assert(isShared(storage(got)), "a kernel's output in plain memory with two threads");
      assertEquals(storage(got), values);
      tf.dispose([x, w, got]);
    } finally {
      setParallelism(threadsBefore);
    }
  },
});

Deno.test({
  name:
    "a matMul's operands move to shared memory once, so products split between threads do not copy them per call",
  ...opts,
  fn: async () => {
    const threadsBefore = setParallelism();
    setParallelism(2);
    try {
      await tf.setBackend(CPU_BACKEND);
      const x = tf.tensor(randn([64, 96], 23), [64, 96]); // created outside the pool: plain memory
      const w = tf.tensor(randn([80, 96], 24), [80, 96]);
      const before = [storage(x).slice(), storage(w).slice()];
      assert(!isShared(storage(x)) && !isShared(storage(w)));
      const y = tf.matMul(x, w, false, true);
      assert(isShared(storage(x)) && isShared(storage(w)), "the operands stayed in plain memory");
      assertEquals([storage(x), storage(w)], before);
      const again = storage(w);
      tf.matMul(x, w, false, true).dispose();
      assert(storage(w) === again, "the second product moved its operand again");
      tf.dispose([x, w, y]);
    } finally {
      setParallelism(threadsBefore);
    }
  },
});
