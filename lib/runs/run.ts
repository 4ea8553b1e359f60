/**
 * A whole training run as `deno task train` performs it: text → loaders → model (fresh, seeded, or resumed from a
 * checkpoint) → `trainModelSimple` with a JSONL log, progress, checkpoints after every epoch and on Ctrl-C.
 * The flat sequence of nanoGPT's train.py, kept out of the task so tests can call it.
 */
import * as tf from "@tensorflow/tfjs-core";
import { AdamW } from "../train/adamw.ts";
import { type BackendChoice, initBackend } from "../backends/backend.ts";
import {
  type Checkpoint,
  checkpointPath,
  configDifferences,
  loadCheckpoint,
  saveCheckpoint,
} from "../train/checkpoint.ts";
import { type Config, configHash } from "../config.ts";
import { dataSourceKind, defaultShardDir, prepareCorpus } from "../data/corpus.ts";
import { createLoaders, type VerdictData } from "../data/data.ts";
import { UserError } from "../errors.ts";
import { initialParams } from "../train/load.ts";
import { GPTModel } from "../model/model.ts";
import { DropoutRng } from "../model/ops.ts";
import { formatDuration, Progress } from "../progress.ts";
import { acquireRunLock } from "./lock.ts";
import { RUN_LOG_SCHEMA, RunLog } from "./runlog.ts";
import { createShardLoaders, readIndex } from "../data/shards.ts";
import { learningRate, type LrSchedule } from "../train/schedule.ts";
import {
  initialTrainState,
  NonFiniteLossError,
  trainModelSimple,
  type TrainState,
} from "../train/train.ts";

/** How a run starts and where it writes. */
export interface RunOptions {
  resume?: boolean; // continue from checkpoints/<name>/checkpoint.safetensors
  fresh?: boolean; // move an earlier run's directory aside and start over
  checkpointsDir?: string; // default "checkpoints"
  print?: (line: string) => void; // the book's prints; default console.log
  progress?: boolean; // progress line on stderr; default true
  /** Stops the loop between steps (tests); Ctrl-C and SIGTERM do the same. */
  stopAfterSteps?: number;
}

/** What a finished or stopped run reports. */
export interface RunResult {
  status: "finished" | "interrupted";
  runDir: string;
  backend: BackendChoice;
  params: number;
  state: TrainState;
  trainLoss: number;
  valLoss: number;
  elapsedS: number;
}

/** Reads the experiment's text, downloading it from `data.url` first when the file is missing. */
export async function loadText(cfg: Config): Promise<string> {
  const path = cfg.data.path;
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new UserError(`${path}: data.path: cannot read (${err})`);
    }
    if (!cfg.data.url) {
      throw new UserError(`${path}: data.path: file not found and no data.url to download it from`);
    }
    bytes = await download(cfg.data.url, path);
  }
  if (bytes.length === 0) throw new UserError(`${path}: data.path: file is empty`);
  if (bytes.includes(0)) {
    throw new UserError(`${path}: data.path: looks binary (contains NUL bytes), expected text`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new UserError(`${path}: data.path: not valid UTF-8 text`);
  }
}

async function download(url: string, path: string): Promise<Uint8Array> {
  console.error(`${path} not found; downloading ${url}`);
  let bytes: Uint8Array;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(60_000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    bytes = new Uint8Array(await res.arrayBuffer());
  } catch (err) {
    throw new UserError(
      `${path}: data.path: file not found and the download from ${url} failed ` +
        `(${err instanceof Error ? err.message : err}); copy the file there by hand`,
    );
  }
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeFile(tmp, bytes);
  await Deno.rename(tmp, path);
  return bytes;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function gitCommit(): Promise<string | null> {
  try {
    const out = await new Deno.Command("git", { args: ["rev-parse", "HEAD"], stderr: "null" })
      .output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

/** Where a config's shards are: data.path itself when it is a shard directory, else data.shards or its default. */
export function shardDirOf(cfg: Config): string {
  return dataSourceKind(cfg.data.path) === "shards"
    ? cfg.data.path
    : cfg.data.shards ?? defaultShardDir(cfg.data.path);
}

/**
 * Builds loaders for the experiment's data and reports its figures. One text file: the book's character split and
 * in-memory loaders. A directory or glob of .txt files: prepared into shards first (a no-op when unchanged), then
 * streamed. A shard directory: streamed.
 */
export async function prepareData(
  cfg: Config,
  opts: { progress?: boolean; print?: (line: string) => void } = {},
): Promise<VerdictData> {
  const split = {
    trainRatio: cfg.data.train_ratio,
    batchSize: cfg.data.batch_size,
    contextLength: cfg.data.max_length ?? cfg.model.context_length,
    stride: cfg.data.stride ?? cfg.data.max_length ?? cfg.model.context_length,
    seed: cfg.training.seed,
    source: cfg.data.path,
  };
  const kind = dataSourceKind(cfg.data.path);
  if (kind === "text") return createLoaders(await loadText(cfg), split);
  const dir = shardDirOf(cfg);
  if (kind === "corpus") {
    const r = await prepareCorpus(cfg.data.path, {
      shardDir: dir,
      seed: cfg.training.seed,
      trainRatio: cfg.data.train_ratio,
      shardTokens: cfg.data.shard_tokens,
      progress: opts.progress,
      print: opts.print,
    });
    if (!r.upToDate) {
      (opts.print ?? console.error)(
        `prepared ${dir}: ${r.tokenized} files tokenized, ${r.reused} unchanged, ${r.skipped.length} skipped`,
      );
    }
  }
  return createShardLoaders(
    dir,
    readIndex(dir, cfg.model.vocab_size),
    split,
    cfg.data.shuffle_shards,
  );
}

/** Appendix D's schedule for the config (null: constant lr, the chapter-5 loop). */
export function lrSchedule(cfg: Config, totalSteps: number): LrSchedule | null {
  const t = cfg.training;
  if (t.warmup === 0 && t.lr_schedule === "constant") return null;
  const warmupSteps = t.warmup < 1
    ? Math.floor(t.warmup * totalSteps)
    : Math.min(t.warmup, totalSteps);
  return {
    peakLr: t.lr,
    initialLr: t.initial_lr ?? t.lr,
    minLr: t.min_lr,
    warmupSteps,
    totalSteps,
    cosine: t.lr_schedule === "cosine",
  };
}

/**
 * Ctrl-C and SIGTERM are watched from a worker thread: a training step keeps the main thread busy for seconds
 * (minutes on large models) and the loop awaits only between epochs, so a listener on the main thread would run
 * far too late. The first signal raises a flag that the loop reads between steps; a second one removes the run
 * lock and re-raises the signal with its default action, which ends the process at once (exit status 130 for
 * SIGINT, 143 for SIGTERM) wherever it was, even mid-write: checkpoints are renamed into place, so the previous
 * one stays whole, and the next start removes the temporary file.
 */
const SIGNAL_WORKER = `
const signals = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
let flag, lock;
const handlers = signals.map((sig) => [sig, () => {
  if (Atomics.exchange(flag, 0, 1) === 0) {
    console.error("\\nstopping after this step (Ctrl-C again to quit at once)…");
    return;
  }
  try {
    if (Number(Deno.readTextFileSync(lock).trim()) === Deno.pid) Deno.removeSync(lock);
  } catch { /* gone, or not ours */ }
  for (const [s, f] of handlers) Deno.removeSignalListener(s, f);
  try { Deno.kill(Deno.pid, sig); } catch { Deno.kill(Deno.pid, "SIGKILL"); }
}]);
self.onmessage = (e) => {
  flag = new Int32Array(e.data.flag);
  lock = e.data.lock;
  for (const [s, f] of handlers) Deno.addSignalListener(s, f);
  self.postMessage("ready");
};
`;

/** A stop request (Ctrl-C, SIGTERM), readable between steps while the main thread computes. */
interface StopSignal {
  requested(): boolean;
  close(): void;
}

async function watchSignals(lockPath: string): Promise<StopSignal> {
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const url = URL.createObjectURL(new Blob([SIGNAL_WORKER], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    await new Promise((resolve, reject) => {
      worker.onmessage = resolve;
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new Error(`signal watcher: ${e.message}`));
      };
      worker.postMessage({ flag: flag.buffer, lock: lockPath });
    });
  } catch (err) {
    worker.terminate();
    throw err;
  } finally {
    URL.revokeObjectURL(url);
  }
  return { requested: () => Atomics.load(flag, 0) !== 0, close: () => worker.terminate() };
}

/** The step of the first completed step whose lr differs between two schedules (null: none of the first `steps`). */
function scheduleChange(
  a: LrSchedule | null,
  b: LrSchedule | null,
  lr: number,
  steps: number,
): number | null {
  for (let s = 0; s < steps; s++) {
    if ((a ? learningRate(s, a) : lr) !== (b ? learningRate(s, b) : lr)) return s + 1;
  }
  return null;
}

/**
 * Refuses a checkpoint of another config. `training.epochs` alone may differ (extending or shortening a run is a
 * legitimate resume) as long as the learning rates of the steps already done stay what they were: a cosine decay
 * or a warmup given as a fraction depends on the total number of steps, so there it is refused too.
 */
export function checkResumable(
  path: string,
  saved: Config,
  cfg: Config,
  stepsPerEpoch: number,
  done: number,
) {
  const diff = configDifferences(saved, cfg).filter((d) => !d.startsWith("training.epochs:"));
  if (diff.length > 0) {
    throw new UserError(
      `${path}: checkpoint is from another config (${diff.slice(0, 3).join(", ")}${
        diff.length > 3 ? ", …" : ""
      }); resume with its settings, or use another name or --fresh`,
    );
  }
  const before = saved.training.epochs, now = cfg.training.epochs;
  if (before === now) return;
  const changed = scheduleChange(
    lrSchedule(saved, before * stepsPerEpoch),
    lrSchedule(cfg, now * stepsPerEpoch),
    cfg.training.lr,
    done,
  );
  if (changed !== null) {
    throw new UserError(
      `${path}: training.epochs: ${before} → ${now} changes the learning rate of step ${changed}, which is ` +
        `already done (the schedule depends on the total number of steps); resume with epochs ${before}, ` +
        `or start a new run (--fresh or --set name=…)`,
    );
  }
}

/** Whether every value of `params` is finite. */
function allFinite(params: { data: Float32Array }[]): boolean {
  for (const p of params) {
    for (let i = 0; i < p.data.length; i++) if (!Number.isFinite(p.data[i])) return false;
  }
  return true;
}

/**
 * Runs (or resumes) an experiment's training to the end or until stopped, holding the run's lock
 * (`<checkpointsDir>/<name>.lock`) so that a second process of the same run refuses to start. Every check that can
 * fail on bad input (data, backend, checkpoint, config) runs before anything on disk is touched.
 */
export async function runTraining(cfg: Config, opts: RunOptions = {}): Promise<RunResult> {
  const dir = opts.checkpointsDir ?? "checkpoints";
  // Synchronous up to the lock: of two runs of one name started in turn, the first always gets it.
  try {
    Deno.mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new UserError(
      `${dir}: cannot create the checkpoints directory (${
        err instanceof Error ? err.message : err
      })`,
    );
  }
  const lockPath = `${dir}/${cfg.name}.lock`;
  const release = acquireRunLock(lockPath, cfg.name);
  try {
    // Temporary files of a write that a killed process never renamed: nobody else writes here while we hold the lock.
    for (const e of await Array.fromAsync(Deno.readDir(`${dir}/${cfg.name}`)).catch(() => [])) {
      if (e.isFile && e.name.includes(".tmp-")) await Deno.remove(`${dir}/${cfg.name}/${e.name}`);
    }
    return await trainUnlocked(cfg, opts, lockPath);
  } finally {
    release();
  }
}

async function trainUnlocked(cfg: Config, opts: RunOptions, lockPath: string): Promise<RunResult> {
  const print = opts.print ?? ((s: string) => console.log(s));
  const runDir = `${opts.checkpointsDir ?? "checkpoints"}/${cfg.name}`;
  const ckptPath = checkpointPath(runDir);
  const hasCheckpoint = await exists(ckptPath);
  if (opts.resume && !hasCheckpoint) {
    throw new UserError(`${ckptPath}: no checkpoint to resume from`);
  }
  const earlier = !opts.resume && await exists(runDir);
  if (earlier && !opts.fresh) {
    throw new UserError(
      `${runDir}: holds an earlier run; pass --resume to continue it, or --fresh to start over ` +
        `(the earlier run is kept under a new name)`,
    );
  }

  const data = await prepareData(cfg, { progress: opts.progress, print });
  const stepsPerEpoch = Math.floor(data.trainLoader.length / cfg.training.grad_accum_steps);
  if (stepsPerEpoch === 0) {
    throw new UserError(
      `${cfg.name}: training.grad_accum_steps: ${cfg.training.grad_accum_steps} exceeds the ` +
        `${data.trainLoader.length} train batches of an epoch`,
    );
  }
  let ckpt: Checkpoint | null = null;
  if (opts.resume) {
    ckpt = await loadCheckpoint(ckptPath);
    checkResumable(ckptPath, ckpt.meta.config, cfg, stepsPerEpoch, ckpt.meta.state.step);
    const was = ckpt.meta.data?.fingerprint ?? null, now = data.fingerprint ?? null;
    if (was !== now) {
      throw new UserError(
        `${ckptPath}: the data changed since this checkpoint (${
          ckpt.meta.data?.source ?? cfg.data.path
        }: ` +
          `${was ?? "none"} → ${now ?? "none"}), so its data position means other windows; ` +
          `restore the corpus, or start a new run (--fresh or --set name=…)`,
      );
    }
  }
  print(
    data.summary ??
      `data: ${cfg.data.path}: ${data.chars} characters, ${data.tokens} tokens; ` +
        `train ${data.trainLoader.length} batches, val ${data.valLoader.length} batches ` +
        `of ${cfg.data.batch_size}×${cfg.data.max_length ?? cfg.model.context_length}`,
  );

  const nParams = GPTModel.countParams(cfg.model);
  const backend = await initBackend(cfg.backend, {
    cfg: cfg.model,
    batchSize: cfg.data.batch_size,
    params: nParams,
  });
  print(`backend: ${backend.name} (${backend.reason})`);

  let model: GPTModel;
  const optimizerOptions = { lr: cfg.training.lr, weightDecay: cfg.training.weight_decay };
  let optimizer: AdamW;
  if (ckpt) {
    try {
      model = new GPTModel(cfg.model, ckpt.params);
    } catch (err) {
      throw new UserError(`${ckptPath}: damaged checkpoint: ${(err as Error).message}`);
    }
    optimizer = new AdamW(model.params, optimizerOptions);
    try {
      optimizer.loadStateTensors(ckpt.optimizer);
    } catch (err) {
      optimizer.dispose();
      model.dispose();
      throw new UserError(`${ckptPath}: damaged checkpoint: ${(err as Error).message}`);
    }
    optimizer.step = ckpt.meta.optimizer.step;
  } else {
    const init = await initialParams(cfg);
    model = new GPTModel(cfg.model, init.params);
    optimizer = new AdamW(model.params, optimizerOptions);
    print(`init: ${init.source}`);
  }
  print(`model: ${model.numParams().toLocaleString("en-US")} parameters`);
  const state = ckpt ? { ...ckpt.meta.state } : initialTrainState();
  const dropout = new DropoutRng(ckpt ? ckpt.meta.dropoutRng : cfg.training.seed);
  let savedStep = ckpt ? state.step : null;
  ckpt = null; // let the host copies go
  const elapsedSince = (t: number) => (performance.now() - t) / 1000;
  const result = (status: RunResult["status"], t0: number, train = NaN, val = NaN) => {
    const r: RunResult = {
      status,
      runDir,
      backend,
      params: model.numParams(),
      state: { ...state },
      trainLoss: train,
      valLoss: val,
      elapsedS: elapsedSince(t0),
    };
    optimizer.dispose();
    model.dispose();
    return r;
  };
  if (opts.resume && state.epoch >= cfg.training.epochs) {
    print(
      `${cfg.name}: already trained for ${state.epoch} epochs (training.epochs is ` +
        `${cfg.training.epochs}); nothing to do. Resume with --set training.epochs=… to train longer`,
    );
    return result("finished", performance.now());
  }
  if (opts.resume) {
    print(`resumed from ${ckptPath} at epoch ${state.epoch + 1}, step ${state.step}`);
  }

  // Everything is checked: from here on the run writes.
  if (earlier) {
    const aside = `${runDir}.${new Date().toISOString().replace(/[:.]/g, "-")}`;
    await Deno.rename(runDir, aside);
    print(`moved the earlier run to ${aside}`);
  }
  await Deno.mkdir(runDir, { recursive: true });
  const logPath = `${runDir}/log.jsonl`;
  await endLastLine(logPath);
  const log = RunLog.open(logPath);
  log.write({
    type: "header",
    schema_version: RUN_LOG_SCHEMA,
    engine: "gpt-ts",
    experiment: cfg.name,
    run: cfg.name,
    config: cfg,
    config_hash: configHash(cfg),
    seed: cfg.training.seed,
    backend: backend.name,
    backend_reason: backend.reason,
    params: model.numParams(),
    versions: { deno: Deno.version.deno, tfjs: tf.version_core },
    git_commit: await gitCommit(),
    start_time: new Date().toISOString(),
    resumed_from_step: opts.resume ? state.step : null,
  });

  const save = async () => {
    const params = await model.toNamedParams();
    // An update can overflow without the loss showing it yet: never replace a good checkpoint with a broken one.
    if (!allFinite(params)) {
      throw new NonFiniteLossError(`parameters became non-finite at step ${state.step}`);
    }
    try {
      await saveCheckpoint(
        ckptPath,
        {
          config: cfg,
          configHash: configHash(cfg),
          state: { ...state },
          optimizer: { step: optimizer.step, lr: optimizer.lr },
          dropoutRng: dropout.state,
          savedAt: new Date().toISOString(),
          data: {
            source: data.source ?? cfg.data.path,
            fingerprint: data.fingerprint ?? null,
            epoch: state.epoch,
            batch: state.batch,
            batchesPerEpoch: data.trainLoader.length,
          },
        },
        params,
        await optimizer.stateTensors(),
      );
    } catch (err) {
      if (err instanceof UserError) throw err;
      throw new UserError(
        `${ckptPath}: cannot write the checkpoint (${(err as Error).message}); ` +
          `the previous one is unchanged`,
      );
    }
    savedStep = state.step;
  };

  const totalSteps = cfg.training.epochs * stepsPerEpoch;
  const schedule = lrSchedule(cfg, totalSteps);
  let lastGradNorm: number | null = null;
  const progress = new Progress(totalSteps);
  const startStep = state.step, t0 = performance.now();
  let lastTrain = NaN, lastVal = NaN, bestVal = Infinity;
  const elapsed = () => elapsedSince(t0);
  const startTokens = state.tokensSeen;
  const tokensPerS = (s: TrainState) => (s.tokensSeen - startTokens) / elapsed();

  const stop = await watchSignals(lockPath);
  let finished = false;
  try {
    finished = await trainModelSimple(model, data.trainLoader, data.valLoader, optimizer, state, {
      numEpochs: cfg.training.epochs,
      evalFreq: cfg.training.eval_freq,
      evalIter: cfg.training.eval_iter,
      startContext: cfg.training.start_context,
      dropout,
      schedule,
      maxGradNorm: cfg.training.max_grad_norm,
      gradAccumSteps: cfg.training.grad_accum_steps,
    }, {
      shouldStop: () =>
        stop.requested() ||
        (opts.stopAfterSteps !== undefined && state.step >= opts.stopAfterSteps),
      onStep: (s, loss, gradNorm) => {
        lastGradNorm = gradNorm;
        if (opts.progress === false) return;
        const rate = (s.step - startStep) / elapsed();
        progress.update({
          epoch: s.epoch + 1,
          epochs: cfg.training.epochs,
          step: s.step,
          loss,
          tokensPerS: tokensPerS(s),
          etaS: (totalSteps - s.step) / rate,
        });
      },
      onEval: (s, trainLoss, valLoss) => {
        for (const [what, v] of [["train", trainLoss], ["val", valLoss]] as const) {
          if (!Number.isFinite(v)) {
            throw new NonFiniteLossError(`${what} loss became ${v} at step ${s.step} (evaluation)`);
          }
        }
        lastTrain = trainLoss, lastVal = valLoss, bestVal = Math.min(bestVal, valLoss);
        progress.clear();
        print(
          `Ep ${s.epoch + 1} (Step ${String(s.step).padStart(6, "0")}): ` +
            `Train loss ${trainLoss.toFixed(3)}, Val loss ${valLoss.toFixed(3)}`,
        );
        log.write({
          type: "eval",
          epoch: s.epoch + 1,
          step: s.step,
          tokens_seen: s.tokensSeen,
          train_loss: trainLoss,
          val_loss: valLoss,
          lr: optimizer.lr,
          grad_norm: lastGradNorm,
          elapsed_s: elapsed(),
          tokens_per_s: tokensPerS(s),
        });
      },
      onEpochEnd: async (s, sample) => {
        progress.clear();
        print(sample);
        log.write({ type: "sample", epoch: s.epoch, step: s.step, text: sample });
        await save();
        log.write({
          type: "epoch",
          epoch: s.epoch,
          step: s.step,
          tokens_seen: s.tokensSeen,
          elapsed_s: elapsed(),
        });
      },
    });
    progress.clear();
    if (!finished) await save();
  } catch (err) {
    progress.clear();
    const reason = err instanceof Error ? err.message : String(err);
    log.write({ type: "error", step: state.step, reason });
    log.close();
    optimizer.dispose();
    model.dispose();
    if (err instanceof NonFiniteLossError) {
      throw new UserError(
        `${cfg.name}: ${reason}; stopped, ` + (savedStep === null
          ? "no checkpoint was written"
          : `the last good checkpoint (step ${savedStep}) is kept in ${ckptPath}`) +
          ` (a smaller training.lr, or training.max_grad_norm, may help)`,
      );
    }
    throw err;
  } finally {
    stop.close();
  }

  if (!finished) {
    const reason = stop.requested() ? "signal" : "step limit";
    log.write({ type: "interrupted", step: state.step, reason });
    print(
      `interrupted at step ${state.step} (${reason}); checkpoint written to ${ckptPath}; ` +
        `continue with --resume`,
    );
  } else {
    log.write({
      type: "summary",
      status: "finished",
      steps: state.step,
      tokens_seen: state.tokensSeen,
      final_train_loss: lastTrain,
      final_val_loss: lastVal,
      best_val_loss: bestVal,
      elapsed_s: elapsed(),
      tokens_per_s: tokensPerS(state),
    });
    print(
      `Training completed in ${formatDuration(elapsed())} (${
        tokensPerS(state).toFixed(1)
      } tokens/s).`,
    );
  }
  log.close();
  return result(finished ? "finished" : "interrupted", t0, lastTrain, lastVal);
}

/** Ends a log whose last line a killed process cut short, so the next line starts on a line of its own. */
async function endLastLine(path: string): Promise<void> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true, write: true });
  } catch {
    return; // no log yet
  }
  try {
    const size = (await file.stat()).size;
    if (size === 0) return;
    const last = new Uint8Array(1);
    await file.seek(size - 1, Deno.SeekMode.Start);
    await file.read(last);
    if (last[0] !== 0x0a) {
      await file.seek(0, Deno.SeekMode.End);
      await file.write(new Uint8Array([0x0a]));
    }
  } finally {
    file.close();
  }
}
