/**
 * Weighted sources (`data.sources`, LitGPT's TinyLlama recipe: SlimPajama 0.69 / Starcoder 0.31): each source is
 * prepared and windowed on its own, and a batch's windows are drawn one at a time, each from a source picked with
 * probability proportional to its weight. The picks come from a generator seeded by (seed, epoch), so the stream is
 * a pure function of the seed and the position, and a resumed run replays only the picks (not the windows) to find
 * where each source stands. A source that runs out within an epoch starts over in a new shuffle (a small source is
 * upsampled, as weights ask); an epoch holds as many batches as all sources' windows once.
 */
import { type Batch, type BatchLoader, splitmix32 } from "./data.ts";

/** One source of a mixture: its name (the path), its weight, its windows one at a time. */
export interface MixedSource {
  name: string;
  weight: number;
  /** The source's windows as batches of one: shuffled per epoch (train), or in text order (validation). */
  windows: BatchLoader;
}

/** Shuffles a source may go through within one epoch before its orders repeat. */
const CYCLES = 1 << 12;

/** A loader whose windows come from several sources in proportion to their weights. */
export class MixedLoader implements BatchLoader {
  private readonly cumulative: number[];

  constructor(
    readonly sources: MixedSource[],
    readonly batchSize: number,
    readonly seed: number,
    readonly shuffle: boolean, // train: each source's own shuffle; validation: text order, all batches kept
  ) {
    const total = sources.reduce((s, x) => s + x.weight, 0);
    let acc = 0;
    this.cumulative = sources.map((s) => (acc += s.weight / total));
  }

  /** Batches per epoch: all sources' windows once (the last short batch dropped when shuffling, kept otherwise). */
  get length(): number {
    const n = this.sources.reduce((s, x) => s + x.windows.length, 0);
    return this.shuffle ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** The source of each successive window of `epoch` (epoch -1: evaluation's fixed order). */
  picks(epoch: number): () => number {
    const rand = splitmix32((this.seed * 1000003) ^ 0x5bd1e995 ^ Math.imul(epoch + 2, 0x27d4eb2d));
    return () => {
      const u = rand();
      const k = this.cumulative.findIndex((c) => u < c);
      return k < 0 ? this.sources.length - 1 : k;
    };
  }

  *batches(epoch: number, from = 0): Generator<Batch> {
    const pick = this.picks(epoch), used = this.sources.map(() => 0);
    for (let i = 0; i < from * this.batchSize; i++) used[pick()]++;
    const streams = this.sources.map((s, k) => this.stream(s, epoch, used[k], this.shuffle));
    for (let b = from; b < this.length; b++) yield this.batchOf(streams, pick, this.batchSize);
  }

  *ordered(limit = this.length): Generator<Batch> {
    const pick = this.picks(-1), streams = this.sources.map((s) => this.stream(s, -1, 0, false));
    const windows = this.sources.reduce((s, x) => s + x.windows.length, 0);
    for (let b = 0; b < Math.min(limit, this.length); b++) {
      yield this.batchOf(streams, pick, Math.min(this.batchSize, windows - b * this.batchSize));
    }
  }

  /** `n` windows, each from the source its pick names, as one batch. */
  private batchOf(streams: Generator<Batch>[], pick: () => number, n: number): Batch {
    const rows = Array.from({ length: n }, () => streams[pick()].next().value as Batch);
    const T = rows[0].maxLength;
    const inputs = new Int32Array(n * T), targets = new Int32Array(n * T);
    rows.forEach((r, i) => (inputs.set(r.inputs, i * T), targets.set(r.targets, i * T)));
    return { inputs, targets, batchSize: n, maxLength: T };
  }

  /**
   * A source's windows from position `skip` of `epoch` on, starting over (a new shuffle where `shuffled`, else the
   * text order again) each time they run out.
   */
  private *stream(
    s: MixedSource,
    epoch: number,
    skip: number,
    shuffled: boolean,
  ): Generator<Batch> {
    const n = s.windows.length;
    for (let cycle = Math.floor(skip / n), offset = skip % n;; cycle++, offset = 0) {
      if (shuffled) yield* s.windows.batches(epoch * CYCLES + cycle, offset);
      else {
        let i = 0;
        for (const w of s.windows.ordered()) if (i++ >= offset) yield w;
      }
    }
  }
}
