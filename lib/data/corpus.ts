/**
 * Your own corpus: a directory or glob of `.txt` files, one document each, tokenized once into shards
 * (lib/data/shards.ts) by `deno task prepare`. Documents are split into train and val by document, deterministically
 * from the seed; each document's ids are followed by `<|endoftext|>`, so a split's stream is its documents joined
 * with `<|endoftext|>` as in the book's section 2.4.
 *
 * Prepare tokenizes on every core (Workers), skips files whose SHA-256 is unchanged since the last prepare (their
 * ids are read back from the old shards), and writes each shard and then the index by tmp + rename: an interrupted
 * prepare leaves the previous index and its shards as they were.
 */
import { createHash } from "node:crypto";
import { splitmix32 } from "./data.ts";
import { UserError } from "../errors.ts";
import { claimOutput } from "../outputs.ts";
import { formatDuration } from "../progress.ts";
import {
  GPT2_VOCAB_SIZE,
  INDEX_FILE,
  INDEX_VERSION,
  isShardDir,
  readIndex,
  type ShardIndex,
  type ShardInfo,
  type SourceInfo,
  type SplitName,
  streamTokens,
  TOKENIZER,
} from "./shards.ts";
import { CachedBpe } from "./bpe.ts";
import { END_OF_TEXT_ID } from "./tokenizer.ts";

const EOT = new Uint16Array([END_OF_TEXT_ID]);

/** Tokens per shard unless the config says otherwise: 2 MB files. */
export const DEFAULT_SHARD_TOKENS = 1_000_000;

/** What `data.path` names. */
export type DataSourceKind = "text" | "corpus" | "shards";

/** Whether a path has glob characters. */
function isGlob(path: string): boolean {
  return /[*?[]/.test(path);
}

/** Classifies `data.path`: one text file (the book), a directory or glob of .txt files, or a shard directory. */
export function dataSourceKind(path: string): DataSourceKind {
  if (isGlob(path)) return "corpus";
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch {
    return "text"; // missing: the book's file, downloaded from data.url
  }
  if (!st.isDirectory) return "text";
  return isShardDir(path) ? "shards" : "corpus";
}

/** The directory a corpus lives in: the directory itself, or a glob's part before its first wildcard. */
export function corpusBase(path: string): string {
  if (!isGlob(path)) return path.replace(/\/+$/, "") || ".";
  const parts = path.split("/");
  const first = parts.findIndex(isGlob);
  return parts.slice(0, first).join("/") || ".";
}

/** Where prepare writes a corpus's shards when `data.shards` is null: `<corpus dir>.shards`. */
export function defaultShardDir(path: string): string {
  const base = corpusBase(path);
  return base === "." ? "corpus.shards" : `${base}.shards`;
}

/** A glob as a RegExp over `/`-separated paths: `**` any depth, `*` and `?` within one segment. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      re += glob[i + 2] === "/" ? "(?:.*/)?" : ".*";
      i += glob[i + 2] === "/" ? 2 : 1;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

function walk(dir: string, out: string[]) {
  for (const e of Deno.readDirSync(dir)) {
    const p = dir === "." ? e.name : `${dir}/${e.name}`;
    if (e.isDirectory) walk(p, out);
    else if (e.isFile) out.push(p);
  }
}

/**
 * The source files of a corpus, sorted: every `.txt` under a directory (any depth), or every file a glob matches.
 * Throws a UserError when there is none.
 */
export function listSources(path: string): string[] {
  const base = corpusBase(path);
  const all: string[] = [];
  try {
    walk(base, all);
  } catch {
    throw new UserError(`${path}: data.path: cannot read the directory ${base}`);
  }
  const match = isGlob(path) ? globToRegExp(path.replace(/^\.\//, "")) : /\.txt$/;
  const files = all.filter((f) => match.test(f.replace(/^\.\//, ""))).sort();
  if (files.length === 0) {
    throw new UserError(`${path}: data.path: no ${isGlob(path) ? "file matches" : ".txt files"}`);
  }
  return files;
}

/** FNV-1a of a string: a stable 32-bit hash of a document's name. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Splits documents by name: a document trains when its draw u(seed, name) is below `trainRatio`. The draw depends
 * only on the seed and the document's path relative to the corpus, so adding a file moves no other one. With two
 * documents or more, each split gets at least one (the highest draw validates, the lowest trains).
 */
export function splitDocuments(
  names: readonly string[],
  seed: number,
  trainRatio: number,
): SplitName[] {
  const u = names.map((n) => splitmix32((Math.imul(seed, 0x9e3779b1) ^ fnv1a(n)) >>> 0)());
  const split = u.map((x): SplitName => x < trainRatio ? "train" : "val");
  if (names.length >= 2) {
    const argBy = (better: (a: number, b: number) => boolean) =>
      u.reduce((best, x, i) => better(x, u[best]) ? i : best, 0);
    if (!split.includes("val")) split[argBy((a, b) => a > b)] = "val";
    if (!split.includes("train")) split[argBy((a, b) => a < b)] = "train";
  }
  return split;
}

/** Characters of text that a worker encodes at a time: big enough to amortize the message, small enough to share. */
export const PIECE_CHARS = 1 << 20;

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

/** What the first pass learns of a source file: size, hash, and why it is left out (if it is). */
interface FileCheck {
  bytes: number;
  sha256: string;
  skip?: string;
}

const READ_BYTES = 4 << 20;
/** Progress in a log (stderr not a terminal): one line every 10 s, none for a prepare that takes less. */
const PROGRESS_LOG_MS = 10_000;

/** Reads a file in 4 MB blocks, calling `onBlock` with each (a view valid until the next call). */
async function readBlocks(path: string, onBlock: (b: Uint8Array) => Promise<void> | void) {
  using file = await Deno.open(path);
  const buf = new Uint8Array(READ_BYTES);
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    await onBlock(buf.subarray(0, n));
  }
}

/** First pass over a source, streamed: SHA-256, and the checks (empty, NUL bytes, UTF-8, only whitespace). */
async function checkFile(path: string): Promise<FileCheck> {
  const hash = createHash("sha256");
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let bytes = 0, binary = false, utf8 = true, text = false;
  try {
    await readBlocks(path, (b) => {
      bytes += b.length;
      hash.update(b);
      if (!binary && b.includes(0)) binary = true;
      if (utf8) {
        try {
          const s = decoder.decode(b, { stream: true });
          if (!text && /\S/.test(s)) text = true;
        } catch {
          utf8 = false;
        }
      }
    });
    if (utf8) decoder.decode();
  } catch (err) {
    if (err instanceof TypeError) utf8 = false;
    else return { bytes, sha256: "", skip: `cannot read (${(err as Error).message})` };
  }
  const r = { bytes, sha256: hash.digest("hex") };
  if (bytes === 0) return { ...r, skip: "empty file" };
  if (binary) return { ...r, skip: "looks binary (contains NUL bytes)" };
  if (!utf8) return { ...r, skip: "not valid UTF-8 text" };
  if (!text) return { ...r, skip: "only whitespace" };
  return r;
}

/** Second pass: the file's text in pieces of about {@link PIECE_CHARS}, cut only where {@link safeCut} allows. */
async function* textPieces(path: string): AsyncGenerator<{ text: string; bytes: number }> {
  const decoder = new TextDecoder("utf-8");
  let carry = "", carryBytes = 0;
  using file = await Deno.open(path);
  const buf = new Uint8Array(READ_BYTES);
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    carry += decoder.decode(buf.subarray(0, n), { stream: true });
    carryBytes += n;
    while (carry.length > PIECE_CHARS) {
      const cut = safeCut(carry.slice(0, PIECE_CHARS * 2), PIECE_CHARS >> 1);
      if (cut < 0) break; // no safe cut yet: keep reading
      const text = carry.slice(0, cut);
      const bytes = Math.round(carryBytes * cut / carry.length);
      yield { text, bytes };
      carry = carry.slice(cut), carryBytes -= bytes;
    }
  }
  carry += decoder.decode();
  if (carry.length > 0) yield { text: carry, bytes: carryBytes };
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
class WorkerPool {
  private idle: Worker[] = [];
  private waiting: ((w: Worker) => void)[] = [];
  private all: Worker[] = [];

  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL("./corpus_worker.ts", import.meta.url).href, { type: "module" });
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

/** Settings of {@link prepareCorpus}. */
export interface PrepareOptions {
  shardDir: string;
  seed: number;
  trainRatio: number;
  shardTokens?: number;
  workers?: number; // default: every core
  force?: boolean; // re-tokenize every file
  /** Warnings and the final summary; default console.error. */
  print?: (line: string) => void;
  progress?: boolean; // MB/s and ETA on stderr; default true
}

/** What a prepare did. */
export interface PrepareResult {
  index: ShardIndex;
  upToDate: boolean; // nothing changed: the shards were kept
  tokenized: number; // files encoded this time
  reused: number; // unchanged files read back from the old shards
  skipped: string[]; // one line per file left out
  bytes: number; // source bytes, all files
  tokenizedBytes: number;
  seconds: number;
  /** Share of pre-tokens the encoders found in their word cache (see lib/data/bpe.ts); NaN when nothing was encoded. */
  cacheHitRate: number;
}

/** Accumulates one split's stream into shards of `shardTokens`, each written by tmp + rename. */
class ShardWriter {
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

/** A prepare's running counts and its progress line (MB/s, ETA) on stderr. */
class PrepareTally {
  tokenized = 0;
  reused = 0;
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
    const s = (now - this.t0) / 1000, mbs = doneBytes / 1e6 / s;
    const line = `prepare: ${(doneBytes / 1e6).toFixed(1)}/${(totalBytes / 1e6).toFixed(1)} MB, ` +
      `${mbs.toFixed(1)} MB/s, ETA ${formatDuration((totalBytes - doneBytes) / 1e6 / mbs)}`;
    if (tty) Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}\x1b[K${final ? "\n" : ""}`));
    else if (final || now - this.t0 > PROGRESS_LOG_MS) console.error(line);
  }
}

/** What a prepare starts from: the corpus's files, their splits and sizes, and the previous index (if usable). */
interface CorpusSurvey {
  files: string[];
  splits: SplitName[];
  sizes: number[];
  totalBytes: number;
  old: ShardIndex | null;
  oldBy: Map<string, SourceInfo>;
}

/** Lists the corpus's files, splits them by document, and reads the previous prepare's index. */
function surveyCorpus(source: string, o: PrepareOptions): CorpusSurvey {
  const files = listSources(source);
  const base = corpusBase(source);
  const rel = (f: string) => base === "." ? f : f.slice(base.length + 1);
  const splits = splitDocuments(files.map(rel), o.seed, o.trainRatio);
  let old: ShardIndex | null = null;
  try {
    if (!o.force && isShardDir(o.shardDir)) old = readIndex(o.shardDir);
  } catch { /* another tokenizer or format: tokenize everything again */ }
  const oldBy = new Map((old?.sources ?? []).map((s) => [s.path, s]));
  const sizes = files.map((f) => Deno.statSync(f).size);
  const totalBytes = sizes.reduce((a, b) => a + b, 0);
  return { files, splits, sizes, totalBytes, old, oldBy };
}

/** Whether nothing changed since the previous prepare: same settings, same files, same hashes. */
async function unchanged(sv: CorpusSurvey, o: PrepareOptions, shardTokens: number) {
  const { old, files, oldBy, sizes } = sv;
  if (
    !(old && old.seed === o.seed && old.train_ratio === o.trainRatio &&
      old.shard_tokens === shardTokens && old.sources.length === files.length &&
      files.every((f, i) => oldBy.get(f)?.bytes === sizes[i]))
  ) return false;
  for (const f of files) {
    if ((await checkFile(f)).sha256 !== oldBy.get(f)!.sha256) return false;
  }
  return true;
}

/** A step applied in corpus order once its work (encoding, on a worker) is done. */
type Step = Promise<() => Promise<void>>;

/** The step that copies an unchanged file's ids from the previous shards (`from`, where it was `prev`). */
function reuseStep(
  shardDir: string,
  from: ShardIndex,
  prev: SourceInfo,
  w: ShardWriter,
  bytes: number,
  record: (tokens: number) => void,
  tally: PrepareTally,
): Step {
  return Promise.resolve(async () => {
    const before = w.tokens;
    try {
      for (const ids of streamTokens(shardDir, from, prev.split, prev.offset, prev.tokens)) {
        await w.append(ids);
      }
    } catch (err) {
      throw new UserError(
        `${shardDir}: the previous shards are damaged (${(err as Error).message}); ` +
          `run prepare with --force`,
      );
    }
    w.documents++;
    record(w.tokens - before);
    tally.reused++;
    tally.doneBytes += bytes;
    tally.show();
  });
}

/** Queues the steps that encode a file piece by piece, then end it with `<|endoftext|>`. */
async function queueEncoding(
  path: string,
  pool: WorkerPool,
  w: ShardWriter,
  record: (tokens: number) => void,
  tally: PrepareTally,
  queue: (step: Step) => Promise<void>,
) {
  let before = -1;
  for await (const piece of textPieces(path)) {
    const encoded = pool.run(piece.text);
    await queue(encoded.then((e) => async () => {
      if (before < 0) before = w.tokens;
      await w.append(e.ids);
      tally.hits += e.hits, tally.misses += e.misses;
      tally.doneBytes += piece.bytes;
      tally.tokenizedBytes += piece.bytes;
      tally.show();
    }));
  }
  await queue(Promise.resolve(async () => {
    if (before < 0) before = w.tokens;
    await w.append(EOT);
    w.documents++;
    record(w.tokens - before);
    tally.tokenized++;
  }));
}

/**
 * Streams every usable file into its split's writer, in corpus order: unchanged files from the previous shards,
 * the others encoded on the workers. Returns the index's source records and a line per skipped file.
 */
async function tokenizeSources(
  sv: CorpusSurvey,
  o: PrepareOptions,
  writers: Record<SplitName, ShardWriter>,
  tally: PrepareTally,
  print: (line: string) => void,
): Promise<{ sources: SourceInfo[]; skipped: string[] }> {
  const { files, splits, sizes, old, oldBy } = sv;
  // Pieces, not files, are the unit of work: one big file keeps every worker busy.
  const pieces = files.reduce((n, _, i) => n + Math.ceil(sizes[i] / PIECE_CHARS), 0);
  const nWorkers = Math.max(1, Math.min(o.workers ?? navigator.hardwareConcurrency, pieces));
  const pool = new WorkerPool(nWorkers);
  const sources: SourceInfo[] = [];
  const skipped: string[] = [];
  // Steps applied strictly in corpus order; their work (encoding) runs ahead on the workers, at most
  // `lookahead` pieces (bounded memory).
  const fifo: Step[] = [];
  const lookahead = 3 * nWorkers;
  const applyFront = async () => await (await fifo.shift()!)();
  const queue = async (step: Step) => {
    fifo.push(step);
    while (fifo.length > lookahead) await applyFront();
  };
  try {
    for (let i = 0; i < files.length; i++) {
      const path = files[i];
      const check = await checkFile(path);
      if (check.skip) {
        const line = `${path}: skipped: ${check.skip}`;
        skipped.push(line);
        print(`warning: ${line}`);
        tally.doneBytes += check.bytes;
        continue;
      }
      const w = writers[splits[i]];
      const prev = oldBy.get(path);
      const record = (tokens: number) =>
        sources.push({
          path,
          bytes: check.bytes,
          sha256: check.sha256,
          split: splits[i],
          offset: w.tokens - tokens,
          tokens,
        });
      if (old && prev && prev.sha256 === check.sha256) {
        await queue(reuseStep(o.shardDir, old, prev, w, check.bytes, record, tally));
      } else {
        await queueEncoding(path, pool, w, record, tally, queue);
      }
    }
    while (fifo.length > 0) await applyFront();
  } finally {
    pool.close();
  }
  return { sources, skipped };
}

/** Refuses a prepare without usable text or with an empty split; writes each split's last shard. */
async function closeSplits(
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
async function writeIndex(
  o: PrepareOptions,
  generation: number,
  shardTokens: number,
  sources: SourceInfo[],
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
const SHARD_FILE = /^(train|val)-g\d+-\d+\.bin|\.tmp-\d+$/;

/** Once the new index is in place: removes shards of earlier generations and leftovers of killed runs. */
async function removeStaleShards(shardDir: string, writers: Record<SplitName, ShardWriter>) {
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

/**
 * Tokenizes a corpus (directory or glob of .txt files) into `o.shardDir`. Re-running with unchanged files and
 * settings does nothing; with some files changed, only those are tokenized again. The phases: survey the corpus;
 * stop when nothing changed; tokenize into new shards; close the splits; write the index; remove stale shards.
 */
export async function prepareCorpus(source: string, o: PrepareOptions): Promise<PrepareResult> {
  const t0 = performance.now();
  const print = o.print ?? ((s: string) => console.error(s));
  const shardTokens = o.shardTokens ?? DEFAULT_SHARD_TOKENS;
  await claimOutput(o.shardDir, "prepare data.shards", {
    kind: "dir",
    manifest: INDEX_FILE,
    leftovers: SHARD_FILE, // shards of a first prepare that was stopped before its index
  });
  const sv = surveyCorpus(source, o);
  const seconds = () => (performance.now() - t0) / 1000;
  if (sv.old && await unchanged(sv, o, shardTokens)) {
    return {
      index: sv.old,
      upToDate: true,
      tokenized: 0,
      reused: sv.files.length,
      skipped: [],
      bytes: sv.totalBytes,
      tokenizedBytes: 0,
      seconds: seconds(),
      cacheHitRate: NaN,
    };
  }

  await Deno.mkdir(o.shardDir, { recursive: true });
  const generation = (sv.old?.generation ?? 0) + 1;
  const writers = {
    train: new ShardWriter(o.shardDir, "train", generation, shardTokens),
    val: new ShardWriter(o.shardDir, "val", generation, shardTokens),
  };
  const tally = new PrepareTally(t0, sv.totalBytes, o.progress !== false);
  const { sources, skipped } = await tokenizeSources(sv, o, writers, tally, print);
  await closeSplits(source, writers, sources, skipped);
  tally.show(true);
  const index = await writeIndex(o, generation, shardTokens, sources, writers);
  await removeStaleShards(o.shardDir, writers);
  return {
    index,
    upToDate: false,
    tokenized: tally.tokenized,
    reused: tally.reused,
    skipped,
    bytes: sv.totalBytes,
    tokenizedBytes: tally.tokenizedBytes,
    seconds: seconds(),
    cacheHitRate: tally.hits / (tally.hits + tally.misses),
  };
}
