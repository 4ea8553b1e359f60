/**
 * The golden test: the shared tiny GPT-2 (Hugging Face layout) loaded into the book's model reproduces PyTorch's
 * logits, loss, greedy continuation and the loss after one AdamW step, on every CPU-side backend available, and
 * on webgpu (looser tolerance: GPU float32 reductions run in another order) when a WebGPU adapter exists, software
 * ones included (Mesa lavapipe); skipped without one.
 */
import { ok } from "node:assert/strict";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { AdamW } from "../lib/train/adamw.ts";
import { initBackend } from "../lib/backends/backend.ts";
import type { BackendName, ModelConfig } from "../lib/config.ts";
import { generateTextSimple } from "../lib/model/generate.ts";
import { loadHFGPT2 } from "../lib/weights/gpt2.ts";
import { GPTModel } from "../lib/model/model.ts";
import { trainStep } from "../lib/train/train.ts";
import { loadNativeBlas, useMatrixLibrary } from "../lib/backends/blas.ts";
import { webgpuForTests } from "./_webgpu.ts";
import { fixturesDir } from "./_helpers.ts";

const FIXTURES = fixturesDir();
const fx = JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES)));
const weights = new URL("gpt2-tiny.safetensors", FIXTURES).pathname;
const cfg: ModelConfig = fx.config;
const shape: [number, number] = [2, 32];

function close(actual: number, expected: number, tol: number, what: string) {
  ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected} (tolerance ${tol})`);
}

// "blas (wasm GEMM)": the blas backend on the portable WebAssembly GEMM, as on a machine without OpenBLAS.
const PORTABLE = "blas (wasm GEMM)";
const backends: string[] = [PORTABLE, "cpu", "wasm"];
if (loadNativeBlas().ok) backends.unshift("blas");

/** Activates `backend` (one of `backends`), with the blas backend's matrix library it names. */
async function activate(backend: string): Promise<void> {
  if (backend.startsWith("blas")) {
    await initBackend("blas");
    const lib = useMatrixLibrary(backend === PORTABLE ? "wasm" : "native");
    ok(lib.ok, `${backend}: ${lib.ok ? "" : lib.reason}`);
  } else await initBackend(backend as BackendName);
}
const webgpu = await webgpuForTests();
backends.push("webgpu");

/** Tolerance on logits and losses per backend: PyTorch's float32 figures within 1e-4 on CPU-side backends. */
const TOL: Record<string, number> = { webgpu: 1e-3 };

for (const backend of backends) {
  const tol = TOL[backend] ?? 1e-4;
  const ignore = backend === "webgpu" && !webgpu.ok;
  Deno.test({
    name: `golden gpt2-tiny on ${backend}: logits, loss, greedy continuation${
      webgpu.note(backend)
    }`,
    ignore,
    fn: async () => {
      await activate(backend);
      const model = new GPTModel(cfg, await loadHFGPT2(weights, cfg, { tieHead: "omit" }));
      ok(model.tiedHead);
      const x = tf.tensor2d(fx.input_ids, shape, "int32"),
        y = tf.tensor2d(fx.target_ids, shape, "int32");
      const logits = model.forward(x);
      const v = (await logits.data()) as Float32Array;
      fx.logits_first_row_first10.forEach((e: number, i: number) =>
        close(v[i], e, tol, `logits[0,0,${i}]`)
      );
      let sumAbs = 0;
      for (let i = 0; i < v.length; i++) sumAbs += Math.abs(v[i]);
      close(sumAbs / fx.logits_sum_abs, 1, tol / 10, "sum |logits| (relative)");
      const lastRow = Array.from(v.subarray((2 * 32 - 1) * cfg.vocab_size));
      assertEquals(lastRow.indexOf(Math.max(...lastRow)), fx.logits_last_row_argmax);
      const loss = model.loss(x, y);
      close((await loss.data())[0], fx.loss, tol, "loss");
      assertEquals(await generateTextSimple(model, fx.greedy_prompt_ids, 10), fx.greedy_ids);
      tf.dispose([x, y, logits, loss]);
      model.dispose();
    },
  });

  Deno.test({
    name: `golden gpt2-tiny on ${backend}: loss after one AdamW step (untied head, dropout 0)${
      webgpu.note(backend)
    }`,
    ignore,
    fn: async () => {
      await activate(backend);
      const model = new GPTModel(cfg, await loadHFGPT2(weights, cfg, { tieHead: "copy" }));
      ok(!model.tiedHead);
      const optimizer = new AdamW(model.params, { lr: 4e-4, weightDecay: 0.1 });
      const batch = {
        inputs: Int32Array.from(fx.input_ids.flat()),
        targets: Int32Array.from(fx.target_ids.flat()),
        batchSize: 2,
        maxLength: 32,
      };
      const before = (await trainStep(model, optimizer, batch, null)).loss;
      close(before, fx.loss, tol, "loss before the step");
      const afterT = tf.tidy(() =>
        model.loss(
          tf.tensor2d(batch.inputs, shape, "int32"),
          tf.tensor2d(batch.targets, shape, "int32"),
        )
      );
      const after = (await afterT.data())[0];
      afterT.dispose();
      close(after, fx.loss_after_one_adamw_step_untied, tol, "loss after one AdamW step");
      optimizer.dispose();
      model.dispose();
    },
  });
}
