/** The run lock: a second trainer of the same run refuses; a stale lock is taken over; other names are free. */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { acquireRunLock } from "../lib/runs/lock.ts";
import { runTraining } from "../lib/runs/run.ts";
import { ensureVerdict, tempDir } from "./_helpers.ts";

Deno.test("a held lock refuses a second taker; release frees it; a dead holder's lock is taken over", async () => {
  const dir = tempDir();
  const release = acquireRunLock(`${dir}/r.lock`, "r");
  assertEquals(Deno.readTextFileSync(`${dir}/r.lock`).trim(), String(Deno.pid));
  try {
    acquireRunLock(`${dir}/r.lock`, "r");
    ok(false, "expected a refusal");
  } catch (e) {
    ok(
      e instanceof UserError && e.message.includes(`already being trained by process ${Deno.pid}`),
      String(e),
    );
  }
  const other = acquireRunLock(`${dir}/other.lock`, "other"); // another run name is independent
  other();
  release();
  ok(!(await Deno.stat(`${dir}/r.lock`).then(() => true, () => false)));
  const child = new Deno.Command("true").spawn();
  await child.status; // its pid is now dead
  Deno.writeTextFileSync(`${dir}/r.lock`, `${child.pid}\n`);
  const notes: string[] = [];
  const again = acquireRunLock(`${dir}/r.lock`, "r", (s) => notes.push(s));
  ok(notes[0].includes("stale lock"), notes.join());
  again();
});

Deno.test("two runs of the same experiment at once: the second refuses, naming the lock", async () => {
  await ensureVerdict();
  const dir = tempDir();
  const over = [
    "model.context_length=32",
    "model.emb_dim=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "training.epochs=1",
  ];
  const cfg = await loadExperiment("experiments/verdict-small.yaml", [...over, "name=busy"]);
  const quiet = { checkpointsDir: dir, print: () => {}, progress: false };
  const first = runTraining(cfg, quiet);
  await runTraining(cfg, quiet).then(
    () => ok(false, "expected a refusal"),
    (e) =>
      ok(
        e instanceof UserError &&
          e.message.startsWith(`${dir}/busy.lock: run busy is already being trained`),
        e.message,
      ),
  );
  assertEquals((await first).status, "finished");
  ok(!(await Deno.stat(`${dir}/busy.lock`).then(() => true, () => false)), "lock released");
});
