/**
 * Builds an experiment's model for evaluation and sampling: from its latest (or a named) checkpoint, or, with
 * `init`, the seeded untrained model of the start of chapter 5 (PyTorch's init for `training.seed`).
 */
import { bestCheckpointPath, checkpointPath, loadCheckpoint } from "./checkpoint.ts";
import type { Config } from "../config.ts";
import { UserError } from "../errors.ts";
import { initGPTParams } from "../model/init.ts";
import { loadHFGPT2 } from "../weights/gpt2.ts";
import { GPTModel } from "../model/model.ts";
import type { NamedParam } from "../model/params.ts";
import { TorchGenerator } from "../model/rng.ts";

/** Where the weights come from. */
export interface ModelSource {
  init?: boolean; // the seeded untrained model
  /** A checkpoint path, or `best` / `last` of the run's directory; default `last`: checkpoint.safetensors. */
  checkpoint?: string;
  checkpointsDir?: string;
}

/** A built model and a one-line description of where its weights came from. */
export interface LoadedModel {
  model: GPTModel;
  source: string;
  step: number | null; // optimizer steps of the checkpoint
}

/**
 * The experiment's initial parameters: PyTorch's seeded init (`init.from: random`) or OpenAI's GPT-2 weights from
 * a Hugging Face `model.safetensors` (`init.from: gpt2`; the head is tied to the token embedding).
 */
export async function initialParams(
  cfg: Config,
): Promise<{ params: NamedParam[]; source: string }> {
  if (cfg.init.from === "random") {
    const params = initGPTParams(cfg.model, new TorchGenerator(cfg.training.seed));
    return { params, source: `untrained, seed ${cfg.training.seed}` };
  }
  const path = cfg.init.weights!;
  try {
    await Deno.stat(path);
  } catch {
    throw new UserError(
      `${path}: init.weights: GPT-2 weights not found; download model.safetensors of the matching GPT-2 size ` +
        `from the Hugging Face hub (openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl) and put it there`,
    );
  }
  return {
    params: await loadHFGPT2(path, cfg.model, { tieHead: "omit" }),
    source: `GPT-2 weights ${path}`,
  };
}

/** Loads the experiment's model (the backend must be initialised first). */
export async function loadModel(cfg: Config, src: ModelSource = {}): Promise<LoadedModel> {
  const runDir = `${src.checkpointsDir ?? "checkpoints"}/${cfg.name}`;
  const path = src.checkpoint === "best"
    ? bestCheckpointPath(runDir)
    : src.checkpoint === undefined || src.checkpoint === "last"
    ? checkpointPath(runDir)
    : src.checkpoint;
  const info = await Deno.stat(path).catch(() => null);
  const hasCheckpoint = info !== null;
  if (info?.isDirectory) {
    throw new UserError(
      `${path}: a directory, where a checkpoint file belongs (…/checkpoint.safetensors)`,
    );
  }
  // --init, or pretrained weights and nothing trained yet: the initial model.
  if (src.init || (!hasCheckpoint && !src.checkpoint && cfg.init.from === "gpt2")) {
    const { params, source } = await initialParams(cfg);
    return { model: new GPTModel(cfg.model, params), source, step: null };
  }
  if (!hasCheckpoint && src.checkpoint === "best") {
    throw new UserError(
      `${path}: --checkpoint best: no best checkpoint; train with training.keep_best: true to keep one`,
    );
  }
  if (!hasCheckpoint && src.checkpoint) {
    throw new UserError(`${path}: --checkpoint: no such file`);
  }
  if (!hasCheckpoint) {
    throw new UserError(
      `${path}: no checkpoint yet; train first (deno task train <experiment>) or pass --init for the initial model`,
    );
  }
  const ckpt = await loadCheckpoint(path, undefined, { weightsOnly: true });
  const saved = ckpt.meta.config.model as unknown as Record<string, unknown>;
  const wanted = cfg.model as unknown as Record<string, unknown>;
  const diff = Object.keys(wanted).filter((k) => saved[k] !== wanted[k]);
  if (diff.length > 0) {
    const k = diff[0];
    throw new UserError(
      `${path}: checkpoint is from another model config (model.${k} is ${saved[k]} there, ${
        wanted[k]
      } in the ` +
        `experiment)`,
    );
  }
  const model = new GPTModel(cfg.model, ckpt.params);
  return { model, source: `${path} (step ${ckpt.meta.state.step})`, step: ckpt.meta.state.step };
}
