/**
 * The training loop of section 5.2 (`trainModelSimple`): for each epoch, for each batch, compute the loss, its
 * gradients and an AdamW step; evaluate every `evalFreq` steps on `evalIter` batches of each loader; print a greedy
 * sample after each epoch. Where the book prints, this loop calls hooks, so the train task can log, show progress
 * and checkpoint; the loop resumes from any (epoch, batch) position.
 */
import * as tf from "@tensorflow/tfjs-core";
import { setLeanGradients } from "../model/tape.ts";
import { withHelpersHeld } from "../backends/backend.ts";
import type { AdamW } from "./adamw.ts";
import type { Batch, BatchLoader } from "../data/data.ts";
import { generateSample } from "../model/generate.ts";
import { calcLossBatch, calcLossLoader } from "./loss.ts";
import type { GPTModel } from "../model/model.ts";
import type { DropoutRng } from "../model/ops.ts";
import { clipByGlobalNorm, globalNorm, learningRate, type LrSchedule } from "./schedule.ts";
import type { SpikeGuard, SpikeVerdict, SpikeWindow } from "./spikes.ts";

/** Where a run stands; everything a checkpoint needs besides tensors and RNG state. */
export interface TrainState {
  epoch: number; // 0-based epoch in progress
  batch: number; // next batch index within that epoch
  step: number; // optimizer steps completed
  tokensSeen: number;
  /** The best val loss so far and the evaluations since it (for keep_best and early_stop_patience). */
  best?: { valLoss: number; step: number; evalsSince: number };
  /** The spike guard's window (training.skip_spikes). */
  spikes?: SpikeWindow;
}

/** A fresh run's state. */
export function initialTrainState(): TrainState {
  return { epoch: 0, batch: 0, step: 0, tokensSeen: 0 };
}

/** What the loop reports; the train task turns these into log lines, progress and checkpoints. */
export interface TrainHooks {
  onStep?(s: TrainState, loss: number, gradNorm: number | null): void;
  /** A step whose update the spike guard skipped (after onStep). */
  onSkip?(s: TrainState, loss: number, gradNorm: number | null, verdict: SpikeVerdict): void;
  /** After an evaluation; `bySource`: each data source's own val loss (data.sources). */
  onEval?(
    s: TrainState,
    trainLoss: number,
    valLoss: number,
    bySource?: Record<string, number>,
  ): Promise<void> | void;
  /** After each epoch; `s.epoch` then counts the epochs completed. */
  onEpochEnd?(s: TrainState, sample: string): Promise<void> | void;
  /** Checked between steps: true ends the loop early (state stays consistent for a checkpoint). */
  shouldStop?(): boolean;
}

/** Settings of {@link trainModelSimple}, the book's arguments. */
export interface TrainOptions {
  numEpochs: number;
  evalFreq: number;
  evalIter: number;
  startContext: string;
  dropout: DropoutRng | null;
  /** Appendix D: lr per step (null: the optimizer's constant lr). */
  schedule?: LrSchedule | null;
  /** Appendix D: clip gradients to this global norm once warmup is over (null: never). */
  maxGradNorm?: number | null;
  /** Micro-batches per optimizer step (default 1). */
  gradAccumSteps?: number;
  /** training.skip_spikes: skips the update of an outlier step (null: every step updates). */
  spikeGuard?: SpikeGuard | null;
  /** data.sources: each source's validation loader, evaluated apart at every evaluation. */
  valBySource?: { name: string; loader: BatchLoader }[];
}

/** What one optimizer step did. */
export interface StepResult {
  loss: number; // mean loss of its micro-batches, before the update
  gradNorm: number | null; // global gradient norm before clipping (computed when clipping or guarding)
  /** The spike guard's verdict, where one judged the step (skip: no update was made). */
  spike?: SpikeVerdict;
}

/**
 * Whether to use lib/model/tape.ts's backward pass, which frees activations as it goes (default; `GPT_LEAN_BACKWARD=0`
 * turns it off): GPT-124M's peak RSS 3.82 GB instead of 4.42 GB at batch 2 and 7.26 GB instead of 9.65 GB at
 * batch 8, at the same speed now that the cpu backend's pool holds a step's arrays (the freed activations come back as the
 * gradients' storage).
 */
function leanBackward(): boolean {
  try {
    return Deno.env.get("GPT_LEAN_BACKWARD") !== "0";
  } catch {
    return true; // no --allow-env
  }
}

/** Thrown when the loss stops being a finite number. */
export class NonFiniteLossError extends Error {}

/**
 * Gradients of the mean loss over `batches` (one or more micro-batches, each weighted 1/k as one batch k times
 * larger would weigh it), keyed by parameter name, and that mean loss.
 */
export async function accumulateGradients(
  model: GPTModel,
  batches: Batch[],
  dropout: DropoutRng | null,
): Promise<{ loss: number; grads: Map<string, tf.Tensor> }> {
  const names = new Map<string, string>();
  for (const [name, v] of model.params) names.set(v.name, name);
  const k = batches.length;
  setLeanGradients(leanBackward());
  const acc = new Map<string, tf.Tensor>();
  let loss = 0;
  for (const batch of batches) {
    const { value, grads } = tf.variableGrads(
      () => tf.tidy(() => tf.div(calcLossBatch(model, batch, { dropout }), k)),
      [...model.params.values()],
    );
    loss += (await value.data())[0];
    value.dispose();
    for (const [varName, g] of Object.entries(grads)) {
      const name = names.get(varName)!;
      const prev = acc.get(name);
      if (prev) {
        acc.set(name, tf.add(prev, g));
        tf.dispose([prev, g]);
      } else acc.set(name, g);
    }
  }
  return { loss, grads: acc };
}

/**
 * One optimizer step on one batch or k micro-batches: gradients, optional clipping by global norm, AdamW update
 * (unless `guard` judges the step a spike). Returns the loss before the update (and the gradient norm when
 * clipping or guarding by it). The CPU backends' helper threads stay open for the whole step.
 */
export function trainStep(
  model: GPTModel,
  optimizer: AdamW,
  batches: Batch | Batch[],
  dropout: DropoutRng | null,
  maxGradNorm: number | null = null,
  guard: SpikeGuard | null = null,
): Promise<StepResult> {
  return withHelpersHeld(async () => {
    const { loss, grads } = await accumulateGradients(
      model,
      Array.isArray(batches) ? batches : [batches],
      dropout,
    );
    if (!Number.isFinite(loss)) {
      tf.dispose([...grads.values()]);
      throw new NonFiniteLossError(`loss became ${loss} at step ${optimizer.step + 1}`);
    }
    let final = grads, gradNorm: number | null = null;
    if (maxGradNorm !== null) {
      ({ grads: final, norm: gradNorm } = await clipByGlobalNorm(grads, maxGradNorm));
    } else if (guard?.needsNorm) gradNorm = await globalNorm(grads.values());
    const spike = guard?.judge(loss, gradNorm);
    if (!spike?.skip) optimizer.applyGradients(final);
    tf.dispose([...final.values()]);
    return { loss, gradNorm, spike };
  });
}

/** The book's evaluate_model: mean train and val loss over `evalIter` batches each, without dropout. */
export async function evaluateModel(
  model: GPTModel,
  trainLoader: BatchLoader,
  valLoader: BatchLoader,
  evalIter: number,
): Promise<{ trainLoss: number; valLoss: number }> {
  return {
    trainLoss: await calcLossLoader(model, trainLoader, evalIter),
    valLoss: await calcLossLoader(model, valLoader, evalIter),
  };
}

/** Each source's mean loss over `evalIter` batches of its own validation loader. */
export async function lossBySource(
  model: GPTModel,
  sources: { name: string; loader: BatchLoader }[],
  evalIter: number,
): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const s of sources) out[s.name] = await calcLossLoader(model, s.loader, evalIter);
  return out;
}

/**
 * The book's train_model_simple, resumable: continues from `state` (mutated in place) to `numEpochs`.
 * Evaluates after every `evalFreq`-th step (steps 5, 10, … with the book's eval_freq 5, as the chapter's notebook
 * prints them).
 * Returns true when all epochs finished, false when `shouldStop` ended it early.
 */
export async function trainModelSimple(
  model: GPTModel,
  trainLoader: BatchLoader,
  valLoader: BatchLoader,
  optimizer: AdamW,
  state: TrainState,
  o: TrainOptions,
  hooks: TrainHooks = {},
): Promise<boolean> {
  const k = o.gradAccumSteps ?? 1;
  while (state.epoch < o.numEpochs) {
    let group: Batch[] = [];
    for (const batch of trainLoader.batches(state.epoch, state.batch)) {
      group.push(batch);
      if (group.length < k) continue; // a last incomplete group of micro-batches is dropped, like drop_last
      if (hooks.shouldStop?.()) return false;
      if (o.schedule) optimizer.lr = learningRate(state.step, o.schedule);
      // Appendix D clips once warmup is over (step >= warmup_steps, rasbt/LLMs-from-scratch #682).
      const clip = o.maxGradNorm != null && state.step >= (o.schedule?.warmupSteps ?? 0)
        ? o.maxGradNorm
        : null;
      const { loss, gradNorm, spike } = await trainStep(
        model,
        optimizer,
        group,
        o.dropout,
        clip,
        o.spikeGuard,
      );
      state.batch += group.length;
      state.step += 1;
      state.tokensSeen += group.reduce((n, b) => n + b.batchSize * b.maxLength, 0);
      group = [];
      hooks.onStep?.(state, loss, gradNorm);
      if (spike?.skip) hooks.onSkip?.(state, loss, gradNorm, spike);
      if (state.step % o.evalFreq === 0) {
        const { trainLoss, valLoss } = await evaluateModel(
          model,
          trainLoader,
          valLoader,
          o.evalIter,
        );
        const bySource = o.valBySource
          ? await lossBySource(model, o.valBySource, o.evalIter)
          : undefined;
        await hooks.onEval?.(state, trainLoss, valLoss, bySource);
      }
    }
    state.epoch += 1; // epochs completed: a checkpoint taken now resumes at the next epoch
    state.batch = 0;
    await hooks.onEpochEnd?.(state, await generateSample(model, o.startContext));
  }
  return true;
}
