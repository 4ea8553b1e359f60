/**
 * Your own corpus: a directory, glob or file of text (one document per file, or per `<|endoftext|>`-separated part),
 * JSON Lines and Parquet (one document per line or row) files, also gzip- or zstd-compressed (lib/data/formats.ts),
 * or nanoGPT's train.bin and val.bin, tokenized once into shards (lib/data/shards.ts) by `deno task prepare`.
 * Documents are split into train and val by document, deterministically from the seed; each document's ids are followed by `<|endoftext|>`, so a split's stream is its documents joined
 * with `<|endoftext|>` as in the book's section 2.4.
 *
 * Prepare tokenizes on every core (Workers), skips files whose SHA-256 is unchanged since the last prepare (their
 * ids are read back from the old shards), and writes each shard and then the index by tmp + rename: an interrupted
 * prepare leaves the previous index and its shards as they were.
 *
 * This module is the prepare's phases in order; each concern has its own module: the data source resolved once
 * (source.ts), which files a corpus path names (corpus_files.ts), the survey and first pass over them (survey.ts),
 * reading each format into units (units.ts, formats.ts), the tokenizing workers' orchestration (tokenize.ts), the
 * reuse checks (reuse.ts) and the shard writer and index (shard_writer.ts).
 */
import { claimOutput } from "../outputs.ts";
import {
  type FileRecord,
  INDEX_FILE,
  isShardDir,
  type ShardIndex,
  type SplitName,
} from "./shards.ts";
import { checkFile, type CorpusSurvey, type PrepareOptions, surveyCorpus } from "./survey.ts";
import { unitsOf } from "./units.ts";
import {
  type EncodeContext,
  PIECE_CHARS,
  PrepareTally,
  queueEncoding,
  type Step,
  syncStep,
  WorkerPool,
} from "./tokenize.ts";
import { queueReuse, reusable, unchanged } from "./reuse.ts";
import {
  closeSplits,
  DEFAULT_SHARD_TOKENS,
  discardGeneration,
  removeStaleShards,
  SHARD_FILE,
  ShardWriter,
  writeIndex,
} from "./shard_writer.ts";
import { resolveDataSource, type ResolvedSource } from "./source.ts";

export type { PrepareOptions };

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

/**
 * Tokenizes a corpus (a directory or glob of text, JSON Lines and Parquet files, or nanoGPT's train.bin and
 * val.bin) into `o.shardDir`. Re-running with unchanged files and settings does nothing; with some files changed,
 * only those (for Parquet, only the changed row groups) are tokenized again. The phases: survey the corpus; stop
 * when nothing changed; tokenize into new shards; close the splits; write the index; remove stale shards. Bad input
 * is a UserError that leaves the shard directory as it was.
 */
export async function prepareCorpus(
  data: ResolvedSource | string,
  o: PrepareOptions,
): Promise<PrepareResult> {
  const source = typeof data === "string" ? resolveDataSource(data) : data;
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
    await closeSplits(source.path, writers, r.sources, r.skipped);
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
