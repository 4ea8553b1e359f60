/**
 * Checkpoints of section 5.4 (the book's `model_and_optimizer.pth`): model parameters, AdamW moments, the loop's
 * position and RNG state, and the config, in one safetensors file with JSON metadata. Written atomically (temporary
 * file + rename), so a crash mid-write leaves the previous checkpoint intact.
 */
import type { Config } from "../config.ts";
import { DEFAULTS } from "../config.ts";
import { UserError } from "../errors.ts";
import type { NamedParam } from "../model/params.ts";
import { readSafetensors, writeSafetensors } from "../weights/safetensors.ts";
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
  /** Where the train loader stands: batch `batch` of epoch `epoch` over the data `fingerprint` names. */
  data?: DataPosition;
}

/** The data position of a checkpoint; `--resume` continues at this window, and only over the same data. */
export interface DataPosition {
  source: string; // data.path, or the shard directory of a corpus
  fingerprint: string | null; // hash of the prepared corpus (sources, hashes, split); null for one text file
  epoch: number;
  batch: number; // next batch of the epoch: windows batch × batch_size onward
  batchesPerEpoch: number;
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

/** Path of a run directory's best checkpoint (training.keep_best): weights of the lowest val loss, no optimizer. */
export function bestCheckpointPath(runDir: string): string {
  return `${runDir.replace(/\/$/, "")}/best.safetensors`;
}

/** Path of the checkpoint kept after epoch `epoch` (1-based) under training.keep_last. */
export function epochCheckpointPath(runDir: string, epoch: number): string {
  return `${runDir.replace(/\/$/, "")}/checkpoint-epoch${epoch}.safetensors`;
}

/**
 * Keeps the checkpoint just written at `latest` as epoch `epoch`'s (a hard link, else a copy; renamed into place,
 * so a crash leaves no half file under the name), then removes kept epochs older than the last `keep`.
 */
export async function keepEpochCheckpoint(
  latest: string,
  epoch: number,
  keep: number,
): Promise<void> {
  const dir = latest.slice(0, latest.lastIndexOf("/") + 1) || "./";
  const kept = epochCheckpointPath(dir, epoch), tmp = `${kept}.tmp-${Deno.pid}`;
  try {
    await Deno.remove(tmp).catch(() => {});
    await Deno.link(latest, tmp).catch(() => Deno.copyFile(latest, tmp));
    await Deno.rename(tmp, kept);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new UserError(`${kept}: cannot keep the epoch's checkpoint (${(err as Error).message})`);
  }
  for await (const e of Deno.readDir(dir)) {
    const m = /^checkpoint-epoch(\d+)\.safetensors$/.exec(e.name);
    if (m && Number(m[1]) <= epoch - keep) await Deno.remove(`${dir}${e.name}`);
  }
}

/** Writes model + optimizer state atomically to `path` (a weights-only checkpoint, such as best's, passes none). */
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
 * The differences that matter for resuming between the config a checkpoint was saved with and `cfg`: one
 * `section.key: saved → now` per differing key of the model, data, training and init sections (sampling, backend
 * and name are free to change). Keys added to the toolkit after the checkpoint was written count at their defaults.
 */
export function configDifferences(saved: Config, cfg: Config): string[] {
  const out: string[] = [];
  for (const section of ["model", "data", "training", "init"] as const) {
    const a = { ...DEFAULTS[section], ...saved[section] } as Record<string, unknown>;
    const b = cfg[section] as unknown as Record<string, unknown>;
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const [x, y] = [JSON.stringify(a[k]), JSON.stringify(b[k])];
      if (x !== y) out.push(`${section}.${k}: ${x} → ${y}`);
    }
  }
  return out;
}

const isCount = (v: unknown) => Number.isInteger(v) && (v as number) >= 0;

/** The metadata's problem, or null when it has every field a resumed run reads. */
function metaProblem(meta: CheckpointMeta): string | null {
  const c = meta?.config as unknown as Record<string, unknown> | undefined;
  if (!c || typeof c !== "object") return "no config";
  for (const section of ["model", "data", "training"]) {
    if (!c[section] || typeof c[section] !== "object") return `no config.${section}`;
  }
  const s = meta.state as unknown as Record<string, unknown> | undefined;
  for (const k of ["epoch", "batch", "step", "tokensSeen"]) {
    if (!s || !isCount(s[k])) return `state.${k} is not a count`;
  }
  if (!isCount(meta.optimizer?.step)) return "optimizer.step is not a count";
  const rng = meta.dropoutRng;
  if (!Array.isArray(rng) || rng.length !== 4 || !rng.every((x) => isCount(x) && x < 2 ** 32)) {
    return "dropoutRng is not 4 unsigned 32-bit words";
  }
  return null;
}

/**
 * Reads a checkpoint; a foreign or damaged file is a UserError naming it. When `expect` is given, a checkpoint of
 * another model/data/training config is refused, naming the differing keys. `weightsOnly` (evaluation, sampling,
 * export) reads the weights without requiring the optimizer state.
 */
export async function loadCheckpoint(
  path: string,
  expect?: Config,
  opts: { weightsOnly?: boolean } = {},
): Promise<Checkpoint> {
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
  const problem = metaProblem(meta);
  if (problem) throw new UserError(`${path}: damaged checkpoint: metadata ${problem}`);
  if (expect) {
    const diff = configDifferences(meta.config, expect);
    if (diff.length > 0) {
      throw new UserError(
        `${path}: checkpoint is from another config (${diff.slice(0, 3).join(", ")}${
          diff.length > 3 ? ", …" : ""
        }); resume with its settings, or use another name or --fresh`,
      );
    }
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
  if (params.length === 0) throw new UserError(`${path}: damaged checkpoint: no model tensors`);
  if (optimizer.size === 0 && !opts.weightsOnly) {
    throw new UserError(
      `${path}: holds weights only (a best checkpoint): it evaluates, samples and exports, but a run resumes ` +
        `from its checkpoint.safetensors`,
    );
  }
  for (const p of opts.weightsOnly ? [] : params) {
    for (const m of ["m", "v"]) {
      const o = optimizer.get(`${m}.${p.name}`);
      if (!o || o.shape.join() !== p.shape.join()) {
        throw new UserError(
          `${path}: damaged checkpoint: optimizer state optim.${m}.${p.name} ${
            o ? `has shape [${o.shape}], not [${p.shape}]` : "is missing"
          }`,
        );
      }
    }
  }
  return { meta, params, optimizer };
}
