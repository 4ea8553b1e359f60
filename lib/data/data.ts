/**
 * The data pipeline of sections 2.6 and 5.1: split the text by characters, tokenize each part, cut sliding windows
 * (inputs and targets shifted by one token) and batch them. The train loader shuffles with a seeded generator and
 * drops the last short batch; the val loader keeps the order and the last batch.
 */
import { UserError } from "../errors.ts";
import { textToTokenIds } from "./tokenizer.ts";

/** One batch: `inputs` and `targets` are row-major int32 of shape (batchSize, maxLength). */
export interface Batch {
  inputs: Int32Array; // (B, T)
  targets: Int32Array; // (B, T)
  batchSize: number;
  maxLength: number;
}

/**
 * The book's GPTDatasetV1: window i starts at token i * stride; its targets are the next token of every input.
 * Windows stop where a full target window would run past the end (`range(0, len - max_length, stride)`).
 */
export class GPTDatasetV1 {
  readonly starts: number[] = [];
  constructor(readonly tokenIds: Int32Array, readonly maxLength: number, readonly stride: number) {
    for (let i = 0; i < tokenIds.length - maxLength; i += stride) this.starts.push(i);
  }

  get length(): number {
    return this.starts.length;
  }
}

/** Options of {@link createDataloaderV1}, named as the book's DataLoader arguments. */
export interface LoaderOptions {
  batchSize: number;
  maxLength: number;
  stride: number;
  shuffle: boolean;
  dropLast: boolean;
}

/**
 * What training and evaluation need of a loader: the book's in-memory {@link DataLoader} and the streaming
 * ShardLoader (lib/data/shards.ts) both provide it, so model and training code never know where the data comes from.
 */
export interface BatchLoader {
  /** Batches per epoch (`len(loader)`). */
  readonly length: number;
  /** The batches of one epoch from batch `from`; the same (seed, epoch) gives the same batches. */
  batches(epoch: number, from?: number): Generator<Batch>;
  /** The first `limit` batches in text order, unshuffled (evaluation). */
  ordered(limit?: number): Generator<Batch>;
}

/** A re-iterable loader over a dataset; `batches(epoch)` yields the same order for the same (seed, epoch). */
export class DataLoader implements BatchLoader {
  constructor(
    readonly dataset: GPTDatasetV1,
    readonly opts: LoaderOptions,
    readonly seed: number,
  ) {}

  /** Number of batches per epoch (`len(loader)` in the book). */
  get length(): number {
    const n = this.dataset.length, b = this.opts.batchSize;
    return this.opts.dropLast ? Math.floor(n / b) : Math.ceil(n / b);
  }

  /** Window order of one epoch: identity, or a Fisher–Yates shuffle seeded by (seed, epoch). */
  order(epoch: number): number[] {
    const idx = this.dataset.starts.map((_, i) => i);
    if (!this.opts.shuffle) return idx;
    const rand = splitmix32(this.seed * 1000003 + epoch);
    for (let i = idx.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [idx[i], idx[j]] = [idx[j], idx[i]];
    }
    return idx;
  }

  /** The batch at position `k` of `epoch`'s order. */
  batch(epoch: number, k: number, order = this.order(epoch)): Batch {
    const { batchSize, maxLength } = this.opts;
    const rows = order.slice(k * batchSize, (k + 1) * batchSize);
    const inputs = new Int32Array(rows.length * maxLength);
    const targets = new Int32Array(rows.length * maxLength);
    const ids = this.dataset.tokenIds;
    rows.forEach((w, r) => {
      const s = this.dataset.starts[w];
      inputs.set(ids.subarray(s, s + maxLength), r * maxLength);
      targets.set(ids.subarray(s + 1, s + 1 + maxLength), r * maxLength);
    });
    return { inputs, targets, batchSize: rows.length, maxLength };
  }

  /** Batches in text order, ignoring `shuffle` (evaluation); `limit` caps their number. */
  *ordered(limit = this.length): Generator<Batch> {
    const order = this.dataset.starts.map((_, i) => i);
    for (let k = 0; k < Math.min(limit, this.length); k++) yield this.batch(0, k, order);
  }

  /** Iterates the batches of one epoch, starting at batch `from` (used when resuming mid-epoch). */
  *batches(epoch: number, from = 0): Generator<Batch> {
    const order = this.order(epoch);
    for (let k = from; k < this.length; k++) yield this.batch(epoch, k, order);
  }
}

/** The book's create_dataloader_v1 over already-tokenized ids. */
export function createDataloaderV1(
  tokenIds: Int32Array,
  opts: LoaderOptions,
  seed = 0,
): DataLoader {
  return new DataLoader(new GPTDatasetV1(tokenIds, opts.maxLength, opts.stride), opts, seed);
}

/** Train and val loaders plus the figures a run prints about its data. */
export interface VerdictData {
  chars: number;
  tokens: number;
  trainTokens: number;
  valTokens: number;
  trainLoader: BatchLoader;
  valLoader: BatchLoader;
  /** One line about the data for the run's output (set for corpora; the book's line otherwise). */
  summary?: string;
  /** Where the data is read from, and a hash of what it holds (corpora), for the checkpoint's data position. */
  source?: string;
  fingerprint?: string;
  /** data.sources: each source's own validation loader (at the run's batch size), for its loss apart. */
  valBySource?: { name: string; loader: BatchLoader }[];
}

/** Settings of {@link createLoaders}; a subset of the experiment config. */
export interface SplitOptions {
  trainRatio: number;
  batchSize: number;
  contextLength: number;
  stride: number;
  seed: number;
  source?: string; // file name used in error messages
}

/**
 * Section 5.1's split: the first floor(trainRatio × chars) characters train, the rest validate; each part is
 * tokenized separately. Throws the book's "Not enough tokens" check as a UserError naming the file.
 */
export function createLoaders(text: string, o: SplitOptions): VerdictData {
  const split = Math.floor(o.trainRatio * text.length);
  const train = Int32Array.from(textToTokenIds(text.slice(0, split)));
  const val = Int32Array.from(textToTokenIds(text.slice(split)));
  const where = o.source ?? "data";
  for (
    const [part, ids, key] of [["train", train, "train_ratio"], [
      "val",
      val,
      "train_ratio",
    ]] as const
  ) {
    if (ids.length <= o.contextLength) {
      throw new UserError(
        `${where}: data.${key}: not enough tokens for the ${part} loader (${ids.length} tokens, ` +
          `context_length ${o.contextLength} needs at least ${o.contextLength + 1}); ` +
          `lower model.context_length or change data.train_ratio`,
      );
    }
  }
  const common = { batchSize: o.batchSize, maxLength: o.contextLength, stride: o.stride };
  const trainLoader = createDataloaderV1(
    train,
    { ...common, shuffle: true, dropLast: true },
    o.seed,
  );
  const valLoader = createDataloaderV1(val, { ...common, shuffle: false, dropLast: false }, o.seed);
  if (trainLoader.length === 0) {
    throw new UserError(
      `${where}: data.batch_size: ${o.batchSize} is more than the ${trainLoader.dataset.length} train windows; ` +
        `lower data.batch_size or model.context_length`,
    );
  }
  return {
    chars: text.length,
    tokens: textToTokenIds(text).length,
    trainTokens: train.length,
    valTokens: val.length,
    trainLoader,
    valLoader,
  };
}

/** A small fast PRNG (splitmix32) for shuffling; returns floats in [0, 1). */
export function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    z ^= z >>> 16;
    return (z >>> 0) / 4294967296;
  };
}
