/**
 * The book's GPTModel (chapter 4) on TF.js: token + position embeddings, dropout, `n_layers` pre-LayerNorm
 * transformer blocks (causal multi-head attention of section 3.6, feed-forward with GELU, shortcut connections),
 * a final LayerNorm and the output head. Parameters keep PyTorch's names and layouts (Linear weights [out, in]),
 * so a state dict of the book's model maps one to one.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { ModelConfig } from "../config.ts";
import type { NamedParam } from "./params.ts";
import { fusedAttention, fusedCausalSoftmax, fusedLinear } from "../backends/backend.ts";
import {
  crossEntropy,
  dropout,
  dropoutMask,
  DropoutRng,
  embedding,
  gelu,
  layerNorm,
} from "./ops.ts";

/** Options of a forward pass: dropout is on only when a generator is given (the book's `model.train()`). */
export interface ForwardOptions {
  dropout?: DropoutRng | null;
}

export class GPTModel {
  /** Parameters in PyTorch's registration order; `out_head.weight` is absent when the head is tied. */
  readonly params: Map<string, tf.Variable>;
  private causalMasks = new Map<number, tf.Tensor2D>();

  /** Builds the model from host parameters; on CPU backends the tensors may take over the `data` arrays. */
  constructor(readonly cfg: ModelConfig, named: NamedParam[]) {
    this.params = new Map();
    for (const p of named) {
      const t = tf.tensor(p.data, p.shape, "float32");
      this.params.set(p.name, tf.variable(t, true));
      t.dispose();
    }
    for (const n of GPTModel.expectedNames(cfg, !this.params.has("out_head.weight"))) {
      if (!this.params.has(n)) throw new Error(`GPTModel: missing parameter ${n}`);
    }
  }

  /** Parameter names of the book's model for `cfg`, in PyTorch's order. */
  static expectedNames(cfg: ModelConfig, tieHead = false): string[] {
    const names = ["tok_emb.weight", "pos_emb.weight"];
    for (let i = 0; i < cfg.n_layers; i++) {
      const b = `trf_blocks.${i}`;
      for (const w of ["W_query", "W_key", "W_value"]) {
        names.push(`${b}.att.${w}.weight`);
        if (cfg.qkv_bias) names.push(`${b}.att.${w}.bias`);
      }
      names.push(`${b}.att.out_proj.weight`, `${b}.att.out_proj.bias`);
      names.push(`${b}.ff.layers.0.weight`, `${b}.ff.layers.0.bias`);
      names.push(`${b}.ff.layers.2.weight`, `${b}.ff.layers.2.bias`);
      names.push(`${b}.norm1.scale`, `${b}.norm1.shift`, `${b}.norm2.scale`, `${b}.norm2.shift`);
    }
    names.push("final_norm.scale", "final_norm.shift");
    if (!tieHead) names.push("out_head.weight");
    return names;
  }

  /** Parameter count of the book's model for `cfg` without building it (162,419,712 for GPT-124M at context 256;
   * the book's 163,009,536 is at context 1024). */
  static countParams(cfg: ModelConfig, tieHead = false): number {
    const { vocab_size: V, context_length: T, emb_dim: C, n_layers: L } = cfg;
    const block = 3 * C * C + (cfg.qkv_bias ? 3 * C : 0) + C * C + C + 8 * C * C + 5 * C + 4 * C;
    return V * C + T * C + L * block + 2 * C + (tieHead ? 0 : V * C);
  }

  /** Whether the output head shares the token embedding (GPT-2 checkpoints) or has its own weight (the book). */
  get tiedHead(): boolean {
    return !this.params.has("out_head.weight");
  }

  /** Total number of parameters (the book's `sum(p.numel())`; a tied head counts once). */
  numParams(): number {
    let n = 0;
    for (const v of this.params.values()) n += v.size;
    return n;
  }

  private p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`GPTModel: no parameter ${name}`);
    return v;
  }

  /** x (N, in) @ W[out, in]ᵀ + b → (N, out). */
  private linear(x: tf.Tensor2D, name: string, bias = true): tf.Tensor2D {
    const w = this.p(`${name}.weight`) as tf.Tensor2D;
    if (bias) {
      const fused = fusedLinear(x, w, this.p(`${name}.bias`) as tf.Tensor1D);
      if (fused) return fused;
    }
    const y = tf.matMul(x, w, false, true) as tf.Tensor2D;
    return bias ? tf.add(y, this.p(`${name}.bias`)) as tf.Tensor2D : y;
  }

  /** (T, T) additive mask: 0 on and below the diagonal, −∞ above (the book's `masked_fill_` with −inf). */
  private causalMask(T: number): tf.Tensor2D {
    let m = this.causalMasks.get(T);
    if (!m) {
      const v = new Float32Array(T * T);
      for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) v[i * T + j] = -Infinity;
      m = tf.keep(tf.tensor2d(v, [T, T]));
      this.causalMasks.set(T, m);
    }
    return m;
  }

  /** MultiHeadAttention of section 3.6 on x (B·T, C). */
  private attention(
    x: tf.Tensor2D,
    B: number,
    T: number,
    i: number,
    rng: DropoutRng | null,
  ): tf.Tensor2D {
    const { emb_dim: C, n_heads: H, qkv_bias } = this.cfg;
    const D = C / H;
    const pre = `trf_blocks.${i}.att`;
    const q2 = this.linear(x, `${pre}.W_query`, qkv_bias); // (B·T, C)
    const k2 = this.linear(x, `${pre}.W_key`, qkv_bias);
    const v2 = this.linear(x, `${pre}.W_value`, qkv_bias);
    const mask = dropoutMask([B, H, T, T], this.cfg.drop_rate, rng); // the attention weights' dropout
    const fused = fusedAttention(q2, k2, v2, B, H, 1 / Math.sqrt(D), mask);
    if (fused) return this.linear(fused, `${pre}.out_proj`);
    const heads = (t: tf.Tensor2D) => tf.transpose(tf.reshape(t, [B, T, H, D]), [0, 2, 1, 3]); // (B, H, T, D)
    const [q, k, v] = [heads(q2), heads(k2), heads(v2)];
    const scores = tf.matMul(q, k, false, true); // (B, H, T, T)
    const w = fusedCausalSoftmax(scores, 1 / Math.sqrt(D)) ??
      tf.softmax(tf.div(tf.add(scores, this.causalMask(T)), Math.sqrt(D)));
    const weights = mask ? tf.mul(w, mask) : w;
    const ctx = tf.transpose(tf.matMul(weights, v), [0, 2, 1, 3]); // (B, T, H, D)
    return this.linear(tf.reshape(ctx, [B * T, C]), `${pre}.out_proj`); // (B·T, C)
  }

  /** TransformerBlock of section 4.5: x + drop(att(norm1(x))), then x + drop(ff(norm2(x))). */
  private block(
    x: tf.Tensor2D,
    B: number,
    T: number,
    i: number,
    rng: DropoutRng | null,
  ): tf.Tensor2D {
    const pre = `trf_blocks.${i}`;
    const p = this.cfg.drop_rate;
    let h = layerNorm(x, this.p(`${pre}.norm1.scale`), this.p(`${pre}.norm1.shift`)) as tf.Tensor2D;
    x = tf.add(x, dropout(this.attention(h, B, T, i, rng), p, rng));
    h = layerNorm(x, this.p(`${pre}.norm2.scale`), this.p(`${pre}.norm2.shift`)) as tf.Tensor2D;
    h = gelu(this.linear(h, `${pre}.ff.layers.0`)) as tf.Tensor2D; // (B·T, 4C)
    return tf.add(x, dropout(this.linear(h, `${pre}.ff.layers.2`), p, rng));
  }

  /** Hidden states after the final LayerNorm: idx (B, T) int32 → (B·T, C). */
  hidden(idx: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor2D {
    const [B, T] = idx.shape;
    const { context_length, emb_dim: C } = this.cfg;
    if (T > context_length) {
      throw new Error(`GPTModel: ${T} tokens exceed context_length ${context_length}`);
    }
    const rng = opts.dropout ?? null;
    const tok = embedding(this.p("tok_emb.weight") as tf.Tensor2D, tf.reshape(idx, [B * T])); // (B·T, C)
    // The whole table when T is the context length: a slice's gradient is a PadV2 (the cpu backend's, 20+ ms).
    const posEmb = this.p("pos_emb.weight");
    const pos = T === posEmb.shape[0] ? posEmb : tf.slice(posEmb, [0, 0], [T, C]); // (T, C)
    let x = tf.reshape(tf.add(tf.reshape(tok, [B, T, C]), pos), [B * T, C]) as tf.Tensor2D;
    x = dropout(x, this.cfg.drop_rate, rng) as tf.Tensor2D;
    for (let i = 0; i < this.cfg.n_layers; i++) x = this.block(x, B, T, i, rng);
    return layerNorm(x, this.p("final_norm.scale"), this.p("final_norm.shift")) as tf.Tensor2D;
  }

  /** The output head on hidden states (N, C) → logits (N, V). */
  head(h: tf.Tensor2D): tf.Tensor2D {
    const w = this.params.get("out_head.weight") ?? this.p("tok_emb.weight");
    return tf.matMul(h, w, false, true);
  }

  /** Logits for every position: idx (B, T) → (B, T, V). */
  forward(idx: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor3D {
    return tf.tidy(() => {
      const [B, T] = idx.shape;
      return tf.reshape(this.head(this.hidden(idx, opts)), [B, T, this.cfg.vocab_size]);
    });
  }

  /** Mean cross-entropy of a batch: idx, targets (B, T) int32 → scalar (the book's calc_loss_batch). */
  loss(idx: tf.Tensor2D, targets: tf.Tensor2D, opts: ForwardOptions = {}): tf.Scalar {
    return tf.tidy(() => {
      const [B, T] = idx.shape;
      const logits = this.head(this.hidden(idx, opts)); // (B·T, V)
      return crossEntropy(logits, tf.reshape(targets, [B * T]) as tf.Tensor1D);
    });
  }

  /** Copies every parameter to the host, in order. */
  async toNamedParams(): Promise<NamedParam[]> {
    const out: NamedParam[] = [];
    for (const [name, v] of this.params) {
      out.push({ name, shape: v.shape.slice(), data: (await v.data()) as Float32Array });
    }
    return out;
  }

  /** Frees every tensor the model holds. */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    for (const m of this.causalMasks.values()) m.dispose();
    this.params.clear();
    this.causalMasks.clear();
  }
}
