/**
 * The face of the backends layer: the one module that model/, train/, weights/ and the tasks call. It holds
 *
 * - the backend choice (`initBackend`, `usePrecision`: choice.ts) and the measured peak of the matrix products;
 * - host views: a tensor's storage as a Float32Array where it lives on the host, and host arrays that the helper
 *   threads can share;
 * - the fused ops (attention, linear, causal softmax, layer norm, GELU, embedding, cross-entropy: fused_ops.ts),
 *   the dropout masks and the AdamW update, each answering "not here" (null, or false for an update in place)
 *   where the active backend lacks it, so that the caller composes plain TF.js ops instead;
 * - holding the helper threads open across a training step.
 *
 * Behind it, one folder per implementation: cpu/ (the thread pool, row kernels, fused kernels and the matrix
 * libraries of the `cpu` backend), webgpu/, tensorflow/. No module outside this folder imports one of them
 * (tests/layers_test.ts checks).
 */
import * as tf from "@tensorflow/tfjs-core";
import type { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import { alloc } from "./cpu/fused_kernels.ts";
import { holdHelpers, parallelFor, shared, sharedF32 } from "./cpu/pool.ts";
import "./cpu/row_kernels.ts"; // registers the "dropoutMask" and "adamw" row kernels
import { sharedHostView, weightCopyTarget } from "./cpu/cpu_backend.ts";

export { type BackendChoice, estimateTrainingBytes, initBackend, usePrecision } from "./choice.ts";
export { type Precision, weightsUpdated } from "./cpu/cpu_backend.ts";
export { measuredPeak, type Peak } from "./cpu/matrix/peak.ts";
export { RECENT_BYTES } from "./cpu/bf16.ts";
export {
  fusedAttention,
  fusedCausalSoftmax,
  fusedCrossEntropy,
  fusedEmbedding,
  fusedGelu,
  fusedLayerNorm,
  fusedLinear,
} from "./fused_ops.ts";

/**
 * A zeroed Float32Array of `n` elements on shared memory, so that the helper threads can read and write it
 * (parameters, optimizer moments, weights loaded from a file). Any backend takes it as a tensor's data.
 */
export function hostArray(n: number): Float32Array {
  return sharedF32(n);
}

/**
 * A Float32Array of `n` elements to build a float32 tensor from, with arbitrary contents (write every element):
 * recycled from the active backend's pool where it keeps one (cpu), else fresh. Per-step host data such as
 * dropout masks then costs no fresh pages.
 */
export function tensorStorage(n: number): Float32Array {
  return alloc(tf.backend() as MathBackendCPU, n);
}

/**
 * A writable view of a float32 tensor's storage on CPU-side backends (cpu, tfjs-cpu: the JS array; wasm: the heap),
 * or null on backends whose memory lives elsewhere (webgpu). Lets the optimizer update parameters in place in one
 * pass instead of through a dozen temporary tensors of the parameter's size.
 */
export function hostView(t: tf.Tensor): Float32Array | null {
  if (t.dtype !== "float32") return null;
  // deno-lint-ignore no-explicit-any
  const backend = tf.backend() as any;
  if (typeof backend.typedArrayFromHeap === "function") return backend.typedArrayFromHeap(t);
  const values = backend.data?.get?.(t.dataId)?.values;
  return values instanceof Float32Array ? values : null;
}

/**
 * Runs `f` (one training step) with the CPU backends' helper threads held open (`GPT_JS_THREADS`): a step's
 * longest matrix products would otherwise outlast their idle timeout. A plain call of `f` elsewhere.
 */
export function withHelpersHeld<T>(f: () => Promise<T>): Promise<T> {
  return holdHelpers(f);
}

/**
 * Draws `n` elements of an inverted-dropout keep-mask into `out` (0 with probability `p`, else 1/(1−p)) from the
 * xoshiro128** stream whose four-integer state is `state`, and advances `state` past them. Long masks in shared
 * memory are drawn on every helper thread (each part jumps ahead in the one stream: the same mask).
 */
export function drawDropoutMask(state: Uint32Array, n: number, p: number, out: Float32Array): void {
  const end = shared(new Int32Array(4));
  const [s0, s1, s2, s3] = state;
  parallelFor(
    "dropoutMask",
    [out, end],
    [s0, s1, s2, s3, Math.floor(p * 4294967296), 1 / (1 - p), n],
    n,
    4,
  );
  for (let i = 0; i < 4; i++) state[i] = end[i] >>> 0;
}

/** The constants of one AdamW step (lib/train/adamw.ts), √(1−β2ᵗ) folded into `stepSize` and `eps`. */
export interface AdamWStep {
  beta1: number;
  beta2: number;
  decay: number; // 1 − lr·wd
  stepSize: number; // lr / (1−β1ᵗ) · √(1−β2ᵗ)
  eps: number; // eps · √(1−β2ᵗ)
}

/** A writable host view of a parameter or moment, in shared memory where the backend allows it. */
function updateView(t: tf.Tensor): Float32Array | null {
  return sharedHostView(t) ?? hostView(t);
}

/**
 * AdamW's update of parameter `p` and its moments `m`, `v` from gradient `g`, in place in one pass over host
 * memory (split across the helper threads where the arrays are shared; float32 like PyTorch): true when done,
 * false ("not here") where a tensor's storage is not on the host, for the caller to compose TF.js ops. In
 * `bf16-mixed`, the weight's bf16 copy is written in the same pass.
 */
export function fusedAdamWUpdate(
  p: tf.Tensor,
  g: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  k: AdamWStep,
): boolean {
  const P = updateView(p), G = hostView(g), M = updateView(m), V = updateView(v);
  if (!P || !G || !M || !V) return false;
  const t = weightCopyTarget(p);
  const arrays = t ? [P, G, M, V, t.copy] : [P, G, M, V];
  const { beta1: b1, beta2: b2 } = k;
  parallelFor(
    "adamw",
    arrays,
    [b1, 1 - b1, b2, 1 - b2, k.decay, k.stepSize, k.eps, t?.form ?? 0],
    P.length,
    4,
  );
  return true;
}
