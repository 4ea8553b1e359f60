/**
 * Pre-tokenized shards: a directory of `<split>-g<generation>-<n>.bin` files of little-endian uint16 GPT-2 token ids
 * plus `index.json`, written by `deno task prepare` (lib/data/corpus.ts). The index is the commit point: it is renamed
 * into place after every shard it names, so a reader never sees a half-written shard.
 *
 * {@link ShardLoader} streams the book's sliding windows (section 2.6) from the shards with bounded memory: one shard
 * buffer in memory at a time; the train loader visits shards in an order shuffled per (seed, epoch) and shuffles
 * the windows of each run of `shuffleShards` consecutive shards (the buffer) together. Batch `k` of an epoch is always the same windows, so a checkpoint's (epoch, batch)
 * is the data position and `--resume` continues at the same window.
 */
import {
  type Batch,
  type BatchLoader,
  type LoaderOptions,
  splitmix32,
  type SplitOptions,
  type VerdictData,
} from "./data.ts";
import { createHash } from "node:crypto";
import { UserError } from "../errors.ts";
import { countOf, formatBytes } from "../progress.ts";

/** Name of the index file inside a shard directory. */
export const INDEX_FILE = "index.json";
/** Index format version; readers refuse others. */
export const INDEX_VERSION = 1;
/** The tokenizer every shard is written with. */
export const TOKENIZER = "gpt2";
/** GPT-2's vocabulary size: every id fits in a uint16. */
export const GPT2_VOCAB_SIZE = 50257;

/** Shards whose windows a shuffling loader mixes at a time (its memory: this many shards). */
export const DEFAULT_SHUFFLE_SHARDS = 4;

/** The two parts of a corpus. */
export type SplitName = "train" | "val";

/** One shard file of a split: `tokens` uint16 ids (2 bytes each). */
export interface ShardInfo {
  file: string; // name inside the shard directory
  tokens: number;
}

/**
 * What one source file (or one Parquet row group) put into one split: a plain text file is one document; a JSON
 * Lines or Parquet file, or a text file split on `<|endoftext|>`, has a record per split its documents went to.
 */
export interface SourceInfo {
  path: string;
  row_group?: number; // Parquet: the row group (its reuse unit)
  bytes: number; // of the file, or of the row group's text column
  sha256: string; // of the same bytes
  split: SplitName;
  offset: number; // first token in its split's stream
  tokens: number; // its documents' ids, each followed by one <|endoftext|>
  documents?: number; // when not one
}

/** A source file as the last prepare saw it (skipped ones too): unchanged files make a prepare a no-op. */
export interface FileRecord {
  path: string;
  bytes: number;
  sha256: string;
}

/** The prepare settings that decide what a file's tokens are. */
export interface CorpusOptions {
  text_field: string;
  split_on_eot: boolean;
  strip_gutenberg: boolean;
}

/** `index.json`: what was tokenized, how, and where each split's tokens are. */
export interface ShardIndex {
  version: number;
  tokenizer: string;
  vocab_size: number;
  dtype: "uint16";
  generation: number; // bumped by every prepare that rewrites shards
  seed: number; // split seed (training.seed)
  train_ratio: number; // fraction of documents (not characters) that train
  shard_tokens: number; // tokens per shard (the last of a split may hold fewer)
  options?: CorpusOptions; // absent in indexes of text-only prepares before Parquet and JSON Lines
  files?: FileRecord[];
  sources: SourceInfo[]; // in corpus order; skipped files are not listed
  splits: Record<SplitName, { documents: number; tokens: number; shards: ShardInfo[] }>;
  created_at: string;
}

/**
 * The files an index was prepared from and their bytes, each counted once: `sources` lists a file once per split it
 * gave documents to (and a Parquet file once per row group and split).
 */
export function sourceFiles(index: ShardIndex): { files: number; bytes: number } {
  const units = new Map(index.sources.map((s) => [`${s.path}\0${s.row_group ?? ""}`, s.bytes]));
  const bytes = [...units.values()].reduce((a, b) => a + b, 0);
  return { files: new Set(index.sources.map((s) => s.path)).size, bytes };
}

/** Whether `dir` holds a prepared shard directory (an index.json). */
export function isShardDir(dir: string): boolean {
  try {
    return Deno.statSync(`${dir}/${INDEX_FILE}`).isFile;
  } catch {
    return false;
  }
}

/** Reads and checks an index (format, tokenizer, vocabulary). Throws a UserError naming the file. */
export function readIndex(dir: string, vocabSize = GPT2_VOCAB_SIZE): ShardIndex {
  const path = `${dir}/${INDEX_FILE}`;
  let index: ShardIndex;
  try {
    index = JSON.parse(Deno.readTextFileSync(path));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(`${path}: no shard index; run deno task prepare first`);
    }
    throw new UserError(`${path}: unreadable shard index (${(err as Error).message})`);
  }
  if (index.version !== INDEX_VERSION) {
    throw new UserError(
      `${path}: index version ${index.version}, expected ${INDEX_VERSION}; re-run prepare`,
    );
  }
  if (index.tokenizer !== TOKENIZER) {
    throw new UserError(
      `${path}: tokenizer: shards were made with ${
        JSON.stringify(index.tokenizer)
      }, this toolkit uses ` +
        `${TOKENIZER}; re-run deno task prepare`,
    );
  }
  if (index.vocab_size !== vocabSize) {
    throw new UserError(
      `${path}: vocab_size: shards have a vocabulary of ${index.vocab_size}, model.vocab_size is ${vocabSize}`,
    );
  }
  return index;
}

/** A short hash of what a shard directory holds: its sources (paths, hashes, split) and shard layout. */
export function indexFingerprint(index: ShardIndex): string {
  const what = JSON.stringify([
    index.tokenizer,
    index.shard_tokens,
    index.sources.map((s) => [s.path, s.sha256, s.split]),
  ]);
  return createHash("sha256").update(what).digest("hex").slice(0, 16);
}

/** Checks that every shard of `split` exists with the size the index gives; returns their paths. */
export function checkShards(dir: string, index: ShardIndex, split: SplitName): string[] {
  return index.splits[split].shards.map((s) => {
    const path = `${dir}/${s.file}`;
    let size: number;
    try {
      size = Deno.statSync(path).size;
    } catch {
      throw new UserError(
        `${path}: missing shard (named in ${INDEX_FILE}); re-run deno task prepare`,
      );
    }
    if (size !== s.tokens * 2) {
      throw new UserError(
        `${path}: truncated shard (${size} bytes, the index says ${
          s.tokens * 2
        }); re-run deno task prepare`,
      );
    }
    return path;
  });
}

/** The token ids of one shard, checked against its expected count. */
export function readShard(path: string, tokens: number): Uint16Array {
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch {
    throw new UserError(`${path}: missing shard; re-run deno task prepare`);
  }
  if (bytes.length !== tokens * 2) {
    throw new UserError(
      `${path}: truncated shard (${bytes.length} bytes, the index says ${
        tokens * 2
      }); re-run deno task prepare`,
    );
  }
  return new Uint16Array(bytes.buffer, bytes.byteOffset, tokens);
}

/** `count` tokens of a split's stream from `start`, in pieces (one per shard touched), read shard by shard. */
export function* streamTokens(
  dir: string,
  index: ShardIndex,
  split: SplitName,
  start: number,
  count: number,
): Generator<Uint16Array> {
  let base = 0, done = 0;
  for (const s of index.splits[split].shards) {
    const end = base + s.tokens;
    if (end > start + done && done < count) {
      const ids = readShard(`${dir}/${s.file}`, s.tokens);
      const from = start + done - base;
      const n = Math.min(s.tokens - from, count - done);
      yield ids.subarray(from, from + n);
      done += n;
    }
    base = end;
    if (done >= count) return;
  }
  if (done < count) throw new UserError(`${dir}: shards hold fewer tokens than the index says`);
}

/** `count` tokens of a split's stream from `start` in one array. */
export function readStream(
  dir: string,
  index: ShardIndex,
  split: SplitName,
  start: number,
  count: number,
): Uint16Array {
  const out = new Uint16Array(count);
  let filled = 0;
  for (const ids of streamTokens(dir, index, split, start, count)) {
    out.set(ids, filled);
    filled += ids.length;
  }
  return out;
}

/** Windows `[0, stride, …)` of a shard of `tokens` ids, by the book's rule `range(0, len - max_length, stride)`. */
function windowsIn(tokens: number, maxLength: number, stride: number): number {
  return tokens > maxLength ? Math.ceil((tokens - maxLength) / stride) : 0;
}

/** A Fisher–Yates permutation of 0..n-1 seeded by `seed` (identity when `shuffle` is false). */
function permutation(n: number, shuffle: boolean, seed: number): Uint32Array {
  const idx = new Uint32Array(n);
  for (let i = 0; i < n; i++) idx[i] = i;
  if (!shuffle) return idx;
  const rand = splitmix32(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
  return idx;
}

/**
 * A streaming DataLoader over one split of a shard directory; the same interface as the book's DataLoader.
 * Windows never cross a shard boundary; memory holds one shard and one batch.
 */
export class ShardLoader implements BatchLoader {
  readonly paths: string[];
  readonly shards: ShardInfo[];
  readonly windowsPerShard: number[];
  /** Windows in the split (the dataset's `len`). */
  readonly windows: number;

  constructor(
    readonly dir: string,
    index: ShardIndex,
    readonly split: SplitName,
    readonly opts: LoaderOptions,
    readonly seed: number,
    readonly shuffleShards = DEFAULT_SHUFFLE_SHARDS,
  ) {
    this.paths = checkShards(dir, index, split);
    this.shards = index.splits[split].shards;
    this.windowsPerShard = this.shards.map((s) => windowsIn(s.tokens, opts.maxLength, opts.stride));
    this.windows = this.windowsPerShard.reduce((a, b) => a + b, 0);
  }

  /** Number of batches per epoch (`len(loader)`). */
  get length(): number {
    const n = this.windows, b = this.opts.batchSize;
    return this.opts.dropLast ? Math.floor(n / b) : Math.ceil(n / b);
  }

  /** Iterates the batches of one epoch from batch `from`, skipping whole shards without reading them. */
  *batches(epoch: number, from = 0): Generator<Batch> {
    yield* this.stream(epoch, from, this.length, this.opts.shuffle);
  }

  /**
   * `limit` batches for evaluation, unshuffled: all of them in shard order, or fewer whose windows are spread evenly
   * over the whole split (the first batches of a corpus would be its first documents only). The same every call.
   */
  *ordered(limit = this.length): Generator<Batch> {
    const n = Math.min(limit, this.length);
    if (n === this.length) return yield* this.stream(0, 0, n, false);
    const { batchSize: B, maxLength: T, stride } = this.opts;
    const want = n * B; // windows; want < this.windows since n < length
    let next = 0, base = 0; // next pick, and the first window of the current shard in the split's numbering
    let inputs = new Int32Array(B * T), targets = new Int32Array(B * T), rows = 0;
    for (let s = 0; s < this.shards.length && next < want; s++) {
      const end = base + this.windowsPerShard[s];
      const pick = () => Math.floor((next * this.windows) / want);
      if (pick() < end) {
        const ids = readShard(this.paths[s], this.shards[s].tokens);
        for (let w = pick(); w < end && next < want; w = pick()) {
          const start = (w - base) * stride;
          for (let t = 0; t < T; t++) {
            inputs[rows * T + t] = ids[start + t];
            targets[rows * T + t] = ids[start + t + 1];
          }
          next++;
          if (++rows === B) {
            yield { inputs, targets, batchSize: B, maxLength: T };
            inputs = new Int32Array(B * T), targets = new Int32Array(B * T), rows = 0;
          }
        }
      }
      base = end;
    }
  }

  private *stream(epoch: number, from: number, to: number, shuffle: boolean): Generator<Batch> {
    const { batchSize: B, maxLength: T, stride } = this.opts;
    const epochSeed = this.seed * 1000003 + epoch;
    const shardOrder = permutation(this.shards.length, shuffle, epochSeed);
    let skip = from * B; // windows before the first batch wanted
    let made = from;
    let inputs = new Int32Array(B * T), targets = new Int32Array(B * T), rows = 0;
    // The shuffle buffer: `shuffleShards` consecutive shards of the epoch's order, their windows mixed.
    const k = shuffle ? this.shuffleShards : 1;
    for (let g = 0; g * k < shardOrder.length; g++) {
      if (made >= to) return;
      const group = Array.from(shardOrder.subarray(g * k, (g + 1) * k));
      const firsts = [0]; // first window of each shard of the group, in the group's numbering
      for (const s of group) firsts.push(firsts.at(-1)! + this.windowsPerShard[s]);
      const n = firsts.at(-1)!;
      if (skip >= n) {
        skip -= n;
        continue;
      }
      const ids = group.map((s) => readShard(this.paths[s], this.shards[s].tokens));
      const order = permutation(n, shuffle, (epochSeed * 31 + g) >>> 0);
      for (let w = skip; w < n; w++) {
        const win = order[w];
        let j = 0;
        while (win >= firsts[j + 1]) j++;
        const src = ids[j], start = (win - firsts[j]) * stride;
        for (let t = 0; t < T; t++) {
          inputs[rows * T + t] = src[start + t];
          targets[rows * T + t] = src[start + t + 1];
        }
        if (++rows === B) {
          yield { inputs, targets, batchSize: B, maxLength: T };
          inputs = new Int32Array(B * T), targets = new Int32Array(B * T), rows = 0;
          if (++made >= to) return;
        }
      }
      skip = 0;
    }
    if (rows > 0 && !this.opts.dropLast && made < to) {
      yield {
        inputs: inputs.slice(0, rows * T),
        targets: targets.slice(0, rows * T),
        batchSize: rows,
        maxLength: T,
      };
    }
  }
}

/**
 * Train and val loaders over a shard directory: the train loader shuffles (shard order per (seed, epoch), windows
 * within a shard) and drops the last short batch; the val loader keeps the order and the last batch. Throws a
 * UserError when a split is too small for one window or one batch.
 */
export function createShardLoaders(
  dir: string,
  index: ShardIndex,
  o: SplitOptions,
  shuffleShards = DEFAULT_SHUFFLE_SHARDS,
): VerdictData {
  const common = { batchSize: o.batchSize, maxLength: o.contextLength, stride: o.stride };
  const trainLoader = new ShardLoader(
    dir,
    index,
    "train",
    {
      ...common,
      shuffle: true,
      dropLast: true,
    },
    o.seed,
    shuffleShards,
  );
  const valLoader = new ShardLoader(dir, index, "val", {
    ...common,
    shuffle: false,
    dropLast: false,
  }, o.seed);
  for (const [split, loader] of [["train", trainLoader], ["val", valLoader]] as const) {
    if (loader.windows === 0) {
      const longest = Math.max(0, ...loader.shards.map((s) => s.tokens));
      throw new UserError(
        `${dir}: corpus too small: the ${split} split has no window of ${
          o.contextLength + 1
        } tokens ` +
          `(longest shard ${longest} tokens); add text, or lower model.context_length`,
      );
    }
  }
  if (trainLoader.length === 0) {
    throw new UserError(
      `${dir}: data.batch_size: ${o.batchSize} is more than the ${trainLoader.windows} train windows; ` +
        `lower data.batch_size or model.context_length`,
    );
  }
  const { files, bytes } = sourceFiles(index);
  const { train, val } = index.splits;
  return {
    chars: bytes,
    tokens: train.tokens + val.tokens,
    trainTokens: train.tokens,
    valTokens: val.tokens,
    trainLoader,
    valLoader,
    source: dir,
    fingerprint: indexFingerprint(index),
    summary: `data: ${dir}: ${countOf(files, "file")}, ${formatBytes(bytes)}, ` +
      `${countOf(train.tokens + val.tokens, "token")}; train ${
        countOf(train.documents, "document")
      }, ` +
      `${countOf(trainLoader.length, "batch")}; val ${countOf(val.documents, "document")}, ` +
      `${countOf(valLoader.length, "batch")} of ${o.batchSize}×${o.contextLength}`,
  };
}
