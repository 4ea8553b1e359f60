/**
 * The file formats a corpus may hold, read as streams with flat memory: plain text, JSON Lines (one object per line)
 * and Parquet (row group by row group), text and JSONL also gzip- or zstd-compressed, and nanoGPT's prepared
 * `train.bin` / `val.bin` (flat little-endian uint16 GPT-2 ids). lib/data/corpus.ts turns what these yield into
 * documents and shards.
 */
import { createHash } from "node:crypto";
import { Decompress } from "fzstd";
import {
  asyncBufferFromFile,
  type FileMetaData,
  parquetMetadataAsync,
  parquetRead,
} from "hyparquet";
import { compressors } from "hyparquet-compressors";
import { UserError } from "../errors.ts";

/** How a source file is read: its documents' layout. */
export type SourceFormat = "text" | "jsonl" | "parquet" | "bin";

/** A counter of the file's own (compressed) bytes consumed so far: prepare's MB/s and ETA. */
export interface ReadCount {
  bytes: number;
}

const COMPRESSED = /\.(gz|zst)$/;

/** A file's format by its name: `.parquet`, `.jsonl`/`.json`/`.ndjson`, nanoGPT's `train.bin`/`val.bin`, else text. */
export function sourceFormat(path: string): SourceFormat {
  const base = path.replace(COMPRESSED, "");
  if (/\.parquet$/.test(base)) {
    if (base !== path) {
      throw new UserError(`${path}: a compressed Parquet file; Parquet compresses inside`);
    }
    return "parquet";
  }
  if (/\.(jsonl|json|ndjson)$/.test(base)) return "jsonl";
  if (base === path && /(^|\/)(train|val)\.bin$/.test(path)) return "bin";
  return "text";
}

/** Whether a file is gzip- or zstd-compressed (by its name). */
export function isCompressed(path: string): boolean {
  return COMPRESSED.test(path);
}

/** Decompresses a zstd stream chunk by chunk with fzstd; a truncated stream throws at its end. */
async function* zstdBlocks(src: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const out: Uint8Array[] = [];
  const d = new Decompress((chunk) => out.push(chunk));
  let prev: Uint8Array | null = null;
  for await (const c of src) {
    if (prev) d.push(prev);
    prev = c;
    yield* out.splice(0);
  }
  d.push(prev ?? new Uint8Array(0), true);
  yield* out.splice(0);
}

/** The file's bytes in blocks, decompressed when its name ends in `.gz` or `.zst`; a corrupt stream is a UserError. */
export async function* byteBlocks(path: string, read: ReadCount = { bytes: 0 }) {
  const file = await Deno.open(path);
  const counted = file.readable.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(c, ctl) {
        read.bytes += c.length;
        ctl.enqueue(c);
      },
    }),
  );
  const kind = path.match(COMPRESSED)?.[1];
  if (!kind) return yield* counted;
  try {
    if (kind === "gz") {
      const gunzip = new DecompressionStream("gzip") as unknown as TransformStream<
        Uint8Array,
        Uint8Array
      >;
      yield* counted.pipeThrough(gunzip);
    } else yield* zstdBlocks(counted);
  } catch (err) {
    throw new UserError(`${path}: truncated or corrupt ${kind} file (${(err as Error).message})`);
  }
}

/** The file's text in blocks (decompressed); `fatal`: invalid UTF-8 is a UserError, else replaced. */
export async function* textBlocks(path: string, read: ReadCount, fatal: boolean) {
  const decoder = new TextDecoder("utf-8", { fatal });
  try {
    for await (const b of byteBlocks(path, read)) {
      const s = decoder.decode(b, { stream: true });
      if (s) yield s;
    }
    const s = decoder.decode();
    if (s) yield s;
  } catch (err) {
    if (err instanceof UserError) throw err;
    throw new UserError(`${path}: not valid UTF-8 text (${(err as Error).message})`);
  }
}

/** One JSON Lines record's text: `null` for a blank line; a UserError naming file and line for anything else. */
function lineText(line: string, path: string, n: number, field: string): string | null {
  if (!/\S/.test(line)) return null;
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (err) {
    throw new UserError(`${path}:${n}: not a JSON object (${(err as Error).message})`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new UserError(`${path}:${n}: not a JSON object (one object per line)`);
  }
  const text = (v as Record<string, unknown>)[field];
  if (typeof text !== "string") {
    const keys = Object.keys(v).slice(0, 10).join(", ");
    throw new UserError(
      `${path}:${n}: data.text_field: ${
        field in v ? `"${field}" is not a string` : `no field "${field}"`
      } (fields: ${keys})`,
    );
  }
  return text;
}

/** The documents of a JSON Lines file (decompressed), line by line: each line's `field`; blank lines skipped. */
export async function* jsonlDocuments(path: string, field: string, read: ReadCount) {
  let carry = "", n = 0;
  for await (const s of textBlocks(path, read, true)) {
    carry += s;
    let start = 0;
    for (let nl = carry.indexOf("\n"); nl >= 0; nl = carry.indexOf("\n", start)) {
      const text = lineText(carry.slice(start, nl), path, ++n, field);
      if (text !== null) yield text;
      start = nl + 1;
    }
    carry = carry.slice(start);
  }
  const text = lineText(carry, path, ++n, field);
  if (text !== null) yield text;
}

/** One row group of a Parquet file: its rows, and the hash and size of its text column chunk (its reuse key). */
export interface RowGroup {
  index: number;
  rowStart: number;
  rows: number;
  bytes: number;
  sha256: string;
}

/** An open Parquet file: its footer, and its text column's row groups. */
export interface ParquetSource {
  path: string;
  file: Awaited<ReturnType<typeof asyncBufferFromFile>>;
  metadata: FileMetaData;
  field: string;
}

/** Opens a Parquet file and checks that it has the text column (a UserError listing its columns if not). */
export async function openParquet(path: string, field: string): Promise<ParquetSource> {
  let file, metadata;
  try {
    file = await asyncBufferFromFile(path);
    metadata = await parquetMetadataAsync(file);
  } catch (err) {
    throw new UserError(`${path}: not a readable Parquet file (${(err as Error).message})`);
  }
  const columns = metadata.schema.slice(1).filter((c) => !c.num_children).map((c) => c.name);
  if (!columns.includes(field)) {
    throw new UserError(
      `${path}: data.text_field: no column "${field}" (columns: ${columns.join(", ")})`,
    );
  }
  return { path, file, metadata, field };
}

/** The row groups of an open Parquet file, each hashed by its text column chunk's bytes. */
export async function rowGroups(src: ParquetSource): Promise<RowGroup[]> {
  const out: RowGroup[] = [];
  let rowStart = 0;
  for (const [index, rg] of src.metadata.row_groups.entries()) {
    const col = rg.columns.find((c) => c.meta_data?.path_in_schema[0] === src.field)!.meta_data!;
    const start = Number(col.dictionary_page_offset ?? col.data_page_offset);
    const bytes = Number(col.total_compressed_size);
    const chunk = await src.file.slice(start, start + bytes);
    const sha256 = createHash("sha256").update(new Uint8Array(chunk)).digest("hex");
    const rows = Number(rg.num_rows);
    out.push({ index, rowStart, rows, bytes, sha256 });
    rowStart += rows;
  }
  return out;
}

/** The texts of one row group, in row order; a null or non-string value is a UserError naming the row. */
export async function rowGroupTexts(src: ParquetSource, rg: RowGroup): Promise<string[]> {
  const texts: unknown[] = new Array(rg.rows);
  const rowEnd = rg.rowStart + rg.rows;
  await parquetRead({
    file: src.file,
    metadata: src.metadata,
    columns: [src.field],
    rowStart: rg.rowStart,
    rowEnd,
    compressors,
    onChunk: (c) => {
      for (let r = Math.max(c.rowStart, rg.rowStart); r < Math.min(c.rowEnd, rowEnd); r++) {
        texts[r - rg.rowStart] = c.columnData[r - c.rowStart];
      }
    },
  });
  const bad = texts.findIndex((t) => typeof t !== "string");
  if (bad >= 0) {
    throw new UserError(
      `${src.path}: row ${rg.rowStart + bad}: data.text_field "${src.field}" is ${
        texts[bad] === null ? "null" : `not text (${typeof texts[bad]})`
      }`,
    );
  }
  return texts as string[];
}

/**
 * Checks a nanoGPT `.bin` block by block: every id below `vocabSize`. `offset` is the block's first token in the
 * file. Throws a UserError naming the file, the position and the id.
 */
export function checkIds(path: string, ids: Uint16Array, offset: number, vocabSize: number) {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] >= vocabSize) {
      throw new UserError(
        `${path}: token ${offset + i} is id ${
          ids[i]
        }, outside the vocabulary of ${vocabSize} (GPT-2's)`,
      );
    }
  }
}

/** Whole little-endian uint16 ids of a nanoGPT .bin, block by block (a block's odd last byte carried over). */
export async function* binIds(path: string, read: ReadCount): AsyncGenerator<Uint16Array> {
  let carry = new Uint8Array(0);
  for await (const b of byteBlocks(path, read)) {
    const all = carry.length ? new Uint8Array([...carry, ...b]) : b;
    const even = all.length & ~1;
    yield new Uint16Array(all.slice(0, even).buffer);
    carry = all.slice(even);
  }
}
