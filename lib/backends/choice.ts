/**
 * The backend choice: the one place that names TF.js backends. `initBackend` turns the config's `backend` into a
 * ready TF.js backend and says which one and why; `usePrecision` sets how its matrix products compute. Reached
 * through the face, backend.ts.
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import {
  CPU_BACKEND,
  matrixLibrary,
  type Precision,
  registerCpuBackend,
  setPrecision,
} from "./cpu/cpu_backend.ts";
import { DNNL_THREAD_NOTE } from "./cpu/matrix/dnnl.ts";
import { loadTensorflow, nvidiaGpuVisible } from "./tensorflow/load.ts";
import {
  activateWebGPU,
  ALLOW_FALLBACK_ENV,
  fallbackAllowed,
  hardwareGpuPossible,
  probeWebGPU,
} from "./webgpu/adapter.ts";
import type { BackendName, ModelConfig } from "../config.ts";
import { firstLine, UserError } from "../errors.ts";

tf.env().set("IS_NODE", false); // silences tfjs's "install tfjs-node" banner: we pick backends ourselves
tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", false); // Deno lacks the worker setup tfjs-wasm threads need

/** The backend a run uses and the reason it was chosen. */
export interface BackendChoice {
  name: string;
  reason: string;
}

/** The wasm backend's heap cannot grow past 4 GiB (wasm32). */
const WASM_HEAP_BYTES = 4 * 1024 ** 3;

/**
 * The most training may need for the wasm backend to take it: 85 % of its heap, the rest for TF.js's own buffers
 * and the fragmentation of a heap that cannot be compacted (GPT-124M at batch 2, estimated at 3.8 GiB, aborts).
 */
const WASM_FITS_BYTES = WASM_HEAP_BYTES * 0.85;

/**
 * Rough peak memory of training: parameters, gradients and AdamW's two moments (4 × params × 4 bytes) plus the
 * activations autodiff keeps (≈ 40 floats per token per layer per emb unit, attention maps, and the logits a few
 * times over).
 */
export function estimateTrainingBytes(cfg: ModelConfig, batchSize: number, params: number): number {
  const T = cfg.context_length, N = batchSize * T;
  const perLayer = N * cfg.emb_dim * 40 + batchSize * cfg.n_heads * T * T * 4;
  const activations = cfg.n_layers * perLayer + N * cfg.vocab_size * 4;
  return 16 * params + 4 * activations;
}

async function tryWasm(): Promise<string | null> {
  try {
    const entry = import.meta.resolve("@tensorflow/tfjs-backend-wasm");
    const dir = new URL(".", entry).pathname;
    setWasmPaths(dir.endsWith("/") ? dir : dir + "/");
    return (await tf.setBackend("wasm")) ? null : "tf.setBackend('wasm') returned false";
  } catch (err) {
    return firstLine(err);
  }
}

/**
 * Activates the requested backend. `auto` prefers libtensorflow on a visible NVIDIA GPU (tfjs-node-gpu, when
 * installed), then a hardware WebGPU adapter (never a software fallback one), then the fastest CPU backend on which
 * the model fits.
 * Unknown or unavailable explicit choices are a UserError (exit 2).
 */
export async function initBackend(
  requested: BackendName,
  memory?: { cfg: ModelConfig; batchSize: number; params: number },
): Promise<BackendChoice> {
  const need = memory ? estimateTrainingBytes(memory.cfg, memory.batchSize, memory.params) : 0;
  return requested === "auto" ? await autoBackend(need) : await explicitBackend(requested, need);
}

function gib(bytes: number): string {
  return (bytes / 1024 ** 3).toFixed(1);
}

/** A backend named in the config, or a UserError saying why it is not available. */
async function explicitBackend(
  requested: Exclude<BackendName, "auto">,
  need: number,
): Promise<BackendChoice> {
  switch (requested) {
    case "cpu": {
      const res = registerCpuBackend();
      if (!res.ok) throw new UserError(`backend cpu: not available: ${res.reason}`);
      await tf.setBackend(CPU_BACKEND);
      return { name: "cpu", reason: `${res.reason}; requested` };
    }
    case "tfjs-cpu":
      await tf.setBackend("cpu");
      return { name: "tfjs-cpu", reason: "requested" };
    case "wasm": {
      if (need > WASM_FITS_BYTES) {
        throw new UserError(
          `backend wasm: training needs about ${
            gib(need)
          } GiB, more than TF.js's wasm backend fits in its ` +
            `4 GiB heap; use backend cpu (or auto)`,
        );
      }
      const err = await tryWasm();
      if (err) throw new UserError(`backend wasm: not available: ${err}`);
      return { name: "wasm", reason: "requested" };
    }
    case "webgpu": {
      const found = await probeWebGPU();
      if (typeof found === "string") throw new UserError(`backend webgpu: not available: ${found}`);
      if (found.fallback && !fallbackAllowed()) {
        throw new UserError(
          `backend webgpu: only a software adapter was found (${found.description}); set ${ALLOW_FALLBACK_ENV}=1 to use it anyway`,
        );
      }
      const err = await activateWebGPU(found);
      if (err) throw new UserError(`backend webgpu: adapter ${found.description} failed: ${err}`);
      return { name: "webgpu", reason: `requested; adapter ${found.description}` };
    }
    case "tensorflow": {
      const res = await loadTensorflow();
      if (!res.ok) throw new UserError(`backend tensorflow: not available: ${res.reason}`);
      return { name: "tensorflow", reason: `requested; ${res.detail}` };
    }
  }
}

/** `auto`'s choice for training that needs about `need` bytes (see {@link initBackend}). */
async function autoBackend(need: number): Promise<BackendChoice> {
  let tfNote = "tensorflow: no NVIDIA GPU visible";
  if (nvidiaGpuVisible()) {
    const res = await loadTensorflow(true);
    if (res.ok) {
      return { name: "tensorflow", reason: `auto: NVIDIA GPU visible; ${res.detail}` };
    }
    tfNote = `tensorflow: ${res.reason}`;
  }
  const gpu = hardwareGpuPossible()
    ? await probeWebGPU()
    : "no GPU device node (/dev/dri/renderD*, /dev/nvidia0)";
  let gpuNote = typeof gpu === "string"
    ? `webgpu: ${gpu}`
    : `webgpu: only the software adapter ${gpu.description}`;
  if (typeof gpu !== "string" && !gpu.fallback) {
    const err = await activateWebGPU(gpu);
    if (!err) {
      return { name: "webgpu", reason: `auto: hardware WebGPU adapter ${gpu.description}` };
    }
    gpuNote = `webgpu: adapter ${gpu.description} failed: ${err}`;
  }
  const noGpu = `no GPU: ${tfNote}; ${gpuNote}`;
  const cpu = registerCpuBackend();
  if (cpu.ok && await tf.setBackend(CPU_BACKEND)) {
    return { name: "cpu", reason: `${cpu.reason}; auto: ${noGpu}; the fastest CPU path` };
  }
  if (need <= WASM_FITS_BYTES) {
    const err = await tryWasm();
    if (!err) {
      return {
        name: "wasm",
        reason: `auto: ${noGpu}; no matrix library (${cpu.reason}); wasm fits: training needs ~${
          gib(need)
        } GiB of its 4 GiB heap`,
      };
    }
    await tf.setBackend("cpu");
    return {
      name: "tfjs-cpu",
      reason: `auto: ${noGpu}; no matrix library (${cpu.reason}); wasm failed to load (${err})`,
    };
  }
  await tf.setBackend("cpu");
  return {
    name: "tfjs-cpu",
    reason: `auto: ${noGpu}; no matrix library (${cpu.reason}); training needs ~${
      gib(need)
    } GiB, more than wasm's 4 GiB heap`,
  };
}

/**
 * Sets the precision of the run's matrix products on the active backend `backend` (the name `initBackend`
 * returned); `weights` are the model's parameters, whose bf16 copies are made once per optimizer step
 * ({@link weightsUpdated}). `bf16-mixed` runs on the `cpu` backend only: elsewhere a UserError (exit 2). Returns
 * a phrase for the run header, e.g. "bf16-mixed (emulated: WebAssembly GEMM has no bf16 product, not faster)".
 */
export function usePrecision(precision: Precision, backend: string, weights: tf.Tensor[]): string {
  if (precision !== "fp32" && backend !== "cpu") {
    throw new UserError(
      `precision ${precision}: not available on backend ${backend} (not measured there yet); use backend cpu or precision fp32`,
    );
  }
  setPrecision(precision, weights);
  if (precision === "fp32") return "fp32";
  const lib = matrixLibrary();
  const note = lib?.kind === "dnnl" ? `; ${DNNL_THREAD_NOTE}` : "";
  return lib?.gemmBf16
    ? `${precision} (bf16 products on ${lib.describe()}${note})`
    : `${precision} (emulated: bf16 rounding around fp32 products, not faster on this library)`;
}
