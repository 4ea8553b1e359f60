/**
 * The logged loop of a run: `trainModelSimple` with the book's prints, a progress line, the run log's evaluations,
 * samples and epochs, a checkpoint after every epoch and on a stop (Ctrl-C, SIGTERM, step limit), and the summary.
 */
import { bestCheckpointPath, keepEpochCheckpoint, saveCheckpoint } from "../train/checkpoint.ts";
import { mfu, type MfuBasis } from "../train/mfu.ts";
import { type ChoiceItem, scoreChoices } from "../train/multiple_choice.ts";
import { emptySpikeWindow, SpikeGuard, type SpikeVerdict } from "../train/spikes.ts";
import { type Config, configHash } from "../config.ts";
import type { VerdictData } from "../data/data.ts";
import { UserError } from "../errors.ts";
import { countOf, formatDuration, Progress } from "../progress.ts";
import type { Trainee } from "./restore.ts";
import type { RunLog } from "./runlog.ts";
import { type StopSignal, watchSignals } from "./signals.ts";
import type { LrSchedule } from "../train/schedule.ts";
import { NonFiniteLossError, trainModelSimple, type TrainState } from "../train/train.ts";

/** What the logged loop needs besides the trainee. */
export interface LoopSetup {
  cfg: Config;
  data: VerdictData;
  log: RunLog;
  schedule: LrSchedule | null;
  totalSteps: number;
  ckptPath: string;
  lockPath: string; // removed by a second Ctrl-C
  savedStep: number | null; // step of the checkpoint on disk, if any
  print: (line: string) => void;
  progress?: boolean; // progress line on stderr; default true
  stopAfterSteps?: number;
  mfu?: MfuBasis; // counted in the progress line and the eval lines
  choices?: ChoiceItem[]; // training.multiple_choice's items, scored at every evaluation
}

/** How the loop ended: finished all epochs or stopped, with the last evaluation's losses. */
export interface LoopEnd {
  finished: boolean;
  trainLoss: number;
  valLoss: number;
  t0: number; // performance.now() at the loop's start
}

/** Whether every value of `params` is finite. */
function allFinite(params: { data: Float32Array }[]): boolean {
  for (const p of params) {
    for (let i = 0; i < p.data.length; i++) if (!Number.isFinite(p.data[i])) return false;
  }
  return true;
}

/**
 * Writes the trainee's checkpoint (`save`; `saveBest`: its weights alone, to best.safetensors), keeps an epoch's
 * (`keepEpoch`) and remembers the step of the last one written (`savedStep`).
 */
function checkpointWriter(setup: LoopSetup, t: Trainee) {
  const { cfg, data, ckptPath } = setup;
  let savedStep = setup.savedStep;
  const write = async (path: string, withOptimizer: boolean) => {
    const params = await t.model.toNamedParams();
    // An update can overflow without the loss showing it yet: never replace a good checkpoint with a broken one.
    if (!allFinite(params)) {
      throw new NonFiniteLossError(`parameters became non-finite at step ${t.state.step}`);
    }
    try {
      await saveCheckpoint(
        path,
        {
          config: cfg,
          configHash: configHash(cfg),
          state: { ...t.state },
          optimizer: { step: t.optimizer.step, lr: t.optimizer.lr },
          dropoutRng: t.dropout.state,
          savedAt: new Date().toISOString(),
          data: {
            source: data.source ?? cfg.data.path,
            fingerprint: data.fingerprint ?? null,
            epoch: t.state.epoch,
            batch: t.state.batch,
            batchesPerEpoch: data.trainLoader.length,
          },
        },
        params,
        withOptimizer ? await t.optimizer.stateTensors() : [],
      );
    } catch (err) {
      if (err instanceof UserError) throw err;
      throw new UserError(
        `${path}: cannot write the checkpoint (${(err as Error).message}); ` +
          `the previous one is unchanged`,
      );
    }
  };
  const runDir = ckptPath.slice(0, ckptPath.lastIndexOf("/") + 1) || "./";
  return {
    save: async () => {
      await write(ckptPath, true);
      savedStep = t.state.step;
    },
    saveBest: () => write(bestCheckpointPath(runDir), false),
    keepEpoch: (epoch: number) => keepEpochCheckpoint(ckptPath, epoch, cfg.training.keep_last!),
    savedStep: () => savedStep,
  };
}

/** The loop's clock, tokens per second since the start, and the last and best evaluated losses. */
class LoopFigures {
  readonly t0 = performance.now();
  readonly startStep: number;
  readonly startTokens: number;
  lastTrain = NaN;
  lastVal = NaN;
  bestVal = Infinity;
  lastGradNorm: number | null = null;
  /** Why the run ends before its epochs are done (early_stop_patience), once it does. */
  earlyStop: string | null = null;

  constructor(state: TrainState) {
    this.startStep = state.step;
    this.startTokens = state.tokensSeen;
    this.bestVal = state.best?.valLoss ?? Infinity;
  }

  elapsed(): number {
    return (performance.now() - this.t0) / 1000;
  }

  tokensPerS(s: TrainState): number {
    return (s.tokensSeen - this.startTokens) / this.elapsed();
  }
}

/** The loop's callbacks: progress after each step, prints and log records on evaluations and epochs. */
function loopCallbacks(
  setup: LoopSetup,
  t: Trainee,
  fig: LoopFigures,
  progress: Progress,
  stop: StopSignal,
  ckpt: ReturnType<typeof checkpointWriter>,
) {
  const { cfg, log, print } = setup;
  return {
    shouldStop: () =>
      stop.requested() || fig.earlyStop !== null ||
      (setup.stopAfterSteps !== undefined && t.state.step >= setup.stopAfterSteps),
    onStep: (s: TrainState, loss: number, gradNorm: number | null) => {
      fig.lastGradNorm = gradNorm;
      if (setup.progress === false) return;
      const rate = (s.step - fig.startStep) / fig.elapsed();
      progress.update({
        epoch: s.epoch + 1,
        epochs: cfg.training.epochs,
        step: s.step,
        loss,
        tokensPerS: fig.tokensPerS(s),
        etaS: (setup.totalSteps - s.step) / rate,
        mfu: mfuOf(setup, fig.tokensPerS(s)),
      });
    },
    onSkip: (s: TrainState, loss: number, gradNorm: number | null, v: SpikeVerdict) => {
      progress.clear();
      print(`step ${s.step}: update skipped (${spikeWhy(loss, gradNorm, v)})`);
      log.write({
        type: "skip",
        step: s.step,
        loss,
        grad_norm: gradNorm,
        loss_z: v.lossZ,
        grad_z: v.gradZ,
      });
    },
    onEval: (
      s: TrainState,
      trainLoss: number,
      valLoss: number,
      bySource?: Record<string, number>,
    ) => logEval({ setup, t, fig, progress, ckpt }, s, { trainLoss, valLoss, bySource }),
    onEpochEnd: async (s: TrainState, sample: string) => {
      progress.clear();
      print(sample);
      log.write({ type: "sample", epoch: s.epoch, step: s.step, text: sample });
      await ckpt.save();
      if (cfg.training.keep_last !== null) await ckpt.keepEpoch(s.epoch);
      log.write({
        type: "epoch",
        epoch: s.epoch,
        step: s.step,
        tokens_seen: s.tokensSeen,
        elapsed_s: fig.elapsed(),
      });
    },
  };
}

/** What {@link logEval} works with: the loop's setup, trainee, figures, progress line and checkpoint writer. */
interface EvalContext {
  setup: LoopSetup;
  t: Trainee;
  fig: LoopFigures;
  progress: Progress;
  ckpt: ReturnType<typeof checkpointWriter>;
}

/**
 * An evaluation's prints and eval line: the book's losses; each source's val loss (data.sources) and the
 * multiple-choice scores (training.multiple_choice) where set; then the best checkpoint and the early stop.
 */
async function logEval(
  { setup, t, fig, progress, ckpt }: EvalContext,
  s: TrainState,
  { trainLoss, valLoss, bySource }: {
    trainLoss: number;
    valLoss: number;
    bySource?: Record<string, number>;
  },
) {
  const { log, print } = setup;
  for (const [what, v] of [["train", trainLoss], ["val", valLoss]] as const) {
    if (!Number.isFinite(v)) {
      throw new NonFiniteLossError(`${what} loss became ${v} at step ${s.step} (evaluation)`);
    }
  }
  fig.lastTrain = trainLoss, fig.lastVal = valLoss;
  progress.clear();
  print(
    `Ep ${s.epoch + 1} (Step ${String(s.step).padStart(6, "0")}): ` +
      `Train loss ${trainLoss.toFixed(3)}, Val loss ${valLoss.toFixed(3)}`,
  );
  const elapsed = fig.elapsed(), rate = fig.tokensPerS(s);
  const mc = setup.choices ? await scoreChoices(t.model, setup.choices) : null;
  if (bySource) {
    const each = Object.entries(bySource).map(([k, v]) => `${k} ${v.toFixed(3)}`);
    print(`  val loss by source: ${each.join(", ")}`);
  }
  if (mc) {
    print(
      `  multiple choice: acc ${mc.acc.toFixed(3)}, acc_norm ${mc.acc_norm.toFixed(3)} ` +
        `(${countOf(mc.items, "item")})`,
    );
  }
  log.write({
    type: "eval",
    epoch: s.epoch + 1,
    step: s.step,
    tokens_seen: s.tokensSeen,
    train_loss: trainLoss,
    val_loss: valLoss,
    lr: t.optimizer.lr,
    grad_norm: fig.lastGradNorm,
    elapsed_s: elapsed,
    tokens_per_s: rate,
    ...(setup.mfu && { mfu: mfuOf(setup, rate) }),
    ...(mc && { mc_items: mc.items, mc_acc: mc.acc, mc_acc_norm: mc.acc_norm }),
    ...(bySource && { val_loss_by_source: bySource }),
  });
  await afterEval(setup, t, fig, ckpt, valLoss);
}

/** The MFU of `tokensPerS` (undefined without a measured basis). */
function mfuOf(setup: LoopSetup, tokensPerS: number): number | undefined {
  const b = setup.mfu;
  return b && Number.isFinite(tokensPerS)
    ? mfu(tokensPerS, b.flopsPerToken, b.peakFlops)
    : undefined;
}

/**
 * After an evaluation: a val loss below every earlier one is remembered in the state (and, under keep_best, its
 * weights written to best.safetensors); early_stop_patience evaluations without one end the run.
 */
async function afterEval(
  setup: LoopSetup,
  t: Trainee,
  fig: LoopFigures,
  ckpt: ReturnType<typeof checkpointWriter>,
  valLoss: number,
) {
  const { cfg, log } = setup, s = t.state;
  fig.bestVal = Math.min(fig.bestVal, valLoss);
  const patience = cfg.training.early_stop_patience;
  if (!cfg.training.keep_best && patience === null) return; // the state stays as it was before these keys
  if (s.best === undefined || valLoss < s.best.valLoss) {
    s.best = { valLoss, step: s.step, evalsSince: 0 };
    if (!cfg.training.keep_best) return;
    await ckpt.saveBest();
    log.write({
      type: "checkpoint",
      kind: "best",
      epoch: s.epoch + 1,
      step: s.step,
      val_loss: valLoss,
    });
    return;
  }
  if (++s.best.evalsSince >= (patience ?? Infinity)) {
    fig.earlyStop = `no better val loss in ${patience} evaluation${patience! > 1 ? "s" : ""} ` +
      `(best ${s.best.valLoss.toFixed(3)} at step ${s.best.step})`;
  }
}

/** A skipped step's cause for its print: the z-score over its threshold. */
function spikeWhy(loss: number, gradNorm: number | null, v: SpikeVerdict): string {
  const parts = [`loss ${loss.toFixed(3)}` + (v.lossZ !== null ? `, z ${v.lossZ.toFixed(1)}` : "")];
  if (gradNorm !== null) {
    parts.push(
      `grad norm ${gradNorm.toFixed(3)}` + (v.gradZ !== null ? `, z ${v.gradZ.toFixed(1)}` : ""),
    );
  }
  return parts.join("; ");
}

/**
 * Trains `t` to the end or until stopped, logging as it goes; a checkpoint is written on a stop. A non-finite loss
 * or parameter ends the run with one line naming the last good checkpoint. Closes the log; on an error it also
 * disposes the trainee.
 */
export async function loggedLoop(setup: LoopSetup, t: Trainee): Promise<LoopEnd> {
  const { cfg, data, log } = setup;
  const ckpt = checkpointWriter(setup, t), { save, savedStep } = ckpt;
  const progress = new Progress(setup.totalSteps);
  const fig = new LoopFigures(t.state);
  const guardCfg = cfg.training.skip_spikes;
  const spikeGuard = guardCfg
    ? new SpikeGuard(guardCfg, t.state.spikes ??= emptySpikeWindow())
    : null;
  const stop = await watchSignals(setup.lockPath);
  let finished = false;
  try {
    finished = await trainModelSimple(
      t.model,
      data.trainLoader,
      data.valLoader,
      t.optimizer,
      t.state,
      {
        numEpochs: cfg.training.epochs,
        evalFreq: cfg.training.eval_freq,
        evalIter: cfg.training.eval_iter,
        startContext: cfg.training.start_context,
        dropout: t.dropout,
        schedule: setup.schedule,
        maxGradNorm: cfg.training.max_grad_norm,
        gradAccumSteps: cfg.training.grad_accum_steps,
        spikeGuard,
        valBySource: data.valBySource,
      },
      loopCallbacks(setup, t, fig, progress, stop, ckpt),
    );
    progress.clear();
    if (!finished) await save();
  } catch (err) {
    progress.clear();
    const reason = err instanceof Error ? err.message : String(err);
    log.write({ type: "error", step: t.state.step, reason });
    log.close();
    t.optimizer.dispose();
    t.model.dispose();
    if (err instanceof NonFiniteLossError) {
      const saved = savedStep();
      throw new UserError(
        `${cfg.name}: ${reason}; stopped, ` + (saved === null
          ? "no checkpoint was written"
          : `the last good checkpoint (step ${saved}) is kept in ${setup.ckptPath}`) +
          ` (a smaller training.lr, or training.max_grad_norm, may help)`,
      );
    }
    throw err;
  } finally {
    stop.close();
  }
  if (finished || stop.requested()) fig.earlyStop = null; // all epochs done, or a signal: not an early stop
  const early = !finished && fig.earlyStop !== null;
  logEnd(
    setup,
    t.state,
    fig,
    finished || early ? null : stop.requested() ? "signal" : "step limit",
  );
  return {
    finished: finished || early,
    trainLoss: fig.lastTrain,
    valLoss: fig.lastVal,
    t0: fig.t0,
  };
}

/** The run's last log record and print: the summary, or where it was interrupted (`stopped`: why) and how to go on. */
function logEnd(setup: LoopSetup, state: TrainState, fig: LoopFigures, stopped: string | null) {
  const { log, print } = setup;
  if (stopped !== null) {
    log.write({ type: "interrupted", step: state.step, reason: stopped });
    print(
      `interrupted at step ${state.step} (${stopped}); checkpoint written to ${setup.ckptPath}; ` +
        `continue with --resume`,
    );
  } else {
    log.write({
      type: "summary",
      status: "finished",
      steps: state.step,
      tokens_seen: state.tokensSeen,
      final_train_loss: fig.lastTrain,
      final_val_loss: fig.lastVal,
      best_val_loss: Number.isFinite(fig.bestVal) ? fig.bestVal : null,
      elapsed_s: fig.elapsed(),
      tokens_per_s: fig.tokensPerS(state),
      ...(state.spikes && { skipped_steps: state.spikes.skipped }),
      ...(fig.earlyStop !== null && { stopped_early: fig.earlyStop }),
    });
    if (fig.earlyStop !== null) print(`stopped early at step ${state.step}: ${fig.earlyStop}`);
    print(
      `Training completed in ${formatDuration(fig.elapsed())} (${
        fig.tokensPerS(state).toFixed(1)
      } tokens/s).`,
    );
  }
  log.close();
}
