/**
 * The trainee of a run: model, optimizer, loop state and dropout RNG, restored from the run's checkpoint (after
 * checking that it fits the config and the data) or initialised from the config's seed or weights.
 */
import { AdamW } from "../train/adamw.ts";
import {
  type Checkpoint,
  CHECKPOINT_FORMAT,
  configDifferences,
  loadCheckpoint,
} from "../train/checkpoint.ts";
import {
  type Config,
  DEFAULTS,
  type PrecisionName,
  precisionOverridden,
  precisionRefused,
  PRECISIONS,
  RESUMABLE_TRAINING_KEYS,
} from "../config.ts";
import type { VerdictData } from "../data/data.ts";
import { UserError } from "../errors.ts";
import { initialParams } from "../train/load.ts";
import { GPTModel } from "../model/model.ts";
import { DropoutRng } from "../model/ops.ts";
import { learningRate, type LrSchedule } from "../train/schedule.ts";
import { initialTrainState, type TrainState } from "../train/train.ts";
import { readSafetensorsHeader } from "../weights/safetensors.ts";

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

/** A word for a POSIX shell: as it is when it holds nothing the shell would read, else in single quotes. */
function shellWord(s: string): string {
  return /^[\w.,:/=+@%-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * The `--set` flags that put back the checkpoint's values of the differing keys (`diff` as configDifferences
 * writes it, `training.lr: 0.001 → 0.002`): what to add to the command line to resume as the run was trained.
 */
export function resumeSettings(saved: Config, diff: string[]): string {
  return diff.map((d) => {
    const key = d.slice(0, d.indexOf(":"));
    const [section, sub] = key.split(".") as [keyof Config, string];
    const values = { ...DEFAULTS[section] as object, ...saved[section] as object };
    const v = (values as Record<string, unknown>)[sub] ?? null;
    return `--set ${shellWord(`${key}=${typeof v === "string" ? v : JSON.stringify(v)}`)}`;
  }).join(" ");
}

/**
 * Refuses a checkpoint of another config. `training.epochs` may differ (extending or shortening a run is a
 * legitimate resume), and so may the checkpoints kept and the early stop (RESUMABLE_TRAINING_KEYS), as long as the learning rates of the steps already done stay what they were: a cosine decay
 * or a warmup given as a fraction depends on the total number of steps, so there it is refused too.
 */
export function checkResumable(
  path: string,
  saved: Config,
  cfg: Config,
  stepsPerEpoch: number,
  done: number,
) {
  const diff = configDifferences(saved, cfg).filter((d) =>
    !RESUMABLE_TRAINING_KEYS.some((k) => d.startsWith(`training.${k}:`))
  );
  if (diff.length > 0) {
    throw new UserError(
      `${path}: checkpoint is from another config (${diff.slice(0, 3).join(", ")}${
        diff.length > 3 ? ", …" : ""
      }); resume with its settings (${
        resumeSettings(saved, diff)
      }), or use another name or --fresh`,
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

/**
 * Loads the checkpoint to resume from and refuses it when it is of another config (see `checkResumable`) or of
 * other data (its data position would mean other windows).
 */
export async function loadResumable(
  ckptPath: string,
  cfg: Config,
  data: VerdictData,
  stepsPerEpoch: number,
): Promise<Checkpoint> {
  const ckpt = await loadCheckpoint(ckptPath);
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
  return ckpt;
}

/**
 * The precision a checkpoint's run trained in, from its metadata alone (fp32 for one written before the key);
 * null when the file is not a readable checkpoint ({@link loadResumable} names what is wrong).
 */
async function savedPrecision(path: string): Promise<PrecisionName | null> {
  try {
    const { metadata } = await readSafetensorsHeader(path);
    if (metadata.format !== CHECKPOINT_FORMAT) return null;
    const p = JSON.parse(metadata.meta).config?.precision ?? "fp32";
    return (PRECISIONS as readonly string[]).includes(p) ? p : null;
  } catch {
    return null;
  }
}

/**
 * The config a resumed run continues with. A run keeps its own precision, the one its checkpoint was saved in,
 * whatever its experiment file says, unless the command line sets one (`--set precision=…`, `--precision`): that
 * switches the run from here on (checkpoints hold fp32 weights in either precision). Says which, in a line.
 */
export async function resumedPrecision(
  ckptPath: string,
  cfg: Config,
  print: (line: string) => void,
): Promise<Config> {
  const saved = await savedPrecision(ckptPath);
  if (saved === null || saved === cfg.precision) return cfg;
  if (precisionOverridden(cfg)) {
    print(`precision: ${cfg.precision} from here on; the run trained in ${saved} until now`);
    return cfg;
  }
  const refused = precisionRefused(cfg.backend, saved);
  if (refused) {
    throw new UserError(
      `${ckptPath}: precision: the run's ${refused} (--set precision=${cfg.precision} switches the run)`,
    );
  }
  print(
    `precision: keeping the run's ${saved}, from its checkpoint ` +
      `(--set precision=${cfg.precision} switches the run)`,
  );
  return { ...cfg, precision: saved };
}

/** What a run trains and where it stands: the model, its optimizer, the loop's state and the dropout RNG. */
export interface Trainee {
  model: GPTModel;
  optimizer: AdamW;
  state: TrainState;
  dropout: DropoutRng;
}

/** The trainee from a checkpoint (`ckpt`, found at `ckptPath`), or a fresh one from the config when `ckpt` is null. */
export async function restoreOrInit(
  cfg: Config,
  ckpt: Checkpoint | null,
  ckptPath: string,
  print: (line: string) => void,
): Promise<Trainee> {
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
  return { model, optimizer, state, dropout };
}
