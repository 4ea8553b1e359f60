/**
 * The data of a run: the experiment's text (downloaded when missing) or corpus (prepared into shards) as the book's
 * train and validation loaders.
 */
import type { Config } from "../config.ts";
import { dataSourceKind, defaultShardDir, prepareCorpus } from "../data/corpus.ts";
import { createLoaders, type VerdictData } from "../data/data.ts";
import { createShardLoaders, readIndex } from "../data/shards.ts";
import { UserError } from "../errors.ts";

/** Reads the experiment's text, downloading it from `data.url` first when the file is missing. */
export async function loadText(cfg: Config): Promise<string> {
  const path = cfg.data.path;
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new UserError(`${path}: data.path: cannot read (${err})`);
    }
    if (!cfg.data.url) {
      throw new UserError(`${path}: data.path: file not found and no data.url to download it from`);
    }
    bytes = await download(cfg.data.url, path);
  }
  if (bytes.length === 0) throw new UserError(`${path}: data.path: file is empty`);
  if (bytes.includes(0)) {
    throw new UserError(`${path}: data.path: looks binary (contains NUL bytes), expected text`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new UserError(`${path}: data.path: not valid UTF-8 text`);
  }
}

async function download(url: string, path: string): Promise<Uint8Array> {
  console.error(`${path} not found; downloading ${url}`);
  let bytes: Uint8Array;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(60_000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    bytes = new Uint8Array(await res.arrayBuffer());
  } catch (err) {
    throw new UserError(
      `${path}: data.path: file not found and the download from ${url} failed ` +
        `(${err instanceof Error ? err.message : err}); copy the file there by hand`,
    );
  }
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeFile(tmp, bytes);
  await Deno.rename(tmp, path);
  return bytes;
}

/** Where a config's shards are: data.path itself when it is a shard directory, else data.shards or its default. */
export function shardDirOf(cfg: Config): string {
  return dataSourceKind(cfg.data.path) === "shards"
    ? cfg.data.path
    : cfg.data.shards ?? defaultShardDir(cfg.data.path);
}

/**
 * Builds loaders for the experiment's data and reports its figures. One text file: the book's character split and
 * in-memory loaders. A directory or glob of .txt files: prepared into shards first (a no-op when unchanged), then
 * streamed. A shard directory: streamed.
 */
export async function prepareData(
  cfg: Config,
  opts: { progress?: boolean; print?: (line: string) => void } = {},
): Promise<VerdictData> {
  const split = {
    trainRatio: cfg.data.train_ratio,
    batchSize: cfg.data.batch_size,
    contextLength: cfg.data.max_length ?? cfg.model.context_length,
    stride: cfg.data.stride ?? cfg.data.max_length ?? cfg.model.context_length,
    seed: cfg.training.seed,
    source: cfg.data.path,
  };
  const kind = dataSourceKind(cfg.data.path);
  if (kind === "text") return createLoaders(await loadText(cfg), split);
  const dir = shardDirOf(cfg);
  if (kind === "corpus") {
    const r = await prepareCorpus(cfg.data.path, {
      shardDir: dir,
      seed: cfg.training.seed,
      trainRatio: cfg.data.train_ratio,
      shardTokens: cfg.data.shard_tokens,
      textField: cfg.data.text_field,
      splitOnEot: cfg.data.split_on_eot,
      stripGutenberg: cfg.data.strip_gutenberg,
      progress: opts.progress,
      print: opts.print,
    });
    if (!r.upToDate) {
      (opts.print ?? console.error)(
        `prepared ${dir}: ${r.tokenized} files tokenized, ${r.reused} unchanged, ${r.skipped.length} skipped`,
      );
    }
  }
  return createShardLoaders(
    dir,
    readIndex(dir, cfg.model.vocab_size),
    split,
    cfg.data.shuffle_shards,
  );
}
