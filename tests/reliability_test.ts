/**
 * Interruptions: Ctrl-C checkpoints and exits 130 and the run resumes; kill -9 at random moments never leaves a
 * checkpoint that fails to load or a log that fails to parse, and the run always resumes to the end.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadCheckpoint } from "../lib/checkpoint.ts";
import { readRunLog } from "../lib/runlog.ts";
import { ensureVerdict } from "./_helpers.ts";

const TRAIN = new URL("../tasks/train.ts", import.meta.url).pathname;
const YAML = "model: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\n" +
  "data: {batch_size: 16}\ntraining: {epochs: EPOCHS, eval_freq: 2, eval_iter: 1}\n";

async function project(epochs: number): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/r.yaml`, YAML.replace("EPOCHS", String(epochs)));
  return dir;
}

/** Starts `deno task train r.yaml …` in `dir`; output is piped only when a test reads it. */
function train(dir: string, args: string[], output: "piped" | "null" = "null") {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, "r.yaml", ...args],
    cwd: dir,
    stdout: output,
    stderr: output,
  }).spawn();
}

async function checkConsistent(dir: string) {
  const log = `${dir}/checkpoints/r/log.jsonl`;
  const text = await Deno.readTextFile(log).catch(() => "");
  const lines = text.split("\n").filter((l) => l !== "");
  lines.slice(0, -1).forEach((l) => JSON.parse(l)); // only the last line may be cut short
  const ckpt = `${dir}/checkpoints/r/checkpoint.safetensors`;
  if (await Deno.stat(ckpt).then(() => true, () => false)) await loadCheckpoint(ckpt);
}

Deno.test("SIGINT: checkpoint, an interrupted line, exit 130; --resume continues; SIGTERM and a double Ctrl-C stop cleanly too", async () => {
  const dir = await project(40);
  const child = train(dir, [], "piped");
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("Ep 1 (Step")) seen += (await reader.read()).value ?? "";
  child.kill("SIGINT");
  reader.releaseLock();
  await child.stdout.cancel().catch(() => {});
  await child.stderr.cancel().catch(() => {});
  const status = await child.status;
  assertEquals(status.code, 130);
  const log = readRunLog(`${dir}/checkpoints/r/log.jsonl`);
  assertEquals(log.lines.at(-1)?.type, "interrupted");
  const ckpt = await loadCheckpoint(`${dir}/checkpoints/r/checkpoint.safetensors`);
  ok(ckpt.meta.state.step > 0);
  const resumed = train(dir, ["--resume"]);
  // Let it continue a little, then stop it with SIGTERM: the same clean stop.
  await new Promise((r) => setTimeout(r, 1500));
  resumed.kill("SIGTERM");
  assertEquals((await resumed.status).code, 130);
  const after = await loadCheckpoint(`${dir}/checkpoints/r/checkpoint.safetensors`);
  ok(after.meta.state.step >= ckpt.meta.state.step);
  // A second Ctrl-C quits at once, wherever the first left it (possibly mid-write): files stay readable.
  const twice = train(dir, ["--resume"]);
  await new Promise((r) => setTimeout(r, 1500));
  twice.kill("SIGINT");
  await new Promise((r) => setTimeout(r, 20));
  twice.kill("SIGINT");
  assertEquals((await twice.status).code, 130);
  await checkConsistent(dir);
});

Deno.test("kill -9 at 20 random moments: checkpoint and log always readable, --auto-resume finishes", async () => {
  const dir = await project(3);
  for (let i = 0; i < 20; i++) {
    const child = train(dir, ["--auto-resume"]);
    await new Promise((r) => setTimeout(r, 200 + Math.random() * 2800));
    try {
      child.kill("SIGKILL");
    } catch { /* already finished */ }
    await child.status;
    await checkConsistent(dir);
  }
  const last = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, "r.yaml", "--auto-resume"],
    cwd: dir,
    stdout: "null",
    stderr: "piped",
  }).output();
  assertEquals(last.code, 0, new TextDecoder().decode(last.stderr));
  assertEquals(readRunLog(`${dir}/checkpoints/r/log.jsonl`).status, "finished");
  const leftovers = [...Deno.readDirSync(`${dir}/checkpoints/r`)].filter((e) =>
    e.name.includes(".tmp-")
  );
  assertEquals(leftovers, []);
});

Deno.test("a non-finite loss stops the run with one error line, exit 2, and writes no checkpoint after it", async () => {
  const dir = await project(2);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN, "r.yaml", "--set", "training.lr=1e30"],
    cwd: dir,
    stdout: "null",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim().split("\n").filter((l) =>
    l.startsWith("error:")
  );
  assertEquals(out.code, 2);
  assertEquals(err.length, 1);
  ok(/^error: r: loss became (NaN|Infinity|-Infinity) at step \d+; stopped/.test(err[0]), err[0]);
  const log = readRunLog(`${dir}/checkpoints/r/log.jsonl`);
  assertEquals(log.lines.at(-1)?.type, "error");
  ok(
    !(await Deno.stat(`${dir}/checkpoints/r/checkpoint.safetensors`).then(() => true, () => false)),
  );
});
