/**
 * verdict-small, shortened, trained end to end through lib/runs/run.ts: the JSONL log, falling loss, the checkpoint; and
 * resumes that reproduce the uninterrupted run bit for bit (after an epoch, with training.epochs raised, and
 * mid-epoch), a schedule that forbids raising epochs, a finished run with nothing left to do, and --fresh.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, tempDir } from "./_helpers.ts";

const SHORT = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "data.batch_size=4",
  "data.train_ratio=0.35", // 13 steps an epoch
  "training.epochs=2",
  "backend=cpu", // bit-for-bit resumes: pinned, never whatever `auto` finds on the machine
];

async function config(name: string, extra: string[] = []) {
  await ensureVerdict();
  return await loadExperiment("experiments/verdict-small.yaml", [
    ...SHORT,
    ...extra,
    `name=${name}`,
  ]);
}

const quiet = { print: () => {}, progress: false };
const dir = tempDir();
const opts = { ...quiet, checkpointsDir: dir };
const PER_EPOCH = 13;
const evals = (run: string) =>
  readRunLog(`${dir}/${run}/log.jsonl`).evals.map((e) => [e.step, e.train_loss, e.val_loss]);

Deno.test("verdict-small trains: header, evals with falling train loss, samples, summary, a loadable checkpoint", async () => {
  const cfg = await config("straight");
  const result = await runTraining(cfg, opts);
  assertEquals(result.status, "finished");
  const log = readRunLog(`${dir}/straight/log.jsonl`);
  assertEquals(log.warnings, []);
  assertEquals(log.headers.length, 1);
  assertEquals(log.header?.run, "straight");
  assertEquals((log.header?.config as { training: { epochs: number } }).training.epochs, 2);
  assertEquals(log.header?.resumed_from_step, null);
  assertEquals(log.samples.length, 2);
  ok(log.samples.every((s) => String(s.text).startsWith("Every effort moves you")));
  assertEquals(log.status, "finished");
  assertEquals(log.summary?.steps, 2 * PER_EPOCH);
  const losses = log.evals.map((e) => e.train_loss as number);
  assertEquals(log.evals.map((e) => e.step), [5, 10, 15, 20, 25]);
  ok(losses.at(-1)! < losses[0] - 1, `train loss ${losses[0]} -> ${losses.at(-1)}`);
  const ckpt = await loadCheckpoint(`${dir}/straight/checkpoint.safetensors`, cfg);
  assertEquals(ckpt.meta.state, {
    epoch: 2,
    batch: 0,
    step: 2 * PER_EPOCH,
    tokensSeen: 2 * PER_EPOCH * 4 * 32,
  });
  assertEquals(ckpt.meta.optimizer.step, 2 * PER_EPOCH);
});

Deno.test("1 epoch, then --resume with training.epochs=2: the same log losses as 2 epochs straight (bit-exact)", async () => {
  const one = await runTraining(await config("extended", ["training.epochs=1"]), opts);
  assertEquals(one.status, "finished");
  assertEquals(readRunLog(`${dir}/extended/log.jsonl`).status, "finished");
  const two = await runTraining(await config("extended"), { ...opts, resume: true });
  assertEquals(two.status, "finished");
  assertEquals(evals("extended"), evals("straight"));
  const log = readRunLog(`${dir}/extended/log.jsonl`);
  assertEquals(log.headers.map((h) => h.resumed_from_step), [null, PER_EPOCH]);
  assertEquals(log.summary?.steps, 2 * PER_EPOCH);
});

Deno.test("a stop mid-epoch + --resume gives the same log losses and state as one uninterrupted run", async () => {
  const cfg = await config("stopped");
  const stopped = await runTraining(cfg, { ...opts, stopAfterSteps: 7 });
  assertEquals(stopped.status, "interrupted");
  assertEquals(readRunLog(`${dir}/stopped/log.jsonl`).lines.at(-1)?.type, "interrupted");
  const ckpt = await loadCheckpoint(`${dir}/stopped/checkpoint.safetensors`, cfg);
  assertEquals(ckpt.meta.state, { epoch: 0, batch: 7, step: 7, tokensSeen: 7 * 4 * 32 });
  const resumed = await runTraining(cfg, { ...opts, resume: true });
  assertEquals(resumed.status, "finished");
  assertEquals(evals("stopped"), evals("straight"));
  assertEquals(
    (await loadCheckpoint(`${dir}/stopped/checkpoint.safetensors`)).meta.state,
    (await loadCheckpoint(`${dir}/straight/checkpoint.safetensors`)).meta.state,
  );
});

Deno.test("raising epochs is refused when the lr schedule of the steps done would change; other keys never", async () => {
  const cosine = await config("cosine", ["training.lr_schedule=cosine", "training.epochs=1"]);
  await runTraining(cosine, { ...opts, stopAfterSteps: 2 });
  const refused = (extra: string[], message: string) =>
    config("cosine", ["training.lr_schedule=cosine", ...extra]).then((cfg) =>
      runTraining(cfg, { ...opts, resume: true }).then(
        () => ok(false, "expected a refusal"),
        (e) => ok(e instanceof UserError && e.message.includes(message), e.message),
      )
    );
  await refused(
    ["training.epochs=2"],
    "training.epochs: 1 → 2 changes the learning rate of step 2, which is already done",
  );
  await refused(
    ["training.epochs=1", "training.lr=0.001"],
    "checkpoint is from another config (training.lr: 0.002 → 0.001)",
  );
  // The same settings resume.
  const same = await runTraining(cosine, { ...opts, resume: true, stopAfterSteps: 3 });
  assertEquals([same.status, same.state.step], ["interrupted", 3]);
});

Deno.test("resuming a finished run has nothing to do and leaves it alone; --fresh moves it aside", async () => {
  const cfg = await config("straight");
  const before = await Deno.readFile(`${dir}/straight/log.jsonl`);
  const lines: string[] = [];
  const again = await runTraining(cfg, { ...opts, resume: true, print: (s) => lines.push(s) });
  assertEquals(again.status, "finished");
  ok(lines.some((l) => l.includes("already trained for 2 epochs")), lines.join("\n"));
  assertEquals(await Deno.readFile(`${dir}/straight/log.jsonl`), before);
  const fresh = await runTraining(cfg, { ...opts, fresh: true, stopAfterSteps: 1 });
  assertEquals(fresh.status, "interrupted");
  const kept = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) =>
    n.startsWith("straight.")
  );
  assertEquals(kept.length, 1);
  assertEquals(await Deno.readFile(`${dir}/${kept[0]}/log.jsonl`), before);
});
