/**
 * A whole training run as `deno task train` performs it: text → loaders → model (fresh, seeded, or resumed from a
 * checkpoint) → `trainModelSimple` with a JSONL log, progress, checkpoints after every epoch and on Ctrl-C.
 * The flat sequence of nanoGPT's train.py, kept out of the task so tests can call it: `trainUnlocked` reads as the
 * run's phases, each a function of its own module (run_dir.ts, run_data.ts, restore.ts, logged_loop.ts).
 */
import {
  type BackendChoice,
  initBackend,
  measuredPeak,
  usePrecision,
} from "../backends/backend.ts";
import { flopsPerToken, formatFlops, type MfuBasis } from "../train/mfu.ts";
import { readChoiceItems } from "../train/multiple_choice.ts";
import type { Checkpoint } from "../train/checkpoint.ts";
import type { Config } from "../config.ts";
import type { VerdictData } from "../data/data.ts";
import { UserError } from "../errors.ts";
import { GPTModel } from "../model/model.ts";
import { checkMemoryFits, preflight } from "../train/preflight.ts";
import { acquireRunLock } from "./lock.ts";
import { loggedLoop } from "./logged_loop.ts";
import {
  loadResumable,
  lrSchedule,
  restoreOrInit,
  resumedPrecision,
  type Trainee,
} from "./restore.ts";
import { checkRunDir, openRunDir } from "./run_dir.ts";
import { countOf } from "../progress.ts";
import { prepareData } from "./run_data.ts";
import { resolveSources } from "../data/source.ts";
import type { TrainState } from "../train/train.ts";

export { loadText, prepareData, shardDirOf } from "./run_data.ts";
export { lrSchedule } from "./restore.ts";

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
  precision: string; // how its products ran: "fp32", "bf16-mixed (…)" (usePrecision's phrase)
  params: number;
  state: TrainState;
  trainLoss: number;
  valLoss: number;
  elapsedS: number;
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

/**
 * The run's phases, in order: check the run directory (and the precision a resumed run keeps); load the data and the
 * checkpoint to resume from (every check that can refuse the run, before anything is written); the backend; restore
 * or initialise the trainee and set the precision of its products; open the run directory and its log; the logged
 * loop.
 */
async function trainUnlocked(cfg: Config, opts: RunOptions, lockPath: string): Promise<RunResult> {
  const print = opts.print ?? ((s: string) => console.log(s));
  const dir = await checkRunDir(cfg, opts, print);
  if (opts.resume) cfg = await resumedPrecision(dir.ckptPath, cfg, print);
  const sources = resolveSources(cfg); // the data sources, resolved once for the preflight and the data
  await preflight(cfg, sources);
  const choices = cfg.training.multiple_choice
    ? await readChoiceItems(cfg.training.multiple_choice)
    : undefined;
  const data = await prepareData(cfg, { progress: opts.progress, print }, sources);
  checkMemoryFits(cfg, "train"); // after the data's own checks (more to the point), before the model exists
  const stepsPerEpoch = stepsPerEpochOf(cfg, data);
  let ckpt: Checkpoint | null = opts.resume
    ? await loadResumable(dir.ckptPath, cfg, data, stepsPerEpoch)
    : null;
  print(dataSummary(cfg, data));
  const backend = await chooseBackend(cfg, print);
  const trainee = await restoreOrInit(cfg, ckpt, dir.ckptPath, print);
  ckpt = null; // let the host copies go
  const precision = choosePrecision(cfg, backend, trainee, print);
  const mfu = await mfuBasis(cfg, backend, print);
  const result = (
    end: { status: RunResult["status"]; t0: number; trainLoss: number; valLoss: number },
  ) => runResult(end, dir.runDir, { backend, precision }, trainee);
  if (opts.resume && trainee.state.epoch >= cfg.training.epochs) {
    print(
      `${cfg.name}: already trained for ${trainee.state.epoch} epochs (training.epochs is ` +
        `${cfg.training.epochs}); nothing to do. Resume with --set training.epochs=… to train longer`,
    );
    return result({ status: "finished", t0: performance.now(), trainLoss: NaN, valLoss: NaN });
  }
  if (opts.resume) {
    print(
      `resumed from ${dir.ckptPath} at epoch ${
        trainee.state.epoch + 1
      }, step ${trainee.state.step}`,
    );
  }

  // Everything is checked: from here on the run writes.
  const log = await openRunDir(cfg, dir, {
    backend,
    precision,
    params: trainee.model.numParams(),
    resumedFromStep: opts.resume ? trainee.state.step : null,
    mfu,
  }, print);
  const totalSteps = cfg.training.epochs * stepsPerEpoch;
  const end = await loggedLoop({
    cfg,
    data,
    log,
    schedule: lrSchedule(cfg, totalSteps),
    totalSteps,
    ckptPath: dir.ckptPath,
    lockPath,
    savedStep: opts.resume ? trainee.state.step : null,
    print,
    progress: opts.progress,
    stopAfterSteps: opts.stopAfterSteps,
    mfu,
    choices,
  }, trainee);
  return result({ ...end, status: end.finished ? "finished" : "interrupted" });
}

/** Optimizer steps in an epoch; refuses a `grad_accum_steps` larger than an epoch's batches. */
function stepsPerEpochOf(cfg: Config, data: VerdictData): number {
  const stepsPerEpoch = Math.floor(data.trainLoader.length / cfg.training.grad_accum_steps);
  if (stepsPerEpoch === 0) {
    throw new UserError(
      `${cfg.name}: training.grad_accum_steps: ${cfg.training.grad_accum_steps} exceeds the ` +
        `${data.trainLoader.length} train batches of an epoch`,
    );
  }
  return stepsPerEpoch;
}

/** The data's line of the run's prints. */
function dataSummary(cfg: Config, data: VerdictData): string {
  return data.summary ??
    `data: ${cfg.data.path}: ${data.chars} characters, ${data.tokens} tokens; ` +
      `train ${countOf(data.trainLoader.length, "batch")}, val ${
        countOf(data.valLoader.length, "batch")
      } ` +
      `of ${cfg.data.batch_size}×${cfg.data.max_length ?? cfg.model.context_length}`;
}

/** The config's backend (or the one `auto` picks for the model's size), printed with the reason. */
async function chooseBackend(cfg: Config, print: (line: string) => void): Promise<BackendChoice> {
  const backend = await initBackend(cfg.backend, {
    cfg: cfg.model,
    batchSize: cfg.data.batch_size,
    params: GPTModel.countParams(cfg.model),
  });
  print(`backend: ${backend.name} (${backend.reason})`);
  return backend;
}

/**
 * The config's precision on the chosen backend for the trainee's weights (usePrecision: bf16-mixed on cpu only),
 * printed as `precision: …` after the backend and model lines; the trainee is disposed when it is refused.
 */
function choosePrecision(
  cfg: Config,
  backend: BackendChoice,
  t: Trainee,
  print: (line: string) => void,
): string {
  try {
    const precision = usePrecision(cfg.precision, backend.name, [...t.model.params.values()]);
    print(`precision: ${precision}`);
    return precision;
  } catch (err) {
    t.optimizer.dispose();
    t.model.dispose();
    throw err;
  }
}

/** What the run's MFU counts against: its FLOPs a token and the measured peak of its products, printed. */
async function mfuBasis(
  cfg: Config,
  backend: BackendChoice,
  print: (line: string) => void,
): Promise<MfuBasis> {
  const peak = await measuredPeak(backend.name, cfg.precision);
  const perToken = flopsPerToken(cfg.model, cfg.data.max_length ?? cfg.model.context_length);
  print(
    `MFU: ${formatFlops(perToken)} a token over ${
      formatFlops(peak.flops)
    }/s, the ${cfg.precision} ` +
      `products of ${peak.device} (${peak.cached ? "cached" : "measured now"})`,
  );
  return { flopsPerToken: perToken, peakFlops: peak.flops, device: peak.device };
}

/** The run's result; disposes the trainee and sets the process's products back to fp32. */
function runResult(
  end: { status: RunResult["status"]; t0: number; trainLoss: number; valLoss: number },
  runDir: string,
  ran: { backend: BackendChoice; precision: string },
  t: Trainee,
): RunResult {
  const state: TrainState = { ...t.state };
  const r: RunResult = {
    status: end.status,
    runDir,
    ...ran,
    params: t.model.numParams(),
    state,
    trainLoss: end.trainLoss,
    valLoss: end.valLoss,
    elapsedS: (performance.now() - end.t0) / 1000,
  };
  t.optimizer.dispose();
  t.model.dispose();
  usePrecision("fp32", ran.backend.name, []);
  return r;
}
