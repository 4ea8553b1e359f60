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
import { accumulateGradients, trainStep } from "../lib/train/train.ts";
import { clipByGlobalNorm, globalNorm } from "../lib/train/schedule.ts";
import { loadNativeBlas, useMatrixLibrary } from "../lib/backends/cpu/cpu_backend.ts";
import { webgpuForTests } from "./_webgpu.ts";
import { fixturesDir, ignoredBecause, NO_OPENBLAS } from "./_helpers.ts";

const webgpu = await webgpuForTests();
const FIXTURES = fixturesDir();
const fx = JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES)));
const weights = new URL("gpt2-tiny.safetensors", FIXTURES).pathname;
const cfg: ModelConfig = fx.config;
const shape: [number, number] = [2, 32];
/** PyTorch's gradients of the same model and batch: tests/fixtures_gen/gpt2_tiny.py wrote them. */
const torchFx = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/gpt2-tiny-torch.json", import.meta.url)),
);

function close(actual: number, expected: number, tol: number, what: string) {
  ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected} (tolerance ${tol})`);
}

// "cpu (wasm GEMM)": the cpu backend on the portable WebAssembly GEMM, as on a machine without OpenBLAS.
const PORTABLE = "cpu (wasm GEMM)";
const backends: string[] = ["cpu", PORTABLE, "tfjs-cpu", "wasm"];
const native = loadNativeBlas();
/** Why `backend` cannot run here (OpenBLAS or a WebGPU adapter missing), or null. */
function missing(backend: string): string | null {
  if (backend === "cpu" && !native.ok) return `${NO_OPENBLAS}; "${PORTABLE}" runs instead`;
  return backend === "webgpu" && !webgpu.ok ? webgpu.detail : null;
}

/** Activates `backend` (one of `backends`), with the cpu backend's matrix library it names. */
async function activate(backend: string): Promise<void> {
  if (backend.startsWith("cpu")) {
    await initBackend("cpu");
    const lib = useMatrixLibrary(backend === PORTABLE ? "wasm" : "native");
    ok(lib.ok, `${backend}: ${lib.ok ? "" : lib.reason}`);
  } else await initBackend(backend as BackendName);
}
backends.push("webgpu");

/** Tolerance on logits and losses per backend: PyTorch's float32 figures within 1e-4 on CPU-side backends. */
const TOL: Record<string, number> = { webgpu: 1e-3 };

for (const backend of backends) {
  const tol = TOL[backend] ?? 1e-4;
  const ignore = missing(backend) !== null;
  Deno.test({
    name: `golden gpt2-tiny on ${backend}: logits, loss, greedy continuation${
      ignoredBecause(missing(backend))
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
      ignoredBecause(missing(backend))
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

/** The golden batch's windows `rows` as one batch. */
function goldenBatch(rows: number[]) {
  return {
    inputs: Int32Array.from(rows.flatMap((r) => fx.input_ids[r])),
    targets: Int32Array.from(rows.flatMap((r) => fx.target_ids[r])),
    batchSize: rows.length,
    maxLength: 32,
  };
}

interface GradFigures {
  grads: Record<
    string,
    { shape: number[]; norm: number; sum: number; first: number[]; values?: number[] }
  >;
  tok_emb_rows?: Record<string, number[]>;
}

/**
 * Every parameter's gradient in `grads` against PyTorch's `want`: its norm, its first values, the whole tensor
 * where the fixture holds it (1-D ones, pos_emb, block 0's W_query) and tok_emb's rows of a few input ids.
 */
async function assertGradients(
  grads: Map<string, tf.Tensor>,
  want: GradFigures,
  tol: number,
  what: string,
) {
  assertEquals([...grads.keys()].sort(), Object.keys(want.grads).sort());
  const near = (a: number, b: number, where: string) =>
    ok(Math.abs(a - b) <= tol * (1e-3 + Math.abs(b)), `${what} ${where}: ${a} vs PyTorch's ${b}`);
  for (const [name, w] of Object.entries(want.grads)) {
    const g = grads.get(name)!;
    assertEquals(g.shape, w.shape, `${what} ${name} shape`);
    const v = await g.data();
    let sq = 0;
    for (const x of v) sq += x * x;
    near(Math.sqrt(sq), w.norm, `${name} norm`);
    (w.values ?? w.first).forEach((e, i) => near(v[i], e, `${name}[${i}]`));
  }
  const emb = await grads.get("tok_emb.weight")!.data();
  for (const [row, values] of Object.entries(want.tok_emb_rows ?? {})) {
    values.forEach((e, i) => near(emb[Number(row) * cfg.emb_dim + i], e, `tok_emb[${row}, ${i}]`));
  }
}

for (const backend of backends) {
  // Gradients in float32 through another summation order: within 1e-3 relative (1e-2 on a GPU) of PyTorch's.
  const tol = backend === "webgpu" ? 1e-2 : 1e-3;
  Deno.test({
    name:
      `golden gpt2-tiny on ${backend}: every gradient, the global norm, clipping and 2 micro-batches ` +
      `against PyTorch${ignoredBecause(missing(backend))}`,
    ignore: missing(backend) !== null,
    fn: async () => {
      await activate(backend);
      const model = new GPTModel(cfg, await loadHFGPT2(weights, cfg, { tieHead: "copy" }));
      const one = await accumulateGradients(model, [goldenBatch([0, 1])], null);
      close(one.loss, torchFx.loss, 1e-4, "loss");
      await assertGradients(one.grads, torchFx, tol, "gradient");
      const norm = await globalNorm(one.grads.values());
      close(norm / torchFx.grad_norm, 1, tol / 10, "global gradient norm (relative)");
      // The shared fixture's norm, from another implementation of the same model.
      close(norm / fx.grad_norm_untied, 1, 1e-4, "grad_norm_untied (relative)");
      const clipped = await clipByGlobalNorm(one.grads, torchFx.max_norm);
      close(clipped.norm / torchFx.grad_norm, 1, tol / 10, "norm before clipping (relative)");
      await assertGradients(clipped.grads, torchFx.clipped, tol, "clipped gradient");
      tf.dispose([...clipped.grads.values()]);
      const two = await accumulateGradients(model, [goldenBatch([0]), goldenBatch([1])], null);
      close(two.loss, torchFx.accumulated.loss, 1e-4, "loss of 2 micro-batches");
      await assertGradients(two.grads, torchFx.accumulated, tol, "accumulated gradient");
      tf.dispose([...two.grads.values()]);
      model.dispose();
    },
  });
}
