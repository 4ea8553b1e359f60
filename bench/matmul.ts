/**
 * GFLOP/s of the `cpu` backend on the matrix products of one chapter-5 training step (the model of --experiment,
 * default experiments/verdict.yaml's GPT-124M, at --batch × its context, default batch 2), forward and backward, at 1 and 2 threads of each matrix library: the native BLAS
 * (OpenBLAS) where one loads, oneDNN where it loads, then the WebAssembly GEMM (relaxed FMA where the runtime has
 * it; `GPT_GEMM_SIMD=plain` for the SIMD128 build); and the cpu backend on one small shape for scale. With
 * `--precision bf16-mixed` each product rounds its operands to bf16 first, as a bf16-mixed step does (the
 * conversions counted in the product's time; a step converts each weight once, so this is an upper bound). Prints one JSON
 * line per measurement. `--summary` prints only the last line, `{"matmulSecondsPerStep": {lib: {threads: s}}}`
 * (the step's products summed; the padded-head case and the cpu case are skipped): what bench/bench.ts's
 * `matmul_s` reads, with `--lib native --threads 2`.
 *
 *   deno run -A bench/matmul.ts [--experiment path] [--reps 5] [--lib native|dnnl|wasm] [--batch 2] [--threads 1,2]
 *     [--precision fp32|bf16-mixed] [--summary]
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import {
  type BlasLib,
  CPU_BACKEND,
  type Precision,
  registerCpuBackend,
  setPrecision,
  useMatrixLibrary,
} from "../lib/backends/cpu/cpu_backend.ts";
import { gemmBuild } from "../lib/backends/cpu/matrix/wasm_gemm.ts";
import { holdHelpers, readyHelpers, setParallelism } from "../lib/backends/cpu/pool.ts";
import { loadExperiment } from "../lib/config.ts";

const flag = (name: string) =>
  Deno.args.includes(name) ? Deno.args[Deno.args.indexOf(name) + 1] : undefined;
/** A positive integer flag's values (comma-separated), or one error line and exit 2. */
function counts(name: string, def: string): number[] {
  const v = (flag(name) ?? def).split(",").map(Number);
  if (v.every((x) => Number.isInteger(x) && x > 0)) return v;
  console.log(JSON.stringify({ error: `${name} ${flag(name)}: expected positive integers` }));
  Deno.exit(2);
}
const [batch] = counts("--batch", "2");
const cfg = await loadExperiment(flag("--experiment") ?? "experiments/verdict.yaml").catch((e) => {
  console.log(JSON.stringify({ error: (e as Error).message }));
  Deno.exit(2);
});
const { emb_dim: C, n_heads: H, n_layers: L, vocab_size: V } = cfg.model;
const T = cfg.data.max_length ?? cfg.model.context_length, N = batch * T, F = 4 * C;
const BH = batch * H, D = C / H;
/** The output head padded to a multiple of 64 columns (nanoGPT's 50304 for GPT-2), for scale only. */
const VPAD = Math.ceil(V / 64) * 64;
const reps = Number(flag("--reps") || 5);
const only = flag("--lib") ?? null;
const LIBS = (["native", "dnnl", "wasm"] as const).filter((l) => only === null || l === only);
const precision = (flag("--precision") ?? "fp32") as Precision;
if (precision !== "fp32" && precision !== "bf16-mixed") {
  console.log(JSON.stringify({ error: `--precision ${precision}: expected fp32 or bf16-mixed` }));
  Deno.exit(2);
}
const THREADS = counts("--threads", "1,2");
const summary = Deno.args.includes("--summary");
/** Prints a measurement line unless --summary asks for the last line only. */
const log = (line: Record<string, unknown>) => summary || console.log(JSON.stringify(line));

interface Case {
  name: string;
  a: number[];
  b: number[];
  tA: boolean;
  tB: boolean;
  /** Times the step runs this product (once per layer; × 4 for q, k, v and the output projection). */
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

const CASES: Case[] = ([
  ...linear(`qkv/out_proj ${C}→${C}`, C, C, 4 * L),
  ...linear(`ff1 ${C}→${F}`, C, F, L),
  ...linear(`ff2 ${F}→${C}`, F, C, L),
  ...linear(`head ${C}→${V}`, C, V, 1),
  ...(VPAD === V ? [] : linear(`head ${C}→${VPAD} (padded)`, C, VPAD, 0)),
  { name: "att q·kᵀ fwd", a: [BH, T, D], b: [BH, T, D], tA: false, tB: true, perStep: L },
  { name: "att q·kᵀ dq", a: [BH, T, T], b: [BH, T, D], tA: false, tB: false, perStep: L },
  { name: "att q·kᵀ dk", a: [BH, T, T], b: [BH, T, D], tA: true, tB: false, perStep: L },
  { name: "att p·v fwd", a: [BH, T, T], b: [BH, T, D], tA: false, tB: false, perStep: L },
  { name: "att p·v dp", a: [BH, T, D], b: [BH, T, D], tA: false, tB: true, perStep: L },
  { name: "att p·v dv", a: [BH, T, T], b: [BH, T, D], tA: true, tB: false, perStep: L },
] as Case[]).filter((c) => !summary || c.perStep > 0);

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

const reg = registerCpuBackend();
if (!reg.ok) {
  console.log(JSON.stringify({ error: reg.reason }));
  Deno.exit(1);
}
await tf.setBackend(CPU_BACKEND);
setPrecision(precision);
await readyHelpers(); // the WebAssembly GEMM's second thread is a helper Worker
const perStep: Record<string, Record<number, number>> = {};
await holdHelpers(async () => {
  for (const kind of LIBS) {
    await Promise.resolve(); // between libraries: let the helpers' messages run
    const res = useMatrixLibrary(kind);
    if (!res.ok) {
      log({ library: kind, skipped: res.reason });
      continue;
    }
    perStep[kind] = await timeLibrary(kind, res.lib);
  }
});

/** Every case at 1 and 2 threads of `lib`; returns the step's matrix-product seconds per thread count. */
async function timeLibrary(kind: string, lib: BlasLib): Promise<Record<number, number>> {
  log({
    library: kind,
    batch,
    description: lib.describe(),
    precision,
    build: kind === "wasm" ? gemmBuild() : null,
    OPENBLAS_NUM_THREADS: Deno.env.get("OPENBLAS_NUM_THREADS") ?? null,
    threadsAtStart: lib.getNumThreads?.() ?? null,
  });
  const seconds: Record<number, number> = {};
  const start = lib.getNumThreads?.(), pool = setParallelism();
  for (const threads of THREADS) {
    lib.setNumThreads?.(threads);
    // Our pool too: it shares out the attention heads whatever the library's own thread count.
    setParallelism(Math.min(threads, pool));
    await readyHelpers(); // helpers closed by a 1-thread pass start again
    warmUp();
    let stepSeconds = 0;
    for (const c of CASES) {
      const s = time(c, c.a.includes(V) || c.b.includes(V) ? Math.min(reps, 3) : reps);
      stepSeconds += s * c.perStep;
      log({
        library: kind,
        threads,
        case: c.name,
        a: c.a,
        b: c.b,
        transposeA: c.tA,
        transposeB: c.tB,
        ms: +(s * 1000).toFixed(2),
        gflops: +(flops(c) / s / 1e9).toFixed(1),
      });
    }
    seconds[threads] = +stepSeconds.toFixed(3);
    log({ library: kind, threads, matmulSecondsPerStep: seconds[threads] });
  }
  if (start !== undefined) lib.setNumThreads?.(start);
  setParallelism(pool);
  return seconds;
}

/**
 * One head-sized product on every thread before timing: each thread's WebAssembly module runs on V8's baseline
 * code until its optimizing tier has compiled it, and a fresh helper (after a 1-thread pass) starts cold.
 */
function warmUp() {
  const a = tf.randomUniform([N, C], -1, 1), b = tf.randomUniform([V, C], -1, 1);
  tf.matMul(a, b, false, true).dispose();
  tf.dispose([a, b]);
}

if (!summary) await cpuScale();
console.log(JSON.stringify({ matmulSecondsPerStep: perStep }));

/** The cpu backend on one small product, for scale. */
async function cpuScale() {
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
  log({
    backend: "tfjs-cpu",
    case: small.name,
    ms: +(s * 1000).toFixed(1),
    gflops: +(flops(small) / s / 1e9).toFixed(2),
  });
}
