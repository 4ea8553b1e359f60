/**
 * The training loop of section 5.2 (`trainModelSimple`): for each epoch, for each batch, compute the loss, its
 * gradients and an AdamW step; evaluate every `evalFreq` steps on `evalIter` batches of each loader; print a greedy
 * sample after each epoch. Where the book prints, this loop calls hooks, so the train task can log, show progress
 * and checkpoint; the loop resumes from any (epoch, batch) position.
 */
import * as tf from "@tensorflow/tfjs-core";
import type { AdamW } from "./adamw.ts";
import type { Batch, DataLoader } from "./data.ts";
import { generateSample } from "./generate.ts";
import { calcLossBatch, calcLossLoader } from "./loss.ts";
import type { GPTModel } from "./model.ts";
import type { DropoutRng } from "./ops.ts";

/** Where a run stands; everything a checkpoint needs besides tensors and RNG state. */
export interface TrainState {
  epoch: number; // 0-based epoch in progress
  batch: number; // next batch index within that epoch
  step: number; // optimizer steps completed
  tokensSeen: number;
}

/** A fresh run's state. */
export function initialTrainState(): TrainState {
  return { epoch: 0, batch: 0, step: 0, tokensSeen: 0 };
}

/** What the loop reports; the train task turns these into log lines, progress and checkpoints. */
export interface TrainHooks {
  onStep?(s: TrainState, loss: number): void;
  onEval?(s: TrainState, trainLoss: number, valLoss: number): void;
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
}

/** Thrown when the loss stops being a finite number. */
export class NonFiniteLossError extends Error {}

/** One optimizer step on a batch; returns the batch loss before the update. */
export function trainStep(
  model: GPTModel,
  optimizer: AdamW,
  batch: Batch,
  dropout: DropoutRng | null,
): number {
  const names = new Map<string, string>();
  for (const [name, v] of model.params) names.set(v.name, name);
  const { value, grads } = tf.variableGrads(
    () => calcLossBatch(model, batch, { dropout }),
    [...model.params.values()],
  );
  const loss = value.dataSync()[0];
  value.dispose();
  if (!Number.isFinite(loss)) {
    tf.dispose(Object.values(grads));
    throw new NonFiniteLossError(`loss became ${loss} at step ${optimizer.step + 1}`);
  }
  const byName = new Map<string, tf.Tensor>();
  for (const [varName, g] of Object.entries(grads)) byName.set(names.get(varName)!, g);
  optimizer.applyGradients(byName);
  tf.dispose(Object.values(grads));
  return loss;
}

/** The book's evaluate_model: mean train and val loss over `evalIter` batches each, without dropout. */
export function evaluateModel(
  model: GPTModel,
  trainLoader: DataLoader,
  valLoader: DataLoader,
  evalIter: number,
): { trainLoss: number; valLoss: number } {
  return {
    trainLoss: calcLossLoader(model, trainLoader, evalIter),
    valLoss: calcLossLoader(model, valLoader, evalIter),
  };
}

/**
 * The book's train_model_simple, resumable: continues from `state` (mutated in place) to `numEpochs`.
 * Evaluates after every `evalFreq`-th step (steps 5, 10, … with the book's eval_freq 5, as the chapter's notebook
 * prints them).
 * Returns true when all epochs finished, false when `shouldStop` ended it early.
 */
export async function trainModelSimple(
  model: GPTModel,
  trainLoader: DataLoader,
  valLoader: DataLoader,
  optimizer: AdamW,
  state: TrainState,
  o: TrainOptions,
  hooks: TrainHooks = {},
): Promise<boolean> {
  while (state.epoch < o.numEpochs) {
    for (const batch of trainLoader.batches(state.epoch, state.batch)) {
      if (hooks.shouldStop?.()) return false;
      const loss = trainStep(model, optimizer, batch, o.dropout);
      state.batch += 1;
      state.step += 1;
      state.tokensSeen += batch.batchSize * batch.maxLength;
      hooks.onStep?.(state, loss);
      if (state.step % o.evalFreq === 0) {
        const { trainLoss, valLoss } = evaluateModel(model, trainLoader, valLoader, o.evalIter);
        hooks.onEval?.(state, trainLoss, valLoss);
      }
    }
    state.epoch += 1; // epochs completed: a checkpoint taken now resumes at the next epoch
    state.batch = 0;
    await hooks.onEpochEnd?.(state, generateSample(model, o.startContext));
  }
  return true;
}
