/**
 * Every task's flags as a user mistypes them (negative, zero, not a number, out of range, a directory where a file
 * belongs, a file where a directory belongs, an empty value; `data.shards` too), each run as `deno task` runs it: exit 2, one `error:`
 * line naming the flag or the path, no stack trace, no file of the project changed.
 */
import { ok } from "node:assert/strict";
import { fileHashes, spawnTask, tinyProject, trainIn } from "./_cases.ts";

/** [task, args, a text the one line must contain]. `data` is a directory, `tiny.yaml` a file. */
type Case = [string, string[], string];
const CASES: Case[] = [
  ["train", ["data"], "data: is a directory"],
  ["train", ["nope.yaml"], "nope.yaml"],
  ["train", ["tiny.yaml", "--backend", "nope"], "backend"],
  ["train", ["tiny.yaml", "--set", "training.lr=abc"], "training.lr"],
  ["train", ["tiny.yaml", "--set", "training.lr"], "training.lr"],
  ["train", ["tiny.yaml", "--resume", "--fresh"], "--resume"],
  ["train", ["sweep.yaml", "--slurm-array="], "--slurm-array"],
  ["eval", ["tiny.yaml", "--num-batches", "-1"], "--num-batches"],
  ["eval", ["tiny.yaml", "--num-batches", "0"], "--num-batches"],
  ["eval", ["tiny.yaml", "--num-batches", "abc"], "--num-batches"],
  ["eval", ["tiny.yaml", "--num-batches", "1.5"], "--num-batches"],
  ["eval", ["tiny.yaml", "--checkpoint", "data"], "data: a directory"],
  ["eval", ["tiny.yaml", "--checkpoint", "nope.safetensors"], "nope.safetensors"],
  ["eval", ["tiny.yaml", "--checkpoint", "tiny.yaml"], "tiny.yaml"],
  ["eval", ["data"], "data: is a directory"],
  ["sample", ["tiny.yaml", "--temperature", "-1"], "--temperature"],
  ["sample", ["tiny.yaml", "--temperature", "abc"], "--temperature"],
  ["sample", ["tiny.yaml", "--temperature", "Infinity"], "--temperature"],
  ["sample", ["tiny.yaml", "--top-k", "-3"], "--top-k"],
  ["sample", ["tiny.yaml", "--top-k", "1e9"], "--top-k"],
  ["sample", ["tiny.yaml", "--max-new-tokens", "-1"], "--max-new-tokens"],
  ["sample", ["tiny.yaml", "--max-new-tokens", "abc"], "--max-new-tokens"],
  ["sample", ["tiny.yaml", "--seed", "-1"], "--seed"],
  ["sample", ["tiny.yaml", "--seed", "1.5"], "--seed"],
  ["sample", ["tiny.yaml", "--seed", "1e30"], "--seed"],
  ["sample", ["tiny.yaml", "--num-samples", "0"], "--num-samples"],
  ["sample", ["tiny.yaml", "--eos-id", "99999999"], "--eos-id"],
  ["sample", ["tiny.yaml", "--checkpoint", "data"], "data: a directory"],
  ["prepare", ["tiny.yaml", "--workers", "0"], "--workers"],
  ["prepare", ["tiny.yaml", "--workers", "-2"], "--workers"],
  ["prepare", ["tiny.yaml", "--workers", "two"], "--workers"],
  ["prepare", ["shards-file.yaml"], "data.shards tiny.yaml: a file"],
  [
    "prepare",
    ["shards-dir.yaml"],
    "data.shards data: a directory of 1 entries that prepare did not write",
  ],
  ["compare", ["tiny", "--sort", "nope"], "--sort"],
  ["compare", ["nope"], "nope"],
  ["compare", ["tiny", "--out="], "--out"],
  ["export", ["tiny.yaml", "--out="], "--out"],
  ["export", ["tiny.yaml", "--checkpoint", "data"], "data: a directory"],
  ["handoff", ["tiny.yaml", "--out="], "--out"],
  ["dashboard", ["--port", "-1"], "--port"],
  ["dashboard", ["--port", "70000"], "--port"],
  ["dashboard", ["--port", "http"], "--port"],
  ["dashboard", ["--port", "0", "tiny.yaml"], "tiny.yaml: not a directory"],
  ["download-gpt2", ["2g"], "size"],
  ["download-gpt2", ["124m", "--sha256", "xyz"], "--sha256"],
  ["download-gpt2", ["124m", "--out", "data"], "data: a directory"],
];

Deno.test(`${CASES.length} mistyped flags, every task: exit 2, one line naming the flag, nothing changed`, async () => {
  const dir = await tinyProject("tiny");
  await trainIn(dir, "tiny.yaml");
  await Deno.writeTextFile(`${dir}/sweep.yaml`, "sweep:\n  training.lr: [0.001, 0.002]\n");
  await Deno.mkdir(`${dir}/corpus`);
  await Deno.writeTextFile(`${dir}/corpus/a.txt`, "A document.\n");
  for (const [name, shards] of [["shards-file", "tiny.yaml"], ["shards-dir", "data"]]) {
    await Deno.writeTextFile(`${dir}/${name}.yaml`, `data: {path: corpus, shards: ${shards}}\n`);
  }
  const before = await fileHashes(dir);
  const failures: string[] = [];
  for (const [task, args, expected] of CASES) {
    const r = await spawnTask(dir, task, args);
    const line = r.err.at(-1) ?? "";
    const why = r.code !== 2
      ? `exit ${r.code}`
      : r.err.length !== 1
      ? `${r.err.length} lines`
      : !line.startsWith("error: ") || !line.includes(expected)
      ? `expected …${expected}…`
      : /\bat .*\.[jt]s:\d+/.test(line)
      ? "stack trace"
      : null;
    if (why) failures.push(`${task} ${args.join(" ")}: ${why}\n    ${r.err.join("\n    ")}`);
  }
  ok(failures.length === 0, failures.join("\n"));
  const after = await fileHashes(dir);
  ok(JSON.stringify([...after]) === JSON.stringify([...before]), "files changed");
});
