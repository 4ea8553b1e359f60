/**
 * The `tensorflow` backend: libtensorflow through `@tensorflow/tfjs-node-gpu` (CUDA) or `@tensorflow/tfjs-node`
 * (CPU). Neither is a dependency of this project: their install downloads libtensorflow 2.9.1, and the GPU build
 * needs CUDA 11.2 and cuDNN 8.1 (see the README's GPU section). They are imported by bare name, which resolves
 * only after `deno add npm:<package>` put them in deno.json; nothing is downloaded at run time.
 */
import * as tf from "@tensorflow/tfjs-core";
import { firstLine } from "../../errors.ts";

/** The packages tried, GPU build first. */
export const TENSORFLOW_PACKAGES = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"] as const;

/** A loaded tensorflow backend, or why none loaded (one line per package). */
export type TensorflowLoad =
  | { ok: true; pkg: string; detail: string }
  | { ok: false; reason: string };

/**
 * Whether an NVIDIA GPU is visible to this process: a `/dev/nvidia0` device node and CUDA_VISIBLE_DEVICES not
 * emptied or set to -1. `auto` tries the tensorflow backend only then (loading libtensorflow takes seconds).
 */
export function nvidiaGpuVisible(): boolean {
  try {
    const cvd = Deno.env.get("CUDA_VISIBLE_DEVICES");
    if (cvd !== undefined && (cvd.trim() === "" || cvd.trim() === "-1")) return false;
  } catch { /* no --allow-env: not hidden */ }
  try {
    Deno.statSync("/dev/nvidia0");
    return true;
  } catch {
    return false;
  }
}

/**
 * Imports the first of `packages` that loads and activates its `tensorflow` backend. `gpuOnly` tries the GPU
 * build alone (what `auto` wants).
 */
export async function loadTensorflow(gpuOnly = false): Promise<TensorflowLoad> {
  const packages = gpuOnly ? TENSORFLOW_PACKAGES.slice(0, 1) : TENSORFLOW_PACKAGES;
  const failures: string[] = [];
  for (const pkg of packages) {
    try {
      await import(pkg); // registers the "tensorflow" backend
      if (!(await tf.setBackend("tensorflow"))) {
        throw new Error("tf.setBackend('tensorflow') returned false");
      }
      // deno-lint-ignore no-explicit-any
      const version = (tf.backend() as any).binding?.TF_Version;
      return { ok: true, pkg, detail: `${pkg}${version ? ` (libtensorflow ${version})` : ""}` };
    } catch (err) {
      const msg = firstLine(err);
      const why =
        /not a dependency|not in import map|Cannot find (module|package)|Could not find/i.test(msg)
          ? `not installed (deno add npm:${pkg}; see README, GPU backends)`
          : `failed to load: ${msg}`;
      failures.push(`${pkg} ${why}`);
    }
  }
  return { ok: false, reason: failures.join("; ") };
}
