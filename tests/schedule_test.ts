import { ok } from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import {
  clipByGlobalNorm,
  globalNorm,
  learningRate,
  type LrSchedule,
} from "../lib/train/schedule.ts";

const close = (a: number, b: number, tol = 1e-12) => ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);

// Appendix D's run: 15 epochs × 9 batches = 135 steps, 20% warmup, peak 1e-3, initial 1e-4, min 0.1 × initial.
const s: LrSchedule = {
  peakLr: 1e-3,
  initialLr: 1e-4,
  minLr: 1e-5,
  warmupSteps: 27,
  totalSteps: 135,
  cosine: true,
};

Deno.test("warmup ramps linearly from initial_lr towards peak_lr", () => {
  close(learningRate(0, s), 1e-4);
  close(learningRate(1, s), 1e-4 + 9e-4 / 27);
  close(learningRate(26, s), 1e-4 + 26 * 9e-4 / 27);
});

Deno.test("cosine decay: peak at the end of warmup, midpoint halfway, min_lr at the end", () => {
  close(learningRate(27, s), 1e-3);
  close(learningRate(27 + 54, s), 1e-5 + (1e-3 - 1e-5) * 0.5);
  close(learningRate(135, s), 1e-5);
  for (let k = 28; k <= 135; k++) ok(learningRate(k, s) <= learningRate(k - 1, s));
  close(learningRate(100, { ...s, cosine: false }), 1e-3);
});

Deno.test("clipping by global norm: the norm after is at most max_norm; small gradients are untouched", async () => {
  await initBackend("tfjs-cpu");
  const grads = new Map<string, tf.Tensor>([["a", tf.tensor([3, 4])], ["b", tf.tensor([[12]])]]); // norm 13
  const { grads: clipped, norm } = await clipByGlobalNorm(grads, 1);
  close(norm, 13, 1e-6);
  const after = await globalNorm(clipped.values());
  ok(after <= 1 && after > 0.9999, String(after));
  close(clipped.get("a")!.dataSync()[0] / clipped.get("a")!.dataSync()[1], 0.75, 1e-6); // direction kept
  const small = new Map<string, tf.Tensor>([["a", tf.tensor([0.3, 0.4])]]);
  const res = await clipByGlobalNorm(small, 1);
  ok(res.grads === small);
  close(res.norm, 0.5, 1e-7);
});

Deno.test("gradient accumulation of k micro-batches equals one batch k times larger", async () => {
  const { GPTModel } = await import("../lib/model/model.ts");
  const { initGPTParams } = await import("../lib/model/init.ts");
  const { TorchGenerator } = await import("../lib/model/rng.ts");
  const { accumulateGradients } = await import("../lib/train/train.ts");
  await initBackend("tfjs-cpu");
  const cfg = {
    vocab_size: 300,
    context_length: 8,
    emb_dim: 16,
    n_heads: 2,
    n_layers: 1,
    drop_rate: 0,
    qkv_bias: true,
  };
  const model = new GPTModel(cfg, initGPTParams(cfg, new TorchGenerator(1)));
  const rng = new TorchGenerator(2);
  const ids = (n: number) => Int32Array.from(rng.rand(n), (u) => Math.floor(u * 300));
  const big = { inputs: ids(32), targets: ids(32), batchSize: 4, maxLength: 8 };
  const half = (k: number) => ({
    inputs: big.inputs.slice(k * 16, k * 16 + 16),
    targets: big.targets.slice(k * 16, k * 16 + 16),
    batchSize: 2,
    maxLength: 8,
  });
  const one = await accumulateGradients(model, [big], null);
  const two = await accumulateGradients(model, [half(0), half(1)], null);
  close(two.loss, one.loss, 1e-5);
  for (const [name, g] of one.grads) {
    const a = g.dataSync(), b = two.grads.get(name)!.dataSync();
    for (let i = 0; i < a.length; i++) close(b[i], a[i], 1e-5 + 1e-4 * Math.abs(a[i]));
  }
  model.dispose();
});
