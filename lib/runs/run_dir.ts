/**
 * A run's directory, `<checkpointsDir>/<name>/`: which start it allows (fresh, resume, an earlier run to move aside),
 * checked before anything is written; then, once every check has passed, the earlier run moved aside and the log
 * opened with its header.
 */
import type { MfuBasis } from "../train/mfu.ts";
import * as tf from "@tensorflow/tfjs-core";
import type { BackendChoice } from "../backends/backend.ts";
import { checkpointPath } from "../train/checkpoint.ts";
import { type Config, configHash } from "../config.ts";
import { UserError } from "../errors.ts";
import { RUN_LOG_SCHEMA, RunLog } from "./runlog.ts";

/** Where a run writes, and whether an earlier run of its name is to be moved aside. */
export interface RunDir {
  runDir: string;
  ckptPath: string;
  earlier: boolean; // an earlier run's directory, to move aside (--fresh)
}

/** Checks that the start asked for (`resume`, `fresh`, neither) fits what the directory holds; writes nothing. */
export async function checkRunDir(
  cfg: Config,
  opts: { resume?: boolean; fresh?: boolean; checkpointsDir?: string },
  print: (line: string) => void = () => {},
): Promise<RunDir> {
  const runDir = `${opts.checkpointsDir ?? "checkpoints"}/${cfg.name}`;
  const ckptPath = checkpointPath(runDir);
  const hasCheckpoint = await exists(ckptPath);
  if (opts.resume && !hasCheckpoint) {
    throw new UserError(`${ckptPath}: no checkpoint to resume from`);
  }
  const earlier = !opts.resume && await holdsRun(runDir, ckptPath);
  if (!opts.resume && !earlier && await exists(runDir)) {
    // eval, sample, export write reports and exports here without training: no run to keep apart, so train into it
    print(`${runDir}: holds no earlier run (no log.jsonl, no checkpoint); training into it`);
  }
  if (earlier && !opts.fresh && !hasCheckpoint && await endedInError(`${runDir}/log.jsonl`)) {
    // A run that failed before its first checkpoint holds nothing to resume: it is moved aside, not in the way.
    print(`${runDir}: the earlier run failed before its first checkpoint; starting over`);
    return { runDir, ckptPath, earlier };
  }
  if (earlier && !opts.fresh) {
    throw new UserError(
      `${runDir}: holds an earlier run; pass --resume to continue it, or --fresh to start over ` +
        `(the earlier run is kept under a new name)`,
    );
  }
  return { runDir, ckptPath, earlier };
}

/** What the log's header records of a run about to start. */
export interface RunStart {
  backend: BackendChoice;
  precision: string; // usePrecision's phrase: "fp32", "bf16-mixed (…)"
  params: number;
  resumedFromStep: number | null;
  /** What MFU counts against: FLOPs of a trained token and the measured FLOP/s of the products. */
  mfu: MfuBasis;
}

/**
 * The first writes of a run: moves an earlier run aside (under its name and the time), creates the directory, and
 * opens its log (appending, after a line a killed process cut short) with the header.
 */
export async function openRunDir(
  cfg: Config,
  dir: RunDir,
  start: RunStart,
  print: (line: string) => void,
): Promise<RunLog> {
  const { runDir } = dir;
  if (dir.earlier) {
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
    backend: start.backend.name,
    backend_reason: start.backend.reason,
    precision: cfg.precision,
    precision_detail: start.precision,
    params: start.params,
    flops_per_token: start.mfu.flopsPerToken,
    peak_flops: start.mfu.peakFlops,
    peak_device: start.mfu.device,
    versions: { deno: Deno.version.deno, tfjs: tf.version_core },
    git_commit: await gitCommit(),
    start_time: new Date().toISOString(),
    resumed_from_step: start.resumedFromStep,
  });
  return log;
}

/** Whether the run log's last line is an `error` record (the run failed). */
async function endedInError(logPath: string): Promise<boolean> {
  try {
    const lines = (await Deno.readTextFile(logPath)).trimEnd().split("\n");
    return JSON.parse(lines[lines.length - 1]).type === "error";
  } catch {
    return false;
  }
}

/** Whether the directory holds a run (its log or its checkpoint), not just files of tasks that do not train. */
async function holdsRun(runDir: string, ckptPath: string): Promise<boolean> {
  return await exists(ckptPath) || await exists(`${runDir}/log.jsonl`);
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
