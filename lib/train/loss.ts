/**
 * Losses of section 5.1: `calcLossBatch` (mean cross-entropy of one batch), `calcLossLoader` (mean of per-batch
 * losses over a loader) and perplexity.
 */
import * as tf from "@tensorflow/tfjs-core";
import { withHelpersHeld } from "../backends/backend.ts";
import type { Batch, BatchLoader } from "../data/data.ts";
import type { ForwardOptions, GPTModel } from "../model/model.ts";

/** Mean cross-entropy of one batch as a scalar tensor (differentiable). */
export function calcLossBatch(model: GPTModel, batch: Batch, opts: ForwardOptions = {}): tf.Scalar {
  return tf.tidy(() => {
    const shape: [number, number] = [batch.batchSize, batch.maxLength];
    return model.loss(
      tf.tensor2d(batch.inputs, shape, "int32"),
      tf.tensor2d(batch.targets, shape, "int32"),
      opts,
    );
  });
}

/**
 * The book's calc_loss_loader in eval mode: the mean of the per-batch losses of the first `numBatches` batches
 * (all when omitted). Batches come in text order, so evaluations are comparable across epochs.
 */
export async function calcLossLoader(
  model: GPTModel,
  loader: BatchLoader,
  numBatches?: number,
): Promise<number> {
  const n = Math.min(numBatches ?? loader.length, loader.length);
  if (n === 0) return NaN;
  return await withHelpersHeld(async () => {
    let total = 0;
    for (const batch of loader.ordered(n)) {
      const loss = calcLossBatch(model, batch);
      total += (await loss.data())[0];
      loss.dispose();
    }
    return total / n;
  });
}

/** Perplexity of a mean cross-entropy: exp(loss). */
export function perplexity(loss: number): number {
  return Math.exp(loss);
}
