/**
 * AdamW with PyTorch's semantics (torch.optim.AdamW, section 5.2): decoupled weight decay on every parameter,
 * betas (0.9, 0.999), eps 1e-8, bias correction. Per parameter and step t:
 *   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
 */
import * as tf from "@tensorflow/tfjs-core";
import { fusedAdamWUpdate, hostArray, weightsUpdated } from "../backends/backend.ts";
import type { NamedParam } from "../model/params.ts";

/** Hyper-parameters of {@link AdamW}; defaults are PyTorch's except the book's lr and weight decay. */
export interface AdamWOptions {
  lr: number;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** A zero variable; on CPU-side backends its storage is shared memory (see the backends' `hostArray`). */
function zeros(shape: number[]): tf.Variable {
  const t = tf.tensor(hostArray(shape.reduce((a, b) => a * b, 1)), shape, "float32");
  const v = tf.variable(t, false);
  t.dispose();
  return v;
}

/** PyTorch's AdamW (see the module comment); moments live beside the parameters on the active backend. */
export class AdamW {
  /** Steps taken (PyTorch's `state["step"]`). */
  step = 0;
  lr: number;
  readonly weightDecay: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** First and second moments, keyed like the model's parameters. */
  readonly m = new Map<string, tf.Variable>();
  readonly v = new Map<string, tf.Variable>();

  constructor(readonly params: Map<string, tf.Variable>, o: AdamWOptions) {
    this.lr = o.lr;
    this.weightDecay = o.weightDecay;
    this.beta1 = o.beta1 ?? 0.9;
    this.beta2 = o.beta2 ?? 0.999;
    this.eps = o.eps ?? 1e-8;
    for (const [name, p] of params) {
      this.m.set(name, zeros(p.shape));
      this.v.set(name, zeros(p.shape));
    }
  }

  /**
   * Applies one update from `grads` (keyed by parameter name) and disposes nothing of the caller's; then tells the
   * backend that the weights changed (their bf16 copies in `bf16-mixed` are made again).
   */
  applyGradients(grads: Map<string, tf.Tensor>): void {
    this.step += 1;
    const { lr, weightDecay: wd, beta1: b1, beta2: b2, eps } = this;
    const bc1 = 1 - b1 ** this.step;
    const bc2Sqrt = Math.sqrt(1 - b2 ** this.step);
    const stepSize = lr / bc1;
    const decay = 1 - lr * wd;
    for (const [name, p] of this.params) {
      const g = grads.get(name);
      if (!g) continue;
      const m = this.m.get(name)!, v = this.v.get(name)!;
      // One pass over host memory where the backend has it (WebAssembly SIMD; in double where that is off).
      // √(1−β2ᵗ) is folded into the constants: m / (√v/c + eps) = c·m / (√v + c·eps).
      const k = { beta1: b1, beta2: b2, decay, stepSize: stepSize * bc2Sqrt, eps: eps * bc2Sqrt };
      if (!fusedAdamWUpdate(p, g, m, v, k)) {
        tf.tidy(() => {
          const mNew = tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1));
          const vNew = tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2));
          const denom = tf.add(tf.div(tf.sqrt(vNew), bc2Sqrt), eps);
          m.assign(mNew);
          v.assign(vNew);
          p.assign(tf.sub(tf.mul(p, decay), tf.mul(tf.div(mNew, denom), stepSize)));
        });
      }
    }
    weightsUpdated(); // bf16-mixed: the weights' bf16 copies are stale now
  }

  /** Moments as host tensors named `m.<param>` / `v.<param>`, for checkpoints. */
  async stateTensors(): Promise<NamedParam[]> {
    const out: NamedParam[] = [];
    for (const [prefix, map] of [["m", this.m], ["v", this.v]] as const) {
      for (const [name, t] of map) {
        out.push({
          name: `${prefix}.${name}`,
          shape: t.shape.slice(),
          data: (await t.data()) as Float32Array,
        });
      }
    }
    return out;
  }

  /** Restores moments saved by {@link stateTensors}; `step` is restored by the caller. */
  loadStateTensors(tensors: Map<string, { shape: number[]; data: Float32Array }>): void {
    for (const [prefix, map] of [["m", this.m], ["v", this.v]] as const) {
      for (const [name, t] of map) {
        const saved = tensors.get(`${prefix}.${name}`);
        if (!saved) throw new Error(`optimizer state ${prefix}.${name} missing`);
        t.assign(tf.tensor(saved.data, saved.shape, "float32"));
      }
    }
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}
