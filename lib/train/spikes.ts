/**
 * The spike guard (`training.skip_spikes`, llm.c's `-sl`/`-sg`): a step whose loss or global gradient norm stands
 * more than `loss_z` / `grad_z` standard deviations above the mean of the last `window` steps' keeps its gradients
 * out of the weights (the update is skipped; the data, the step count and the lr schedule move on). Every step's
 * values enter the window, skipped or not, so a lasting change of level is followed after a few steps instead of
 * being skipped forever (as llm.c's detector does). The window travels in the checkpoint, so a resumed run skips
 * exactly the steps an uninterrupted one would.
 */
import type { SpikeGuard as SpikeGuardConfig } from "../config.ts";

/** The guard's memory: the last steps' losses and norms (oldest first), and the updates skipped so far. */
export interface SpikeWindow {
  losses: number[];
  norms: number[];
  skipped: number;
}

/** What the guard made of one step. */
export interface SpikeVerdict {
  skip: boolean;
  lossZ: number | null; // null while the window is not full
  gradZ: number | null;
}

/** An empty window. */
export function emptySpikeWindow(): SpikeWindow {
  return { losses: [], norms: [], skipped: 0 };
}

/**
 * How many standard deviations (population) `x` stands above the mean of `window`; null before the window holds
 * `size` values, 0 where they are all equal (llm.c's rule).
 */
export function zScore(window: number[], x: number, size: number): number | null {
  if (window.length < size) return null;
  let mean = 0;
  for (const v of window) mean += v;
  mean /= window.length;
  let variance = 0;
  for (const v of window) variance += (v - mean) ** 2;
  const std = Math.sqrt(variance / window.length);
  return std === 0 ? 0 : (x - mean) / std;
}

/** Judges steps against the recent window of `state` (updated in place) under the config's thresholds. */
export class SpikeGuard {
  constructor(readonly cfg: SpikeGuardConfig, readonly state: SpikeWindow) {}

  /** Whether the step needs its gradient norm to be judged. */
  get needsNorm(): boolean {
    return this.cfg.grad_z !== null;
  }

  /** Judges a step by its loss and (when `needsNorm`) its gradient norm, then adds both to the window. */
  judge(loss: number, norm: number | null): SpikeVerdict {
    const { loss_z, grad_z, window } = this.cfg;
    const lossZ = zScore(this.state.losses, loss, window);
    const gradZ = norm === null ? null : zScore(this.state.norms, norm, window);
    const skip = (loss_z !== null && lossZ !== null && lossZ > loss_z) ||
      (grad_z !== null && gradZ !== null && gradZ > grad_z);
    push(this.state.losses, loss, window);
    if (norm !== null) push(this.state.norms, norm, window);
    if (skip) this.state.skipped++;
    return { skip, lossZ, gradZ };
  }
}

function push(xs: number[], x: number, size: number): void {
  xs.push(x);
  if (xs.length > size) xs.splice(0, xs.length - size);
}
