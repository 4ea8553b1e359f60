/**
 * GFLOP/s of the `blas` backend on the matrix products of one chapter-5 training step (GPT-124M, batch 2 × 256
 * tokens), forward and backward, at 1 and 2 OpenBLAS threads; and the cpu backend on one small shape for scale.
 * Prints one JSON line per measurement.
 *
 *   deno run -A bench/matmul.ts [--reps 5]
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { BLAS_BACKEND, loadBlas, registerBlasBackend } from "../lib/backends/blas.ts";

const N = 512, C = 768, F = 3072, V = 50257, BH = 24, T = 256, D = 64;
const reps = Number(Deno.args[Deno.args.indexOf("--reps") + 1] || 5);

interface Case {
  name: string;
  a: number[];
  b: number[];
  tA: boolean;
  tB: boolean;
  /** Times the step runs this product (12 layers; × 3 for q, k, v). */
  perStep: number;
}

/** y = x Wᵀ with W [out, in], and its two gradients dx = dy W, dW = dyᵀ x. */
function linear(name: string, inF: number, outF: number, perStep: number): Case[] {
  return [
    { name: `${name} fwd`, a: [N, inF], b: [outF, inF], tA: false, tB: true, perStep },
    { name: `${name} dx`, a: [N, outF], b: [outF, inF], tA: false, tB: false, perStep },
    { name: `${name} dW`, a: [N, outF], b: [N, inF], tA: true, tB: false, perStep },
  ];
}

const CASES: Case[] = [
  ...linear("qkv/out_proj 768→768", C, C, 48),
  ...linear("ff1 768→3072", C, F, 12),
  ...linear("ff2 3072→768", F, C, 12),
  ...linear("head 768→50257", C, V, 1),
  ...linear("head 768→50304 (padded)", C, 50304, 0),
  { name: "att q·kᵀ fwd", a: [BH, T, D], b: [BH, T, D], tA: false, tB: true, perStep: 12 },
  { name: "att q·kᵀ dq", a: [BH, T, T], b: [BH, T, D], tA: false, tB: false, perStep: 12 },
  { name: "att q·kᵀ dk", a: [BH, T, T], b: [BH, T, D], tA: true, tB: false, perStep: 12 },
  { name: "att p·v fwd", a: [BH, T, T], b: [BH, T, D], tA: false, tB: false, perStep: 12 },
  { name: "att p·v dp", a: [BH, T, D], b: [BH, T, D], tA: false, tB: true, perStep: 12 },
  { name: "att p·v dv", a: [BH, T, T], b: [BH, T, D], tA: true, tB: false, perStep: 12 },
];

function flops(c: Case): number {
  const r = c.a.length;
  const M = c.tA ? c.a[r - 1] : c.a[r - 2], K = c.tA ? c.a[r - 2] : c.a[r - 1];
  const Nn = c.tB ? c.b[c.b.length - 2] : c.b[c.b.length - 1];
  const batch = c.a.slice(0, -2).reduce((x, y) => x * y, 1);
  return 2 * batch * M * K * Nn;
}

/** Fastest of `reps` runs of the product, in seconds (after one warm-up): other processes only add time. */
function time(c: Case, reps: number): number {
  const a = tf.randomUniform(c.a, -1, 1), b = tf.randomUniform(c.b, -1, 1);
  const run = () => tf.matMul(a, b, c.tA, c.tB).dispose(); // kernels are synchronous: the result is ready
  run();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    run();
    ts.push((performance.now() - t0) / 1000);
  }
  tf.dispose([a, b]);
  return Math.min(...ts);
}

const reg = registerBlasBackend();
if (!reg.ok) {
  console.log(JSON.stringify({ error: reg.reason }));
  Deno.exit(1);
}
const blas = loadBlas();
const lib = blas.ok ? blas.lib : null;
console.log(JSON.stringify({
  library: reg.reason,
  OPENBLAS_NUM_THREADS: Deno.env.get("OPENBLAS_NUM_THREADS") ?? null,
  threadsAtStart: lib?.getNumThreads?.() ?? null,
}));

await tf.setBackend(BLAS_BACKEND);
const perStep: Record<number, number> = {};
for (const threads of [1, 2]) {
  lib?.setNumThreads?.(threads);
  let stepSeconds = 0;
  for (const c of CASES) {
    const s = time(c, c.a.includes(V) || c.b.includes(V) ? Math.min(reps, 3) : reps);
    stepSeconds += s * c.perStep;
    console.log(JSON.stringify({
      backend: BLAS_BACKEND,
      threads,
      case: c.name,
      a: c.a,
      b: c.b,
      transposeA: c.tA,
      transposeB: c.tB,
      ms: +(s * 1000).toFixed(2),
      gflops: +(flops(c) / s / 1e9).toFixed(1),
    }));
  }
  perStep[threads] = stepSeconds;
  console.log(JSON.stringify({ threads, matmulSecondsPerStep: +stepSeconds.toFixed(3) }));
}

await tf.setBackend("cpu");
const small: Case = {
  name: "cpu 128×768 · 768×768ᵀ",
  a: [128, C],
  b: [C, C],
  tA: false,
  tB: true,
  perStep: 0,
};
const s = time(small, 2);
console.log(
  JSON.stringify({
    backend: "cpu",
    case: small.name,
    ms: +(s * 1000).toFixed(1),
    gflops: +(flops(small) / s / 1e9).toFixed(2),
  }),
);
const best = perStep[1] <= perStep[2] ? 1 : 2;
console.log(JSON.stringify({ fastestThreads: best, matmulSecondsPerStep: perStep }));
