/**
 * `deno task compare` over real runs trained here, as a user meets them: a run and the earlier one that `--fresh`
 * moved aside (both named `tiny` in their headers) on different backends, and a run killed with SIGKILL before its
 * first checkpoint.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { spawnTask, tinyProject } from "./_cases.ts";
import { taskArgs, TINY_RUN } from "./_helpers.ts";
import { listRuns } from "../lib/views/dashboard/server.ts";

/** The table's header cells and each row's cells (two or more spaces apart). */
function table(stdout: string): { head: string[]; rows: string[][] } {
  const [head, , ...rows] = stdout.trim().split("\n").map((l) => l.split(/ {2,}/));
  return { head, rows };
}

Deno.test("compare after --fresh on another backend: distinct row names (the moved-aside run by its directory) and distinct column headings", async () => {
  const dir = await tinyProject("tiny");
  const fast = [...TINY_RUN, "training.eval_iter=1"].flatMap((s) => ["--set", s]); // 9 steps
  for (const args of [["--set", "backend=wasm"], ["--fresh"]]) {
    const r = await spawnTask(dir, "train", ["tiny.yaml", ...fast, ...args]);
    assertEquals(r.code, 0, r.err.join("\n"));
  }
  const aside = [...Deno.readDirSync(`${dir}/checkpoints`)].map((e) => e.name)
    .find((n) => n.startsWith("tiny.") && !n.endsWith(".lock"));
  ok(aside, "no run moved aside");
  const r = await spawnTask(dir, "compare", ["tiny*"]);
  assertEquals(r.code, 0, r.err.join("\n"));
  const { head, rows } = table(r.stdout);
  assertEquals(new Set(head).size, head.length, `headings repeat: ${head.join(" | ")}`);
  ok(head.includes("backend") && head.includes("backend (config)"), head.join(" | "));
  assertEquals(rows.map((c) => c[0]).sort(), ["tiny", aside].sort());
  const json = await spawnTask(dir, "compare", ["tiny*", "--json", "--sort", "backend (config)"]);
  assertEquals(json.code, 0, json.err.join("\n"));
  const names = JSON.parse(json.stdout).map((r: { name: string; backend: string }) => r.name);
  assertEquals(names, ["tiny", aside]); // auto before wasm
});

/** Waits until `path` holds a line of `type`, checking every 50 ms (the guard only stops a hang). */
async function waitForLine(path: string, type: string, guardMs = 120_000) {
  const end = Date.now() + guardMs;
  while (Date.now() < end) {
    const text = await Deno.readTextFile(path).catch(() => "");
    if (text.split("\n").some((l) => l.includes(`"type":"${type}"`))) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${type} line in ${path}`);
}

Deno.test("compare and the dashboard: a run killed with SIGKILL before its first checkpoint is stopped, not running; while it trains, running", async () => {
  const dir = await tinyProject("tiny");
  const child = new Deno.Command(Deno.execPath(), {
    args: taskArgs("train", ["tiny.yaml", "--set", "training.epochs=50"]),
    cwd: dir,
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitForLine(`${dir}/checkpoints/tiny/log.jsonl`, "header");
  const live = await spawnTask(dir, "compare", ["tiny", "--json"]);
  const before = JSON.parse(live.stdout)[0].status;
  const dashboardBefore = listRuns(`${dir}/checkpoints`)[0].status; // the dashboard's run list
  child.kill("SIGKILL");
  await child.status;
  const files = [...Deno.readDirSync(`${dir}/checkpoints/tiny`)].map((e) => e.name);
  ok(!files.includes("checkpoint.safetensors"), `killed after its first checkpoint: ${files}`);
  ok(Deno.statSync(`${dir}/checkpoints/tiny.lock`).isFile, "the lock file stays behind");
  assertEquals([before, dashboardBefore], ["running", "running"]);
  assertEquals(listRuns(`${dir}/checkpoints`)[0].status, "stopped", "the dashboard's (cached) row");
  const r = await spawnTask(dir, "compare", ["tiny"]);
  assertEquals(r.code, 0, r.err.join("\n"));
  const { head, rows } = table(r.stdout);
  assertEquals(rows[0][head.indexOf("status")], "stopped", r.stdout);
});
