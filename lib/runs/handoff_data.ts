/**
 * The data part of a hand-off: not its batches but what names them. For a corpus, the prepared shard directory (its
 * path, and the SHA-256 of its index.json, which names every shard and its length) with the loader's settings;
 * scaleout/torch/gpt_loader.py memory-maps the shards and replays our ShardLoader's order from the checkpoint's
 * position. For one text file (The Verdict), the token ids of its train and val parts once (a few KB), replayed as
 * our in-memory DataLoader. The cost of a hand-off is thus the same at any corpus size, unless the shards are brought
 * along (`handoff --bring-shards`, for nodes without a shared filesystem). Weighted `data.sources` mixtures are not
 * handed off: the PyTorch side replays one corpus.
 */
import { createHash } from "node:crypto";
import type { Config } from "../config.ts";
import { resolveDataSource } from "../data/source.ts";
import { type DataLoader, type VerdictData } from "../data/data.ts";
import { createShardLoaders, INDEX_FILE, isShardDir, readIndex } from "../data/shards.ts";
import type { ShardLoader } from "../data/shards.ts";
import { UserError } from "../errors.ts";
import type { Checkpoint } from "../train/checkpoint.ts";
import { prepareData, shardDirOf, splitOptions } from "./run_data.ts";

/** handoff.json's `data`: how train_ddp.py finds the run's windows. */
export interface HandoffData {
  /** `shards`: a prepared shard directory; `tokens`: one text file's parts, as uint16 token files here. */
  kind: "shards" | "tokens";
  /** shards: where they are (absolute), or `shards` inside the hand-off directory (--bring-shards). */
  dir?: string;
  /** shards: SHA-256 of index.json's bytes; train_ddp.py refuses an index that hashes otherwise. */
  index_sha256?: string;
  shuffle_shards?: number;
  /** tokens: the file (in the hand-off directory) and count of each part's ids. */
  train?: { file: string; tokens: number };
  val?: { file: string; tokens: number };
  batch_size: number;
  context: number;
  stride: number;
  seed: number;
  /** Batches an epoch of each loader (a check that both sides read the same windows). */
  train_batches: number;
  val_batches: number;
}

/** A weighted `data.sources` mixture is refused: the PyTorch side replays one corpus's loader. */
export function refuseMixture(cfg: Config): void {
  if (!cfg.data.sources) return;
  throw new UserError(
    `data.sources: a weighted mixture cannot be handed off (train_ddp.py replays one corpus); ` +
      `hand off a run of one data.path, or keep this run here`,
  );
}

/**
 * The run's loaders for a hand-off, without preparing anything again (a corpus is read through its index alone, so
 * this costs the same at any size): refuses a mixture, a corpus with no shards, and shards other than the ones the
 * checkpoint trained on.
 */
export async function handoffLoaders(
  cfg: Config,
  ckpt: Checkpoint,
  src: string,
  print: (s: string) => void,
): Promise<VerdictData> {
  refuseMixture(cfg);
  const source = resolveDataSource(cfg.data.path);
  if (source.kind === "text") return await prepareData(cfg, { print }, [source]);
  const dir = shardDirOf(cfg, source);
  if (!isShardDir(dir)) {
    throw new UserError(
      `${dir}: no prepared shards (${INDEX_FILE}) for data.path ${cfg.data.path}; run deno task prepare first`,
    );
  }
  const data = createShardLoaders(
    dir,
    readIndex(dir, cfg.model.vocab_size),
    splitOptions(cfg),
    cfg.data.shuffle_shards,
  );
  const was = ckpt.meta.data?.fingerprint ?? null;
  if (was !== data.fingerprint) {
    throw new UserError(
      `${src}: the shards at ${dir} changed since this checkpoint (${
        was ?? "none"
      } → ${data.fingerprint}), ` +
        `so its data position means other windows; restore the corpus and prepare it again`,
    );
  }
  return data;
}

/**
 * Writes the data part of a hand-off into `tmp` (the hand-off directory being built) and returns its manifest
 * entry: the tokens of a text file's parts, or a shard directory's reference (its shards copied into `tmp/shards`
 * when `bring`).
 */
export async function writeHandoffData(
  cfg: Config,
  data: VerdictData,
  tmp: string,
  bring: boolean,
): Promise<HandoffData> {
  const o = splitOptions(cfg);
  const common = {
    batch_size: o.batchSize,
    context: o.contextLength,
    stride: o.stride,
    seed: o.seed,
    train_batches: data.trainLoader.length,
    val_batches: data.valLoader.length,
  };
  if (!data.source) { // one text file: the book's in-memory loaders
    const part = async (name: "train" | "val", loader: DataLoader) => {
      const ids = loader.dataset.tokenIds;
      if (ids.some((id) => id > 0xffff)) {
        throw new UserError(`${cfg.data.path}: a token id above 65535 cannot be stored as uint16`);
      }
      await Deno.writeFile(
        `${tmp}/tokens_${name}.bin`,
        new Uint8Array(Uint16Array.from(ids).buffer),
      );
      return { file: `tokens_${name}.bin`, tokens: ids.length };
    };
    return {
      kind: "tokens",
      train: await part("train", data.trainLoader as DataLoader),
      val: await part("val", data.valLoader as DataLoader),
      ...common,
    };
  }
  const dir = data.source;
  const index = await Deno.readFile(`${dir}/${INDEX_FILE}`);
  if (bring) await copyShards(dir, data, `${tmp}/shards`);
  return {
    kind: "shards",
    dir: bring ? "shards" : await Deno.realPath(dir),
    index_sha256: createHash("sha256").update(index).digest("hex"),
    shuffle_shards: (data.trainLoader as ShardLoader).shuffleShards,
    ...common,
  };
}

/** index.json and every shard of both splits, copied into `to` (the hand-off being built). */
async function copyShards(dir: string, data: VerdictData, to: string): Promise<void> {
  await Deno.mkdir(to);
  await Deno.copyFile(`${dir}/${INDEX_FILE}`, `${to}/${INDEX_FILE}`);
  for (const loader of [data.trainLoader, data.valLoader] as ShardLoader[]) {
    for (const s of loader.shards) await Deno.copyFile(`${dir}/${s.file}`, `${to}/${s.file}`);
  }
}
