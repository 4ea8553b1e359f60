/**
 * Builds an experiment's model for evaluation and sampling: from its latest (or a named) checkpoint, or, with
 * `init`, the seeded untrained model of the start of chapter 5 (PyTorch's init for `training.seed`).
 */
import { checkpointPath, loadCheckpoint } from "./checkpoint.ts";
import type { Config } from "./config.ts";
import { UserError } from "./errors.ts";
import { initGPTParams } from "./init.ts";
import { GPTModel } from "./model.ts";
import { TorchGenerator } from "./rng.ts";

/** Where the weights come from. */
export interface ModelSource {
  init?: boolean; // the seeded untrained model
  checkpoint?: string; // a checkpoint path; default checkpoints/<name>/checkpoint.safetensors
  checkpointsDir?: string;
}

/** A built model and a one-line description of where its weights came from. */
export interface LoadedModel {
  model: GPTModel;
  source: string;
  step: number | null; // optimizer steps of the checkpoint
}

/** Loads the experiment's model (the backend must be initialised first). */
export async function loadModel(cfg: Config, src: ModelSource = {}): Promise<LoadedModel> {
  if (src.init) {
    const params = initGPTParams(cfg.model, new TorchGenerator(cfg.training.seed));
    return {
      model: new GPTModel(cfg.model, params),
      source: `untrained, seed ${cfg.training.seed}`,
      step: null,
    };
  }
  const path = src.checkpoint ??
    checkpointPath(`${src.checkpointsDir ?? "checkpoints"}/${cfg.name}`);
  try {
    await Deno.stat(path);
  } catch {
    throw new UserError(
      `${path}: no checkpoint yet; train first (deno task train <experiment>) or pass --init for the untrained model`,
    );
  }
  const ckpt = await loadCheckpoint(path);
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
