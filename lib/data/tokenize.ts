/**
 * The tokenizing workers' orchestration: a pool of Workers each encoding one piece of text at a time, pieces cut
 * where encoding the parts gives the ids of the whole, and the steps that append each piece's ids to its split's
 * shards strictly in corpus order while the encoding runs ahead; with the running counts and the progress line.
 */
import { formatBytes, formatDuration } from "../progress.ts";
import { CachedBpe } from "./bpe.ts";
import { DOC_END, documentDraw, EOT_TEXT } from "./documents.ts";
import type { ShardWriter } from "./shard_writer.ts";
import type { SourceInfo, SplitName } from "./shards.ts";
import type { CorpusSurvey, PrepareOptions } from "./survey.ts";
import type { Unit } from "./units.ts";

/** Characters of text that a worker encodes at a time: big enough to amortize the message, small enough to share. */
export const PIECE_CHARS = 1 << 16;

/**
 * Where a text can be cut so that encoding the two parts gives the ids of the whole: before a space or newline
 * that follows a letter, digit or punctuation mark. GPT-2's pre-tokenizer always splits there (no pre-token ends
 * in whitespace after such a character, and a whitespace run's split depends only on what follows it), and BPE
 * merges never cross pre-tokens. Returns the last such index at or after `from`, or -1.
 */
export function safeCut(text: string, from = 0): number {
  for (let p = text.length - 1; p > from; p--) {
    const c = text.charCodeAt(p);
    if ((c === 0x20 || c === 0x0a) && /[\p{L}\p{N}\p{P}]/u.test(text[p - 1])) return p;
  }
  return -1;
}

let bpe: CachedBpe | null = null;

/** What a worker returns for one piece: its ids and how its pre-tokens fared in the worker's cache. */
export interface EncodedPiece {
  ids: Uint16Array;
  hits: number;
  misses: number;
}

/** Encodes one piece of text to uint16 GPT-2 ids (the body of a worker; callable directly). */
export function encodePiece(text: string): EncodedPiece {
  bpe ??= new CachedBpe();
  const { hits, misses } = bpe;
  const ids = bpe.encode(text);
  return { ids, hits: bpe.hits - hits, misses: bpe.misses - misses };
}

/** A fixed set of Workers, each encoding one piece at a time. */
export class WorkerPool {
  private idle: Worker[] = [];
  private waiting: ((w: Worker) => void)[] = [];
  private all: Worker[] = [];

  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL("./tokenize_worker.ts", import.meta.url).href, {
        type: "module",
      });
      this.all.push(w);
      this.idle.push(w);
    }
  }

  async run(text: string): Promise<EncodedPiece> {
    const w = this.idle.pop() ?? await new Promise<Worker>((r) => this.waiting.push(r));
    try {
      return await new Promise<EncodedPiece>((resolve, reject) => {
        w.onmessage = (e) => resolve(e.data);
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`tokenizing worker: ${e.message}`));
        };
        w.postMessage(text);
      });
    } finally {
      const next = this.waiting.shift();
      if (next) next(w);
      else this.idle.push(w);
    }
  }

  close() {
    for (const w of this.all) w.terminate();
  }
}

/** Progress in a log (stderr not a terminal): one line every 10 s, none for a prepare that takes less. */
const PROGRESS_LOG_MS = 10_000;

/** A prepare's running counts and its progress line (MB/s, ETA) on stderr. */
export class PrepareTally {
  tokenized = 0;
  reused = 0;
  reusedParts = 0;
  doneBytes = 0;
  tokenizedBytes = 0;
  hits = 0;
  misses = 0;
  private lastShow = 0;

  constructor(readonly t0: number, readonly totalBytes: number, readonly progress: boolean) {}

  show(final = false) {
    if (!this.progress) return;
    const now = performance.now();
    const tty = Deno.stderr.isTerminal();
    if (!final && now - this.lastShow < (tty ? 500 : PROGRESS_LOG_MS)) return;
    this.lastShow = now;
    const { doneBytes, totalBytes } = this;
    const s = (now - this.t0) / 1000, rate = doneBytes / s;
    const line = `prepare: ${formatBytes(doneBytes)} of ${formatBytes(totalBytes)}, ` +
      `${formatBytes(rate)}/s, ETA ${formatDuration((totalBytes - doneBytes) / rate)}`;
    if (tty) Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}\x1b[K${final ? "\n" : ""}`));
    else if (final || now - this.t0 > PROGRESS_LOG_MS) console.error(line);
  }
}

/** A step applied in corpus order once its work (encoding, on a worker) is done. */
export type Step = Promise<() => Promise<void>>;

/** A step with no work to wait for: bookkeeping applied in its place in the order. */
export function syncStep(apply: () => void): Step {
  return Promise.resolve(() => Promise.resolve(apply()));
}

/** What every unit's steps share: the writers, the workers, the counts, the queue, the records. */
export interface EncodeContext {
  o: PrepareOptions;
  sv: CorpusSurvey;
  writers: Record<SplitName, ShardWriter>;
  pool: WorkerPool;
  tally: PrepareTally;
  queue: (step: Step) => Promise<void>;
  sources: SourceInfo[];
}

const SPLITS = ["train", "val"] as const;

/** The step that records, once a unit's steps are applied, what it added to each split (from `before`). */
export function recordStep(u: Unit, c: EncodeContext, before: Record<SplitName, number[]>) {
  return syncStep(() => {
    for (const split of SPLITS) {
      const w = c.writers[split];
      const [tokens, documents] = [w.tokens - before[split][0], w.documents - before[split][1]];
      if (tokens === 0) continue;
      c.sources.push({
        path: u.path,
        ...(u.rowGroup === undefined ? {} : { row_group: u.rowGroup }),
        bytes: u.bytes,
        sha256: u.sha256,
        split,
        offset: w.tokens - tokens,
        tokens,
        ...(u.split !== null && u.format === "text" ? {} : { documents }),
      });
    }
  });
}

/** The step that notes where each split stands before a unit's steps (for {@link recordStep}). */
export function beginStep(c: EncodeContext, before: Record<SplitName, number[]>): Step {
  return syncStep(() => {
    for (const s of SPLITS) before[s] = [c.writers[s].tokens, c.writers[s].documents];
  });
}

/** Queues the steps that encode a unit: its documents, each followed by `<|endoftext|>`, in pieces per split. */
export async function queueEncoding(u: Unit, c: EncodeContext) {
  const { writers, pool, tally } = c;
  const pending = { train: { text: "", docs: 0 }, val: { text: "", docs: 0 } };
  const read = { bytes: 0 };
  let counted = 0;
  const send = async (split: SplitName, text: string) => {
    const w = writers[split], docs = pending[split].docs, bytes = read.bytes - counted;
    pending[split].docs = 0, counted = read.bytes;
    await c.queue(
      pool.run(text).then((e) => async () => {
        await w.append(e.ids);
        w.documents += docs;
        tally.hits += e.hits, tally.misses += e.misses;
        tally.doneBytes += bytes, tally.tokenizedBytes += bytes;
        tally.show();
      }),
    );
  };
  const drain = async (split: SplitName, all: boolean) => {
    const p = pending[split];
    while (p.text.length > PIECE_CHARS) {
      const cut = safeCut(p.text.slice(0, PIECE_CHARS * 2), PIECE_CHARS >> 1);
      if (cut < 0) break; // no safe cut yet: keep reading
      const text = p.text.slice(0, cut);
      p.text = p.text.slice(cut);
      await send(split, text);
    }
    if (all && p.text) await send(split, p.text), p.text = "";
  };
  const before = { train: [0, 0], val: [0, 0] };
  await c.queue(beginStep(c, before));
  const draw = (n: number): SplitName =>
    u.split ?? (documentDraw(`${u.stem}#${n}`, c.o.seed) < c.o.trainRatio ? "train" : "val");
  let n = u.first, split = draw(n), open = false;
  const end = () => {
    if (open) pending[split].text += EOT_TEXT, pending[split].docs++;
    open = false;
  };
  for await (const item of u.items(read)) {
    if (item instanceof Uint16Array) {
      await c.queue(Promise.resolve(() => writers[split].append(item)));
    } else if (item === DOC_END) {
      end();
      await drain(split, false);
      split = draw(++n);
    } else if (item.length > 0) {
      open = true;
      pending[split].text += item;
      await drain(split, false);
    }
  }
  end();
  for (const s of SPLITS) await drain(s, true);
  if (u.format === "bin") {
    await c.queue(syncStep(() => void writers[split].documents++));
  }
  await c.queue(recordStep(u, c, before));
}
