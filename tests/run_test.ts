/**
 * A whole run through lib/runs/run.ts on a tiny model: the JSONL log, falling loss, the checkpoint, and a resumed run
 * that reproduces the uninterrupted one exactly.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, tempDir, TINY_RUN } from "./_helpers.ts";

const TINY = [
  ...TINY_RUN,
  "training.epochs=3",
  "training.lr=0.004",
  "training.eval_freq=3",
  "training.eval_iter=2",
];

async function tinyConfig(name: string) {
  await ensureVerdict();
  return await loadExperiment("experiments/verdict-small.yaml", [...TINY, `name=${name}`]);
}

const quiet = { print: () => {}, progress: false };

Deno.test("a run writes header, evals with falling train loss, samples, summary and a loadable checkpoint", async () => {
  const dir = tempDir();
  const cfg = await tinyConfig("tiny");
  const result = await runTraining(cfg, { ...quiet, checkpointsDir: dir });
  assertEquals(result.status, "finished");
  const log = readRunLog(`${dir}/tiny/log.jsonl`);
  assertEquals(log.warnings, []);
  assertEquals(log.header?.run, "tiny");
  assertEquals(log.samples.length, 3);
  assertEquals(log.status, "finished");
  const losses = log.evals.map((e) => e.train_loss as number);
  ok(losses.length >= 4, `${losses.length} evals`);
  ok(losses.at(-1)! < losses[0] - 1, `train loss ${losses[0]} -> ${losses.at(-1)}`);
  const ckpt = await loadCheckpoint(`${dir}/tiny/checkpoint.safetensors`, cfg);
  assertEquals(ckpt.meta.state.epoch, 3);
  assertEquals(ckpt.meta.state.step, result.state.step);
});

Deno.test("stop mid-run + --resume gives the same log losses as one uninterrupted run (bit-exact)", async () => {
  const dir = tempDir();
  const straight = await runTraining(await tinyConfig("a"), { ...quiet, checkpointsDir: dir });
  const cfg = await tinyConfig("b");
  const stopped = await runTraining(cfg, { ...quiet, checkpointsDir: dir, stopAfterSteps: 7 });
  assertEquals(stopped.status, "interrupted");
  const resumed = await runTraining(cfg, { ...quiet, checkpointsDir: dir, resume: true });
  assertEquals(resumed.status, "finished");
  const evals = (run: string) =>
    readRunLog(`${dir}/${run}/log.jsonl`).evals.map((e) => [e.step, e.train_loss, e.val_loss]);
  assertEquals(evals("b"), evals("a"));
  assertEquals(resumed.state, straight.state);
});

Deno.test("a second run of the same name is refused without --resume or --fresh; --fresh keeps the old run", async () => {
  const dir = tempDir();
  const cfg = await loadExperiment("experiments/verdict-small.yaml", [
    ...TINY,
    "training.epochs=1",
    "name=c",
  ]);
  await runTraining(cfg, { ...quiet, checkpointsDir: dir });
  const before = await Deno.readFile(`${dir}/c/log.jsonl`);
  await runTraining(cfg, { ...quiet, checkpointsDir: dir }).then(
    () => ok(false, "expected a refusal"),
    (e) => ok(String(e.message).includes("holds an earlier run"), e.message),
  );
  assertEquals(await Deno.readFile(`${dir}/c/log.jsonl`), before);
  await runTraining(cfg, { ...quiet, checkpointsDir: dir, fresh: true });
  const kept = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith("c."));
  assertEquals(kept.length, 1);
  assertEquals(await Deno.readFile(`${dir}/${kept[0]}/log.jsonl`), before);
});
