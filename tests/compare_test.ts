import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import {
  compareRuns,
  compareSVG,
  diffConfigs,
  formatTable,
  resolveRunLogs,
  type RunRow,
  sortRows,
  summarizeRun,
} from "../lib/views/compare.ts";
import { UserError } from "../lib/errors.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { pointAction, pointCommand, readSweep } from "../lib/runs/sweep.ts";
import { DEFAULTS } from "../lib/config.ts";
import { taskArgs, tempDir } from "./_helpers.ts";

/**
 * Writes a run log like lib/runs/run.ts does: a header, an eval every 5 steps (512 tokens a step) with the given losses,
 * an epoch line every 10 steps, and optionally a summary.
 */
function writeLog(
  dir: string,
  name: string,
  lr: number,
  losses: [number, number][],
  finished: boolean,
): string {
  Deno.mkdirSync(`${dir}/${name}`, { recursive: true });
  const config = { ...structuredClone(DEFAULTS), name, training: { ...DEFAULTS.training, lr } };
  const lines: unknown[] = [
    {
      type: "header",
      run: name,
      experiment: name,
      config,
      backend: "cpu",
      resumed_from_step: null,
    },
  ];
  losses.forEach(([t, v], i) => {
    const step = 5 * (i + 1);
    lines.push({
      type: "eval",
      epoch: Math.ceil(step / 10),
      step,
      tokens_seen: 512 * step,
      train_loss: t,
      val_loss: v,
      lr,
      elapsed_s: i + 1,
      tokens_per_s: 100,
    });
    if (step % 10 === 0) {
      lines.push({
        type: "epoch",
        epoch: step / 10,
        step,
        tokens_seen: 512 * step,
        elapsed_s: i + 1,
      });
    }
  });
  if (finished) {
    lines.push({
      type: "summary",
      status: "finished",
      steps: 5 * losses.length,
      tokens_seen: 2560 * losses.length,
      elapsed_s: 9,
      tokens_per_s: 120,
    });
  }
  const path = `${dir}/${name}/log.jsonl`;
  Deno.writeTextFileSync(path, lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
  return path;
}

/** The permission flags `deno task compare` runs with, from deno.json. */

/** Runs the compare task as `deno task compare` would, from `cwd` (where checkpoints/ is looked for). */
function compareTask(
  cwd: string,
  ...args: string[]
): { code: number; stdout: string; stderr: string } {
  const out = new Deno.Command(Deno.execPath(), {
    args: taskArgs("compare", args),
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("diffConfigs lists the dotted keys that differ, in config order, never the name", () => {
  const a = { name: "a", model: { emb_dim: 64, n_heads: 4 }, training: { lr: 1e-3, seed: 1 } };
  const b = { name: "b", model: { emb_dim: 64, n_heads: 2 }, training: { lr: 4e-4, seed: 1 } };
  assertEquals(diffConfigs([a, b]), ["model.n_heads", "training.lr"]);
  assertEquals(diffConfigs([a, { ...a, name: "c" }]), []);
  assertEquals(diffConfigs([a]), []);
  // a key one config lacks differs; null and a missing key read the same
  const c = { ...a, data: { stride: null } };
  assertEquals(diffConfigs([a, c]), []);
  assertEquals(diffConfigs([a, { ...a, data: { stride: 64 } }]), ["data.stride"]);
  assertEquals(diffConfigs([{ x: [1, 2] }, { x: [1, 3] }]), ["x"]); // lists are values
});

Deno.test("summarizeRun: final and best losses, perplexity, and a resumed run's time summed", () => {
  const dir = tempDir();
  const path = writeLog(dir, "r", 1e-3, [[9, 9.5], [7, 8], [6, 8.2]], false);
  const resumed = [
    { type: "interrupted", step: 15, reason: "signal" },
    { type: "header", run: "r", config: DEFAULTS, backend: "wasm", resumed_from_step: 15 },
    {
      type: "eval",
      epoch: 2,
      step: 20,
      tokens_seen: 10240,
      train_loss: 5,
      val_loss: 8.4,
      elapsed_s: 30,
      tokens_per_s: 85,
    },
    { type: "summary", steps: 20, tokens_seen: 10240, elapsed_s: 31, tokens_per_s: 82.6 },
  ];
  Deno.writeTextFileSync(path, resumed.map((l) => JSON.stringify(l) + "\n").join(""), {
    append: true,
  });
  const row = summarizeRun(readRunLog(path), ["training.lr"]);
  assertEquals(row.differs, { "training.lr": DEFAULTS.training.lr }); // the config it last ran with
  assertEquals([row.name, row.backend, row.resumes, row.status], ["r", "wasm", 1, "finished"]);
  assertEquals([row.steps, row.tokens_seen], [20, 10240]);
  assertEquals([row.final_train_loss, row.final_val_loss, row.best_train_loss, row.best_val_loss], [
    5,
    8.4,
    5,
    8,
  ]);
  ok(Math.abs(row.val_perplexity! - Math.exp(8.4)) < 1e-9);
  assertEquals(row.wall_s, 3 + 31); // first segment's clock stopped at 3 s
  assertEquals(row.tokens_per_s, (100 * 3 + 82.6 * 31) / 34); // tokens over time, both segments
  // a log with nothing but a header: zeros and nulls, not NaN
  Deno.writeTextFileSync(
    path,
    JSON.stringify({ type: "header", run: "r", config: DEFAULTS }) + "\n",
  );
  const empty = summarizeRun(readRunLog(path));
  assertEquals(
    [
      empty.steps,
      empty.tokens_seen,
      empty.final_val_loss,
      empty.val_perplexity,
      empty.wall_s,
      empty.tokens_per_s,
    ],
    [0, 0, null, null, null, null],
  );
});

Deno.test("sortRows puts the best first: low losses, high tokens/s; missing values last", () => {
  const row = (name: string, val: number | null, tps: number | null, lr: number): RunRow => ({
    name,
    path: "",
    differs: { "training.lr": lr },
    backend: null,
    precision: null,
    resumes: 0,
    steps: 1,
    tokens_seen: 1,
    final_train_loss: null,
    final_val_loss: val,
    best_train_loss: null,
    best_val_loss: val,
    val_perplexity: null,
    tokens_per_s: tps,
    mfu: null,
    mc_acc: null,
    mc_acc_norm: null,
    wall_s: null,
    status: "finished",
  });
  const rows = [row("a", 7, 100, 0.01), row("b", null, 300, 0.001), row("c", 6, null, 0.1)];
  const names = (key: string) => sortRows(rows, key).map((r) => r.name).join("");
  assertEquals(names("best_val_loss"), "cab");
  assertEquals(names("tokens_per_s"), "bac");
  assertEquals(names("training.lr"), "bac");
  assertEquals(names("name"), "abc");
});

Deno.test("compare a glob of runs: the differing lr, the table, and one SVG path per curve", async () => {
  const dir = tempDir();
  writeLog(dir, "s.lr=0.001", 0.001, [[9, 9.5], [7, 8], [6, 8.2]], true);
  writeLog(dir, "s.lr=0.01", 0.01, [[8, 9], [5, 7.5]], false);
  writeLog(dir, "other", 0.01, [[8, 9]], true);
  const { paths } = await resolveRunLogs([`${dir}/s.*`]);
  const { rows, logs, warnings } = compareRuns(paths);
  assertEquals(warnings, []);
  assertEquals(rows.map((r) => r.name), ["s.lr=0.001", "s.lr=0.01"]);
  assertEquals(rows.map((r) => r.differs), [{ "training.lr": 0.001 }, { "training.lr": 0.01 }]);
  assertEquals(rows[0].status, "finished");
  const table = formatTable(rows).split("\n");
  assertEquals(table.length, 4);
  ok(
    /^run\s+training\.lr\s+steps\s+tokens\s+train\s+val\s+best train\s+best val\s+val ppl/.test(
      table[0],
    ),
    table[0],
  );
  ok(!table[0].includes("backend")); // same backend everywhere
  ok(
    /^s\.lr=0\.001\s+0\.001\s+15\s+7680\s+6\.000\s+8\.200\s+6\.000\s+8\.000\s+3641\.0/.test(
      table[2],
    ),
    table[2],
  );
  const svg = compareSVG(logs, rows);
  assertEquals((svg.match(/<path /g) ?? []).length, 4); // train + val per run
  assertEquals((svg.match(/<path [^>]*stroke-dasharray/g) ?? []).length, 2); // the val curves
  ok(svg.includes(">Epochs</text>")); // both runs put epoch ends at the same tokens
});

Deno.test("run arguments: directories, names, experiment YAML (every sweep point with a log); unknown runs", async () => {
  const dir = tempDir(), ckpt = `${dir}/checkpoints`;
  const a = writeLog(ckpt, "sw.lr=0.001", 0.001, [[9, 9]], true);
  const b = writeLog(ckpt, "sw.lr=0.01", 0.01, [[9, 9]], true);
  Deno.writeTextFileSync(
    `${dir}/sw.yaml`,
    "training:\n  epochs: 1\nsweep:\n  training.lr: [0.001, 0.01, 0.1]\n",
  );
  Deno.writeTextFileSync(`${dir}/one.yaml`, "name: sw.lr=0.01\n");
  const got = await resolveRunLogs(
    [`${dir}/sw.yaml`, `${dir}/one.yaml`, `${ckpt}/sw.lr=0.001/`],
    ckpt,
  );
  assertEquals(got.paths, [a, b]);
  assertEquals(got.warnings, [`${dir}/sw.yaml: 1 of 3 sweep points have no log yet`]);
  assertEquals((await resolveRunLogs(["sw.lr=0.01"], ckpt)).paths, [b]);
  await rejects(resolveRunLogs(["nope"], ckpt), (e) =>
    e instanceof UserError &&
    e.message ===
      `compare: nope: no run log (looked for nope/log.jsonl, ${ckpt}/nope/log.jsonl); ` +
        `${ckpt}/ holds sw.lr=0.001, sw.lr=0.01`);
  await rejects(
    resolveRunLogs(["zz*"], ckpt),
    (e) => e instanceof UserError && e.message === `compare: zz*: matches no run logs in ${ckpt}/`,
  );
  await rejects(resolveRunLogs([`${dir}/*/x`], ckpt), UserError);
});

Deno.test("compare --json prints the documented schema; --out writes the SVG", async () => {
  const dir = tempDir();
  writeLog(dir, "a", 0.001, [[9, 9.5]], true);
  writeLog(dir, "b", 0.002, [[8, 9]], true);
  const out = compareTask(
    dir,
    `${dir}/a`,
    `${dir}/b/log.jsonl`,
    "--json",
    "--sort",
    "final_val_loss",
    "--out",
    `${dir}/c.svg`,
  );
  assertEquals([out.code, out.stderr], [0, ""]);
  const rows = JSON.parse(out.stdout);
  assertEquals(rows.map((r: RunRow) => r.name), ["b", "a"]);
  const types: Record<string, string> = {
    name: "string",
    path: "string",
    differs: "object",
    backend: "string",
    precision: "string",
    resumes: "number",
    steps: "number",
    tokens_seen: "number",
    final_train_loss: "number",
    final_val_loss: "number",
    best_train_loss: "number",
    best_val_loss: "number",
    val_perplexity: "number",
    tokens_per_s: "number",
    mfu: "object", // null: these logs carry no MFU, nor multiple-choice scores
    mc_acc: "object",
    mc_acc_norm: "object",
    wall_s: "number",
    status: "string",
  };
  for (const row of rows) {
    assertEquals(Object.keys(row).sort(), Object.keys(types).sort());
    for (const [k, t] of Object.entries(types)) assertEquals(typeof row[k], t, k);
  }
  assertEquals(rows[0], {
    ...rows[0],
    path: `${dir}/b/log.jsonl`,
    differs: { "training.lr": 0.002 },
    steps: 5,
    tokens_seen: 2560,
    final_val_loss: 9,
    wall_s: 9,
    tokens_per_s: 120,
    status: "finished",
  });
  const svg = await Deno.readTextFile(`${dir}/c.svg`);
  assertEquals((svg.match(/<path /g) ?? []).length, 4);
});

Deno.test("deno task compare <sweep.yaml> from a project directory: its points, best val first", () => {
  const dir = tempDir();
  writeLog(`${dir}/checkpoints`, "sw.lr=0.001", 0.001, [[9, 9.5], [8, 9.1]], true);
  writeLog(`${dir}/checkpoints`, "sw.lr=0.01", 0.01, [[8, 8.5]], false);
  Deno.mkdirSync(`${dir}/experiments`);
  Deno.writeTextFileSync(`${dir}/experiments/sw.yaml`, "sweep:\n  training.lr: [0.001, 0.01]\n");
  const res = compareTask(dir, "experiments/sw.yaml");
  assertEquals([res.code, res.stderr], [0, ""]);
  const lines = res.stdout.trim().split("\n");
  assertEquals(lines.map((l) => l.split(/\s+/)[0]), [
    "run",
    lines[1].split(/\s+/)[0],
    "sw.lr=0.01",
    "sw.lr=0.001",
  ]);
  ok(lines[2].endsWith("running"), lines[2]); // no summary yet, written just now
});

Deno.test("compare: an unknown run or column is one error line and exit 2", () => {
  const dir = tempDir();
  writeLog(dir, "a", 0.001, [[9, 9.5]], true);
  for (
    const [args, start] of <[string[], string][]> [
      [[`${dir}/nope`], `error: compare: ${dir}/nope: no run log`],
      [[`${dir}/a`, "--sort", "speed"], "error: compare: --sort speed: not a column"],
      [[], "error: compare: name at least one run"],
      [[`${dir}/a`, "--frobnicate"], "error: compare: unknown flag --frobnicate"],
    ]
  ) {
    const res = compareTask(dir, ...args);
    assertEquals(res.code, 2, args.join(" "));
    const lines = res.stderr.trim().split("\n");
    assertEquals(lines.length, 1, res.stderr);
    ok(lines[0].startsWith(start), lines[0]);
  }
});

Deno.test("sweep: grid expansion, run names from the varied values, commands, skip/resume decisions", async () => {
  const dir = tempDir();
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

Deno.test("compare --sort takes the table's column headings, and a near miss gets a did-you-mean", () => {
  const dir = tempDir();
  writeLog(dir, "a", 0.001, [[9, 9.5], [7, 8.0]], true); // best val 8.0, final val 8.0
  writeLog(dir, "b", 0.002, [[8, 7.5], [6, 9.0]], true); // best val 7.5, final val 9.0
  const order = (...sort: string[]) => {
    const res = compareTask(dir, `${dir}/a`, `${dir}/b`, "--json", ...sort);
    assertEquals([res.code, res.stderr], [0, ""], sort.join(" "));
    return JSON.parse(res.stdout).map((r: RunRow) => r.name).join("");
  };
  assertEquals(order(), "ba"); // the default: best val
  for (const key of ["val", "final_val_loss"]) assertEquals(order("--sort", key), "ab", key);
  for (const key of ["best val", "best_val", "best-val", "best_val_loss"]) {
    assertEquals(order("--sort", key), "ba", key);
  }
  assertEquals(order("--sort", "train"), "ba");
  assertEquals(order("--sort", "training.lr"), "ab");
  const near = compareTask(dir, `${dir}/a`, `${dir}/b`, "--sort", "bestval");
  assertEquals(near.code, 2);
  const line = near.stderr.trim();
  ok(!line.includes("\n"), line);
  ok(
    line.startsWith('error: compare: --sort bestval: not a column; did you mean "best val"?'),
    line,
  );
  ok(line.includes("tok/s") && line.includes("training.lr"), line);
});
