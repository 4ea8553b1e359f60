/**
 * The building blocks of the book's GPT (chapters 3–4) as TF.js functions: layer norm, tanh-GELU, an embedding
 * lookup whose gradient works on every backend, cross-entropy over the vocabulary, and seeded dropout.
 * Nothing here names a backend: where a backend lacks a kernel, the op asks TF.js whether the kernel exists.
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  drawDropoutMask,
  fusedCrossEntropy,
  fusedEmbedding,
  fusedGelu,
  fusedLayerNorm,
  hostView,
  tensorStorage,
} from "../backends/backend.ts";

/** LayerNorm of section 4.2: biased variance over the last axis, eps 1e-5, learned scale and shift. */
export function layerNorm(x: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor, eps = 1e-5): tf.Tensor {
  const fused = fusedLayerNorm(x, scale, shift, eps); // one-pass kernel where the backend has it
  if (fused) return fused;
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, -1, true);
    const norm = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    return tf.add(tf.mul(norm, scale), shift);
  });
}

/** A one-input op with a hand-written gradient (typed wrapper around tf.customGrad). */
function customOp(
  f: (x: tf.Tensor, save: tf.GradSaveFunc) => {
    value: tf.Tensor;
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor;
  },
): (x: tf.Tensor) => tf.Tensor {
  // deno-lint-ignore no-explicit-any
  return tf.customGrad(f as any) as (x: tf.Tensor) => tf.Tensor;
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** GPT-2's tanh approximation of GELU (section 4.3). */
export function gelu(x: tf.Tensor): tf.Tensor {
  const fused = fusedGelu(x);
  if (fused) return fused;
  return tf.tidy(() => {
    const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), GELU_C);
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
  });
}

/**
 * Embedding lookup: rows of `weight` (V, C) at `ids` (N) → (N, C). On backends whose memory is on the host, the
 * gradient scatter-adds the N rows of dy there: tfjs-wasm has no UnsortedSegmentSum kernel (tfjs #8082), and
 * tfjs-cpu's runs one masked sum per vocabulary entry (50,257 of them), minutes per step. Where memory lives on a
 * device (webgpu), reading dy back synchronously is impossible, so `tf.gather`'s own gradient (UnsortedSegmentSum)
 * runs there.
 */
export function embedding(weight: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const fused = fusedEmbedding(weight, ids); // a pooled, multi-threaded scatter-add where the backend has it
  if (fused) return fused;
  if (hostView(weight) === null && tf.getKernel("UnsortedSegmentSum", tf.getBackend())) {
    return tf.gather(weight, ids);
  }
  const op = customOp((w, save) => {
    save([ids]);
    return {
      value: tf.gather(w, ids),
      gradFunc: (dy, saved) => {
        const [V, C] = weight.shape;
        const g = new Float32Array(V * C);
        const dyv = dy.dataSync() as Float32Array;
        const idv = saved[0].dataSync();
        for (let n = 0; n < idv.length; n++) {
          const row = idv[n] * C;
          for (let c = 0; c < C; c++) g[row + c] += dyv[n * C + c];
        }
        return tf.tensor2d(g, [V, C]);
      },
    };
  });
  return op(weight) as tf.Tensor2D;
}

/**
 * Mean cross-entropy of logits (N, V) against integer targets (N), PyTorch's `cross_entropy` (section 5.1).
 * One fused op so that the backward pass is softmax − one-hot without materialising log-probabilities twice.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const fused = fusedCrossEntropy(logits, targets);
  if (fused) return fused;
  const [N, V] = logits.shape;
  const op = customOp((z, save) => {
    const logp = tf.logSoftmax(z); // (N, V)
    const onehot = tf.cast(tf.oneHot(targets, V), "float32"); // (N, V); wasm's float oneHot is wrong
    const loss = tf.neg(tf.div(tf.sum(tf.mul(logp, onehot)), N));
    save([logp, onehot]);
    return {
      value: loss,
      gradFunc: (dy, saved) => {
        const [lp, oh] = saved;
        return tf.mul(tf.sub(tf.exp(lp), oh), tf.div(dy, N));
      },
    };
  });
  return op(logits) as tf.Scalar;
}

/**
 * Seeded dropout masks (xoshiro128**): the same seed gives the same masks, and the state is four integers that a
 * checkpoint stores, so a resumed run continues the exact stream.
 */
export class DropoutRng {
  private s: Uint32Array;

  constructor(seed: number | number[]) {
    this.s = new Uint32Array(4);
    if (Array.isArray(seed)) this.s.set(seed);
    else {
      let x = (seed >>> 0) ^ 0x5deece66;
      for (let i = 0; i < 4; i++) {
        x = (x + 0x9e3779b9) >>> 0;
        let z = x;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
        this.s[i] = (z ^ (z >>> 16)) >>> 0;
      }
    }
  }

  /** The generator's state, for checkpoints. */
  get state(): number[] {
    return Array.from(this.s);
  }

  /**
   * A keep-mask scaled by 1/(1-p), in `out` (default a new array): each element is 0 with probability p. Long
   * masks in shared memory are drawn on every thread (each part jumps ahead in the one stream: the same mask).
   */
  mask(n: number, p: number, out: Float32Array = new Float32Array(n)): Float32Array {
    drawDropoutMask(this.s, n, p, out);
    return out;
  }
}

/**
 * The keep-mask of an inverted dropout of a tensor of `shape` (0 or 1/(1−p)), drawn from `rng`; null when `rng` is
 * null or p is 0 (eval mode). `dropout` multiplies by it; fused kernels take it as an input.
 */
export function dropoutMask(shape: number[], p: number, rng: DropoutRng | null): tf.Tensor | null {
  if (!rng || p === 0) return null;
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(rng.mask(n, p, tensorStorage(n)), shape, "float32");
}

/** Inverted dropout with a mask from `rng`; identity when `rng` is null or p is 0 (eval mode). */
export function dropout(x: tf.Tensor, p: number, rng: DropoutRng | null): tf.Tensor {
  const mask = dropoutMask(x.shape, p, rng);
  if (!mask) return x;
  return tf.tidy(() => tf.mul(x, mask));
}
