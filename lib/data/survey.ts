/**
 * What a prepare starts from: its settings, the corpus's files with their formats, sizes and splits, the previous
 * index, and the first pass over each file (its SHA-256 and the checks that leave it out).
 */
import { createHash } from "node:crypto";
import { UserError } from "../errors.ts";
import {
  type CorpusOptions,
  GPT2_VOCAB_SIZE,
  isShardDir,
  readIndex,
  type ShardIndex,
  type SourceInfo,
  type SplitName,
} from "./shards.ts";
import { corpusBase } from "./corpus_files.ts";
import { splitDocuments } from "./documents.ts";
import { binIds, checkIds, isCompressed, openParquet, type SourceFormat } from "./formats.ts";
import type { ResolvedSource } from "./source.ts";

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

/** The prepare settings that change what a file's tokens are: reuse needs them unchanged. */
export function readOptions(o: PrepareOptions): CorpusOptions {
  return {
    text_field: o.textField ?? "text",
    split_on_eot: o.splitOnEot ?? false,
    strip_gutenberg: o.stripGutenberg ?? false,
  };
}

/** What the first pass learns of a source file: size, hash, and why it is left out (if it is). */
export interface FileCheck {
  bytes: number;
  sha256: string;
  skip?: string;
}

const READ_BYTES = 4 << 20;

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

/**
 * First pass over a source file: SHA-256 of its bytes and, by format, its checks: plain text as
 * {@link checkTextFile}; a nanoGPT .bin's size even and ids inside GPT-2's vocabulary (a UserError if not).
 */
export async function checkFile(path: string, format: SourceFormat): Promise<FileCheck> {
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

/** What a prepare starts from: the corpus's files, their formats, sizes and splits, and the previous index. */
export interface CorpusSurvey {
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

export const unitKey = (s: { path: string; row_group?: number }) =>
  s.row_group === undefined ? s.path : `${s.path}#${s.row_group}`;

/** Lists the corpus's files, checks Parquet columns and .bin sizes up front, and reads the previous index. */
export async function surveyCorpus(
  source: ResolvedSource,
  o: PrepareOptions,
): Promise<CorpusSurvey> {
  const files = [...source.files];
  const base = corpusBase(source.path);
  const names = files.map((f) => base === "." ? f : f.slice(base.length + 1));
  const formats = [...source.formats];
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
