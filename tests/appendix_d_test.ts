/**
 * Appendix D against PyTorch: a short run with warmup, cosine decay, clipping from the end of warmup and 2
 * micro-batches per step, trained through lib/runs/run.ts, whose logged lr, grad_norm and losses equal a PyTorch
 * replay of the same batches (tests/_torch_appendix_d.py: the book's model and loop, written out from the book).
 * What bench/parity.ts does for chapter 5, at a size that runs in seconds; ignored without PyTorch.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import type { Batch } from "../lib/data/data.ts";
import { prepareData, runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, ignoredBecause, NO_TORCH, tempDir, torchPython } from "./_helpers.ts";

const PY = await torchPython();
const WARMUP = 3;
const MAX_NORM = 0.2; // below this run's norm at the warmup's end (0.33), so the boundary step clips
const SETTINGS = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "model.drop_rate=0",
  "data.batch_size=8", // 18 train batches: 9 steps of 2 micro-batches
  "training.epochs=1",
  "training.lr=0.004",
  `training.warmup=${WARMUP}`,
  "training.initial_lr=0.0004",
  "training.lr_schedule=cosine",
  "training.min_lr=0.0002",
  `training.max_grad_norm=${MAX_NORM}`,
  "training.grad_accum_steps=2",
  "training.eval_freq=1",
  "training.eval_iter=2",
  "backend=cpu", // pinned, not auto: OpenBLAS, or the WebAssembly GEMM where it is missing
  "name=appd",
];

const plain = (b: Batch) => ({ inputs: Array.from(b.inputs), targets: Array.from(b.targets) });

Deno.test({
  name:
    `appendix D run (warmup, cosine, max_grad_norm, grad_accum_steps): logged lr, grad_norm and losses ` +
    `equal PyTorch's replay of the same batches${ignoredBecause(PY ? null : NO_TORCH)}`,
  ignore: PY === null,
  async fn() {
    await ensureVerdict();
    const cfg = await loadExperiment("experiments/verdict-small.yaml", SETTINGS);
    const dir = tempDir();
    const res = await runTraining(cfg, { checkpointsDir: dir, print: () => {}, progress: false });
    assertEquals(res.status, "finished");
    const ours = readRunLog(`${dir}/appd/log.jsonl`).evals;

    const data = await prepareData(cfg);
    const k = cfg.training.grad_accum_steps;
    const train = [...data.trainLoader.batches(0)].map(plain);
    const steps = [];
    for (let i = 0; i + k <= train.length; i += k) steps.push(train.slice(i, i + k));
    const replay = `${dir}/replay.json`;
    await Deno.writeTextFile(
      replay,
      JSON.stringify({
        model: cfg.model,
        training: cfg.training,
        warmup_steps: WARMUP,
        steps,
        eval_train: [...data.trainLoader.ordered(cfg.training.eval_iter)].map(plain),
        eval_val: [...data.valLoader.ordered(cfg.training.eval_iter)].map(plain),
      }),
    );
    const py = await new Deno.Command(PY!, {
      args: [new URL("./_torch_appendix_d.py", import.meta.url).pathname, replay],
      env: { OPENBLAS_NUM_THREADS: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(py.code, 0, new TextDecoder().decode(py.stderr));
    const theirs = JSON.parse(new TextDecoder().decode(py.stdout));

    assertEquals(ours.map((e) => e.step), theirs.map((e: { step: number }) => e.step));
    assertEquals(ours.length, 9);
    const boundary = theirs[WARMUP].grad_norm;
    ok(
      boundary > MAX_NORM,
      `PyTorch's norm ${boundary} at the warmup's end does not reach max_grad_norm`,
    );
    for (const [i, e] of ours.entries()) {
      const t = theirs[i], at = `step ${e.step}`;
      ok(Math.abs(Number(e.lr) / t.lr - 1) < 1e-12, `${at} lr: ${e.lr} vs PyTorch's ${t.lr}`);
      if (t.grad_norm === null) assertEquals(e.grad_norm, null, `${at}: clipped during warmup`);
      else {
        ok(e.grad_norm !== null, `${at}: not clipped at the end of warmup or after`);
        ok(
          Math.abs(Number(e.grad_norm) / t.grad_norm - 1) < 1e-3,
          `${at} grad_norm: ${e.grad_norm} vs PyTorch's ${t.grad_norm}`,
        );
      }
      for (const key of ["train_loss", "val_loss"] as const) {
        ok(
          Math.abs(Number(e[key]) - t[key]) < 2e-4,
          `${at} ${key}: ${e[key]} vs PyTorch's ${t[key]}`,
        );
      }
    }
  },
});
