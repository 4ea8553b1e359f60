/**
 * A model too large for the memory is refused before anything is allocated or written (lib/train/preflight.ts):
 * `train`, `eval` and `sample`, run as `deno task` runs them, exit 2 with one line naming the model, the estimate,
 * the memory and how to fit it, and create nothing under checkpoints/. The memory is `GPT_MEMORY_LIMIT_MB` where a
 * case sets it, the machine's own where it does not (a model no machine holds); GPT-2 1558M in 24 GiB.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { memoryEstimate } from "../lib/train/preflight.ts";
import { fileHashes, spawnTask, tinyProject } from "./_cases.ts";

const XL = new URL("../experiments/gpt2-1558m.yaml", import.meta.url).pathname;

/** [name, task, args, GPT_MEMORY_LIMIT_MB ("" = the machine's memory), expected pattern of the one line]. */
type Case = [string, string, string[], string, RegExp];
const CASES: Case[] = [
  [
    "a batch that does not fit: the largest that does, with grad_accum_steps",
    "train",
    ["tiny.yaml", "--set", "data.batch_size=16"],
    "400",
    /^error: tiny: the model \(3M parameters, 1 layer × 32\) at data\.batch_size 16 needs about 0\.\d GiB to train, more than the 0\.4 GiB of GPT_MEMORY_LIMIT_MB; set data\.batch_size: \d with training\.grad_accum_steps: \d+ \(the same 16 windows per step\)/,
  ],
  [
    "a model no machine holds, against the machine's own memory",
    "train",
    ["tiny.yaml", "--set", "model.emb_dim=16384", "--set", "model.n_layers=200"],
    "",
    /^error: tiny: the model \(\d+M parameters, 200 layers × 16384\) at data\.batch_size 2 needs about \d+\.\d GiB to train, more than the .* GiB of (available memory|the cgroup's memory\.max); its weights, gradients and AdamW moments alone need/,
  ],
  [
    "GPT-2 1558M in 24 GiB: its weights, gradients and moments alone do not fit",
    "train",
    [XL],
    "24576",
    /^error: gpt2-1558m: the model \(1638M parameters, 48 layers × 1600\) at data\.batch_size 2 needs about 3\d\.\d GiB to train, more than the 24\.0 GiB of GPT_MEMORY_LIMIT_MB; its weights, gradients and AdamW moments alone need/,
  ],
  [
    "GPT-2 1558M sampling in 4 GiB",
    "sample",
    [XL, "--init"],
    "4096",
    /^error: gpt2-1558m: .* needs about \d\.\d GiB to sample, more than the 4\.0 GiB of GPT_MEMORY_LIMIT_MB; its weights alone need/,
  ],
  [
    "GPT-2 1558M evaluation in 4 GiB",
    "eval",
    [XL, "--init"],
    "4096",
    /^error: gpt2-1558m: .* needs about \d\.\d GiB to eval, more than the 4\.0 GiB of GPT_MEMORY_LIMIT_MB/,
  ],
  [
    "a limit that is not a number",
    "train",
    ["tiny.yaml"],
    "lots",
    /^error: GPT_MEMORY_LIMIT_MB=lots: expected a positive number of MiB$/,
  ],
];

Deno.test(`${CASES.length} runs too large for the memory: exit 2, one line, nothing written`, async () => {
  const dir = await tinyProject("tiny");
  const before = await fileHashes(dir);
  const failures: string[] = [];
  for (const [name, task, args, limit, expected] of CASES) {
    const r = await spawnTask(dir, task, args, { GPT_MEMORY_LIMIT_MB: limit });
    const why = r.code !== 2
      ? `exit ${r.code}`
      : r.err.length !== 1
      ? `${r.err.length} lines`
      : !expected.test(r.err[0])
      ? `expected ${expected}`
      : null;
    if (why) failures.push(`${task}: ${name}: ${why}\n    ${r.err.join("\n    ")}`);
    assertEquals(await fileHashes(dir), before, `${name}: files changed`);
    const made = await Array.fromAsync(Deno.readDir(`${dir}/checkpoints`)).catch(() => []);
    assertEquals(made.map((e) => e.name), [], `${name}: written under checkpoints/`);
  }
  ok(failures.length === 0, failures.join("\n"));
});

Deno.test("a run within 10 % of the memory: a warning, and it trains", async () => {
  const dir = await tinyProject("tiny");
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  const need = memoryEstimate(await loadExperiment("tiny.yaml"), "train").total;
  Deno.chdir(cwd);
  const limit = String(Math.ceil(need / 0.95 / 2 ** 20));
  const r = await spawnTask(dir, "train", ["tiny.yaml"], { GPT_MEMORY_LIMIT_MB: limit });
  assertEquals(r.code, 0, r.err.join("\n"));
  const warnings = r.err.filter((l) => l.startsWith("warning: "));
  ok(
    warnings.some((l) => /needs about .* within 10 % of the .* GPT_MEMORY_LIMIT_MB/.test(l)),
    r.err.join("\n"),
  );
  await Deno.stat(`${dir}/checkpoints/tiny/checkpoint.safetensors`);
});

Deno.test("memory estimate: eval and sample need no gradients or AdamW moments; training grows with the batch", async () => {
  const cfg = await loadExperiment(XL);
  const train = memoryEstimate(cfg, "train");
  assertEquals(train.grads, train.params);
  assertEquals(train.adamw, 2 * train.params);
  for (const use of ["eval", "sample"] as const) {
    const e = memoryEstimate(cfg, use);
    assertEquals([e.grads, e.adamw], [0, 0]);
    ok(e.total < train.total / 3, use);
  }
  const more = memoryEstimate({ ...cfg, data: { ...cfg.data, batch_size: 4 } }, "train");
  ok(more.activations > 1.9 * train.activations && more.logits > 1.9 * train.logits);
});
