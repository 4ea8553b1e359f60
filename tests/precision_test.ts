/**
 * The run setting `precision: fp32 | bf16-mixed` from the config to the products and back out: the run header and
 * log, `--resume` (a run keeps its own precision unless the command line sets one), `compare`, the memory
 * preflight, and the refusals (a backend without bf16 products, an unknown precision) as one line, exit 2, nothing
 * written.
 */
import { RECENT_BYTES } from "../lib/backends/cpu/bf16.ts";
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import type { Precision } from "../lib/backends/backend.ts";
import { loadExperiment, type PrecisionName, PRECISIONS } from "../lib/config.ts";
import { compareRuns, formatTable } from "../lib/views/compare.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { memoryEstimate, paramCount } from "../lib/train/preflight.ts";
import { readSafetensorsHeader } from "../lib/weights/safetensors.ts";
import { fileStates, spawnTask, TINY_YAML, tinyProject, trainIn } from "./_cases.ts";
import { ensureVerdict, tempDir, TINY_RUN } from "./_helpers.ts";

// The config's names and the kernels' are one list: a name added to either side fails to type-check here.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const inSync: Same<Precision, PrecisionName> = true;

const TINY = [
  ...TINY_RUN,
  "training.epochs=1",
  "training.lr=0.004",
  "training.eval_freq=2",
  "training.eval_iter=1",
  "backend=cpu",
];

async function tiny(name: string, ...sets: string[]) {
  await ensureVerdict();
  return await loadExperiment("experiments/verdict-small.yaml", [...TINY, `name=${name}`, ...sets]);
}

/** Runs quietly into `dir`, collecting the printed lines. */
async function run(
  dir: string,
  cfg: Awaited<ReturnType<typeof tiny>>,
  opts: { resume?: boolean; stopAfterSteps?: number } = {},
) {
  const lines: string[] = [];
  const result = await runTraining(cfg, {
    ...opts,
    checkpointsDir: dir,
    progress: false,
    print: (l) => lines.push(l),
  });
  return { result, lines };
}

const evals = (dir: string, name: string) =>
  readRunLog(`${dir}/${name}/log.jsonl`).evals.map((e) => [e.step, e.train_loss, e.val_loss]);

Deno.test("fp32 stays the default: the header and the log say fp32", async () => {
  assertEquals([inSync, [...PRECISIONS]], [true, ["fp32", "bf16-mixed"]]);
  const dir = tempDir();
  const { lines } = await run(dir, await tiny("f"));
  ok(lines.includes("precision: fp32"), lines.join("\n"));
  const header = readRunLog(`${dir}/f/log.jsonl`).header!;
  assertEquals([header.precision, header.precision_detail], ["fp32", "fp32"]);
  assertEquals((header.config as { precision: string }).precision, "fp32");
});

Deno.test("a bf16-mixed run resumes as bf16-mixed (same losses as straight through); --set precision switches", async () => {
  const dir = tempDir();
  await run(dir, await tiny("fp32"));
  await run(dir, await tiny("straight", "precision=bf16-mixed"));
  // bf16-mixed reaches the products: its losses are fp32's to about bf16's 3 digits, not the same bits.
  const [a, b] = [evals(dir, "fp32"), evals(dir, "straight")];
  assertEquals(a.length, b.length);
  ok(a.some((e, i) => e[1] !== b[i][1]), "bf16-mixed trained bit for bit like fp32");
  ok(a.every((e, i) => Math.abs(Number(e[1]) - Number(b[i][1])) < 0.05), `${a} vs ${b}`);

  const stopped = await run(dir, await tiny("kept", "precision=bf16-mixed"), { stopAfterSteps: 3 });
  assertEquals(stopped.result.status, "interrupted");
  const ckpt = await readSafetensorsHeader(`${dir}/kept/checkpoint.safetensors`);
  ok([...ckpt.tensors.values()].every((t) => t.dtype === "F32"), "checkpoints hold fp32");
  const resumed = await run(dir, await tiny("kept"), { resume: true }); // no precision on its command line
  ok(resumed.lines.some((l) => l.startsWith("precision: keeping the run's bf16-mixed")));
  ok(resumed.lines.some((l) => l.startsWith("precision: bf16-mixed (")), resumed.lines.join("\n"));
  const headers = readRunLog(`${dir}/kept/log.jsonl`).headers;
  assertEquals(headers.map((h) => h.precision), ["bf16-mixed", "bf16-mixed"]);
  assertEquals(headers.map((h) => (h.config as { precision: string }).precision), [
    "bf16-mixed",
    "bf16-mixed",
  ]);
  assertEquals(evals(dir, "kept"), evals(dir, "straight"));
  assertEquals(resumed.result.precision, headers[1].precision_detail);

  await run(dir, await tiny("switched", "precision=bf16-mixed"), { stopAfterSteps: 3 });
  const sw = await run(dir, await tiny("switched", "precision=fp32"), { resume: true });
  ok(sw.lines.includes("precision: fp32 from here on; the run trained in bf16-mixed until now"));
  const logs = ["fp32", "kept", "switched"].map((n) => `${dir}/${n}/log.jsonl`);
  const { rows } = compareRuns(logs);
  assertEquals(rows.map((r) => r.precision), ["fp32", "bf16-mixed", "bf16-mixed→fp32"]);
  assertEquals(rows.map((r) => Object.keys(r.differs)), [[], [], []]); // not a config key column too
  const table = formatTable(rows).split("\n");
  ok(/^run\s+precision\s+steps/.test(table[0]), table[0]);
  ok(/^switched\s+bf16-mixed→fp32\s/.test(table[4]), table[4]);
  ok(!formatTable(rows.slice(0, 1)).includes("precision"), "one precision: no column");
});

Deno.test("memory preflight: bf16-mixed adds 4 bytes a parameter, two activation operands and the recent copies' bytes", async () => {
  const cfg = await tiny("m");
  const bf = { ...cfg, precision: "bf16-mixed" as const };
  const m = cfg.model, B = cfg.data.batch_size, T = m.context_length;
  assertEquals(memoryEstimate(cfg, "train").bf16, 0);
  const train = memoryEstimate(bf, "train");
  const recent = RECENT_BYTES;
  assertEquals(train.bf16, 4 * (paramCount(m) + 2 * B * T * m.vocab_size) + recent); // the logits' gradient
  assertEquals(train.total - memoryEstimate(cfg, "train").total, train.bf16);
  const ev = memoryEstimate(bf, "eval").bf16;
  const largest = Math.max(B * m.n_heads * T * T, B * T * 4 * m.emb_dim);
  assertEquals(ev, 4 * (paramCount(m) + 2 * largest) + recent);
});

/** [what, args of `train`, the one error line]. */
const REFUSED: [string, string[], string][] = [
  [
    "bf16-mixed on webgpu",
    ["tiny.yaml", "--set", "backend=webgpu", "--set", "precision=bf16-mixed"],
    "error: --set precision=bf16-mixed: precision: bf16-mixed: backend webgpu refuses it until " +
    "it is measured on a GPU; use backend cpu or auto, or precision fp32",
  ],
  [
    "bf16-mixed on tensorflow",
    ["tiny.yaml", "--set", "precision=bf16-mixed", "--set", "backend=tensorflow"],
    "error: --set precision=bf16-mixed: precision: bf16-mixed: backend tensorflow refuses it until " +
    "it is measured on a GPU; use backend cpu or auto, or precision fp32",
  ],
  [
    "--precision bf16-mixed --backend tfjs-cpu",
    ["tiny.yaml", "--precision", "bf16-mixed", "--backend", "tfjs-cpu"],
    "error: --precision bf16-mixed: precision: bf16-mixed: backend tfjs-cpu has no bf16 products; " +
    "use backend cpu or auto, or precision fp32",
  ],
  [
    "an unknown precision",
    ["tiny.yaml", "--set", "precision=fp16"],
    'error: --set precision=fp16: precision: "fp16" is not one of fp32, bf16-mixed',
  ],
  [
    "an unknown precision in the file",
    ["fp16.yaml"],
    'error: fp16.yaml: precision: "fp16" is not one of fp32, bf16-mixed',
  ],
  [
    "a bf16-mixed run resumed on webgpu",
    ["again.yaml", "--resume", "--backend", "webgpu"],
    "error: checkpoints/bf/checkpoint.safetensors: precision: the run's bf16-mixed: backend webgpu " +
    "refuses it until it is measured on a GPU; use backend cpu or auto, or precision fp32 " +
    "(--set precision=fp32 switches the run)",
  ],
];

Deno.test(`${REFUSED.length} precisions refused: one line, exit 2, nothing written`, async () => {
  const dir = await tinyProject("tiny");
  await Deno.writeTextFile(`${dir}/bf.yaml`, TINY_YAML + "precision: bf16-mixed\nbackend: cpu\n");
  await trainIn(dir, "bf.yaml");
  await Deno.writeTextFile(`${dir}/again.yaml`, TINY_YAML + "name: bf\n");
  await Deno.writeTextFile(`${dir}/fp16.yaml`, TINY_YAML + "precision: fp16\n");
  const state = () => fileStates(dir, async (p) => `${(await Deno.stat(p)).mtime?.getTime()}`);
  const before = await state();
  const failures: string[] = [];
  for (const [what, args, line] of REFUSED) {
    const r = await spawnTask(dir, "train", args);
    if (r.code !== 2 || r.err.length !== 1 || r.err[0] !== line) {
      failures.push(`${what}: exit ${r.code}\n  ${r.err.join("\n  ")}`);
    }
  }
  assertEquals(failures, []);
  assertEquals(await state(), before);
});
