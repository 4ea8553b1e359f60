/**
 * Checkpoints of section 5.4 (the book's `model_and_optimizer.pth`): model parameters, AdamW moments, the loop's
 * position and RNG state, and the config, in one safetensors file with JSON metadata. Written atomically (temporary
 * file + rename), so a crash mid-write leaves the previous checkpoint intact.
 */
import type { Config } from "./config.ts";
import { configHash } from "./config.ts";
import { UserError } from "./errors.ts";
import type { NamedParam } from "./params.ts";
import { readSafetensors, writeSafetensors } from "./safetensors.ts";
import type { TrainState } from "./train.ts";

/** Format tag stored in every checkpoint's metadata. */
export const CHECKPOINT_FORMAT = "gpt-ts-checkpoint/1";

/** Everything besides tensors that a run needs to continue exactly. */
export interface CheckpointMeta {
  config: Config;
  configHash: string;
  state: TrainState;
  optimizer: { step: number; lr: number };
  dropoutRng: number[];
  savedAt: string;
}

/** A loaded checkpoint: metadata, model parameters and optimizer moments (both by name). */
export interface Checkpoint {
  meta: CheckpointMeta;
  params: NamedParam[];
  optimizer: Map<string, { shape: number[]; data: Float32Array }>;
}

/** Path of the latest checkpoint of a run directory. */
export function checkpointPath(runDir: string): string {
  return `${runDir}/checkpoint.safetensors`;
}

/** Writes model + optimizer state atomically to `path`. */
export async function saveCheckpoint(
  path: string,
  meta: CheckpointMeta,
  params: NamedParam[],
  optimizerState: NamedParam[],
): Promise<void> {
  const tensors = [
    ...params.map((p) => ({ ...p, name: `model.${p.name}` })),
    ...optimizerState.map((p) => ({ ...p, name: `optim.${p.name}` })),
  ];
  await writeSafetensors(path, tensors, { format: CHECKPOINT_FORMAT, meta: JSON.stringify(meta) });
}

/**
 * Reads a checkpoint; a foreign or damaged file is a UserError naming it. When `expect` is given, a checkpoint of
 * another model/data/training config is refused with the differing hash.
 */
export async function loadCheckpoint(path: string, expect?: Config): Promise<Checkpoint> {
  const file = await readSafetensors(path);
  if (file.metadata.format !== CHECKPOINT_FORMAT || !file.metadata.meta) {
    throw new UserError(
      `${path}: not a checkpoint of this toolkit (metadata format is ${
        file.metadata.format ?? "missing"
      })`,
    );
  }
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(file.metadata.meta);
  } catch {
    throw new UserError(`${path}: checkpoint metadata is not valid JSON`);
  }
  if (expect && meta.configHash !== configHash(expect)) {
    throw new UserError(
      `${path}: checkpoint is from another config (hash ${meta.configHash}, experiment has ${
        configHash(expect)
      }); ` +
        `use a different name or start fresh`,
    );
  }
  const params: NamedParam[] = [];
  const optimizer = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, t] of file.tensors) {
    if (name.startsWith("model.")) {
      params.push({ name: name.slice(6), shape: t.shape, data: t.data });
    } else if (name.startsWith("optim.")) {
      optimizer.set(name.slice(6), { shape: t.shape, data: t.data });
    }
  }
  return { meta, params, optimizer };
}
