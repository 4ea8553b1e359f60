/**
 * What "100 %" means for a run's model FLOPs utilisation: the FLOP/s of the active backend's matrix products, the
 * fastest of four of a GPT-124M training step's products at 512 and at 2048 tokens (a warm-up, then the best of two
 * each) in the run's precision, cached per machine, backend, matrix library and precision beside the matrix
 * libraries' measurements. The fastest shape, not their sum: a step's products at a larger batch run faster than
 * those of one small batch, and a peak a run can beat would read as more than 100 %. Measured rather than taken from a datasheet: a peak hard-coded for one chip is the MFU
 * bug nanoGPT's users keep finding, and on a CPU the datasheet's figure is out of reach of every library.
 */
import * as tf from "@tensorflow/tfjs-core";
import { cpuInfo, env } from "./libraries.ts";
import { cachePath, readCache, writeCache } from "./choice.ts";
import { matrixLibrary } from "../cpu_backend.ts";

/** The measured peak of the active backend. */
export interface Peak {
  flops: number; // FLOP/s
  device: string; // what was measured, e.g. "oneDNN 2.6.3, 2 threads (cpu) on Intel(R) Xeon(R) Processor"
  cached: boolean;
}

/** M, N, K, transposeA, transposeB at T tokens: a linear layer's forward, an MLP product and a weight gradient. */
const shapesAt = (T: number): [number, number, number, boolean, boolean][] => [
  [T, 768, 768, false, true],
  [T, 3072, 768, false, false],
  [768, 3072, T, true, false],
  [T, 8192, 768, false, true], // a slice of the output head's x · Wᵀ: the widest product of a step
];
/** A product slower than this ends the measurement (TF.js's plain cpu backend): no second one, no larger shape. */
const SLOW_PASS_S = 0.5;
/** Bumped when the measurement changes, so that a cache of the old one is measured again. */
const METHOD = "fastest of 4 shapes at 512 and 2048 tokens";

function cpuModel(): string {
  const l = cpuInfo().split("\n").find((x) => x.startsWith("model name"));
  return l?.split(":")[1].trim() ?? Deno.build.arch;
}

/** The device whose products a run on `backendName` runs: the matrix library on cpu, else the backend. */
function deviceOf(backendName: string): string {
  const lib = backendName === "cpu" ? matrixLibrary()?.describe().split(";")[0] : null;
  return `${lib ? `${lib} (cpu)` : backendName} on ${cpuModel()}`;
}

/** Seconds of one product of `shape` on the active backend: a warm-up, then the best of two (one if slow). */
async function timeShape(
  [M, N, K, tA, tB]: [number, number, number, boolean, boolean],
): Promise<number> {
  // Operands made by the backend's own kernels, in its own storage (shared with the helper threads on cpu), as a
  // step's activations and weights are: a plain random tensor there would be copied over at every product.
  const operand = (shape: number[], seed: number) =>
    tf.tidy(() => tf.add(tf.randomUniform(shape, -1, 1, "float32", seed), 0));
  const a = operand(tA ? [K, M] : [M, K], 1), b = operand(tB ? [N, K] : [K, N], 2);
  const once = async () => {
    const t0 = performance.now();
    const c = tf.matMul(a, b, tA, tB);
    await c.data();
    c.dispose();
    return (performance.now() - t0) / 1000;
  };
  let best = await once();
  if (best < SLOW_PASS_S) best = Math.min(await once(), await once());
  tf.dispose([a, b]);
  return best;
}

/** The fastest FLOP/s of the step's products on the active backend (larger ones only where the small are fast). */
async function measure(): Promise<number> {
  let best = 0;
  for (const T of [512, 2048]) {
    for (const shape of shapesAt(T)) {
      const seconds = await timeShape(shape);
      best = Math.max(best, (2 * shape[0] * shape[1] * shape[2]) / seconds);
      if (seconds > SLOW_PASS_S) return best;
    }
  }
  return best;
}

function peakCachePath(): string | null {
  const forced = env("GPT_PEAK_CACHE");
  if (forced) return forced;
  return cachePath()?.replace(/matrix-libraries\.json$/, "peak-flops.json") ?? null;
}

/** Runs that measure again, keeping the best figure (other work on the machine only ever slows a measurement). */
const SAMPLES = 3;

type PeakEntry = { flops: number; samples: number };

/** The key under which a cache written before the cpu backend's rename (it was `blas`) holds the same peak. */
const formerKey = (key: string) => key.replace(" (cpu) on ", " (blas) on ");

/**
 * The FLOP/s of the active backend's products in `precision` (the backend and precision set up for the run): the
 * best of the first {@link SAMPLES} runs' measurements (a fraction of a second on the CPU libraries), then cached.
 */
export async function measuredPeak(backendName: string, precision: string): Promise<Peak> {
  const device = deviceOf(backendName), key = `${device} | ${precision} | ${METHOD}`;
  const path = peakCachePath(), cache = readCache<PeakEntry>(path);
  const hit = cache[key] ?? cache[formerKey(key)];
  const known = hit && hit.flops > 0 && hit.samples > 0;
  if (known && hit.samples >= SAMPLES) return { flops: hit.flops, device, cached: true };
  const entry = {
    flops: Math.max(await measure(), known ? hit.flops : 0),
    samples: known ? hit.samples + 1 : 1,
  };
  writeCache(path, { ...readCache<PeakEntry>(path), [key]: entry });
  return { flops: entry.flops, device, cached: false };
}
