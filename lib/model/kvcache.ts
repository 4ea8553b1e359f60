/**
 * KV-cache decoding, beyond the book's section 5.3: the book's `generate` runs the whole context through the model
 * for every new token. Here the prompt goes through once (prefill), each attention layer keeps its keys and values,
 * and every later step feeds only the newest token, attending to the cached keys. The math is the model's
 * (lib/model/model.ts): same layer norm, GELU, 1/√d attention scaling, no dropout; only the summation order of a few
 * reductions differs, so logits agree to float32 rounding.
 *
 * Positions are absolute (the learned `pos_emb`): once the sequence outgrows context_length, cropping to the last
 * context_length tokens moves every token to a new position, so no cached key stays valid. From then on each step
 * rebuilds the cache from the cropped window, which costs what the book's loop costs.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { GPTModel } from "./model.ts";
import { type GenerateOptions, pickNext } from "./generate.ts";
import { fusedCausalSoftmax } from "../backends/backend.ts";
import { gelu, layerNorm } from "./ops.ts";

/**
 * Keys and values of every attention layer for one sequence (B = 1), each (H, T, D), grown by concatenation as
 * tokens are appended. Holds tensors: call {@link dispose} when done.
 *
 * @example
 * ```ts
 * const cache = new KVCache(model);
 * let logits = await cache.append(promptIds); // prefill: (V) logits of the last prompt token
 * logits = await cache.append([argmax(logits)]); // one decoding step
 * cache.dispose();
 * ```
 */
export class KVCache {
  private keys: tf.Tensor3D[] = [];
  private values: tf.Tensor3D[] = [];
  private len = 0;

  constructor(readonly model: GPTModel) {}

  /** Tokens whose keys and values are cached (their positions are 0 … length − 1). */
  get length(): number {
    return this.len;
  }

  /**
   * Runs `ids` at positions length … length + n − 1 through the model, attending to the cached tokens and
   * causally among themselves; stores their keys and values and returns the logits (V) of the last one.
   */
  async append(ids: readonly number[]): Promise<Float32Array> {
    const { context_length, emb_dim: C, n_layers } = this.model.cfg;
    const n = ids.length, past = this.len;
    if (n === 0) throw new Error("KVCache.append: no tokens");
    if (past + n > context_length) {
      throw new Error(
        `KVCache.append: ${past + n} tokens exceed context_length ${context_length}`,
      );
    }
    const { logits, keys, values } = tf.tidy(() => {
      const tok = tf.gather(this.p("tok_emb.weight"), tf.tensor1d(ids as number[], "int32")); // (n, C)
      const pos = tf.slice(this.p("pos_emb.weight"), [past, 0], [n, C]); // (n, C)
      let x = tf.add(tok, pos) as tf.Tensor2D;
      const keys: tf.Tensor3D[] = [], values: tf.Tensor3D[] = [];
      for (let i = 0; i < n_layers; i++) {
        const pre = `trf_blocks.${i}`;
        let h = layerNorm(
          x,
          this.p(`${pre}.norm1.scale`),
          this.p(`${pre}.norm1.shift`),
        ) as tf.Tensor2D;
        const att = this.attention(h, i, past);
        keys.push(att.k);
        values.push(att.v);
        x = tf.add(x, att.out);
        h = layerNorm(x, this.p(`${pre}.norm2.scale`), this.p(`${pre}.norm2.shift`)) as tf.Tensor2D;
        h = gelu(this.linear(h, `${pre}.ff.layers.0`)) as tf.Tensor2D; // (n, 4C)
        x = tf.add(x, this.linear(h, `${pre}.ff.layers.2`));
      }
      const last = tf.slice(x, [n - 1, 0], [1, C]) as tf.Tensor2D; // (1, C)
      const h = layerNorm(last, this.p("final_norm.scale"), this.p("final_norm.shift"));
      return { logits: this.model.head(h as tf.Tensor2D), keys, values }; // logits (1, V)
    });
    tf.dispose([this.keys, this.values]);
    this.keys = keys;
    this.values = values;
    this.len = past + n;
    const out = (await logits.data()).slice() as Float32Array; // a copy: CPU backends hand out their storage
    logits.dispose();
    return out;
  }

  /** Forgets every cached token (positions start again at 0). */
  reset(): void {
    tf.dispose([this.keys, this.values]);
    this.keys = [];
    this.values = [];
    this.len = 0;
  }

  /** Frees the cached tensors. */
  dispose(): void {
    this.reset();
  }

  private p(name: string): tf.Tensor {
    const v = this.model.params.get(name);
    if (!v) throw new Error(`KVCache: no parameter ${name}`);
    return v;
  }

  /** x (n, in) @ W[out, in]ᵀ + b → (n, out), as GPTModel's linear. */
  private linear(x: tf.Tensor2D, name: string, bias = true): tf.Tensor2D {
    const y = tf.matMul(x, this.p(`${name}.weight`), false, true) as tf.Tensor2D;
    return bias ? tf.add(y, this.p(`${name}.bias`)) as tf.Tensor2D : y;
  }

  /**
   * MultiHeadAttention of layer `i` for n new tokens after `past` cached ones: x (n, C) → out (n, C), and the
   * layer's keys and values for all past + n tokens, (H, past + n, D).
   */
  private attention(
    x: tf.Tensor2D,
    i: number,
    past: number,
  ): { out: tf.Tensor2D; k: tf.Tensor3D; v: tf.Tensor3D } {
    const { emb_dim: C, n_heads: H, qkv_bias } = this.model.cfg;
    const D = C / H, n = x.shape[0];
    const pre = `trf_blocks.${i}.att`;
    const heads = (t: tf.Tensor2D) => tf.transpose(tf.reshape(t, [n, H, D]), [1, 0, 2]); // (H, n, D)
    const q = heads(this.linear(x, `${pre}.W_query`, qkv_bias));
    let k = heads(this.linear(x, `${pre}.W_key`, qkv_bias)) as tf.Tensor3D;
    let v = heads(this.linear(x, `${pre}.W_value`, qkv_bias)) as tf.Tensor3D;
    if (past > 0) {
      k = tf.concat([this.keys[i], k], 1); // (H, past + n, D)
      v = tf.concat([this.values[i], v], 1);
    }
    const scores = tf.matMul(q, k, false, true); // (H, n, past + n)
    const weights = past === 0
      ? fusedCausalSoftmax(scores, 1 / Math.sqrt(D)) ??
        tf.softmax(tf.div(tf.add(scores, causalMask(n, 0)), Math.sqrt(D)))
      : tf.softmax(tf.div(n === 1 ? scores : tf.add(scores, causalMask(n, past)), Math.sqrt(D)));
    const ctx = tf.transpose(tf.matMul(weights, v), [1, 0, 2]); // (n, H, D)
    const out = this.linear(tf.reshape(ctx, [n, C]) as tf.Tensor2D, `${pre}.out_proj`); // (n, C)
    return { out, k, v };
  }
}

/** (n, past + n) additive mask: query r sees keys 0 … past + r; −∞ beyond (the book's `masked_fill_`). */
function causalMask(n: number, past: number): tf.Tensor2D {
  const T = past + n;
  const m = new Float32Array(n * T);
  for (let r = 0; r < n; r++) m.fill(-Infinity, r * T + past + r + 1, (r + 1) * T);
  return tf.tensor2d(m, [n, T]);
}

/**
 * The book's `generate` (same options, same results, same generator draws) with a {@link KVCache}: the cropped
 * prompt is processed once, then one token per step. Past context_length the cache is rebuilt from the cropped
 * window each step, as the book's loop recomputes it. Returns the prompt followed by the new tokens.
 *
 * @example
 * ```ts
 * const ids = await generateCached(model, textToTokenIds("Every effort moves you"), {
 *   maxNewTokens: 25, temperature: 1.4, topK: 25, rng: new TorchGenerator(123),
 * });
 * ```
 */
export async function generateCached(
  model: GPTModel,
  ids: number[],
  o: GenerateOptions,
): Promise<number[]> {
  const out = ids.slice();
  if (o.maxNewTokens <= 0) return out;
  const ctxLen = model.cfg.context_length;
  const temperature = o.temperature ?? 0;
  const topK = o.topK ?? null;
  const cache = new KVCache(model);
  try {
    let logits = await cache.append(out.slice(-ctxLen));
    for (let i = 0; i < o.maxNewTokens; i++) {
      const next = pickNext(logits, temperature, topK, o.rng);
      if (o.eosId != null && next === o.eosId) break;
      out.push(next);
      o.onToken?.(next);
      if (i + 1 === o.maxNewTokens) break; // the book's loop computes no logits after the last token
      if (cache.length < ctxLen) logits = await cache.append([next]);
      else {
        cache.reset(); // cropping shifted every position: rebuild from the window
        logits = await cache.append(out.slice(-ctxLen));
      }
    }
  } finally {
    cache.dispose();
  }
  return out;
}
