/**
 * Text generation of sections 4.7 and 5.3: the greedy `generateTextSimple` used during training, and the book's
 * `generate` with temperature scaling and top-k sampling.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { GPTModel } from "./model.ts";
import { textToTokenIds, tokenIdsToText } from "./tokenizer.ts";

/** Logits of the last position for a context cropped to the model's context length: ids → (V). */
export function lastLogits(model: GPTModel, ids: readonly number[]): Float32Array {
  const ctx = ids.slice(-model.cfg.context_length);
  return tf.tidy(() => {
    const h = model.hidden(tf.tensor2d(ctx as number[], [1, ctx.length], "int32"));
    const last = tf.slice(h, [ctx.length - 1, 0], [1, model.cfg.emb_dim]);
    return model.head(last as tf.Tensor2D);
  }).dataSync() as Float32Array;
}

/** Index of the largest value (first on ties, like torch.argmax). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** The book's generate_text_simple: `maxNewTokens` greedy tokens appended to `ids`. */
export function generateTextSimple(model: GPTModel, ids: number[], maxNewTokens: number): number[] {
  const out = ids.slice();
  for (let i = 0; i < maxNewTokens; i++) out.push(argmax(lastLogits(model, out)));
  return out;
}

/** The book's generate_and_print_sample, returning the text (newlines folded to spaces) instead of printing. */
export function generateSample(model: GPTModel, startContext: string, maxNewTokens = 50): string {
  const ids = generateTextSimple(model, textToTokenIds(startContext), maxNewTokens);
  return tokenIdsToText(ids).replaceAll("\n", " ");
}
