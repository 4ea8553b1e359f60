/**
 * Your own corpus: a directory, glob or file of text (one document per file, or per `<|endoftext|>`-separated part),
 * JSON Lines and Parquet (one document per line or row) files, also gzip- or zstd-compressed (lib/data/formats.ts),
 * or nanoGPT's train.bin and val.bin, tokenized once into shards (lib/data/shards.ts) by `deno task prepare`. Documents are split into train and val by document, deterministically
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
import { formatBytes, formatDuration } from "../progress.ts";
import {
  type CorpusOptions,
  type FileRecord,
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
import { DOC_END, EOT_TEXT, splitOnEot, stripGutenberg } from "./documents.ts";
import {
  byteBlocks,
  checkIds,
  isCompressed,
  jsonlDocuments,
  openParquet,
  type ReadCount,
  rowGroups,
  rowGroupTexts,
  type SourceFormat,
  sourceFormat,
  textBlocks,
} from "./formats.ts";

/** Tokens per shard unless the config says otherwise: 2 MB files. */
export const DEFAULT_SHARD_TOKENS = 1_000_000;

/** What `data.path` names. */
export type DataSourceKind = "text" | "corpus" | "shards";

/** Whether a path has glob characters. */
function isGlob(path: string): boolean {
  return /[*?[]/.test(path);
}

/** The file or directory at `path` (links followed), or null where there is none or it cannot be read. */
function statOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.statSync(path);
  } catch {
    return null;
  }
}

/** Classifies `data.path`: one text file (the book), a directory or glob of .txt files, or a shard directory. */
export function dataSourceKind(path: string): DataSourceKind {
  if (isGlob(path)) return "corpus";
  const st = statOrNull(path);
  if (!st) return "text"; // missing: the book's file, downloaded from data.url
  if (!st.isDirectory) return isOneFileCorpus(path) ? "corpus" : "text";
  return isShardDir(path) ? "shards" : "corpus";
}

/** A single file that is a corpus of its own: one not read as the book's text (Parquet, JSONL, compressed). */
function isOneFileCorpus(path: string): boolean {
  if (isGlob(path) || !(sourceFormat(path) !== "text" || isCompressed(path))) return false;
  return statOrNull(path)?.isFile === true;
}

/** The directory a corpus lives in: the directory itself, a file's directory, or a glob's part before its first wildcard. */
export function corpusBase(path: string): string {
  if (isOneFileCorpus(path)) return path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  if (!isGlob(path)) return path.replace(/\/+$/, "") || ".";
  const parts = path.split("/");
  const first = parts.findIndex(isGlob);
  return parts.slice(0, first).join("/") || ".";
}

/** Where prepare writes a corpus's shards when `data.shards` is null: `<corpus dir>.shards`. */
export function defaultShardDir(path: string): string {
  if (isOneFileCorpus(path)) {
    return `${path.replace(/\.(gz|zst)$/, "").replace(/\.\w+$/, "")}.shards`;
  }
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

/** Every file under `dir` into `out`, links followed; a directory already walked or above this one is a loop, skipped. */
function walk(dir: string, out: string[], seen = new Set<string>()) {
  const here = Deno.realPathSync(dir);
  seen.add(here);
  for (const e of Deno.readDirSync(dir)) {
    const p = dir === "." ? e.name : `${dir}/${e.name}`;
    // Links are followed (a Hugging Face cache's snapshot links each file to its blob); a dangling one is left out.
    const info = e.isSymlink ? statOrNull(p) : e;
    if (info?.isFile) out.push(p);
    else if (info?.isDirectory) {
      const real = Deno.realPathSync(p);
      const loops = seen.has(real) || here.startsWith(`${real}/`) || real === "/";
      if (!loops) walk(p, out, seen);
    }
  }
}

/** Files a directory contributes: text and JSON Lines (also .gz, .zst) and Parquet, at any depth. */
const CORPUS_FILE = /\.(?:(?:txt|jsonl|json|ndjson)(?:\.gz|\.zst)?|parquet)$/;

/** Whether a directory holds nanoGPT's prepared `train.bin` and `val.bin`. */
function isNanoGptDir(dir: string): boolean {
  return statOrNull(`${dir}/train.bin`)?.isFile === true &&
    statOrNull(`${dir}/val.bin`)?.isFile === true;
}

/**
 * The source files of a corpus, sorted: a nanoGPT directory's `train.bin` and `val.bin`; every text, JSON Lines
 * and Parquet file under a directory (any depth); or every file a glob matches. Throws a UserError when there is none.
 */
export function listSources(path: string): string[] {
  const base = corpusBase(path);
  if (!isGlob(path) && isNanoGptDir(base)) return [`${base}/train.bin`, `${base}/val.bin`];
  if (isOneFileCorpus(path)) return [path];
  const all: string[] = [];
  try {
    walk(base, all);
  } catch {
    throw new UserError(`${path}: data.path: cannot read the directory ${base}`);
  }
  const match = isGlob(path) ? globToRegExp(path.replace(/^\.\//, "")) : CORPUS_FILE;
  const files = all.filter((f) => match.test(f.replace(/^\.\//, ""))).sort();
  if (files.length === 0) {
    throw new UserError(
      `${path}: data.path: no ${
        isGlob(path) ? "file matches" : ".txt, .jsonl, .parquet (or .gz, .zst) files"
      }`,
    );
  }
  return files;
}

/** FNV-1a of a string: a stable 32-bit hash of a document's name. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** A document's uniform draw in [0, 1) from the seed and its name: below the train ratio, it trains. */
export function documentDraw(name: string, seed: number): number {
  return splitmix32((Math.imul(seed, 0x9e3779b1) ^ fnv1a(name)) >>> 0)();
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
  const u = names.map((n) => documentDraw(n, seed));
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

/** First pass over a plain text file, streamed: SHA-256, and the checks (empty, NUL bytes, UTF-8, only whitespace). */
async function checkTextFile(path: string): Promise<FileCheck> {
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

/** Whole little-endian uint16 ids of a nanoGPT .bin, block by block (a block's odd last byte carried over). */
async function* binIds(path: string, read: ReadCount): AsyncGenerator<Uint16Array> {
  let carry = new Uint8Array(0);
  for await (const b of byteBlocks(path, read)) {
    const all = carry.length ? new Uint8Array([...carry, ...b]) : b;
    const even = all.length & ~1;
    yield new Uint16Array(all.slice(0, even).buffer);
    carry = all.slice(even);
  }
}

/**
 * First pass over a source file: SHA-256 of its bytes and, by format, its checks: plain text as
 * {@link checkTextFile}; a nanoGPT .bin's size even and ids inside GPT-2's vocabulary (a UserError if not).
 */
async function checkFile(path: string, format: SourceFormat): Promise<FileCheck> {
  if (format === "text" && !isCompressed(path)) return await checkTextFile(path);
  const hash = createHash("sha256");
  let tokens = 0;
  const read = { bytes: 0 };
  if (format === "bin") {
    const size = Deno.statSync(path).size;
    if (size % 2) throw new UserError(`${path}: ${size} bytes, an odd size for uint16 token ids`);
    for await (const ids of binIds(path, read)) {
      checkIds(path, ids, tokens, GPT2_VOCAB_SIZE);
      hash.update(new Uint8Array(ids.buffer));
      tokens += ids.length;
    }
  } else {
    await readBlocks(path, (b) => {
      read.bytes += b.length;
      hash.update(b);
    });
  }
  const r = { bytes: read.bytes, sha256: hash.digest("hex") };
  return read.bytes === 0 ? { ...r, skip: "empty file" } : r;
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
  /** The Parquet column or JSON field of each document's text; default `text`. */
  textField?: string;
  /** `<|endoftext|>` in a text file ends a document (each then drawn into train or val on its own). */
  splitOnEot?: boolean;
  /** Drop Project Gutenberg headers and footers from text files. */
  stripGutenberg?: boolean;
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
  reusedParts: number; // unchanged files and Parquet row groups read back (a changed Parquet file keeps its others)
  skipped: string[]; // one line per file left out
  gutenberg: number; // text files that had Project Gutenberg markers (with stripGutenberg)
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

/** The prepare settings that change what a file's tokens are: reuse needs them unchanged. */
function readOptions(o: PrepareOptions): CorpusOptions {
  return {
    text_field: o.textField ?? "text",
    split_on_eot: o.splitOnEot ?? false,
    strip_gutenberg: o.stripGutenberg ?? false,
  };
}

/** What a prepare starts from: the corpus's files, their formats, sizes and splits, and the previous index. */
interface CorpusSurvey {
  files: string[];
  formats: SourceFormat[];
  /** Per file: its split when it is one document (a text file, drawn over the names of such files), else null. */
  splits: (SplitName | null)[];
  names: string[]; // paths relative to the corpus
  sizes: number[];
  totalBytes: number;
  old: ShardIndex | null;
  /** The previous index's records by unit key (file, or file#row group), when its read options are today's. */
  oldBy: Map<string, SourceInfo[]>;
}

const unitKey = (s: { path: string; row_group?: number }) =>
  s.row_group === undefined ? s.path : `${s.path}#${s.row_group}`;

/** Lists the corpus's files, checks Parquet columns and .bin sizes up front, and reads the previous index. */
async function surveyCorpus(source: string, o: PrepareOptions): Promise<CorpusSurvey> {
  const files = listSources(source);
  const base = corpusBase(source);
  const names = files.map((f) => base === "." ? f : f.slice(base.length + 1));
  const formats = files.map(sourceFormat);
  for (const [i, f] of files.entries()) {
    if (formats[i] === "parquet") await openParquet(f, readOptions(o).text_field);
  }
  const single = (i: number) => formats[i] === "text" && !o.splitOnEot;
  const drawn = splitDocuments(names.filter((_, i) => single(i)), o.seed, o.trainRatio);
  const splits = files.map((f, i): SplitName | null =>
    formats[i] === "bin"
      ? (f.endsWith("train.bin") ? "train" : "val")
      : single(i)
      ? drawn.shift()!
      : null
  );
  let old: ShardIndex | null = null;
  try {
    if (!o.force && isShardDir(o.shardDir)) old = readIndex(o.shardDir);
  } catch { /* another tokenizer or format: tokenize everything again */ }
  const sameRead = JSON.stringify(old?.options ?? readOptions({} as PrepareOptions)) ===
    JSON.stringify(readOptions(o));
  const oldBy = new Map<string, SourceInfo[]>();
  for (const s of sameRead ? old?.sources ?? [] : []) {
    oldBy.set(unitKey(s), [...oldBy.get(unitKey(s)) ?? [], s]);
  }
  const sizes = files.map((f) => Deno.statSync(f).size);
  const totalBytes = sizes.reduce((a, b) => a + b, 0);
  return { files, formats, splits, names, sizes, totalBytes, old, oldBy };
}

/** Whether nothing changed since the previous prepare: same settings, same files, same hashes. */
async function unchanged(sv: CorpusSurvey, o: PrepareOptions, shardTokens: number) {
  const { old, files, sizes } = sv;
  if (
    !(old?.files && old.seed === o.seed && old.train_ratio === o.trainRatio &&
      old.shard_tokens === shardTokens && old.files.length === files.length &&
      JSON.stringify(old.options) === JSON.stringify(readOptions(o)) &&
      files.every((f, i) => old.files![i].path === f && old.files![i].bytes === sizes[i]))
  ) return false;
  for (const [i, f] of files.entries()) {
    if ((await checkFile(f, sv.formats[i])).sha256 !== old.files[i].sha256) return false;
  }
  return true;
}

/** A step applied in corpus order once its work (encoding, on a worker) is done. */
type Step = Promise<() => Promise<void>>;

/** A step with no work to wait for: bookkeeping applied in its place in the order. */
function syncStep(apply: () => void): Step {
  return Promise.resolve(() => Promise.resolve(apply()));
}

/** What a unit's stream holds: text, the end of a document, or ready token ids (nanoGPT). */
type Item = string | typeof DOC_END | Uint16Array;

/** What prepare tokenizes or reuses as a whole: a file, or one row group of a Parquet file. */
interface Unit {
  path: string;
  rowGroup?: number;
  bytes: number;
  sha256: string;
  /** A one-document file's split, or a .bin's; null: each document is drawn by its name. */
  split: SplitName | null;
  /** Names of its documents for the draw: `<path without format extensions>#<record number>`. */
  stem: string;
  first: number; // record number of its first document in the file
  items: (read: ReadCount) => AsyncIterable<Item>;
  format: SourceFormat;
}

/** What every unit's steps share: the writers, the workers, the counts, the queue, the records. */
interface EncodeContext {
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
function recordStep(u: Unit, c: EncodeContext, before: Record<SplitName, number[]>) {
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
function beginStep(c: EncodeContext, before: Record<SplitName, number[]>): Step {
  return syncStep(() => {
    for (const s of SPLITS) before[s] = [c.writers[s].tokens, c.writers[s].documents];
  });
}

/** The previous records of a unit whose ids can be copied: same bytes, and the same draw for a drawn unit. */
function reusable(u: Unit, c: EncodeContext): SourceInfo[] | null {
  const { old, oldBy } = c.sv;
  const prev = oldBy.get(unitKey({ path: u.path, row_group: u.rowGroup }));
  if (!old || !prev || prev.some((p) => p.sha256 !== u.sha256)) return null;
  if (u.split === null && (old.seed !== c.o.seed || old.train_ratio !== c.o.trainRatio)) {
    return null;
  }
  return prev;
}

/** Queues the steps that copy an unchanged unit's ids from the previous shards. */
async function queueReuse(u: Unit, prev: SourceInfo[], c: EncodeContext) {
  const before = { train: [0, 0], val: [0, 0] };
  await c.queue(beginStep(c, before));
  for (const p of prev) {
    await c.queue(Promise.resolve(async () => {
      const w = c.writers[u.split ?? p.split];
      try {
        for (const ids of streamTokens(c.o.shardDir, c.sv.old!, p.split, p.offset, p.tokens)) {
          await w.append(ids);
        }
      } catch (err) {
        throw new UserError(
          `${c.o.shardDir}: the previous shards are damaged (${(err as Error).message}); ` +
            `run prepare with --force`,
        );
      }
      w.documents += p.documents ?? 1;
    }));
  }
  await c.queue(syncStep(() => void c.tally.reusedParts++));
  await c.queue(recordStep(u, c, before));
}

/** Queues the steps that encode a unit: its documents, each followed by `<|endoftext|>`, in pieces per split. */
async function queueEncoding(u: Unit, c: EncodeContext) {
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

/** The units of one source file: itself, or (Parquet) its row groups; text read through the document filters. */
async function unitsOf(i: number, check: FileCheck, c: EncodeContext, found: { marked: boolean }) {
  const { files, formats, splits, names } = c.sv;
  const path = files[i], format = formats[i], field = readOptions(c.o).text_field;
  const stem = names[i].replace(/\.(gz|zst)$/, "").replace(
    /\.(txt|jsonl|json|ndjson|parquet)$/,
    "",
  );
  const unit = {
    path,
    bytes: check.bytes,
    sha256: check.sha256,
    split: splits[i],
    stem,
    first: 0,
    format,
  };
  if (format === "parquet") {
    const src = await openParquet(path, field);
    return (await rowGroups(src)).map((rg): Unit => ({
      ...unit,
      rowGroup: rg.index,
      bytes: rg.bytes,
      sha256: rg.sha256,
      first: rg.rowStart,
      items: async function* (read) {
        const texts = await rowGroupTexts(src, rg);
        read.bytes += rg.bytes;
        for (const t of texts) {
          yield t;
          yield DOC_END;
        }
      },
    }));
  }
  const items = async function* (read: ReadCount): AsyncGenerator<Item> {
    if (format === "bin") return yield* binIds(path, read);
    if (format === "jsonl") {
      for await (const t of jsonlDocuments(path, field, read)) {
        yield t;
        yield DOC_END;
      }
      return;
    }
    let text: AsyncIterable<string> = textBlocks(path, read, isCompressed(path));
    if (c.o.stripGutenberg) text = stripGutenberg(text, found);
    if (c.o.splitOnEot) return yield* splitOnEot(text);
    yield* text;
  };
  return [{ ...unit, items }];
}

/**
 * Streams every usable file into the split writers, in corpus order: unchanged units (files, Parquet row groups)
 * from the previous shards, the others encoded on the workers. Returns the index's source and file records, a line
 * per skipped file, and how many files had Project Gutenberg markers.
 */
async function tokenizeSources(
  sv: CorpusSurvey,
  o: PrepareOptions,
  writers: Record<SplitName, ShardWriter>,
  tally: PrepareTally,
  print: (line: string) => void,
) {
  // Pieces, not files, are the unit of work: one big file keeps every worker busy.
  const pieces = sv.sizes.reduce((n, size) => n + Math.ceil(size / PIECE_CHARS), 0);
  const nWorkers = Math.max(1, Math.min(o.workers ?? navigator.hardwareConcurrency, pieces));
  const pool = new WorkerPool(nWorkers);
  const skipped: string[] = [], files: FileRecord[] = [];
  // Steps applied strictly in corpus order; their work (encoding) runs ahead on the workers, at most
  // `lookahead` pieces (bounded memory).
  const fifo: Step[] = [];
  const lookahead = 3 * nWorkers;
  const applyFront = async () => await (await fifo.shift()!)();
  const queue = async (step: Step) => {
    fifo.push(step);
    while (fifo.length > lookahead) await applyFront();
  };
  const c: EncodeContext = { o, sv, writers, pool, tally, queue, sources: [] };
  let gutenberg = 0;
  try {
    for (const [i, path] of sv.files.entries()) {
      const check = await checkFile(path, sv.formats[i]);
      files.push({ path, bytes: check.bytes, sha256: check.sha256 });
      if (check.skip) {
        const line = `${path}: skipped: ${check.skip}`;
        skipped.push(line);
        print(`warning: ${line}`);
        tally.doneBytes += check.bytes;
        continue;
      }
      const found = { marked: false };
      let encoded = false, fileStart = 0;
      await queue(syncStep(() => void (fileStart = tally.doneBytes)));
      for (const u of await unitsOf(i, check, c, found)) {
        const prev = reusable(u, c);
        if (prev) await queueReuse(u, prev, c);
        else await queueEncoding(u, c), encoded = true;
      }
      await queue(syncStep(() => {
        if (found.marked) gutenberg++;
        encoded ? tally.tokenized++ : tally.reused++;
        tally.tokenizedBytes += encoded ? fileStart + check.bytes - tally.doneBytes : 0;
        tally.doneBytes = fileStart + check.bytes;
        tally.show();
      }));
    }
    while (fifo.length > 0) await applyFront();
  } finally {
    pool.close();
  }
  return { sources: c.sources, files, skipped, gutenberg };
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

/** After a failed prepare: removes the shards it wrote (and the directory if it made it), so nothing is left. */
async function discardGeneration(shardDir: string, generation: number, made: boolean) {
  for (const e of Deno.readDirSync(shardDir)) {
    if (new RegExp(`^(train|val)-g${generation}-\\d+\\.bin$|\\.tmp-${Deno.pid}$`).test(e.name)) {
      await Deno.remove(`${shardDir}/${e.name}`);
    }
  }
  if (made) await Deno.remove(shardDir).catch(() => {});
}

/**
 * Tokenizes a corpus (a directory or glob of text, JSON Lines and Parquet files, or nanoGPT's train.bin and
 * val.bin) into `o.shardDir`. Re-running with unchanged files and settings does nothing; with some files changed,
 * only those (for Parquet, only the changed row groups) are tokenized again. The phases: survey the corpus; stop
 * when nothing changed; tokenize into new shards; close the splits; write the index; remove stale shards. Bad input
 * is a UserError that leaves the shard directory as it was.
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
  const sv = await surveyCorpus(source, o);
  const seconds = () => (performance.now() - t0) / 1000;
  const result = { bytes: sv.totalBytes, skipped: [] as string[], gutenberg: 0 };
  if (sv.old && await unchanged(sv, o, shardTokens)) {
    const n = sv.files.length;
    return { // nothing to do
      ...result,
      index: sv.old,
      upToDate: true,
      tokenized: 0,
      reused: n,
      reusedParts: sv.old.sources.length,
      tokenizedBytes: 0,
      seconds: seconds(),
      cacheHitRate: NaN,
    };
  }
  const made = !isShardDir(o.shardDir) && !(await Deno.stat(o.shardDir).catch(() => null));
  await Deno.mkdir(o.shardDir, { recursive: true });
  const generation = (sv.old?.generation ?? 0) + 1;
  const writers = {
    train: new ShardWriter(o.shardDir, "train", generation, shardTokens),
    val: new ShardWriter(o.shardDir, "val", generation, shardTokens),
  };
  const tally = new PrepareTally(t0, sv.totalBytes, o.progress !== false);
  let index: ShardIndex, r: Awaited<ReturnType<typeof tokenizeSources>>;
  try {
    r = await tokenizeSources(sv, o, writers, tally, print);
    await closeSplits(source, writers, r.sources, r.skipped);
    tally.show(true);
    index = await writeIndex(o, generation, shardTokens, r.sources, r.files, writers);
  } catch (err) {
    await discardGeneration(o.shardDir, generation, made);
    throw err;
  }
  await removeStaleShards(o.shardDir, writers);
  return {
    ...result,
    index,
    upToDate: false,
    tokenized: tally.tokenized,
    reused: tally.reused,
    reusedParts: tally.reusedParts,
    skipped: r.skipped,
    gutenberg: r.gutenberg,
    tokenizedBytes: tally.tokenizedBytes,
    seconds: seconds(),
    cacheHitRate: tally.hits / (tally.hits + tally.misses),
  };
}
