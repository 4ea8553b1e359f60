/**
 * Text generation of sections 4.7 and 5.3: the greedy `generateTextSimple` used during training, and the book's
 * `generate` with temperature scaling and top-k sampling.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { GPTModel } from "./model.ts";
import type { TorchGenerator } from "./rng.ts";
import { textToTokenIds, tokenIdsToText } from "../data/tokenizer.ts";

/** Logits of the last position for a context cropped to the model's context length: ids → (V). */
export async function lastLogits(model: GPTModel, ids: readonly number[]): Promise<Float32Array> {
  const ctx = ids.slice(-model.cfg.context_length);
  const logits = tf.tidy(() => {
    const h = model.hidden(tf.tensor2d(ctx as number[], [1, ctx.length], "int32"));
    const last = tf.slice(h, [ctx.length - 1, 0], [1, model.cfg.emb_dim]);
    return model.head(last as tf.Tensor2D);
  });
  const values = (await logits.data()).slice() as Float32Array; // a copy: CPU backends hand out their storage
  logits.dispose();
  return values;
}

/** Index of the largest value (first on ties, like torch.argmax). */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** The book's generate_text_simple: `maxNewTokens` greedy tokens appended to `ids`. */
export async function generateTextSimple(
  model: GPTModel,
  ids: number[],
  maxNewTokens: number,
): Promise<number[]> {
  const out = ids.slice();
  for (let i = 0; i < maxNewTokens; i++) out.push(argmax(await lastLogits(model, out)));
  return out;
}

/** The book's generate_and_print_sample, returning the text (newlines folded to spaces) instead of printing. */
export async function generateSample(
  model: GPTModel,
  startContext: string,
  maxNewTokens = 50,
): Promise<string> {
  const ids = await generateTextSimple(model, textToTokenIds(startContext), maxNewTokens);
  return tokenIdsToText(ids).replaceAll("\n", " ");
}

/** Options of the book's {@link generate} (section 5.3.3). */
export interface GenerateOptions {
  maxNewTokens: number;
  temperature?: number; // 0: greedy (argmax)
  topK?: number | null; // keep the k largest logits, −∞ for the rest
  eosId?: number | null; // stop before appending this token
  rng?: TorchGenerator; // draws for multinomial sampling (PyTorch's stream for a seed)
  onToken?: (id: number) => void; // called for every new token (streaming)
}

/**
 * Applies the book's top-k mask and temperature to logits, in float32 as PyTorch does: logits below the k-th
 * largest become −∞, then logits / temperature, then softmax. Returns probabilities (V).
 */
export function samplingProbs(
  logits: Float32Array,
  topK: number | null,
  temperature: number,
): Float32Array {
  const z = new Float32Array(logits);
  if (topK !== null && topK < z.length) {
    const kth = Float32Array.from(z).sort().reverse()[topK - 1];
    for (let i = 0; i < z.length; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  let max = -Infinity;
  for (let i = 0; i < z.length; i++) {
    z[i] = Math.fround(z[i] / temperature);
    if (z[i] > max) max = z[i];
  }
  let sum = 0;
  for (let i = 0; i < z.length; i++) sum += z[i] = Math.fround(Math.exp(z[i] - max));
  const s = Math.fround(sum);
  for (let i = 0; i < z.length; i++) z[i] = Math.fround(z[i] / s);
  return z;
}

/**
 * The book's choice of the next token: temperature > 0 samples from softmax(top-k-masked logits / T) with
 * `torch.multinomial`'s draws; temperature 0 takes the argmax (top-k does not change it).
 */
export function pickNext(
  logits: Float32Array,
  temperature: number,
  topK: number | null,
  rng: TorchGenerator | undefined,
): number {
  if (temperature > 0) {
    if (!rng) throw new Error("generate: temperature > 0 needs a random generator");
    return rng.multinomial(samplingProbs(logits, topK, temperature))[0];
  }
  return argmax(logits);
}

/**
 * The book's generate: crop the context to context_length, top-k mask, temperature > 0 samples from
 * softmax(logits / T) with `torch.multinomial`'s draws, temperature 0 takes the argmax; stops at `eosId`.
 * Returns the prompt followed by the new tokens.
 */
export async function generate(
  model: GPTModel,
  ids: number[],
  o: GenerateOptions,
): Promise<number[]> {
  const out = ids.slice();
  const temperature = o.temperature ?? 0;
  for (let i = 0; i < o.maxNewTokens; i++) {
    const next = pickNext(await lastLogits(model, out), temperature, o.topK ?? null, o.rng);
    if (o.eosId != null && next === o.eosId) break;
    out.push(next);
    o.onToken?.(next);
  }
  return out;
}
