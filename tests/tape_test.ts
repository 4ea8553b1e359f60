/** The lean backward pass (lib/model/tape.ts) computes TF.js's gradients bit for bit, frees as it goes, leaks nothing. */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../lib/backends/backend.ts";
import { loadExperiment } from "../lib/config.ts";
import { TINY_GPT } from "./_helpers.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { calcLossBatch } from "../lib/train/loss.ts";
import { GPTModel } from "../lib/model/model.ts";
import { DropoutRng } from "../lib/model/ops.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { setLeanGradients } from "../lib/model/tape.ts";
import { loadBlas } from "../lib/backends/cpu/cpu_backend.ts";

/** Gradients of `f` under TF.js's backward pass and under the lean one, as plain arrays, and live tensor counts. */
function both(f: () => tf.Scalar, xs: tf.Variable[]) {
  const run = (lean: boolean) => {
    setLeanGradients(lean);
    const before = tf.memory().numTensors;
    const { value, grads } = tf.variableGrads(f, xs);
    const out = [value.dataSync()[0], ...xs.map((x) => Array.from(grads[x.name].dataSync()))];
    tf.dispose([value, ...Object.values(grads)]);
    return { out, leaked: tf.memory().numTensors - before };
  };
  const a = run(false), b = run(true);
  setLeanGradients(true);
  return { tfjs: a.out, lean: b.out, leaked: b.leaked };
}

for (const backend of ["tfjs-cpu", "cpu"] as const) {
  Deno.test({
    name: `GPT loss gradients are bit-identical to TF.js's backward pass, dropout on (${backend})`,
    ignore: backend === "cpu" && !loadBlas().ok,
    fn: async () => {
      const cfg = await loadExperiment("experiments/verdict-small.yaml", TINY_GPT);
      await initBackend(backend);
      const model = new GPTModel(cfg.model, initGPTParams(cfg.model, new TorchGenerator(123)));
      const rng = new TorchGenerator(5);
      const ids = () => Int32Array.from(rng.rand(2 * 16), (u) => Math.floor(u * 50257));
      const batch = { inputs: ids(), targets: ids(), batchSize: 2, maxLength: 16 };
      // Dropout draws from its own generator: a fresh one with the same seed per pass gives the same masks.
      let drop = new DropoutRng(9);
      const f = () => calcLossBatch(model, batch, { dropout: drop }) as tf.Scalar;
      const xs = [...model.params.values()];
      const runs = [false, true].map((lean) => {
        drop = new DropoutRng(9);
        setLeanGradients(lean);
        const { value, grads } = tf.variableGrads(f, xs);
        const out = [value.dataSync()[0], ...xs.map((x) => Array.from(grads[x.name].dataSync()))];
        tf.dispose([value, ...Object.values(grads)]);
        return out;
      });
      assertEquals(runs[1], runs[0]);
      ok(Number.isFinite(runs[0][0] as number));
      const before = tf.memory().numTensors;
      drop = new DropoutRng(9);
      tf.dispose(Object.values(tf.variableGrads(f, xs).grads));
      ok(
        tf.memory().numTensors - before <= 1,
        "the scalar loss is the caller's; nothing else stays",
      );
      model.dispose();
    },
  });
}

Deno.test("pass-through gradients, one tensor reaching y along several paths, a caller's dy", async () => {
  await initBackend("tfjs-cpu");
  const x = tf.variable(tf.tensor1d([0.5, -1, 2, 3]), true, "x");
  const w = tf.variable(tf.tensor1d([1, 2, 3, 4]), true, "w");
  // x reaches y four times; Add passes dy through unchanged; Identity and Reshape too.
  const f = () =>
    tf.sum(tf.add(tf.add(x, tf.reshape(x, [4])), tf.mul(tf.add(x, w), tf.exp(x)))) as tf.Scalar;
  const { tfjs, lean, leaked } = both(f, [x, w]);
  assertEquals(lean, tfjs);
  assertEquals(leaked, 0);
  // A caller's dy survives the lean pass and scales the gradients as TF.js's does.
  const dy = tf.scalar(3);
  const g = (on: boolean) => {
    setLeanGradients(on);
    return tf.tidy(() =>
      Array.from(tf.grad((v: tf.Tensor) => tf.sum(tf.square(v)))(x, dy).dataSync())
    );
  };
  assertEquals(g(true), g(false));
  ok(!dy.isDisposed);
  setLeanGradients(true);
  tf.dispose([x, w, dy]);
});
