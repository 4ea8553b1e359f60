/**
 * The CPU backend was called `blas` before it was called `cpu`: a run from then — its YAML, its checkpoint's
 * config and its log's header saying `blas` — still resumes (exactly where an uninterrupted run would be), compares
 * with a new run as one backend, and evaluates; the YAML gets a one-line note.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, taskArgs, tempDir } from "./_helpers.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

/** A tiny run's YAML: one layer, 32 wide, over 32 tokens in batches of 16; `backend` as given. */
async function yaml(name: string, backend: string): Promise<string> {
  return `name: ${name}\nbackend: ${backend}\n` +
    `data: {path: ${Deno.realPathSync(await ensureVerdict())}, batch_size: 16}\n` +
    "model: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\n" +
    "training: {epochs: 2, eval_freq: 3, eval_iter: 1, lr: 0.004}\n" +
    "sampling: {max_new_tokens: 4}\n";
}

/** Rewrites every header of a run log as a run before the rename wrote it: backend "blas". */
function blasLog(path: string): void {
  const lines = Deno.readTextFileSync(path).split("\n").map((l) => {
    if (!l.includes('"type":"header"')) return l;
    const h = JSON.parse(l);
    h.backend = "blas";
    h.config.backend = "blas";
    return JSON.stringify(h);
  });
  Deno.writeTextFileSync(path, lines.join("\n"));
}

/** Rewrites a checkpoint's config as a run before the rename saved it: backend "blas" (safetensors header). */
function blasCheckpoint(path: string): void {
  const bytes = Deno.readFileSync(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const meta = JSON.parse(header.__metadata__.meta);
  meta.config.backend = "blas";
  header.__metadata__.meta = JSON.stringify(meta);
  let text = JSON.stringify(header);
  text += " ".repeat((8 - ((8 + text.length) % 8)) % 8);
  const head = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + head.length + bytes.length - 8 - n);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  out.set(bytes.subarray(8 + n), 8 + head.length);
  Deno.writeFileSync(path, out);
}

async function task(dir: string, name: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), { args: taskArgs(name, args), cwd: dir })
    .output();
  const [stdout, stderr] = [out.stdout, out.stderr].map((b) => new TextDecoder().decode(b));
  ok(out.success, `${name} ${args.join(" ")}: exit ${out.code}\n${stderr}`);
  return { stdout, stderr };
}

Deno.test({
  name:
    "a run logged as backend blas (before the rename to cpu) resumes exactly, compares and evaluates",
  ...opts,
  fn: async () => {
    const dir = tempDir(), checkpointsDir = `${dir}/checkpoints`;
    Deno.writeTextFileSync(`${dir}/old.yaml`, await yaml("old", "blas"));
    Deno.writeTextFileSync(`${dir}/new.yaml`, await yaml("new", "cpu"));
    const quiet = { print: () => {}, progress: false, checkpointsDir };
    // The old run stops after 5 steps, as if interrupted before the rename; the new one runs straight through.
    const old = await loadExperiment(`${dir}/old.yaml`);
    assertEquals(old.backend, "cpu");
    assertEquals((await runTraining(old, { ...quiet, stopAfterSteps: 5 })).status, "interrupted");
    await runTraining(await loadExperiment(`${dir}/new.yaml`), quiet);
    blasLog(`${checkpointsDir}/old/log.jsonl`);
    blasCheckpoint(`${checkpointsDir}/old/checkpoint.safetensors`);

    const resumed = await task(dir, "train", ["old.yaml", "--resume"]);
    ok(
      resumed.stderr.includes("note: old.yaml: backend: blas is now called cpu; read as cpu"),
      resumed.stderr,
    );
    const oldLog = readRunLog(`${checkpointsDir}/old/log.jsonl`);
    const newLog = readRunLog(`${checkpointsDir}/new/log.jsonl`);
    assertEquals(oldLog.status, "finished");
    assertEquals(oldLog.headers.map((h) => h.backend), ["cpu", "cpu"]);
    const losses = (log: typeof oldLog) => log.evals.map((e) => [e.step, e.train_loss, e.val_loss]);
    assertEquals(losses(oldLog), losses(newLog));

    const rows = JSON.parse((await task(dir, "compare", ["old", "new", "--json"])).stdout);
    const backends = Object.fromEntries(
      rows.map((r: Record<string, unknown>) => [r.name, r.backend]),
    );
    assertEquals(backends, { old: "cpu", new: "cpu" });

    const evaluated = await task(dir, "eval", ["old.yaml", "--num-batches", "1", "--json"]);
    const figures = JSON.parse(evaluated.stdout.trim().split("\n").at(-1)!);
    ok(
      evaluated.stderr.includes("note: old.yaml: backend: blas is now called cpu"),
      evaluated.stderr,
    );
    ok(figures.val_loss > 0 && figures.val_loss < 11, evaluated.stdout);
    assertEquals(figures.source.includes("checkpoint"), true, figures.source);
  },
});
