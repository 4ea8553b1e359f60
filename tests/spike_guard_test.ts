/**
 * The spike guard (training.skip_spikes, llm.c's -sl/-sg) on a shortened verdict-small trained end to end: a
 * skipped step leaves the weights and AdamW's moments as they were, every skip is logged and counted, a guard that
 * never fires changes nothing, and a resumed run skips the steps an uninterrupted one skips.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { SPIKE_WINDOW } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { SpikeGuard, zScore } from "../lib/train/spikes.ts";
import { tempDir, verdictSmall } from "./_helpers.ts";

const SHORT = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "data.batch_size=4",
  "data.train_ratio=0.35", // 13 steps an epoch
  "training.epochs=2",
  "backend=cpu",
];
// A loss half a standard deviation above the last 4 steps' mean is a "spike": several steps of this run are.
const GUARD = "training.skip_spikes={loss_z: 0.5, grad_z: 0.5, window: 4}";

const config = (name: string, extra: string[] = []) => verdictSmall(name, [...SHORT, ...extra]);

const dir = tempDir();
const opts = { print: () => {}, progress: false, checkpointsDir: dir };
const lines = (run: string, type: string) =>
  readRunLog(`${dir}/${run}/log.jsonl`).lines.filter((l) => l.type === type);

Deno.test("z-scores: against the window before the value, null until the window is full, 0 on a flat window", () => {
  const w = [1, 2, 3, 4];
  const mean = 2.5, std = Math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 4);
  ok(Math.abs(zScore(w, 6, 4)! - (6 - mean) / std) < 1e-12);
  assertEquals(zScore(w, 6, 5), null);
  assertEquals(zScore([2, 2, 2], 9, 3), 0);
  const g = new SpikeGuard({ loss_z: 3, grad_z: null, window: 3 }, {
    losses: [],
    norms: [],
    skipped: 0,
  });
  const verdicts = [1, 1.1, 0.9, 10, 1].map((x) => g.judge(x, null).skip);
  assertEquals(verdicts, [false, false, false, true, false]);
  assertEquals(g.state.losses, [0.9, 10, 1]);
  assertEquals(g.state.skipped, 1);
});

Deno.test("a skipped step changes no weight and no moment; skips are logged and counted", async () => {
  const run = await runTraining(await config("guarded", [GUARD]), opts);
  assertEquals(run.status, "finished");
  const skips = lines("guarded", "skip");
  ok(skips.length >= 2, `${skips.length} skips`);
  ok(skips.every((s) => (s.loss_z as number) > 0.5 || (s.grad_z as number) > 0.5));
  const summary = readRunLog(`${dir}/guarded/log.jsonl`).summary!;
  assertEquals(summary.skipped_steps, skips.length);
  const end = await loadCheckpoint(`${dir}/guarded/checkpoint.safetensors`);
  assertEquals(end.meta.optimizer.step, end.meta.state.step - skips.length);

  // Stopped right before and right after the first skipped step: the same weights and moments.
  const s = skips[0].step as number;
  const before = await runTraining(await config("before", [GUARD]), {
    ...opts,
    stopAfterSteps: s - 1,
  });
  const after = await runTraining(await config("after", [GUARD]), { ...opts, stopAfterSteps: s });
  assertEquals([before.state.step, after.state.step], [s - 1, s]);
  const [a, b] = await Promise.all(
    ["before", "after"].map((r) => loadCheckpoint(`${dir}/${r}/checkpoint.safetensors`)),
  );
  assertEquals(b.meta.optimizer.step, a.meta.optimizer.step);
  for (const [i, p] of a.params.entries()) assertEquals(b.params[i].data, p.data, p.name);
  for (const [k, m] of a.optimizer) assertEquals(b.optimizer.get(k)!.data, m.data, k);
});

Deno.test("a guard that never fires gives the unguarded run's losses bit for bit", async () => {
  await runTraining(await config("plain"), opts);
  await runTraining(
    await config("never", ["training.skip_spikes={loss_z: 1e9, grad_z: 1e9}"]),
    opts,
  );
  const evals = (r: string) =>
    readRunLog(`${dir}/${r}/log.jsonl`).evals.map((e) => [e.step, e.train_loss, e.val_loss]);
  assertEquals(evals("never"), evals("plain"));
  assertEquals(lines("never", "skip"), []);
  assertEquals(readRunLog(`${dir}/never/log.jsonl`).summary!.skipped_steps, 0);
});

Deno.test("a stop mid-epoch + --resume skips the same steps as one uninterrupted run", async () => {
  const skipped = lines("guarded", "skip").map((l) => l.step);
  const stopAt = (skipped[0] as number) + 2;
  const cfg = await config("resumed", [GUARD]);
  assertEquals((await runTraining(cfg, { ...opts, stopAfterSteps: stopAt })).status, "interrupted");
  assertEquals((await runTraining(cfg, { ...opts, resume: true })).status, "finished");
  assertEquals(lines("resumed", "skip").map((l) => l.step), skipped);
  const evals = (r: string) =>
    readRunLog(`${dir}/${r}/log.jsonl`).evals.map((e) => [e.step, e.train_loss, e.val_loss]);
  assertEquals(evals("resumed"), evals("guarded"));
});

Deno.test("skip_spikes: a bad value is one line naming the key", async () => {
  for (
    const [v, why] of [
      ["{loss_z: -1}", /loss_z: -1 is outside/],
      ["{window: 8}", /sets neither loss_z nor grad_z/],
      ["{loss_z: 3, window: 1}", /window: 1 is not an integer >= 2/],
      ["{loss_z: 3, z: 2}", /unknown key z/],
      ["3.5", /not a mapping/],
    ] as const
  ) {
    try {
      await config("bad", [`training.skip_spikes=${v}`]);
      ok(false, `${v} was accepted`);
    } catch (e) {
      ok(
        e instanceof UserError && /training\.skip_spikes: /.test(e.message) && why.test(e.message),
        String(e),
      );
    }
  }
  const filled = await config("filled", ["training.skip_spikes={grad_z: 4}"]);
  assertEquals(filled.training.skip_spikes, { grad_z: 4, loss_z: null, window: SPIKE_WINDOW });
});
