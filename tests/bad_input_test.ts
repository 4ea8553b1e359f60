/**
 * Bad input never costs a user anything: each case below runs `tasks/train.ts` as a subprocess and must exit 2 with
 * exactly one `error: …` line naming the file or flag, the key and the cause, no stack trace, and no file of the
 * project directory changed.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { writeSafetensors } from "../lib/weights/safetensors.ts";
import { fileStates, TINY_YAML as TINY, tinyProject, trainIn, writeFiles } from "./_cases.ts";
import { taskArgs } from "./_helpers.ts";

/** [name, files to write first, train args, expected start of the error line]. */
type Case = [string, Record<string, string | Uint8Array>, string[], string];
const CASES: Case[] = [
  [
    "malformed YAML",
    { "x.yaml": "model: [1, 2\n" },
    ["x.yaml"],
    "error: x.yaml: malformed YAML: line",
  ],
  [
    "top level not a mapping",
    { "x.yaml": "- a\n- b\n" },
    ["x.yaml"],
    "error: x.yaml: expected a mapping",
  ],
  [
    "unknown section",
    { "x.yaml": "modle: {}\n" },
    ["x.yaml"],
    "error: x.yaml: modle: unknown key; did you mean model?",
  ],
  [
    "misspelled key",
    { "x.yaml": "model: {emb_dm: 64}\n" },
    ["x.yaml"],
    "error: x.yaml: model.emb_dm: unknown key; did you mean model.emb_dim?",
  ],
  [
    "wrong type",
    { "x.yaml": "model: {emb_dim: abc}\n" },
    ["x.yaml"],
    'error: x.yaml: model.emb_dim: "abc" is not a positive integer',
  ],
  [
    "fraction where an integer is needed",
    { "x.yaml": "model: {n_layers: 1.5}\n" },
    ["x.yaml"],
    "error: x.yaml: model.n_layers: 1.5 is not a positive integer",
  ],
  [
    "negative size",
    { "x.yaml": "data: {batch_size: -1}\n" },
    ["x.yaml"],
    "error: x.yaml: data.batch_size: -1 is not a positive integer",
  ],
  [
    "zero size",
    { "x.yaml": "model: {n_heads: 0}\n" },
    ["x.yaml"],
    "error: x.yaml: model.n_heads: 0 is not a positive integer",
  ],
  [
    "heads not dividing emb_dim",
    { "x.yaml": "model: {emb_dim: 64, n_heads: 5}\n" },
    ["x.yaml"],
    "error: x.yaml: model.n_heads: 5 does not divide emb_dim 64",
  ],
  [
    "train_ratio 0",
    { "x.yaml": "data: {train_ratio: 0}\n" },
    ["x.yaml"],
    "error: x.yaml: data.train_ratio: 0 is outside (0, 1)",
  ],
  [
    "train_ratio 1",
    { "x.yaml": "data: {train_ratio: 1}\n" },
    ["x.yaml"],
    "error: x.yaml: data.train_ratio: 1 is outside (0, 1)",
  ],
  [
    "drop_rate 1",
    { "x.yaml": "model: {drop_rate: 1}\n" },
    ["x.yaml"],
    "error: x.yaml: model.drop_rate: 1 is outside [0, 1)",
  ],
  [
    "lr 0",
    { "x.yaml": "training: {lr: 0}\n" },
    ["x.yaml"],
    "error: x.yaml: training.lr: 0 is outside (0, ∞)",
  ],
  [
    "temperature < 0",
    { "x.yaml": "sampling: {temperature: -1}\n" },
    ["x.yaml"],
    "error: x.yaml: sampling.temperature: -1 is outside [0, ∞)",
  ],
  [
    "top_k 0",
    { "x.yaml": "sampling: {top_k: 0}\n" },
    ["x.yaml"],
    "error: x.yaml: sampling.top_k: 0 is not a positive integer",
  ],
  [
    "unknown backend",
    { "x.yaml": "backend: tpu\n" },
    ["x.yaml"],
    'error: x.yaml: backend: "tpu" is not one of auto, cpu',
  ],
  [
    "context larger than the data",
    { "x.yaml": "model: {context_length: 4096}\n" },
    ["x.yaml"],
    "error: data/the-verdict.txt: data.train_ratio: not enough tokens for the val loader",
  ],
  [
    "missing data file",
    { "x.yaml": TINY + "data: {path: nope.txt, url: null}\n" },
    ["x.yaml"],
    "error: nope.txt: data.path: file not found and no data.url",
  ],
  [
    "empty data file",
    { "x.yaml": TINY + "data: {path: empty.txt}\n", "empty.txt": "" },
    ["x.yaml"],
    "error: empty.txt: data.path: file is empty",
  ],
  [
    "binary data file",
    { "x.yaml": TINY + "data: {path: bin.txt}\n", "bin.txt": new Uint8Array([1, 0, 2, 0, 255]) },
    ["x.yaml"],
    "error: bin.txt: data.path: looks binary",
  ],
  ["missing experiment file", {}, ["nope.yaml"], "error: nope.yaml: file not found"],
  ["experiment path is a directory", {}, ["data"], "error: data: is a directory"],
  [
    "bad CLI flag",
    { "x.yaml": TINY },
    ["x.yaml", "--lrr", "1"],
    "error: train: unknown flag --lrr",
  ],
  [
    "--set without =",
    { "x.yaml": TINY },
    ["x.yaml", "--set", "training.lr"],
    "error: --set training.lr: expected key=value",
  ],
  [
    "--set of an unknown key",
    { "x.yaml": TINY },
    ["x.yaml", "--set", "training.lrr=1"],
    "error: --set training.lrr=1: training.lrr: unknown key; did you mean training.lr?",
  ],
  ["no experiment file", {}, [], "error: train: expected one experiment file"],
  [
    "--resume and --fresh together",
    { "x.yaml": TINY },
    ["x.yaml", "--resume", "--fresh"],
    "error: train: --resume, --fresh and --auto-resume exclude each other",
  ],
  [
    "--resume without a checkpoint",
    { "x.yaml": TINY },
    ["x.yaml", "--resume"],
    "error: checkpoints/x/checkpoint.safetensors: no checkpoint to resume from",
  ],
  [
    "existing run without --resume or --fresh",
    {},
    ["done.yaml"],
    "error: checkpoints/done: holds an earlier run",
  ],
  [
    "checkpoint of another config",
    {},
    ["done.yaml", "--resume", "--set", "training.lr=0.01"],
    "error: checkpoints/done/checkpoint.safetensors: checkpoint is from another config",
  ],
  [
    "truncated checkpoint",
    { "checkpoints/trunc/checkpoint.safetensors": new Uint8Array([9, 0, 0]) },
    ["done.yaml", "--resume", "--set", "name=trunc"],
    "error: checkpoints/trunc/checkpoint.safetensors: not a safetensors file",
  ],
  [
    "foreign checkpoint",
    {},
    ["done.yaml", "--resume", "--set", "name=foreign"],
    "error: checkpoints/foreign/checkpoint.safetensors: not a checkpoint of this toolkit",
  ],
];

/** Every file of the project directory with its size and modification time. */
function snapshot(dir: string): Promise<Map<string, string>> {
  return fileStates(dir, async (p) => {
    const st = await Deno.stat(p);
    return `${st.size}:${st.mtime?.getTime()}`;
  });
}

Deno.test(`${CASES.length} bad inputs: exit 2, one error line, nothing on disk changed`, async () => {
  // A finished tiny run, for the cases about existing runs and checkpoints.
  const dir = await tinyProject("done");
  await trainIn(dir, "done.yaml");
  await Deno.mkdir(`${dir}/checkpoints/foreign`, { recursive: true });
  await writeSafetensors(`${dir}/checkpoints/foreign/checkpoint.safetensors`, [
    { name: "w", shape: [2], data: new Float32Array([1, 2]) },
  ]);
  for (const [name, files, args, expected] of CASES) {
    await writeFiles(dir, files);
    const before = await snapshot(dir);
    const out = await new Deno.Command(Deno.execPath(), {
      args: taskArgs("train", args), // the task's own permissions: one it lacks fails here too
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").filter((l) =>
      l.trim() !== ""
    );
    assertEquals(out.code, 2, `${name}: exit ${out.code}\n${err.join("\n")}`);
    assertEquals(err.length, 1, `${name}: ${err.join("\n")}`);
    ok(err[0].startsWith(expected), `${name}:\n  got      ${err[0]}\n  expected ${expected}…`);
    ok(!/\bat .*\.ts:\d+/.test(err[0]), `${name}: stack trace`);
    assertEquals(await snapshot(dir), before, `${name}: files changed`);
  }
});

Deno.test("an unwritable checkpoints directory (a file in its place) is one error line", async () => {
  const dir = await tinyProject("x");
  await Deno.writeTextFile(`${dir}/checkpoints`, "not a directory");
  const out = await new Deno.Command(Deno.execPath(), {
    args: taskArgs("train", ["x.yaml"]),
    cwd: dir,
    stderr: "piped",
    stdout: "null",
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim().split("\n");
  assertEquals(out.code, 2, err.join("\n"));
  assertEquals(err.length, 1, err.join("\n"));
  ok(err[0].startsWith("error: checkpoints: cannot create the checkpoints directory"), err[0]);
  assertEquals(await Deno.readTextFile(`${dir}/checkpoints`), "not a directory");
});
