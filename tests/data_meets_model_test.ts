/**
 * Bad input that only shows once the data, the tokenizer, a shard index, a checkpoint or a weights file meets the
 * model, across every task: each case runs a task as a subprocess and must exit 2 with exactly one `error: …` line
 * naming the file or key, no stack trace, and the checkpoints directory byte for byte unchanged.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { INDEX_FILE, INDEX_VERSION, TOKENIZER } from "../lib/data/shards.ts";
import { fileStates, TINY_YAML as TINY, tinyProject, trainIn, writeFiles } from "./_cases.ts";
import { ignoredBecause, taskArgs } from "./_helpers.ts";

const FIXTURES = new URL("../../shared/fixtures/", import.meta.url).pathname;
/** The GPT-2 fixture's shape (context 32, width 32, 2 layers). */
const GPT2_TINY =
  "model: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 2, qkv_bias: true}\n" +
  "training: {epochs: 1}\n";
const SMALL_VOCAB =
  "model: {vocab_size: 100, context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\n";

/** [name, task, files to write first, args, what the one error line must contain]. */
type Case = [string, string, Record<string, string | Uint8Array>, string[], string];
const CASES: Case[] = [
  // data and tokenizer
  [
    "vocab_size 100 below the tokenizer's ids (issue 20)",
    "train",
    { "v.yaml": SMALL_VOCAB },
    ["v.yaml"],
    "data/the-verdict.txt: model.vocab_size: 100 is smaller than the GPT-2 tokenizer's 50257 ids",
  ],
  [
    "eval of a model whose vocab the tokenizer overflows",
    "eval",
    { "v.yaml": SMALL_VOCAB },
    ["v.yaml", "--init"],
    "model.vocab_size: 100 is smaller than the GPT-2 tokenizer's 50257 ids",
  ],
  [
    "sample from a model whose vocab the tokenizer overflows",
    "sample",
    { "v.yaml": SMALL_VOCAB },
    ["v.yaml", "--init", "--prompt", "Every effort moves you"],
    "model.vocab_size: 100 is smaller than the GPT-2 tokenizer's 50257 ids",
  ],
  [
    "batch larger than the data's windows",
    "train",
    { "b.yaml": TINY + "data: {batch_size: 4096}\n" },
    ["b.yaml"],
    "data.batch_size: 4096 is more than the",
  ],
  [
    "grad_accum_steps beyond an epoch's batches",
    "train",
    { "g.yaml": TINY.replace("{epochs: 1}", "{epochs: 1, grad_accum_steps: 100000}") },
    ["g.yaml"],
    "training.grad_accum_steps: 100000 exceeds the",
  ],
  // shards
  [
    "shard index of another vocabulary",
    "train",
    {
      "s.yaml": TINY + "data: {path: shards}\n",
      [`shards/${INDEX_FILE}`]: JSON.stringify({
        version: INDEX_VERSION,
        tokenizer: TOKENIZER,
        vocab_size: 100,
        shards: [],
      }),
    },
    ["s.yaml"],
    `shards/${INDEX_FILE}: vocab_size`,
  ],
  [
    "shard index of another tokenizer",
    "train",
    {
      "t.yaml": TINY + "data: {path: shards2}\n",
      [`shards2/${INDEX_FILE}`]: JSON.stringify({
        version: INDEX_VERSION,
        tokenizer: "llama",
        vocab_size: 50257,
        shards: [],
      }),
    },
    ["t.yaml"],
    `shards2/${INDEX_FILE}: tokenizer`,
  ],
  [
    "prepare of a corpus directory with no text files",
    "prepare",
    { "p.yaml": TINY + "data: {path: emptycorpus}\n", "emptycorpus/notes.md": "# not .txt" },
    ["p.yaml"],
    "emptycorpus",
  ],
  // weight files
  [
    "init.weights shorter than context_length",
    "train",
    {
      "w.yaml": GPT2_TINY.replace("context_length: 32", "context_length: 64") +
        "init: {from: gpt2}\n",
    },
    ["w.yaml", "--set", `init.weights=${FIXTURES}gpt2-tiny.safetensors`],
    "model.context_length: 64 exceeds the 32 positions of wpe.weight",
  ],
  [
    "init.weights of another width",
    "train",
    { "w2.yaml": GPT2_TINY.replace("emb_dim: 32", "emb_dim: 64") + "init: {from: gpt2}\n" },
    ["w2.yaml", "--set", `init.weights=${FIXTURES}gpt2-tiny.safetensors`],
    "model.emb_dim: 64",
  ],
  [
    "init.weights not a safetensors file",
    "train",
    {
      "w3.yaml": GPT2_TINY + "init: {from: gpt2, weights: junk.safetensors}\n",
      "junk.safetensors": "junk",
    },
    ["w3.yaml"],
    "junk.safetensors: not a safetensors file",
  ],
  [
    "init.weights missing",
    "train",
    { "w4.yaml": GPT2_TINY + "init: {from: gpt2, weights: nowhere.safetensors}\n" },
    ["w4.yaml"],
    "nowhere.safetensors: init.weights",
  ],
  // checkpoints
  [
    "eval of a checkpoint of another model",
    "eval",
    {},
    ["done.yaml", "--set", "model.emb_dim=64"],
    "checkpoints/done/checkpoint.safetensors: checkpoint is from another model config (model.emb_dim",
  ],
  [
    "sample from a truncated --checkpoint",
    "sample",
    { "trunc.safetensors": new Uint8Array([9, 0, 0]) },
    ["done.yaml", "--checkpoint", "trunc.safetensors"],
    "trunc.safetensors",
  ],
  [
    "export of a run that has no checkpoint",
    "export",
    {},
    ["v.yaml", "--out", "out/model.safetensors"],
    "checkpoints/v/checkpoint.safetensors",
  ],
  // CLI flags and sampling settings
  [
    "sample --top-k above the vocabulary",
    "sample",
    {},
    ["done.yaml", "--top-k", "60000"],
    "sampling.top_k (--top-k): 60000 exceeds model.vocab_size 50257",
  ],
  [
    "sample --eos-id outside the vocabulary",
    "sample",
    {},
    ["done.yaml", "--eos-id", "50257"],
    "sampling.eos_id (--eos-id): 50257 is not a token id of model.vocab_size 50257",
  ],
  [
    "sample --temperature not a number",
    "sample",
    {},
    ["done.yaml", "--temperature", "warm"],
    "--temperature",
  ],
  [
    "eval --num-batches 0",
    "eval",
    {},
    ["done.yaml", "--num-batches", "0"],
    "--num-batches",
  ],
  ["compare of a run that does not exist", "compare", {}, ["nope"], "nope"],
  [
    "compare --sort by an unknown column",
    "compare",
    {},
    ["done", "--sort", "vibes"],
    "--sort vibes: not a column",
  ],
];

/** Every file under `dir` with its bytes, as text for a readable diff. */
function contents(dir: string): Promise<Map<string, string>> {
  return fileStates(dir, async (p) => {
    const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(p)));
    return Array.from(hash, (b) => b.toString(16)).join("");
  });
}

Deno.test(`${CASES.length} bad inputs met by the model, every task: exit 2, one line, checkpoints unchanged`, async () => {
  const dir = await tinyProject("done");
  await trainIn(dir, "done.yaml");
  const failures: string[] = [];
  for (const [name, taskName, files, args, expected] of CASES) {
    await writeFiles(dir, files);
    const before = await contents(`${dir}/checkpoints`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: taskArgs(taskName, args), // the task's own permissions, as `deno task` grants them
      cwd: dir,
      stdout: "null",
      stderr: "piped",
      env: { GPT_DEBUG: "" },
    }).output();
    const err = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l.trim() !== "");
    const line = err.at(-1) ?? "";
    const why = out.code !== 2
      ? `exit ${out.code}`
      : err.length !== 1
      ? `${err.length} lines`
      : !line.startsWith("error: ") || !line.includes(expected)
      ? `expected …${expected}…`
      : /\bat .*\.[jt]s:\d+/.test(line)
      ? "stack trace"
      : null;
    if (why) failures.push(`${taskName}: ${name}: ${why}\n    ${err.join("\n    ")}`);
    assertEquals(await contents(`${dir}/checkpoints`), before, `${name}: checkpoints changed`);
  }
  ok(failures.length === 0, failures.join("\n"));
});

const FAILING_DISK = new URL("./_failing_disk.ts", import.meta.url).pathname;

async function train(dir: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    // train's own permission flags, its script swapped for the wrapper that imports it
    args: taskArgs("train", args).map((a) => a.endsWith("tasks/train.ts") ? FAILING_DISK : a),
    cwd: dir,
    stdout: "null",
    stderr: "piped",
    env: { GPT_DEBUG: "", NO_COLOR: "1", ...env },
  }).output();
  const err = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l.trim() !== "");
  return { code: out.code, err };
}

function lastLogLine(path: string): Record<string, unknown> {
  const lines = Deno.readTextFileSync(path).trimEnd().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

Deno.test("a write failing mid-run: exit 1, one line, the log says why, the last checkpoint kept, no blocking dir", async () => {
  const dir = await tinyProject("r");
  await trainIn(dir, "r.yaml");
  const ckpt = `${dir}/checkpoints/r/checkpoint.safetensors`;
  const good = await Deno.readFile(ckpt);

  // Resuming for a second epoch: the epoch's checkpoint cannot be written.
  const resumed = await train(dir, ["r.yaml", "--resume", "--set", "training.epochs=2"]);
  assertEquals(resumed.code, 1, resumed.err.join("\n"));
  // stderr off a terminal also carries the progress lines; the error is the one `error:` line, and the last.
  const errors = resumed.err.filter((l) => l.startsWith("error:"));
  assertEquals(errors.length, 1, resumed.err.join("\n"));
  assertEquals(resumed.err.at(-1), errors[0]);
  ok(
    /^error: checkpoints\/r\/checkpoint.safetensors: .*No space left on device/.test(errors[0]),
    errors[0],
  );
  ok(!resumed.err.some((l) => /\bat .*\.[jt]s:\d+/.test(l)), "stack trace");
  const last = lastLogLine(`${dir}/checkpoints/r/log.jsonl`);
  assertEquals(last.type, "error");
  ok(String(last.reason).includes("No space left on device"), String(last.reason));
  assertEquals(await Deno.readFile(ckpt), good, "the last good checkpoint changed");
  const left = [...Deno.readDirSync(`${dir}/checkpoints`)].map((e) => e.name).sort();
  assertEquals(left, ["r"], "a lock or stray file left behind");
  ok(![...Deno.readDirSync(`${dir}/checkpoints/r`)].some((e) => e.name.includes(".tmp-")));

  // A fresh run that fails before its first checkpoint leaves a log saying why, but does not block the next run.
  await Deno.writeTextFile(`${dir}/f.yaml`, TINY);
  const failed = await train(dir, ["f.yaml"]);
  assertEquals(failed.code, 1, failed.err.join("\n"));
  assertEquals(lastLogLine(`${dir}/checkpoints/f/log.jsonl`).type, "error");
  const debug = await train(dir, ["f.yaml"], { GPT_DEBUG: "1" });
  ok(
    debug.code !== 0 && debug.err.some((l) => /\bat .*\.[jt]s:\d+/.test(l)),
    "GPT_DEBUG=1 keeps the stack",
  );
  assertEquals((await trainIn(dir, "f.yaml")).status, "finished");
  ok(Deno.statSync(`${dir}/checkpoints/f/checkpoint.safetensors`).isFile);
});

Deno.test("a disk with not a byte left from the start: the run log's first line fails naming log.jsonl, exit 1, no lock left", async () => {
  const dir = await tinyProject("f");
  await Deno.writeTextFile(`${dir}/f.yaml`, TINY);
  const full = await train(dir, ["f.yaml"], { FAILING_DISK: "full" });
  assertEquals(full.code, 1, full.err.join("\n"));
  const errors = full.err.filter((l) => l.startsWith("error:"));
  assertEquals(errors, [full.err.at(-1)], full.err.join("\n"));
  ok(
    /^error: checkpoints\/f\/log.jsonl: cannot write the run log \(No space left on device/.test(
      errors[0],
    ),
    errors[0],
  );
  assertEquals(
    [...Deno.readDirSync(`${dir}/checkpoints`)].map((e) => e.name),
    ["f"],
    "a lock left",
  );
});

/** Why a real full disk cannot be made here (root and `unshare -m` are needed for a private tmpfs), or null. */
function noPrivateTmpfs(): string | null {
  if (Deno.build.os !== "linux") return "a private tmpfs needs Linux";
  if (Deno.uid() !== 0) return "mounting a private tmpfs needs root";
  try {
    const o = new Deno.Command("unshare", { args: ["-m", "true"], stderr: "null" }).outputSync();
    return o.success ? null : "unshare -m is refused here";
  } catch {
    return "no unshare here (util-linux)";
  }
}
const NO_TMPFS = noPrivateTmpfs();

Deno.test({
  name:
    "a really full disk (checkpoints/ a tmpfs of 1 MB, of 4 KB, of 4 KB already full): the checkpoint write, or " +
    `even the run log's, fails: exit 1, one line naming the file, no temporary file or lock left${
      ignoredBecause(NO_TMPFS)
    }`,
  ignore: NO_TMPFS !== null,
  async fn() {
    for (
      const [size, failing] of [
        [
          "1m",
          /^error: checkpoints\/f\/checkpoint.safetensors: cannot write \(No space left on device/,
        ],
        [
          "4k",
          /^error: checkpoints\/f\/log.jsonl: cannot write the run log \(No space left on device/,
        ],
        [
          "4k-full", // not a byte left: not even the lock's pid can be written
          /^error: checkpoints\/f\/log.jsonl: cannot write the run log \(No space left on device/,
        ],
      ] as const
    ) {
      const dir = await tinyProject("f");
      await Deno.mkdir(`${dir}/checkpoints`);
      // In a private mount namespace: the tmpfs vanishes with it, so the listing is taken inside.
      const script =
        `mount -t tmpfs -o size=${size.replace("-full", "")} tmpfs checkpoints || exit 99; ` +
        (size.endsWith("-full")
          ? "head -c 1048576 /dev/zero > checkpoints/filler 2>/dev/null; "
          : "") +
        `"$@" >/dev/null; code=$?; ` +
        "ls -a checkpoints checkpoints/f; exit $code";
      const out = await new Deno.Command("unshare", {
        args: ["-m", "sh", "-c", script, "sh", Deno.execPath(), ...taskArgs("train", ["f.yaml"])],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
        env: { GPT_DEBUG: "", NO_COLOR: "1" },
      }).output();
      const err = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l.trim() !== "");
      assertEquals(out.code, 1, `${size}: ${err.join("\n")}`);
      const errors = err.filter((l) => l.startsWith("error:"));
      assertEquals(errors, [err.at(-1)], err.join("\n"));
      ok(failing.test(errors[0]), `${size}: ${errors[0]}`);
      ok(!err.some((l) => /\bat .*\.[jt]s:\d+/.test(l)), "stack trace");
      const listing = new TextDecoder().decode(out.stdout);
      ok(!/\.tmp-|\.lock/.test(listing), `left behind:\n${listing}`);
      ok(listing.includes("log.jsonl"), listing);
    }
  },
});
