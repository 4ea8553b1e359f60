/**
 * Appendix D's training-loop extras: linear learning-rate warmup, cosine decay and gradient clipping by global norm.
 */
import * as tf from "@tensorflow/tfjs-core";

/** A learning-rate schedule over `totalSteps` optimizer steps. */
export interface LrSchedule {
  peakLr: number; // reached at the end of warmup (the book's peak_lr)
  initialLr: number; // the first step's lr (initial_lr)
  minLr: number; // the cosine's floor (min_lr)
  warmupSteps: number; // int(0.2 × total) in the book
  totalSteps: number;
  cosine: boolean; // false: constant peakLr after warmup
}

/**
 * The lr of the step with 0-based index `step` (the book's global_step): a linear ramp from initialLr to peakLr
 * over warmupSteps, then peakLr, or a half cosine from peakLr down to minLr at the last step.
 */
export function learningRate(step: number, s: LrSchedule): number {
  if (step < s.warmupSteps) return s.initialLr + step * (s.peakLr - s.initialLr) / s.warmupSteps;
  if (!s.cosine) return s.peakLr;
  const progress = (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps);
  return s.minLr + (s.peakLr - s.minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Global L2 norm of a set of gradients (torch.nn.utils.clip_grad_norm_'s total_norm). */
export async function globalNorm(grads: Iterable<tf.Tensor>): Promise<number> {
  const list = [...grads];
  if (list.length === 0) return 0;
  // One read back for all gradients (a GPU readback costs milliseconds); the sum over tensors stays in double.
  const sums = tf.tidy(() => tf.stack(list.map((g) => tf.sum(tf.square(g)))));
  const values = await sums.data();
  sums.dispose();
  let sq = 0;
  for (const v of values) sq += v;
  return Math.sqrt(sq);
}

/**
 * Scales gradients so their global norm is at most `maxNorm`, as clip_grad_norm_ does (factor
 * maxNorm / (norm + 1e-6), applied only when below 1). Returns the new gradients (old ones disposed) and the norm
 * before clipping.
 */
export async function clipByGlobalNorm(
  grads: Map<string, tf.Tensor>,
  maxNorm: number,
): Promise<{ grads: Map<string, tf.Tensor>; norm: number }> {
  const norm = await globalNorm(grads.values());
  const factor = maxNorm / (norm + 1e-6);
  if (factor >= 1) return { grads, norm };
  const out = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) {
    out.set(name, tf.mul(g, factor));
    g.dispose();
  }
  return { grads: out, norm };
}
