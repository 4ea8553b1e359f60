/**
 * Where one chapter-5 training step spends its time on a CPU-side backend: the lead's GPTModel (GPT-124M, ctx 256,
 * batch 2, dropout 0.1) forward + backward through `trainStep`, with every kernel of the backend wrapped in a timer.
 * Prints one JSON line per kernel (total ms per step, calls, share), then the step's wall time split into kernels,
 * the optimizer, the dropout masks (drawn outside any kernel) and everything else (engine bookkeeping, tape, JS
 * between kernels).
 *
 *   deno run -A bench/step_profile.ts [--backend cpu|tfjs-cpu] [--steps 2] [--layers 12] [--vocab 50257] [--by-shape]
 *     [--model bench/variant.ts] [--pool-gib 1] [--batch 2] [--precision fp32|bf16-mixed] [--lib native|dnnl|wasm]
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import {
  CPU_BACKEND,
  CpuBackend,
  matrixLibrary,
  type Precision,
  registerCpuBackend,
  useMatrixLibrary,
} from "../lib/backends/cpu/cpu_backend.ts";
import type { LibraryKind } from "../lib/backends/cpu/matrix/libraries.ts";
import { usePrecision } from "../lib/backends/backend.ts";
import { AdamW } from "../lib/train/adamw.ts";
import { DEFAULTS, type ModelConfig } from "../lib/config.ts";
import { GPTModel as LibModel } from "../lib/model/model.ts";
import { DropoutRng } from "../lib/model/ops.ts";
import type { NamedParam } from "../lib/model/params.ts";
import { trainStep } from "../lib/train/train.ts";

function flag(name: string, def: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : def;
}
const backendName = flag("backend", "cpu"); // cpu (ours) or tfjs-cpu (TF.js's own)
const tfName = backendName === "cpu"
  ? CPU_BACKEND
  : backendName === "tfjs-cpu"
  ? "cpu"
  : backendName;
const steps = Number(flag("steps", "2"));
const byShape = Deno.args.includes("--by-shape"); // one row per kernel and input shapes
// --model FILE: a variant of lib/model/model.ts exporting the same GPTModel (e.g. one that calls the fused ops).
const modelFile = flag("model", "");
const GPTModel: typeof LibModel = modelFile
  ? (await import(new URL(modelFile, `file://${Deno.cwd()}/`).href)).GPTModel
  : LibModel;
const cfg: ModelConfig = {
  ...DEFAULTS.model,
  n_layers: Number(flag("layers", String(DEFAULTS.model.n_layers))),
  vocab_size: Number(flag("vocab", String(DEFAULTS.model.vocab_size))),
};
const B = Number(flag("batch", String(DEFAULTS.data.batch_size))), T = cfg.context_length;

if (tfName === CPU_BACKEND) {
  const reg = registerCpuBackend();
  if (!reg.ok) throw new Error(reg.reason);
}
await tf.setBackend(tfName);
const poolGiB = flag("pool-gib", ""); // the cpu backend's array pool limit (default: defaultPoolLimit())
if (poolGiB && tf.backend() instanceof CpuBackend) {
  (tf.backend() as CpuBackend).poolLimitBytes = Number(poolGiB) * 1024 ** 3;
}

/** Seeded N(0, 0.02²) weights, ones/zeros for LayerNorm, zeros for biases: GPT-2's init, enough for timing. */
function initParams(cfg: ModelConfig): NamedParam[] {
  const { emb_dim: C, vocab_size: V, context_length: T } = cfg;
  let s = 123456789;
  const normal = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = (s + 1) / 4294967297;
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * s / 4294967296) * 0.02;
  };
  const shapes: Record<string, number[]> = { "tok_emb.weight": [V, C], "pos_emb.weight": [T, C] };
  for (let i = 0; i < cfg.n_layers; i++) {
    const b = `trf_blocks.${i}`;
    for (const w of ["W_query", "W_key", "W_value", "out_proj"]) {
      shapes[`${b}.att.${w}.weight`] = [C, C];
    }
    shapes[`${b}.att.out_proj.bias`] = [C];
    shapes[`${b}.ff.layers.0.weight`] = [4 * C, C];
    shapes[`${b}.ff.layers.0.bias`] = [4 * C];
    shapes[`${b}.ff.layers.2.weight`] = [C, 4 * C];
    shapes[`${b}.ff.layers.2.bias`] = [C];
    for (const n of ["norm1", "norm2"]) {
      shapes[`${b}.${n}.scale`] = [C], shapes[`${b}.${n}.shift`] = [C];
    }
  }
  shapes["final_norm.scale"] = [C], shapes["final_norm.shift"] = [C];
  shapes["out_head.weight"] = [V, C];
  return GPTModel.expectedNames(cfg).map((name) => {
    const shape = shapes[name];
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith(".scale")) data.fill(1);
    else if (!name.endsWith(".bias") && !name.endsWith(".shift")) {
      for (let i = 0; i < data.length; i++) {
        data[i] = normal();
      }
    }
    return { name, shape, data };
  });
}

// Wrap every kernel of the backend in a timer. Nested kernels (a kernel calling another's function directly)
// are not registry calls, so each registry call is counted once.
const stats = new Map<string, { ms: number; calls: number }>();
let inKernel = 0;
for (const k of tf.getKernelsForBackend(tfName)) {
  const inner = k.kernelFunc;
  tf.unregisterKernel(k.kernelName, tfName);
  tf.registerKernel({
    ...k,
    kernelFunc: (args) => {
      if (inKernel > 0) return inner(args);
      inKernel++;
      const t0 = performance.now();
      try {
        return inner(args);
      } finally {
        inKernel--;
        const key = byShape
          ? `${k.kernelName} ${Object.values(args.inputs).map((t) => `[${t?.shape}]`).join("")}`
          : k.kernelName;
        const st = stats.get(key) ?? { ms: 0, calls: 0 };
        st.ms += performance.now() - t0, st.calls++;
        stats.set(key, st);
      }
    },
  });
}

const model = new GPTModel(cfg, initParams(cfg));
const lib = flag("lib", "");
if (lib && tfName === CPU_BACKEND) {
  const r = useMatrixLibrary(lib as LibraryKind);
  if (!r.ok) throw new Error(r.reason);
}
const precision = usePrecision(flag("precision", "fp32") as Precision, backendName, [
  ...model.params.values(),
]);
const optimizer = new AdamW(model.params, { lr: 4e-4, weightDecay: 0.1 });
const rng = new DropoutRng(123);
const ids = () => Int32Array.from({ length: B * T }, (_, i) => (i * 7919 + 13) % cfg.vocab_size);
const batch = { inputs: ids(), targets: ids().reverse(), batchSize: B, maxLength: T };

// The optimizer's share, timed around applyGradients.
let optMs = 0;
const apply = optimizer.applyGradients.bind(optimizer);
optimizer.applyGradients = (g) => {
  const t0 = performance.now();
  apply(g);
  optMs += performance.now() - t0;
};

// The dropout masks' share (drawn outside any kernel), timed around DropoutRng.mask.
let maskMs = 0;
const mask = DropoutRng.prototype.mask;
DropoutRng.prototype.mask = function (...args: Parameters<typeof mask>) {
  const t0 = performance.now();
  try {
    return mask.apply(this, args);
  } finally {
    maskMs += performance.now() - t0;
  }
};

console.log(JSON.stringify({
  backend: backendName,
  matrixLibrary: matrixLibrary()?.describe(),
  precision,
  cfg,
  B,
  T,
  params: model.numParams(),
}));
let warmupMs = 0;
{
  const t0 = performance.now();
  await trainStep(model, optimizer, batch, rng); // warm-up: JIT, first allocations
  warmupMs = performance.now() - t0;
}
/** This process's user and system CPU seconds (Linux /proc; zeros elsewhere). */
function cpuSeconds(): { user: number; sys: number } {
  try {
    const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    return { user: Number(f[11]) / 100, sys: Number(f[12]) / 100 }; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return { user: 0, sys: 0 };
  }
}
stats.clear(), optMs = 0, maskMs = 0;
const cpu0 = cpuSeconds();
const t0 = performance.now();
const losses: number[] = [];
for (let i = 0; i < steps; i++) losses.push((await trainStep(model, optimizer, batch, rng)).loss);
const stepMs = (performance.now() - t0) / steps;
const cpu1 = cpuSeconds();

let kernelMs = 0;
for (const st of stats.values()) kernelMs += st.ms;
const rows = [...stats.entries()].sort((a, b) => b[1].ms - a[1].ms);
for (const [name, st] of rows) {
  console.log(JSON.stringify({
    kernel: name,
    msPerStep: +(st.ms / steps).toFixed(1),
    callsPerStep: st.calls / steps,
    share: +(st.ms / steps / stepMs).toFixed(3),
  }));
}
console.log(JSON.stringify({
  warmupMs: Math.round(warmupMs),
  stepMs: Math.round(stepMs),
  kernelMs: Math.round(kernelMs / steps),
  optimizerMs: Math.round(optMs / steps),
  dropoutMaskMs: Math.round(maskMs / steps),
  otherMs: Math.round(stepMs - kernelMs / steps - optMs / steps - maskMs / steps),
  // CPU time of all threads: BLAS workers add user time; page faults of fresh arrays show up as sys time.
  cpuUserSPerStep: +((cpu1.user - cpu0.user) / steps).toFixed(2),
  cpuSysSPerStep: +((cpu1.sys - cpu0.sys) / steps).toFixed(2),
  losses,
  numTensors: tf.memory().numTensors,
}));
