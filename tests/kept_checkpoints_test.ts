/**
 * Checkpoints kept and the early stop (training.keep_best, keep_last, early_stop_patience) on a shortened
 * verdict-small trained end to end: best.safetensors holds the weights of the evaluation with the lowest val loss,
 * `--checkpoint best` reads it, the last n epochs' checkpoints stay, and a run whose val loss stops improving ends
 * early with the reason in its summary.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { configHash } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { prepareData, runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { loadModel } from "../lib/train/load.ts";
import { calcLossLoader } from "../lib/train/loss.ts";
import { tempDir, verdictSmall } from "./_helpers.ts";

const SHORT = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "data.batch_size=4",
  "data.train_ratio=0.35", // 13 steps an epoch
  "backend=cpu",
];
const PER_EPOCH = 13;

const config = (name: string, extra: string[] = []) => verdictSmall(name, [...SHORT, ...extra]);

const dir = tempDir();
const opts = { print: () => {}, progress: false, checkpointsDir: dir };
const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

Deno.test("keep_best writes the weights of the lowest val loss; --checkpoint best reads them; keep_last keeps n epochs", async () => {
  const cfg = await config("kept", [
    "training.epochs=4",
    "training.keep_best=true",
    "training.keep_last=2",
  ]);
  const result = await runTraining(cfg, opts);
  assertEquals(result.status, "finished");
  const log = readRunLog(`${dir}/kept/log.jsonl`);
  assertEquals(log.status, "finished");
  // A checkpoint line at every evaluation that beat all earlier ones, and only there.
  let best = Infinity;
  const records = log.evals.filter((e) => {
    const better = (e.val_loss as number) < best;
    best = Math.min(best, e.val_loss as number);
    return better;
  }).map((e) => [e.step, e.val_loss]);
  const lines = log.lines.filter((l) => l.type === "checkpoint").map((l) => [l.step, l.val_loss]);
  assertEquals(lines, records);
  const [bestStep, bestVal] = records.at(-1)!;
  ok(bestStep !== 4 * PER_EPOCH, "the test wants a best evaluation before the end");

  const loaded = await loadModel(cfg, { checkpoint: "best", checkpointsDir: dir });
  assertEquals(loaded.step, bestStep);
  const data = await prepareData(cfg, { progress: false, print: () => {} });
  const val = await calcLossLoader(loaded.model, data.valLoader, cfg.training.eval_iter);
  loaded.model.dispose();
  assertEquals(val, bestVal, "the best checkpoint's val loss is the one its evaluation logged");
  await rejects(loadCheckpoint(`${dir}/kept/best.safetensors`), /holds weights only/);

  assertEquals(
    await Promise.all(
      [1, 2, 3, 4].map((k) => exists(`${dir}/kept/checkpoint-epoch${k}.safetensors`)),
    ),
    [false, false, true, true],
  );
  const third = await loadCheckpoint(`${dir}/kept/checkpoint-epoch3.safetensors`, cfg);
  assertEquals(third.meta.state.step, 3 * PER_EPOCH);
});

Deno.test("--checkpoint best without keep_best is one line naming the key", async () => {
  const cfg = await config("unkept", ["training.epochs=1"]);
  await runTraining(cfg, opts);
  await rejects(
    loadModel(cfg, { checkpoint: "best", checkpointsDir: dir }),
    (e: Error) => e instanceof UserError && /training\.keep_best: true/.test(e.message),
  );
  ok(!(await exists(`${dir}/unkept/best.safetensors`)));
});

Deno.test("early_stop_patience ends a run after that many evaluations without a better val loss", async () => {
  const epochs = 12, patience = 2;
  const cfg = await config("patient", [
    `training.epochs=${epochs}`,
    `training.early_stop_patience=${patience}`,
    "training.lr=0.004", // overfits the small split within a few epochs
  ]);
  const result = await runTraining(cfg, opts);
  assertEquals(result.status, "finished");
  const log = readRunLog(`${dir}/patient/log.jsonl`);
  assertEquals(log.status, "finished");
  const steps = log.summary!.steps as number;
  ok(steps < epochs * PER_EPOCH, `ran all ${steps} steps`);
  const vals = log.evals.map((e) => e.val_loss as number);
  const best = Math.min(...vals.slice(0, -patience));
  ok(vals.slice(-patience).every((v) => v >= best), `last evaluations ${vals.slice(-patience)}`);
  ok(
    vals.slice(0, -patience).indexOf(best) === vals.length - patience - 1,
    "the best came just before",
  );
  ok(
    String(log.summary!.stopped_early).startsWith(`no better val loss in ${patience} evaluations`),
  );
  assertEquals(log.lines.filter((l) => l.type === "interrupted").length, 0);
  const ckpt = await loadCheckpoint(`${dir}/patient/checkpoint.safetensors`, cfg);
  assertEquals(ckpt.meta.state.step, steps);
});

Deno.test("the keys of kept checkpoints leave the config hash alone at their defaults, and may change on --resume", async () => {
  const plain = await config("hash", []);
  const withDefaults = await config("hash", [
    "training.keep_best=false",
    "training.skip_spikes=null",
  ]);
  const stripped = structuredClone(plain) as unknown as { training: Record<string, unknown> };
  for (const k of ["keep_best", "keep_last", "early_stop_patience", "skip_spikes"]) {
    delete stripped.training[k];
  }
  assertEquals(configHash(withDefaults), configHash(stripped as never));
  ok(configHash(await config("hash", ["training.keep_best=true"])) !== configHash(plain));

  await runTraining(await config("later", ["training.epochs=1"]), opts);
  const more = await config("later", ["training.epochs=2", "training.keep_best=true"]);
  assertEquals((await runTraining(more, { ...opts, resume: true })).status, "finished");
  ok(await exists(`${dir}/later/best.safetensors`));
});
