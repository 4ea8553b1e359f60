/**
 * What "100 %" means for a run's model FLOPs utilisation: the FLOP/s of the active backend's matrix products,
 * measured on three of a GPT-124M training step's products at 512 tokens (5.4 GFLOP; a warm-up, then the best of
 * two) in the run's precision, and cached per machine, backend, matrix library and precision beside the matrix
 * libraries' measurements. Measured rather than taken from a datasheet: a peak hard-coded for one chip is the MFU
 * bug nanoGPT's users keep finding, and on a CPU the datasheet's figure is out of reach of every library.
 */
import * as tf from "@tensorflow/tfjs-core";
import { cpuInfo, env } from "./blas_lib.ts";
import { cachePath } from "./matrix_choice.ts";
import { matrixLibrary } from "./blas.ts";

/** The measured peak of the active backend. */
export interface Peak {
  flops: number; // FLOP/s
  device: string; // what was measured, e.g. "oneDNN 2.6.3, 2 threads (blas) on Intel(R) Xeon(R) Processor"
  cached: boolean;
}

/** M, N, K, transposeA, transposeB: a linear layer's forward, an MLP product and a weight gradient. */
const SHAPES: [number, number, number, boolean, boolean][] = [
  [512, 768, 768, false, true],
  [512, 3072, 768, false, false],
  [768, 3072, 512, true, false],
];
/** A first pass slower than this is the measurement (TF.js's plain cpu backend): no second one. */
const SLOW_PASS_S = 1;

function cpuModel(): string {
  const l = cpuInfo().split("\n").find((x) => x.startsWith("model name"));
  return l?.split(":")[1].trim() ?? Deno.build.arch;
}

/** The device whose products a run on `backendName` runs: the matrix library on blas, else the backend. */
function deviceOf(backendName: string): string {
  const lib = backendName === "blas" ? matrixLibrary()?.describe().split(";")[0] : null;
  return `${lib ? `${lib} (blas)` : backendName} on ${cpuModel()}`;
}

async function timePass(products: () => tf.Tensor[]): Promise<number> {
  const t0 = performance.now();
  const out = products();
  await Promise.all(out.map((t) => t.data()));
  tf.dispose(out);
  return (performance.now() - t0) / 1000;
}

/** Measures the products of {@link SHAPES} on the active backend: FLOP/s. */
async function measure(): Promise<number> {
  const operands = SHAPES.map(([M, N, K, tA, tB]) => {
    const a = tf.randomUniform(tA ? [K, M] : [M, K], -1, 1, "float32", 1);
    const b = tf.randomUniform(tB ? [N, K] : [K, N], -1, 1, "float32", 2);
    return { a, b, tA, tB };
  });
  const products = () => operands.map((o) => tf.matMul(o.a, o.b, o.tA, o.tB));
  let best = await timePass(products);
  if (best < SLOW_PASS_S) best = Math.min(await timePass(products), await timePass(products));
  tf.dispose(operands.flatMap((o) => [o.a, o.b]));
  return SHAPES.reduce((s, [M, N, K]) => s + 2 * M * N * K, 0) / best;
}

function peakCachePath(): string | null {
  const forced = env("GPT_PEAK_CACHE");
  if (forced) return forced;
  return cachePath()?.replace(/matrix-libraries\.json$/, "peak-flops.json") ?? null;
}

/** Runs that measure again, keeping the best figure (other work on the machine only ever slows a measurement). */
const SAMPLES = 3;

type PeakCache = Record<string, { flops: number; samples: number }>;

function readPeaks(path: string | null): PeakCache {
  try {
    const c = path ? JSON.parse(Deno.readTextFileSync(path)) : {};
    return c && typeof c === "object" && !Array.isArray(c) ? c : {};
  } catch {
    return {}; // absent or damaged: measured again
  }
}

/**
 * The FLOP/s of the active backend's products in `precision` (the backend and precision set up for the run): the
 * best of the first {@link SAMPLES} runs' measurements (a fraction of a second on the CPU libraries), then cached.
 */
export async function measuredPeak(backendName: string, precision: string): Promise<Peak> {
  const device = deviceOf(backendName), key = `${device} | ${precision}`;
  const path = peakCachePath(), hit = readPeaks(path)[key];
  const known = hit && hit.flops > 0 && hit.samples > 0;
  if (known && hit.samples >= SAMPLES) return { flops: hit.flops, device, cached: true };
  const entry = {
    flops: Math.max(await measure(), known ? hit.flops : 0),
    samples: known ? hit.samples + 1 : 1,
  };
  if (path) {
    try {
      Deno.mkdirSync(path.replace(/[/\\][^/\\]*$/, ""), { recursive: true });
      const tmp = `${path}.${Deno.pid}.tmp`;
      Deno.writeTextFileSync(
        tmp,
        JSON.stringify({ ...readPeaks(path), [key]: entry }, null, 1) + "\n",
      );
      Deno.renameSync(tmp, path);
    } catch { /* a read-only cache: measured again next time */ }
  }
  return { flops: entry.flops, device, cached: false };
}
