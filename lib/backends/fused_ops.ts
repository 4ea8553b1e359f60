/**
 * The fused ops of the backends' face: each runs kernels registered under its own names (`GeluTanh`, `LayerNorm`,
 * `CausalSoftmax`, `SoftmaxCrossEntropy`, `HeadsMatMul`, `EmbeddingGrad` and their gradients) on the active
 * TF.js backend, and answers null ("not here") where that backend has not registered them, so that model code
 * composes plain ops instead — as PyTorch's dispatcher picks a kernel per backend. The CPU path registers them
 * (cpu/fused_kernels.ts, cpu/cpu_backend.ts); a new backend gets an op by registering its kernels.
 */
import * as tf from "@tensorflow/tfjs-core";

function has(kernel: string): boolean {
  return tf.getKernel(kernel, tf.getBackend()) !== undefined;
}

function run(kernel: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}): tf.Tensor[] {
  return tf.engine().runKernel(kernel, inputs, attrs) as unknown as tf.Tensor[];
}

/**
 * Embedding lookup rows of `weight` (V, C) at int32 `ids` (N) → (N, C) whose gradient is one scatter-add into
 * shared, pooled memory (split by columns across threads); null where the backend lacks the kernel.
 */
export function fusedEmbedding(weight: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D | null {
  if (!has("EmbeddingGrad")) return null;
  const op = tf.customGrad((w: tf.Tensor | tf.GradSaveFunc, save: tf.Tensor | tf.GradSaveFunc) => {
    (save as tf.GradSaveFunc)([ids]);
    return {
      value: tf.gather(w as tf.Tensor, ids),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run("EmbeddingGrad", { dy, ids: saved[0] }, {
          numSegments: weight.shape[0],
        }) as unknown as tf.Tensor,
    };
  });
  return op(weight) as tf.Tensor2D;
}

/**
 * x (N, in) @ wᵀ + b for w (out, in), with the bias seeding the product's output (sgemm's beta = 1: no separate
 * Add pass) — TF.js's fused matMul, used only where our kernels are registered (tfjs-wasm 4.22's gets a fused
 * bias with transposeB wrong); null elsewhere.
 */
export function fusedLinear(x: tf.Tensor2D, w: tf.Tensor2D, b: tf.Tensor1D): tf.Tensor2D | null {
  if (!has("GeluTanh")) return null;
  return tf.fused.matMul({ a: x, b: w, transposeB: true, bias: b }) as tf.Tensor2D;
}

/** GPT-2's tanh-GELU as one kernel forward and one backward, or null where the backend lacks them. */
export function fusedGelu(x: tf.Tensor): tf.Tensor | null {
  if (!has("GeluTanh")) return null;
  const op = tf.customGrad((xx: tf.Tensor | tf.GradSaveFunc, save: tf.Tensor | tf.GradSaveFunc) => {
    const [y, t] = run("GeluTanh", { x: xx as tf.Tensor });
    (save as tf.GradSaveFunc)([xx as tf.Tensor, t]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run("GeluTanhGrad", { dy, x: saved[0], t: saved[1] }) as unknown as tf.Tensor,
    };
  });
  return op(x);
}

/**
 * Causal attention weights: softmax(scores · scale) with keys after each query masked out, for scores
 * (…, T, T) — replaces `softmax((scores + mask) / √d)`; null where the backend lacks the kernels.
 */
export function fusedCausalSoftmax(scores: tf.Tensor, scale: number): tf.Tensor | null {
  if (!has("CausalSoftmax")) return null;
  const op = tf.customGrad((x: tf.Tensor | tf.GradSaveFunc, save: tf.Tensor | tf.GradSaveFunc) => {
    const y = run("CausalSoftmax", { x: x as tf.Tensor }, { scale }) as unknown as tf.Tensor;
    (save as tf.GradSaveFunc)([y]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run("CausalSoftmaxGrad", { dy, y: saved[0] }, { scale }) as unknown as tf.Tensor,
    };
  });
  return op(scores);
}

/**
 * The book's causal multi-head attention core on q, k, v (B·T, C) → context (B·T, C): per head, softmax of the
 * masked, scaled scores Q·Kᵀ (times the dropout `mask` (B, H, T, T) when given), times V. Each head's products
 * read and write its D = C/H columns of the (B·T, C) tensors in place (`HeadsMatMul`), so the heads need no
 * transposes either way, and the scores are freed as soon as the softmax has read them. Each product says which
 * part of it the causal mask leaves (`causal`): a backend may skip the rest, whose terms are exact zeros or whose
 * outputs the softmax kernels never read. Null where the backend lacks the kernels (the caller composes the ops).
 */
export function fusedAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  B: number,
  H: number,
  scale: number,
  mask: tf.Tensor | null,
): tf.Tensor2D | null {
  if (!has("HeadsMatMul") || !has("CausalSoftmax")) return null;
  const [N, C] = q.shape, T = N / B, D = C / H;
  const act = [T * C, D, C], att = [H * T * T, T * T, T]; // (T, D) blocks of (B·T, C); (T, T) of (B, H, T, T)
  const hm = (
    a: tf.Tensor,
    b: tf.Tensor,
    transA: boolean,
    transB: boolean,
    [M, Nn, K]: number[],
    sa: number[],
    sb: number[],
    sc: number[],
    causal: "lowerC" | "lowerA" | "upperA",
  ): tf.Tensor => {
    const shape = sc === att ? [B, H, T, T] : [N, C];
    const attrs = { batch: B, heads: H, transA, transB, M, N: Nn, K, sa, sb, sc, shape, causal };
    return run(
      "HeadsMatMul",
      { a, b },
      attrs as unknown as tf.NamedAttrMap,
    ) as unknown as tf.Tensor;
  };
  const op = tf.customGrad(
    (
      qq: tf.Tensor | tf.GradSaveFunc,
      kk: tf.Tensor | tf.GradSaveFunc,
      vv: tf.Tensor | tf.GradSaveFunc,
      save: tf.Tensor | tf.GradSaveFunc,
    ) => {
      const [Q, K, V] = [qq, kk, vv] as tf.Tensor[];
      const scores = hm(Q, K, false, true, [T, T, D], act, act, att, "lowerC"); // Q·Kᵀ per head
      const [w, y] = mask
        ? run("CausalSoftmax", { x: scores, mask }, { scale })
        : [run("CausalSoftmax", { x: scores }, { scale }) as unknown as tf.Tensor];
      scores.dispose();
      (save as tf.GradSaveFunc)([Q, K, V, w, y ?? w, ...(mask ? [mask] : [])]);
      return {
        value: hm(w, V, false, false, [T, D, T], att, act, act, "lowerA"), // weights·V per head
        gradFunc: (dctx: tf.Tensor, saved: tf.Tensor[]) => {
          const [Q, K, V, w, y, m] = saved;
          const dw = hm(dctx, V, false, true, [T, T, D], act, act, att, "lowerC");
          const ds = run("CausalSoftmaxGrad", m ? { dy: dw, y, mask: m } : { dy: dw, y }, {
            scale,
          }) as unknown as tf.Tensor;
          dw.dispose();
          const dq = hm(ds, K, false, false, [T, D, T], att, act, act, "lowerA");
          const dk = hm(ds, Q, true, false, [T, D, T], att, act, act, "upperA");
          ds.dispose();
          const dv = hm(w, dctx, true, false, [T, D, T], att, act, act, "upperA");
          return [dq, dk, dv];
        },
      };
    },
  );
  return op(q, k, v) as tf.Tensor2D;
}

/**
 * LayerNorm over the last axis (biased variance, eps inside the square root) as one kernel forward and one
 * backward, or null where the backend lacks them. `scale` and `shift` have the last axis's length.
 */
export function fusedLayerNorm(
  x: tf.Tensor,
  scale: tf.Tensor,
  shift: tf.Tensor,
  eps = 1e-5,
): tf.Tensor | null {
  if (!has("LayerNorm")) return null;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xx, w, b] = args as tf.Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    const [y, mean, rstd] = run("LayerNorm", { x: xx, scale: w, shift: b }, { eps });
    save([xx, w, mean, rstd]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, s: tf.Tensor[]) =>
        run("LayerNormGrad", { dy, x: s[0], scale: s[1], mean: s[2], rstd: s[3] }),
    };
  });
  return op(x, scale, shift);
}

/**
 * Mean cross-entropy of logits (N, V) against int32 targets (N) — PyTorch's `cross_entropy` — as one kernel
 * forward (which keeps the softmax) and one backward; null where the backend lacks them.
 */
export function fusedCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar | null {
  if (!has("SoftmaxCrossEntropy")) return null;
  const op = tf.customGrad((z: tf.Tensor | tf.GradSaveFunc, save: tf.Tensor | tf.GradSaveFunc) => {
    const [loss, grad] = run("SoftmaxCrossEntropy", { logits: z as tf.Tensor, targets });
    (save as tf.GradSaveFunc)([grad]);
    return {
      value: loss,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        run("SoftmaxCrossEntropyGrad", { dy, grad: saved[0] }) as unknown as tf.Tensor,
    };
  });
  return op(logits) as tf.Scalar;
}
