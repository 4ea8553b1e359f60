/**
 * A whole training run as `deno task train` performs it: text → loaders → model (fresh, seeded, or resumed from a
 * checkpoint) → `trainModelSimple` with a JSONL log, progress, checkpoints after every epoch and on Ctrl-C.
 * The flat sequence of nanoGPT's train.py, kept out of the task so tests can call it.
 */
import * as tf from "@tensorflow/tfjs-core";
import { AdamW } from "./adamw.ts";
import { type BackendChoice, initBackend } from "./backend.ts";
import { type Checkpoint, checkpointPath, loadCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { type Config, configHash } from "./config.ts";
import { createLoaders, type VerdictData } from "./data.ts";
import { UserError } from "./errors.ts";
import { initialParams } from "./load.ts";
import { GPTModel } from "./model.ts";
import { DropoutRng } from "./ops.ts";
import { formatDuration, Progress } from "./progress.ts";
import { acquireRunLock } from "./lock.ts";
import { RunLog } from "./runlog.ts";
import type { LrSchedule } from "./schedule.ts";
import {
  initialTrainState,
  NonFiniteLossError,
  trainModelSimple,
  type TrainState,
} from "./train.ts";

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

/** Builds loaders for the experiment's text and reports the book's data figures. */
export async function prepareData(cfg: Config): Promise<VerdictData> {
  const text = await loadText(cfg);
  return createLoaders(text, {
    trainRatio: cfg.data.train_ratio,
    batchSize: cfg.data.batch_size,
    contextLength: cfg.data.max_length ?? cfg.model.context_length,
    stride: cfg.data.stride ?? cfg.data.max_length ?? cfg.model.context_length,
    seed: cfg.training.seed,
    source: cfg.data.path,
  });
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
 * Runs (or resumes) an experiment's training to the end or until stopped, holding the run's lock
 * (checkpoints/<name>.lock) so that a second process of the same run refuses to start.
 */
export async function runTraining(cfg: Config, opts: RunOptions = {}): Promise<RunResult> {
  const dir = opts.checkpointsDir ?? "checkpoints";
  await Deno.mkdir(dir, { recursive: true }).catch((err) => {
    throw new UserError(
      `${dir}: cannot create the checkpoints directory (${
        err instanceof Error ? err.message : err
      })`,
    );
  });
  const release = acquireRunLock(`${dir}/${cfg.name}.lock`, cfg.name);
  try {
    // Temporary files of a write that a killed process never renamed: nobody else writes here while we hold the lock.
    for (const e of await Array.fromAsync(Deno.readDir(`${dir}/${cfg.name}`)).catch(() => [])) {
      if (e.isFile && e.name.includes(".tmp-")) await Deno.remove(`${dir}/${cfg.name}/${e.name}`);
    }
    return await trainUnlocked(cfg, opts);
  } finally {
    release();
  }
}

async function trainUnlocked(cfg: Config, opts: RunOptions): Promise<RunResult> {
  const print = opts.print ?? ((s: string) => console.log(s));
  const runDir = `${opts.checkpointsDir ?? "checkpoints"}/${cfg.name}`;
  const ckptPath = checkpointPath(runDir);
  const hasCheckpoint = await exists(ckptPath);
  if (opts.resume && !hasCheckpoint) {
    throw new UserError(`${ckptPath}: no checkpoint to resume from`);
  }
  if (!opts.resume && await exists(runDir)) {
    if (!opts.fresh) {
      throw new UserError(
        `${runDir}: holds an earlier run; pass --resume to continue it, or --fresh to start over ` +
          `(the earlier run is kept under a new name)`,
      );
    }
    const aside = `${runDir}.${new Date().toISOString().replace(/[:.]/g, "-")}`;
    await Deno.rename(runDir, aside);
    print(`moved the earlier run to ${aside}`);
  }

  const data = await prepareData(cfg);
  print(
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

  let ckpt: Checkpoint | null = null;
  let model: GPTModel;
  if (opts.resume) {
    ckpt = await loadCheckpoint(ckptPath, cfg);
    model = new GPTModel(cfg.model, ckpt.params);
  } else {
    const init = await initialParams(cfg);
    model = new GPTModel(cfg.model, init.params);
    print(`init: ${init.source}`);
  }
  print(`model: ${model.numParams().toLocaleString("en-US")} parameters`);
  const optimizer = new AdamW(model.params, {
    lr: cfg.training.lr,
    weightDecay: cfg.training.weight_decay,
  });
  const state = ckpt ? { ...ckpt.meta.state } : initialTrainState();
  const dropout = new DropoutRng(ckpt ? ckpt.meta.dropoutRng : cfg.training.seed);
  if (ckpt) {
    optimizer.loadStateTensors(ckpt.optimizer);
    optimizer.step = ckpt.meta.optimizer.step;
    print(`resumed from ${ckptPath} at epoch ${state.epoch + 1}, step ${state.step}`);
    ckpt = null; // let the host copies go
  }

  await Deno.mkdir(runDir, { recursive: true });
  const log = RunLog.open(`${runDir}/log.jsonl`);
  log.write({
    type: "header",
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
    await saveCheckpoint(
      ckptPath,
      {
        config: cfg,
        configHash: configHash(cfg),
        state: { ...state },
        optimizer: { step: optimizer.step, lr: optimizer.lr },
        dropoutRng: dropout.state,
        savedAt: new Date().toISOString(),
      },
      await model.toNamedParams(),
      await optimizer.stateTensors(),
    );
  };

  // Ctrl-C / SIGTERM: finish the current step, checkpoint, log, exit 130. A second signal exits at once.
  let stopRequested = false;
  const onSignal = () => {
    if (stopRequested) Deno.exit(130);
    stopRequested = true;
    progress.clear();
    console.error("\nstopping after this step (Ctrl-C again to quit at once)…");
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);

  const stepsPerEpoch = Math.floor(data.trainLoader.length / cfg.training.grad_accum_steps);
  if (stepsPerEpoch === 0) {
    throw new UserError(
      `${cfg.name}: training.grad_accum_steps: ${cfg.training.grad_accum_steps} exceeds the ` +
        `${data.trainLoader.length} train batches of an epoch`,
    );
  }
  const totalSteps = cfg.training.epochs * stepsPerEpoch;
  const schedule = lrSchedule(cfg, totalSteps);
  let lastGradNorm: number | null = null;
  const progress = new Progress(totalSteps);
  const startStep = state.step, t0 = performance.now();
  let lastTrain = NaN, lastVal = NaN, bestVal = Infinity;
  const elapsed = () => (performance.now() - t0) / 1000;
  const startTokens = state.tokensSeen;
  const tokensPerS = (s: TrainState) => (s.tokensSeen - startTokens) / elapsed();

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
        stopRequested || (opts.stopAfterSteps !== undefined && state.step >= opts.stopAfterSteps),
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
  } catch (err) {
    progress.clear();
    if (err instanceof NonFiniteLossError) {
      log.write({ type: "error", step: state.step, reason: err.message });
      log.close();
      throw new UserError(
        `${cfg.name}: ${err.message}; stopped, the last good checkpoint is ${ckptPath}`,
      );
    }
    log.write({ type: "error", step: state.step, reason: String(err) });
    log.close();
    throw err;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
  }

  progress.clear();
  if (!finished) {
    await save();
    log.write({
      type: "interrupted",
      step: state.step,
      reason: stopRequested ? "signal" : "step limit",
    });
  } else {
    const summary = {
      type: "summary",
      status: "finished",
      steps: state.step,
      tokens_seen: state.tokensSeen,
      final_train_loss: lastTrain,
      final_val_loss: lastVal,
      best_val_loss: bestVal,
      elapsed_s: elapsed(),
      tokens_per_s: tokensPerS(state),
    };
    log.write(summary);
    print(
      `Training completed in ${formatDuration(elapsed())} (${
        tokensPerS(state).toFixed(1)
      } tokens/s).`,
    );
  }
  log.close();
  const result: RunResult = {
    status: finished ? "finished" : "interrupted",
    runDir,
    backend,
    params: model.numParams(),
    state: { ...state },
    trainLoss: lastTrain,
    valLoss: lastVal,
    elapsedS: elapsed(),
  };
  optimizer.dispose();
  model.dispose();
  return result;
}
