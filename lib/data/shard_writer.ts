/**
 * Writing a prepared corpus: each split's stream into shards of `shard_tokens` ids (tmp + rename), the index that
 * makes a generation of shards the corpus's, and the removal of stale or failed generations.
 */
import { UserError } from "../errors.ts";
import {
  type FileRecord,
  GPT2_VOCAB_SIZE,
  INDEX_FILE,
  INDEX_VERSION,
  type ShardIndex,
  type ShardInfo,
  type SourceInfo,
  type SplitName,
  TOKENIZER,
} from "./shards.ts";
import { type PrepareOptions, readOptions } from "./survey.ts";

/** Tokens per shard unless the config says otherwise: 2 MB files. */
export const DEFAULT_SHARD_TOKENS = 1_000_000;

/** Accumulates one split's stream into shards of `shardTokens`, each written by tmp + rename. */
export class ShardWriter {
  private buf: Uint16Array;
  private fill = 0;
  readonly shards: ShardInfo[] = [];
  tokens = 0;
  documents = 0;

  constructor(
    readonly dir: string,
    readonly split: SplitName,
    readonly generation: number,
    readonly shardTokens: number,
  ) {
    this.buf = new Uint16Array(shardTokens);
  }

  /** Appends ids to the stream (the caller counts documents). */
  async append(ids: Uint16Array) {
    this.tokens += ids.length;
    let i = 0;
    while (i < ids.length) {
      const n = Math.min(ids.length - i, this.shardTokens - this.fill);
      this.buf.set(ids.subarray(i, i + n), this.fill);
      this.fill += n, i += n;
      if (this.fill === this.shardTokens) await this.flush();
    }
  }

  async flush() {
    if (this.fill === 0) return;
    const n = this.shards.length;
    const file = `${this.split}-g${this.generation}-${String(n).padStart(5, "0")}.bin`;
    await writeAtomic(
      `${this.dir}/${file}`,
      new Uint8Array(this.buf.buffer, 0, this.fill * 2),
    );
    this.shards.push({ file, tokens: this.fill });
    this.fill = 0;
  }
}

async function writeAtomic(path: string, bytes: Uint8Array) {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeFile(tmp, bytes);
  await Deno.rename(tmp, path);
}

/** Refuses a prepare without usable text or with an empty split; writes each split's last shard. */
export async function closeSplits(
  source: string,
  writers: Record<SplitName, ShardWriter>,
  sources: SourceInfo[],
  skipped: string[],
) {
  if (sources.length === 0) {
    throw new UserError(`${source}: data.path: no usable text (${skipped.length} files skipped)`);
  }
  for (const split of ["train", "val"] as const) {
    if (writers[split].documents === 0) {
      throw new UserError(
        `${source}: data.train_ratio: no ${split} documents among ${sources.length} usable files; ` +
          `a corpus is split by document, so add files or change data.train_ratio`,
      );
    }
    await writers[split].flush();
  }
}

/** Writes the new index (tmp + rename), the step that makes the new shards the corpus's. */
export async function writeIndex(
  o: PrepareOptions,
  generation: number,
  shardTokens: number,
  sources: SourceInfo[],
  files: FileRecord[],
  writers: Record<SplitName, ShardWriter>,
): Promise<ShardIndex> {
  const splitOf = (w: ShardWriter) => ({
    documents: w.documents,
    tokens: w.tokens,
    shards: w.shards,
  });
  const index: ShardIndex = {
    version: INDEX_VERSION,
    tokenizer: TOKENIZER,
    vocab_size: GPT2_VOCAB_SIZE,
    dtype: "uint16",
    generation,
    seed: o.seed,
    train_ratio: o.trainRatio,
    shard_tokens: shardTokens,
    options: readOptions(o),
    files,
    sources,
    splits: { train: splitOf(writers.train), val: splitOf(writers.val) },
    created_at: new Date().toISOString(),
  };
  await writeAtomic(
    `${o.shardDir}/${INDEX_FILE}`,
    new TextEncoder().encode(JSON.stringify(index, null, 1) + "\n"),
  );
  return index;
}

/** Names of what prepare writes into a shard directory besides the index: shards, and temporary files. */
export const SHARD_FILE = /^(train|val)-g\d+-\d+\.bin|\.tmp-\d+$/;

/** Once the new index is in place: removes shards of earlier generations and leftovers of killed runs. */
export async function removeStaleShards(shardDir: string, writers: Record<SplitName, ShardWriter>) {
  const keep = new Set(
    [INDEX_FILE, ...writers.train.shards, ...writers.val.shards].map((s) =>
      typeof s === "string" ? s : s.file
    ),
  );
  for (const e of Deno.readDirSync(shardDir)) {
    if (e.isFile && !keep.has(e.name) && SHARD_FILE.test(e.name)) {
      await Deno.remove(`${shardDir}/${e.name}`);
    }
  }
}

/** After a failed prepare: removes the shards it wrote (and the directory if it made it), so nothing is left. */
export async function discardGeneration(shardDir: string, generation: number, made: boolean) {
  for (const e of Deno.readDirSync(shardDir)) {
    if (new RegExp(`^(train|val)-g${generation}-\\d+\\.bin$|\\.tmp-${Deno.pid}$`).test(e.name)) {
      await Deno.remove(`${shardDir}/${e.name}`);
    }
  }
  if (made) await Deno.remove(shardDir).catch(() => {});
}
