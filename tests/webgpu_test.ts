/**
 * verdict-small, shrunk as in train_test.ts, trained end to end on the webgpu backend: falling train loss, evals,
 * samples and a checkpoint, with the adapter in the run header. Runs on any WebGPU adapter, Mesa's software
 * lavapipe included (slow, hence the tiny model and one epoch); ignored where there is none.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, tempDir } from "./_helpers.ts";
import { webgpuForTests } from "./_webgpu.ts";

const webgpu = await webgpuForTests();

Deno.test({
  name: `verdict-small trains on webgpu with falling loss${webgpu.note("webgpu")}`,
  ignore: !webgpu.ok,
  fn: async () => {
    await ensureVerdict();
    const cfg = await loadExperiment("experiments/verdict-small.yaml", [
      "backend=webgpu",
      "model.context_length=16",
      "model.emb_dim=32",
      "model.n_heads=2",
      "model.n_layers=1",
      "data.batch_size=2",
      "data.train_ratio=0.06", // 9 steps of 32 tokens: lavapipe runs the 50257-wide head at ~0.1 GFLOP/s
      "training.epochs=1",
      "training.lr=0.01",
      "training.eval_freq=3",
      "sampling.max_new_tokens=5",
      "name=webgpu",
    ]);
    const dir = tempDir();
    const lines: string[] = [];
    const result = await runTraining(cfg, {
      print: (s: string) => lines.push(s),
      progress: false,
      checkpointsDir: dir,
    });
    assertEquals(result.status, "finished");
    const header = lines.find((l) => l.startsWith("backend:")) ?? "";
    ok(header.startsWith("backend: webgpu (requested; adapter "), header);
    const log = readRunLog(`${dir}/webgpu/log.jsonl`);
    assertEquals(log.warnings, []);
    assertEquals(log.header?.backend, "webgpu");
    const losses = log.evals.map((e) => e.train_loss as number);
    assertEquals(log.evals.map((e) => e.step), [3, 6, 9]);
    ok(losses.every(Number.isFinite) && losses.at(-1)! < losses[0] - 0.5, `train loss ${losses}`);
    assertEquals(log.samples.length, 1);
    ok(String(log.samples[0].text).startsWith("Every effort moves you"));
    const ckpt = await loadCheckpoint(`${dir}/webgpu/checkpoint.safetensors`, cfg);
    assertEquals(ckpt.meta.optimizer.step, 9);
    await Deno.remove(dir, { recursive: true });
  },
});
