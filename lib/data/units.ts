/**
 * What prepare tokenizes or reuses as a whole, read by format: a file (plain or compressed text, JSON Lines, a
 * nanoGPT .bin), or one row group of a Parquet file; each a stream of text, document ends and ready token ids.
 */
import { DOC_END, splitOnEot, stripGutenberg } from "./documents.ts";
import {
  binIds,
  isCompressed,
  jsonlDocuments,
  openParquet,
  type ReadCount,
  rowGroups,
  rowGroupTexts,
  type SourceFormat,
  textBlocks,
} from "./formats.ts";
import type { SplitName } from "./shards.ts";
import { type CorpusSurvey, type FileCheck, type PrepareOptions, readOptions } from "./survey.ts";

/** What a unit's stream holds: text, the end of a document, or ready token ids (nanoGPT). */
export type Item = string | typeof DOC_END | Uint16Array;

/** What prepare tokenizes or reuses as a whole: a file, or one row group of a Parquet file. */
export interface Unit {
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

/** The units of one source file: itself, or (Parquet) its row groups; text read through the document filters. */
export async function unitsOf(
  i: number,
  check: FileCheck,
  c: { sv: CorpusSurvey; o: PrepareOptions },
  found: { marked: boolean },
) {
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
