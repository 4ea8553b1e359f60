import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import {
  compareRuns,
  compareSVG,
  diffConfigs,
  formatTable,
  resolveRunLogs,
} from "../lib/compare.ts";
import { UserError } from "../lib/errors.ts";
import { readRunLog } from "../lib/runlog.ts";
import { pointAction, pointCommand, readSweep } from "../lib/sweep.ts";
import { DEFAULTS } from "../lib/config.ts";

/** Writes a run log like lib/run.ts does: header, evals with the given losses, and optionally a summary. */
function writeLog(
  dir: string,
  name: string,
  lr: number,
  losses: [number, number][],
  finished: boolean,
): string {
  Deno.mkdirSync(`${dir}/${name}`, { recursive: true });
  const config = { ...structuredClone(DEFAULTS), name, training: { ...DEFAULTS.training, lr } };
  const lines: unknown[] = [{ type: "header", run: name, experiment: name, config }];
  losses.forEach(([t, v], i) =>
    lines.push({
      type: "eval",
      epoch: 1,
      step: 5 * (i + 1),
      tokens_seen: 512 * (i + 1),
      train_loss: t,
      val_loss: v,
      lr,
      elapsed_s: i + 1,
      tokens_per_s: 100,
    })
  );
  if (finished) {
    lines.push({
      type: "summary",
      status: "finished",
      steps: 5 * losses.length,
      tokens_seen: 512 * losses.length,
      elapsed_s: 9,
      tokens_per_s: 120,
    });
  }
  const path = `${dir}/${name}/log.jsonl`;
  Deno.writeTextFileSync(path, lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
  return path;
}

Deno.test("diffConfigs lists only the dotted keys that differ (not the name)", () => {
  const a = { name: "a", model: { emb_dim: 64, n_heads: 4 }, training: { lr: 1e-3 } };
  const b = { name: "b", model: { emb_dim: 64, n_heads: 2 }, training: { lr: 1e-3 } };
  assertEquals(diffConfigs([a, b]), ["model.n_heads"]);
  assertEquals(diffConfigs([a, a]), []);
});

Deno.test("a truncated last line and foreign lines are skipped with one warning; status follows the log", async () => {
  const dir = await Deno.makeTempDir();
  const path = writeLog(dir, "r", 1e-3, [[9, 9.5], [7, 8]], false);
  Deno.writeTextFileSync(
    path,
    "not json at all\n" + '{"foo": 1}\n' + '{"type":"eval","step":15,"train_lo',
    { append: true },
  );
  const log = readRunLog(path);
  assertEquals(log.evals.length, 2);
  assertEquals(log.warnings.length, 1);
  ok(log.warnings[0].includes("skipped 3 unreadable lines"), log.warnings[0]);
  assertEquals(log.status, "running"); // just written, no summary
  Deno.utimeSync(path, new Date(0), new Date(0));
  assertEquals(readRunLog(path).status, "crashed");
  Deno.writeTextFileSync(path, '\n{"type":"interrupted","step":10,"reason":"signal"}\n', {
    append: true,
  });
  assertEquals(readRunLog(path).status, "interrupted");
});

Deno.test("compare rows: final and best losses, perplexity, the differing lr; table and SVG", async () => {
  const dir = await Deno.makeTempDir();
  writeLog(dir, "s.lr=0.001", 0.001, [[9, 9.5], [7, 8], [6, 8.2]], true);
  writeLog(dir, "s.lr=0.01", 0.01, [[8, 9], [5, 7.5]], false);
  const { rows, logs } = compareRuns(resolveRunLogs([`${dir}/s.*`]));
  assertEquals(rows.map((r) => r.name), ["s.lr=0.001", "s.lr=0.01"]);
  assertEquals(rows[0].differs, { "training.lr": 0.001 });
  assertEquals([rows[0].final_val_loss, rows[0].best_val_loss, rows[0].steps], [8.2, 8, 15]);
  ok(Math.abs(rows[0].val_perplexity! - Math.exp(8.2)) < 1e-9);
  assertEquals(rows[0].status, "finished");
  ok(formatTable(rows).split("\n")[0].includes("training.lr"));
  const svg = compareSVG(logs, rows);
  assertEquals((svg.match(/<path /g) ?? []).length, 4); // train + val per run
  assertEquals((svg.match(/stroke-dasharray/g) ?? []).length, 4); // 2 val paths + 2 legend entries
});

Deno.test("compare --json prints the documented schema; an unknown run is one error line, exit 2", async () => {
  const dir = await Deno.makeTempDir();
  writeLog(dir, "a", 0.001, [[9, 9.5]], true);
  writeLog(dir, "b", 0.002, [[8, 9]], true);
  const run = (...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "tasks/compare.ts", ...args],
      stdout: "piped",
      stderr: "piped",
    })
      .outputSync();
  const out = run(`${dir}/a`, `${dir}/b/log.jsonl`, "--json", "--sort", "final_val_loss");
  assertEquals(out.code, 0);
  const rows = JSON.parse(new TextDecoder().decode(out.stdout));
  assertEquals(rows.map((r: { name: string }) => r.name), ["b", "a"]);
  for (
    const key of [
      "name",
      "path",
      "differs",
      "steps",
      "tokens_seen",
      "final_train_loss",
      "final_val_loss",
      "best_train_loss",
      "best_val_loss",
      "val_perplexity",
      "tokens_per_s",
      "wall_s",
      "status",
    ]
  ) {
    ok(key in rows[0], key);
  }
  const bad = run(`${dir}/nope`);
  assertEquals(bad.code, 2);
  const err = new TextDecoder().decode(bad.stderr).trim().split("\n");
  assertEquals(err.length, 1);
  ok(err[0].startsWith(`error: compare: ${dir}/nope: no run log`), err[0]);
});

Deno.test("sweep: grid expansion, run names from the varied values, commands, skip/resume decisions", async () => {
  const dir = await Deno.makeTempDir();
  const yaml = `${dir}/sw.yaml`;
  Deno.writeTextFileSync(
    yaml,
    "training:\n  epochs: 1\nsweep:\n  training.lr: [0.001, 0.01]\n  model.n_layers: [1, 2]\n",
  );
  const points = (await readSweep(yaml))!;
  assertEquals(points.length, 4);
  assertEquals(points.map((p) => p.name), [
    "sw.lr=0.001,n_layers=1",
    "sw.lr=0.001,n_layers=2",
    "sw.lr=0.01,n_layers=1",
    "sw.lr=0.01,n_layers=2",
  ]);
  assertEquals(points[3].overrides, [
    "training.lr=0.01",
    "model.n_layers=2",
    "name=sw.lr=0.01,n_layers=2",
  ]);
  ok(pointCommand(yaml, points[0]).includes("--set training.lr=0.001 --set model.n_layers=1"));
  Deno.writeTextFileSync(`${dir}/none.yaml`, "training:\n  epochs: 1\n");
  assertEquals(await readSweep(`${dir}/none.yaml`), null);
  Deno.writeTextFileSync(`${dir}/bad.yaml`, "sweep:\n  training.lrr: [1]\n");
  await readSweep(`${dir}/bad.yaml`).then(
    () => ok(false),
    (e) => ok(e instanceof UserError && e.message.includes("sweep.training.lrr")),
  );
  // decisions from what a run directory holds
  assertEquals(pointAction(`${dir}/runs/p`), "start");
  writeLog(`${dir}/runs`, "p", 0.001, [[9, 9]], false);
  Deno.writeFileSync(`${dir}/runs/p/checkpoint.safetensors`, new Uint8Array(8));
  assertEquals(pointAction(`${dir}/runs/p`), "resume");
  writeLog(`${dir}/runs`, "p", 0.001, [[9, 9]], true);
  assertEquals(pointAction(`${dir}/runs/p`), "skip");
});
