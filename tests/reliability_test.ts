/**
 * Interruptions and crashes, with `deno task train` run as a subprocess under the task's own permissions:
 * Ctrl-C stops mid-epoch after the current step, checkpoints and exits 130; SIGTERM does the same; a second
 * Ctrl-C quits at once; a second trainer of the same run refuses while another name is free; leftovers of a killed
 * process (temporary file, stale lock) are cleaned; kill -9 at 20 random moments never leaves a checkpoint that
 * fails to load or a log that fails to parse, and the resumed run ends bit-identical to an uninterrupted one; a
 * non-finite loss stops the run with one line and keeps the last good checkpoint.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadCheckpoint, saveCheckpoint } from "../lib/train/checkpoint.ts";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { acquireRunLock } from "../lib/runs/lock.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict } from "./_helpers.ts";

const TRAIN = new URL("../tasks/train.ts", import.meta.url).pathname;
// deno.json's train task: the worker that watches signals, the lock and the cleanup must live with these.
const PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys",
  "--allow-ffi",
  "--allow-net",
  "--allow-run=git",
];
const MODEL = "model: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\n";

/** A temp project: r.yaml and data/the-verdict.txt. */
async function project(yaml: string): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/r.yaml`, MODEL + yaml);
  return dir;
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lines = (s: string) => s.split("\n").filter((l) => l.trim() !== "");

/** Polls `ready` every 10 ms; throws `failure()` after 120 s. */
async function waitFor(ready: () => boolean | Promise<boolean>, failure: () => string) {
  for (let t = 0; !(await ready()); t += 10) {
    if (t > 120_000) throw new Error(failure());
    await sleep(10);
  }
}

/** Starts `deno task train r.yaml …` in `dir`, collecting its output as it comes. */
function start(dir: string, args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, TRAIN, "r.yaml", ...args],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = { stdout: "", stderr: "" };
  const drain = async (s: ReadableStream<Uint8Array>, k: keyof typeof out) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) out[k] += t;
  };
  const drained = Promise.all([drain(child.stdout, "stdout"), drain(child.stderr, "stderr")]);
  return {
    child,
    out,
    /** Waits until stdout matches. */
    until(re: RegExp) {
      return waitFor(() => re.test(out.stdout), () => `no ${re} in:\n${out.stdout}\n${out.stderr}`);
    },
    kill(signal: Deno.Signal) {
      try {
        child.kill(signal);
      } catch { /* already exited */ }
    },
    async finish() {
      const status = await child.status;
      await drained;
      return { code: status.code, ...out };
    },
  };
}

const train = (dir: string, args: string[]) => start(dir, args).finish();

Deno.test("Ctrl-C stops mid-epoch, checkpoints, exits 130; the lock refuses a second trainer; SIGTERM, a second Ctrl-C and leftovers are handled; --resume finishes", async () => {
  const dir = await project(
    "data: {batch_size: 4, train_ratio: 0.5}\ntraining: {epochs: 40, eval_freq: 2, eval_iter: 1}\n",
  );
  const run = `${dir}/checkpoints/r`, ckptPath = `${run}/checkpoint.safetensors`;
  const first = start(dir, []);
  await first.until(/Ep 1 \(Step 000002\)/);
  first.kill("SIGINT");
  const stopped = await first.finish();
  assertEquals(stopped.code, 130, stopped.stderr);
  ok(stopped.stderr.includes("stopping after this step"), stopped.stderr);
  const log = readRunLog(`${run}/log.jsonl`);
  assertEquals(log.lines.at(-1), {
    type: "interrupted",
    step: log.lines.at(-1)?.step,
    reason: "signal",
  });
  const ckpt = await loadCheckpoint(ckptPath, await loadExperiment(`${dir}/r.yaml`));
  const { epoch, batch, step } = ckpt.meta.state;
  assertEquals(log.lines.at(-1)?.step, step);
  ok(epoch === 0 && batch === step && step >= 2, "stopped mid-epoch, after the step in progress");
  ok(!(await exists(`${dir}/checkpoints/r.lock`)), "lock released");

  // --resume, with the run shortened to one epoch, finishes it.
  const finished = await train(dir, ["--resume", "--set", "training.epochs=1"]);
  assertEquals(finished.code, 0, finished.stderr);
  const done = readRunLog(`${run}/log.jsonl`);
  assertEquals(done.status, "finished");
  ok(done.evals.every((e, i) => i === 0 || Number(e.step) > Number(done.evals[i - 1].step)));

  // The run goes on (training.epochs back to 40). While it trains, the same run refuses, naming the lock and
  // its holder; another name is not held back by it.
  const term = start(dir, ["--resume"]);
  await term.until(/resumed from[^]*Ep \d+ \(Step/);
  const second = await train(dir, ["--resume"]);
  assertEquals(second.code, 2, second.stderr + second.stdout.slice(0, 3000));
  assertEquals(lines(second.stderr), [
    `error: checkpoints/r.lock: run r is already being trained by process ${term.child.pid}; ` +
    `wait for it or use another name (--set name=…)`,
  ]);
  const other = await train(dir, ["--resume", "--set", "name=other"]);
  assertEquals(lines(other.stderr), [
    "error: checkpoints/other/checkpoint.safetensors: no checkpoint to resume from",
  ]);
  // SIGTERM stops it as Ctrl-C does.
  term.kill("SIGTERM");
  assertEquals((await term.finish()).code, 130);
  assertEquals(readRunLog(`${run}/log.jsonl`).lines.at(-1)?.type, "interrupted");

  // A second Ctrl-C quits at once, wherever the first left it: the files stay readable.
  const twice = start(dir, ["--resume"]);
  await twice.until(/resumed from[^]*Ep \d+ \(Step/);
  twice.kill("SIGINT");
  await sleep(30);
  twice.kill("SIGINT");
  assertEquals((await twice.finish()).code, 130);
  ok(!(await exists(`${dir}/checkpoints/r.lock`)), "lock removed even on the way out");
  const kept = await loadCheckpoint(ckptPath);

  // What a killed process leaves: a half-written temporary checkpoint and its lock.
  await Deno.writeTextFile(`${ckptPath}.tmp-99999999`, "half a checkpoint");
  const dead = new Deno.Command("true").spawn();
  await dead.status;
  await Deno.writeTextFile(`${dir}/checkpoints/r.lock`, `${dead.pid}\n`);
  const last = await train(dir, [
    "--resume",
    "--set",
    `training.epochs=${kept.meta.state.epoch + 1}`,
  ]);
  assertEquals(last.code, 0, last.stderr);
  assertEquals(lines(last.stderr).filter((l) => !l.startsWith("ep ")), [
    `note: checkpoints/r.lock: taking over a stale lock of process ${dead.pid}`,
  ]);
  assertEquals(readRunLog(`${run}/log.jsonl`).status, "finished");
  assertEquals([...Deno.readDirSync(run)].map((e) => e.name).sort(), [
    "checkpoint.safetensors",
    "log.jsonl",
  ]);
  ok(!(await exists(`${dir}/checkpoints/r.lock`)));
});

Deno.test("kill -9 at 20 random moments: the checkpoint always loads, the log parses, and the resumed run equals an uninterrupted one", async () => {
  const yaml = "data: {batch_size: 4, train_ratio: 0.1}\n" + // 3 steps an epoch: many checkpoint writes
    "training: {epochs: 15, eval_freq: 2, eval_iter: 1}\n";
  const dir = await project(yaml);
  const cfg = await loadExperiment(`${dir}/r.yaml`);
  const run = `${dir}/checkpoints/r`, ckptPath = `${run}/checkpoint.safetensors`;
  const mayBeCut = new Set<string>(); // last lines at a kill: the only ones allowed to be cut short
  let kills = 0, checkpointsSeen = 0;
  // The kill moments scale with this machine's speed: the first process is killed just after its first
  // checkpoint appears, and how long that took sets the window of the other 19 (0.2 s to that time + 1 s).
  let window = 0;
  for (let i = 0; i < 20; i++) {
    const child = start(dir, [(await exists(ckptPath)) ? "--resume" : "--fresh"]);
    if (i === 0) {
      const t0 = performance.now();
      await waitFor(
        () => exists(ckptPath),
        () => `no checkpoint after 120 s:\n${child.out.stderr}`,
      );
      window = performance.now() - t0 + 1000;
      await sleep(Math.random() * 300);
    } else await sleep(200 + Math.random() * (window - 200));
    child.kill("SIGKILL");
    const { code } = await child.finish();
    if (code !== 0) kills++;
    const text = await Deno.readTextFile(`${run}/log.jsonl`).catch(() => "");
    const all = text.split("\n");
    if (all.at(-1) !== "") mayBeCut.add(all.at(-1)!);
    for (const l of lines(text)) {
      try {
        JSON.parse(l);
      } catch {
        ok(mayBeCut.has(l), `a broken log line that was not the last at a kill: ${l}`);
      }
    }
    if (await exists(ckptPath)) {
      await loadCheckpoint(ckptPath, cfg);
      checkpointsSeen++;
    }
  }
  ok(kills >= 10, `only ${kills} of 20 processes were still running when killed`);
  ok(checkpointsSeen > 0, "no kill came after a checkpoint");
  const last = await train(dir, [(await exists(ckptPath)) ? "--resume" : "--fresh"]);
  assertEquals(last.code, 0, last.stderr);
  const log = readRunLog(`${run}/log.jsonl`);
  assertEquals(log.status, "finished");
  ok(!(await exists(`${dir}/checkpoints/r.lock`)), "lock left behind");
  ok([...Deno.readDirSync(run)].every((e) => !e.name.includes(".tmp-")), "temp file left behind");

  // The same run straight through, in this process: every logged loss is the same.
  const ref = await runTraining(cfg, {
    checkpointsDir: `${dir}/straight`,
    print: () => {},
    progress: false,
  });
  const losses = (l: typeof log) => l.evals.map((e) => [e.step, e.train_loss, e.val_loss]);
  assertEquals(losses(log), losses(readRunLog(`${ref.runDir}/log.jsonl`)));
});

Deno.test("a non-finite loss: one error line, exit 2, no checkpoint written after it, the last good one kept", async () => {
  const dir = await project("data: {batch_size: 4}\ntraining: {epochs: 1}\n");
  const out = await train(dir, ["--set", "training.lr=1e30"]);
  assertEquals(out.code, 2);
  assertEquals(lines(out.stderr).length, 1, out.stderr);
  ok(
    /^error: r: loss became NaN at step 2; stopped, no checkpoint was written \(/.test(out.stderr),
    out.stderr,
  );
  assertEquals(readRunLog(`${dir}/checkpoints/r/log.jsonl`).lines.at(-1)?.type, "error");
  ok(!(await exists(`${dir}/checkpoints/r/checkpoint.safetensors`)));

  // A run with a good checkpoint whose parameters then overflow (here: an infinite position embedding).
  const cfg = await loadExperiment(`${dir}/r.yaml`, ["name=s"]);
  const opts = { checkpointsDir: `${dir}/checkpoints`, print: () => {}, progress: false };
  await runTraining(cfg, { ...opts, stopAfterSteps: 2 });
  const path = `${dir}/checkpoints/s/checkpoint.safetensors`;
  const ckpt = await loadCheckpoint(path);
  ckpt.params.find((p) => p.name === "pos_emb.weight")!.data.fill(Infinity);
  const optim = [...ckpt.optimizer].map(([name, t]) => ({ name, ...t }));
  await saveCheckpoint(path, ckpt.meta, ckpt.params, optim);
  const bytes = await Deno.readFile(path);
  await runTraining(cfg, { ...opts, resume: true }).then(
    () => ok(false, "expected a refusal"),
    (e) =>
      ok(
        e instanceof UserError &&
          e.message.startsWith(
            `s: loss became NaN at step 3; stopped, the last good checkpoint (step 2) is kept in ${path}`,
          ),
        e.message,
      ),
  );
  assertEquals(await Deno.readFile(path), bytes);
  assertEquals(readRunLog(`${dir}/checkpoints/s/log.jsonl`).lines.at(-1)?.type, "error");
});

Deno.test("the run lock: a live holder refuses, in this process or another; a file left by a dead one is taken over, whatever pid it names", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/r.lock`;
  const refuses = (pid: number) => {
    try {
      acquireRunLock(path, "r", () => {});
      ok(false, "expected a refusal");
    } catch (e) {
      ok(
        e instanceof UserError && e.message.includes(`already being trained by process ${pid}`),
        String(e),
      );
    }
  };
  // This process holds it: a second taker in the same process is refused.
  const release = acquireRunLock(path, "r");
  refuses(Deno.pid);
  release();
  release(); // twice is harmless
  ok(!(await exists(path)));
  // Another process holds it (a child that takes the lock and waits): refused, naming the child.
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { acquireRunLock } from "${new URL("../lib/runs/lock.ts", import.meta.url).href}";` +
      `acquireRunLock(${
        JSON.stringify(path)
      }, "r"); console.log("held"); await new Promise((r) => setTimeout(r, 60000));`,
    ],
    stdout: "piped",
  }).spawn();
  const reader = holder.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assertEquals((await reader.read()).value?.trim(), "held");
  refuses(holder.pid);
  // kill -9: the OS drops the holder's lock; the file it left, naming a pid, is taken over.
  holder.kill("SIGKILL");
  await holder.status;
  await reader.cancel();
  assertEquals((await Deno.readTextFile(path)).trim(), String(holder.pid));
  const notes: string[] = [];
  const again = acquireRunLock(path, "r", (s) => notes.push(s));
  assertEquals(notes, [`note: ${path}: taking over a stale lock of process ${holder.pid}`]);
  assertEquals((await Deno.readTextFile(path)).trim(), String(Deno.pid));
  again();
  // A file naming a live process that does not hold the lock (pid 1, or our own pid from a previous container)
  // is stale too.
  for (const pid of [1, Deno.pid]) {
    await Deno.writeTextFile(path, `${pid}\n`);
    const n: string[] = [];
    acquireRunLock(path, "r", (s) => n.push(s))();
    assertEquals(n, [`note: ${path}: taking over a stale lock of process ${pid}`]);
  }
});
