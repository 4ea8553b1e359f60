/**
 * Interruptions and crashes, with `deno task train` run as a subprocess under the task's own permissions:
 * Ctrl-C stops mid-epoch after the current step, checkpoints and exits 130; SIGTERM does the same; a second
 * Ctrl-C quits at once, even mid-write, without writing; a second trainer of the same run refuses while another
 * name is free; leftovers of a killed process (temporary file, stale lock) are cleaned; kill -9 at 20 moments of
 * the processes' own progress never leaves a checkpoint that fails to load or a log that fails to parse, and the
 * resumed run ends bit-identical to an uninterrupted one; a non-finite loss stops the run with one line and keeps
 * the last good checkpoint.
 *
 * No step waits for a time: each waits for an event (a line on stdout or stderr, bytes of a checkpoint write, an
 * exit). Where a process must not get past a point before the test acts on it, a named pipe (FIFO) sits at the
 * temporary path of its checkpoint write (`checkpoint.safetensors.tmp-<pid>`, made before the process starts): the
 * write blocks in the middle until the test reads, so the process is still running when the signal comes, on any
 * machine at any load. Timers only guard against hangs.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { loadCheckpoint, saveCheckpoint } from "../lib/train/checkpoint.ts";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { acquireRunLock } from "../lib/runs/lock.ts";
import { runTraining } from "../lib/runs/run.ts";
import { REPEAT_MS } from "../lib/runs/signals.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, readFromFifo, tempDir } from "./_helpers.ts";

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
// Exact results (losses, the NaN's step) are those of one backend: pinned, so that `auto` on a machine with a
// GPU does not quietly test another one.
const MODEL = "backend: cpu\nmodel: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\n";
/** How long a wait may last before the test calls it a hang (no assertion depends on it). */
const HANG_MS = 600_000;

/** A temp project: r.yaml and data/the-verdict.txt. */
async function project(yaml: string): Promise<string> {
  const dir = tempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/r.yaml`, MODEL + yaml);
  return dir;
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
const lines = (s: string) => s.split("\n").filter((l) => l.trim() !== "");
const sha256 = async (p: string) =>
  createHash("sha256").update(await Deno.readFile(p)).digest("hex");
const randomInt = (n: number) => Math.floor(Math.random() * n);

/** `promise`, or a rejection naming `what` (and calling `onHang`) once it has taken {@link HANG_MS}. */
async function guard<T>(promise: Promise<T>, what: () => string, onHang = () => {}): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onHang();
      reject(new Error(`hang: ${what()}`));
    }, HANG_MS);
  });
  try {
    return await Promise.race([promise, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts `deno task train r.yaml …` in `dir`, collecting its output as it comes. With `fifo`, a named pipe is made
 * at `<fifo>.tmp-<pid>` before the trainer starts (the shell execs it, keeping its pid): its first write of the
 * checkpoint at `fifo` then blocks in the middle until the test reads it (see {@link readFromWrite}). `via`
 * replaces the `deno run` command line before `r.yaml` (e.g. `deno task train` in a process group of its own).
 */
function start(dir: string, args: string[], fifo?: string, via?: string[]) {
  const deno = [...via ?? [Deno.execPath(), "run", ...PERMISSIONS, TRAIN], "r.yaml", ...args];
  const child = new Deno.Command(fifo ? "sh" : deno[0], {
    args: fifo
      ? ["-c", 'mkfifo "$1.tmp-$$" && shift && exec "$@"', "sh", fifo, ...deno]
      : deno.slice(1),
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = { stdout: "", stderr: "" };
  const waiters = new Set<() => void>();
  const drain = async (s: ReadableStream<Uint8Array>, k: keyof typeof out) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) {
      out[k] += t;
      for (const w of waiters) w();
    }
  };
  const drained = Promise.all([drain(child.stdout, "stdout"), drain(child.stderr, "stderr")]);
  const status = child.status;
  const tell = () => `pid ${child.pid}\nstdout:\n${out.stdout}\nstderr:\n${out.stderr}`;
  return {
    child,
    out,
    tmp: fifo ? `${fifo}.tmp-${child.pid}` : "",
    /** Resolves when `re` matches the output so far (stdout, or `stream`); rejects if the process ends first. */
    until(re: RegExp, stream: keyof typeof out = "stdout"): Promise<void> {
      let wake = () => {};
      const seen = new Promise<void>((resolve) => {
        wake = () => re.test(out[stream]) && resolve();
        waiters.add(wake);
        wake();
      });
      const ended = drained.then(() => {
        if (!re.test(out[stream])) throw new Error(`no ${re} on ${stream}; ${tell()}`);
      });
      return guard(Promise.race([seen, ended]), () => `no ${re} on ${stream}; ${tell()}`)
        .finally(() => waiters.delete(wake));
    },
    kill(signal: Deno.Signal) {
      try {
        child.kill(signal);
      } catch { /* already exited */ }
    },
    /** Waits for the exit: code, the signal that ended it (null when it exited by itself) and its output. */
    async finish() {
      const s = await guard(status, () => `no exit; ${tell()}`, () => this.kill("SIGKILL"));
      await drained;
      return { code: s.code, signal: s.signal, ...out };
    },
    tell,
  };
}

const train = (dir: string, args: string[]) => start(dir, args).finish();

/**
 * Waits until the process `p` (started with a FIFO) is in the middle of its checkpoint write, `bytes` or more of it
 * read from the pipe: the writer is then blocked on the rest. Rejects, with its output, if it exits first.
 */
async function readFromWrite(p: ReturnType<typeof start>, bytes: number): Promise<Deno.FsFile> {
  await p.until(/\S/); // its shell has made the FIFO and exec'd the trainer, which prints
  return await guard(readFromFifo(p.tmp, p.child, bytes, p.tell), () => `no write; ${p.tell()}`);
}

Deno.test("Ctrl-C stops mid-epoch, checkpoints, exits 130; the lock refuses a second trainer; SIGTERM, a second Ctrl-C and leftovers are handled; --resume finishes", async () => {
  const dir = await project(
    "data: {batch_size: 4, train_ratio: 0.5}\ntraining: {epochs: 40, eval_freq: 2, eval_iter: 1}\n",
  );
  const run = `${dir}/checkpoints/r`, ckptPath = `${run}/checkpoint.safetensors`;
  const first = start(dir, []);
  await first.until(/Ep 1 \(Step 000002\)/);
  first.kill("SIGINT");
  const stopped = await first.finish();
  assertEquals([stopped.code, stopped.signal], [130, null], stopped.stderr);
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
  // It stops after the step in progress, wherever the signal found it: the checkpoint holds that step's place in
  // its epoch (mid-epoch, unless the stop fell exactly on an epoch's end), not the epoch's start.
  const perEpoch = ckpt.meta.data!.batchesPerEpoch;
  ok(step >= 2, `stopped at step ${step}`);
  assertEquals([epoch, batch], [Math.floor(step / perEpoch), step % perEpoch]);
  ok(!(await exists(`${dir}/checkpoints/r.lock`)), "lock released");

  // --resume, with the run shortened to one epoch, finishes it.
  const finished = await train(dir, ["--resume", "--set", `training.epochs=${epoch + 1}`]);
  assertEquals(finished.code, 0, finished.stderr);
  const done = readRunLog(`${run}/log.jsonl`);
  assertEquals(done.status, "finished");
  ok(done.evals.every((e, i) => i === 0 || Number(e.step) > Number(done.evals[i - 1].step)));

  // The run goes on (training.epochs back to 40). While it trains, the same run refuses, naming the lock and
  // its holder; another name is not held back by it. The holder is stopped (SIGSTOP) while the others try, so it
  // holds the lock however fast it would otherwise train to its end.
  const term = start(dir, ["--resume"]);
  await term.until(/resumed from[^]*Ep \d+ \(Step/);
  term.kill("SIGSTOP");
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
  term.kill("SIGCONT");
  const termed = await term.finish();
  assertEquals([termed.code, termed.signal], [130, null], termed.stderr);
  assertEquals(readRunLog(`${run}/log.jsonl`).lines.at(-1)?.type, "interrupted");

  // A second Ctrl-C quits at once, even in the middle of the checkpoint write the first one asked for: the process
  // dies of the signal, no checkpoint is renamed into place (the previous one is unchanged and loads), the log
  // records no stop, and the lock is removed. The write is held mid-way by a FIFO at its temporary path.
  const before = await sha256(ckptPath), logBefore = await Deno.readTextFile(`${run}/log.jsonl`);
  const twice = start(dir, ["--resume"], ckptPath);
  await twice.until(/resumed from[^]*Ep \d+ \(Step/);
  twice.kill("SIGINT");
  await twice.until(/stopping after this step/, "stderr"); // handled, so the next one is a second
  const handled = performance.now();
  const pipe = await readFromWrite(
    twice,
    1 + randomInt((await Deno.stat(ckptPath)).size - (1 << 17)),
  );
  // A signal within REPEAT_MS of the first is that press's copy (see the `deno task` test below). The writer is
  // held by the FIFO, so letting the window pass here races with nothing.
  await new Promise((r) =>
    setTimeout(r, Math.max(0, REPEAT_MS + 50 - (performance.now() - handled)))
  );
  twice.kill("SIGINT");
  const quit = await twice.finish();
  pipe.close();
  assertEquals([quit.code, quit.signal], [130, "SIGINT"], twice.tell());
  ok(!(await exists(`${dir}/checkpoints/r.lock`)), "lock removed even on the way out");
  assertEquals(await sha256(ckptPath), before, "a checkpoint was written after the second Ctrl-C");
  const kept = await loadCheckpoint(ckptPath);
  const added = (await Deno.readTextFile(`${run}/log.jsonl`)).slice(logBefore.length);
  ok(lines(added).every((l) => !/"type":"(interrupted|epoch)"/.test(l)), added);
  await Deno.remove(twice.tmp); // the test's FIFO; a killed process's real temporary file is tested next

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

Deno.test("a terminal's Ctrl-C under `deno task` (its process group signalled, deno task forwarding a copy) is one Ctrl-C: the step ends, a checkpoint is written, exit 130", async () => {
  const dir = await project(
    "data: {batch_size: 4, train_ratio: 0.5}\ntraining: {epochs: 40, eval_freq: 2, eval_iter: 1}\n",
  );
  // deno.json's own train task line, with the repository's config and script named absolutely.
  const root = new URL("..", import.meta.url).pathname;
  const line = JSON.parse(await Deno.readTextFile(`${root}deno.json`)).tasks.train as string;
  const task = line.replace("deno run", `deno run --config ${root}deno.json`)
    .replace("tasks/train.ts", TRAIN);
  await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify({ tasks: { train: task } }));
  // setsid: the task and its child in a process group of their own, as a terminal's foreground job is.
  const job = start(dir, [], undefined, ["setsid", Deno.execPath(), "task", "train"]);
  await job.until(/Ep 1 \(Step 000002\)/);
  const kill = ["-s", "INT", "--", `-${job.child.pid}`]; // the whole group, as the terminal does
  assertEquals((await new Deno.Command("kill", { args: kill }).output()).code, 0);
  const stopped = await job.finish();
  assertEquals([stopped.code, stopped.signal], [130, null], job.tell());
  ok(stopped.stderr.includes("stopping after this step"), stopped.stderr);
  const run = `${dir}/checkpoints/r`;
  assertEquals(readRunLog(`${run}/log.jsonl`).lines.at(-1)?.type, "interrupted");
  await loadCheckpoint(`${run}/checkpoint.safetensors`);
});

/** Where a process that resumed at an epoch's start is killed: at a line it prints, or mid-way through its write. */
type KillPhase = "resumed" | "step 1" | "step 2" | "step 3" | "sample" | "write";

Deno.test("kill -9 at 20 moments of the processes' own progress: the checkpoint always loads, the log parses, and the resumed run equals an uninterrupted one", async () => {
  const epochs = 3, steps = 3; // train_ratio 0.1: 3 steps an epoch, each followed by an evaluation
  const yaml = "data: {batch_size: 4, train_ratio: 0.1}\n" +
    `training: {epochs: ${epochs}, eval_freq: 1, eval_iter: 1}\n`;
  const dir = await project(yaml);
  const cfg = await loadExperiment(`${dir}/r.yaml`);
  const run = `${dir}/checkpoints/r`, ckptPath = `${run}/checkpoint.safetensors`;
  const mayBeCut = new Set<string>(); // last lines at a kill: the only ones allowed to be cut short
  /** After each process: every log line parses (but a last one cut by a kill) and the checkpoint loads. */
  const check = async () => {
    const text = await Deno.readTextFile(`${run}/log.jsonl`);
    const all = text.split("\n");
    if (all.at(-1) !== "") mayBeCut.add(all.at(-1)!);
    for (const l of lines(text)) {
      try {
        JSON.parse(l);
      } catch {
        ok(mayBeCut.has(l), `a broken log line that was not the last at a kill: ${l}`);
      }
    }
    const { meta } = await loadCheckpoint(ckptPath);
    assertEquals(meta.state.step, meta.state.epoch * steps); // written at an epoch's end, never a killed one's
  };
  // Each epoch is trained by a process that runs to its end (training.epochs one more than the checkpoint's) and
  // is not killed; between them, processes of the whole run resume from that checkpoint and are killed, each at a
  // phase drawn in advance and met by watching it: at a line it prints (before its first step, after step 1, 2 or
  // 3 of the epoch, after the epoch's sample) or after a random number of bytes of its checkpoint write. A FIFO at
  // the write's temporary path holds each such process before it can rename a checkpoint or finish, so every one
  // of the 20 is running when killed.
  const phases: KillPhase[] = [
    ...["resumed", "step 1", "step 2", "step 2", "step 3", "step 3", "sample"] as const,
    ...["write", "write", "write"] as const,
  ];
  let kills = 0;
  for (let epoch = 0; epoch < epochs; epoch++) {
    const through = await train(dir, [
      ...(epoch === 0 ? [] : ["--resume"]),
      "--set",
      `training.epochs=${epoch + 1}`,
    ]);
    assertEquals(through.code, 0, through.stderr);
    await check();
    if (epoch === epochs - 1) break;
    const saved = await sha256(ckptPath);
    const order = phases.map((p) => [Math.random(), p] as const).sort().map(([, p]) => p);
    for (const phase of order) { // 10 kills after each of the first 2 epochs
      const p = start(dir, ["--resume"], ckptPath);
      const at = `kill ${kills + 1} (${phase}, epoch ${epoch + 2})`;
      let pipe: Deno.FsFile | null = null;
      if (phase === "write") {
        pipe = await readFromWrite(p, 1 + randomInt((await Deno.stat(ckptPath)).size - (1 << 17)));
      } else if (phase === "resumed") await p.until(/resumed from/);
      else if (phase === "sample") await p.until(/\(Step \d+\)[^]*\nEvery effort moves you/);
      else {
        const step = (epoch + 1) * steps + Number(phase.slice(5));
        await p.until(new RegExp(`\\(Step ${String(step).padStart(6, "0")}\\)`));
      }
      p.kill("SIGKILL");
      const killed = await p.finish();
      pipe?.close();
      assertEquals(killed.signal, "SIGKILL", `${at}: ${p.tell()}`);
      kills++;
      await check();
      assertEquals(await sha256(ckptPath), saved, `${at}: the checkpoint changed`);
      await Deno.remove(p.tmp);
      const left = [...Deno.readDirSync(run)].filter((e) => e.name.includes(".tmp-"));
      assertEquals(left, [], `${at}: a temporary file besides the FIFO`);
    }
  }
  assertEquals(kills, 20);
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
  assertEquals(losses(log).length, epochs * steps);
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
  const dir = tempDir();
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
