/**
 * The data of a run: the experiment's text (downloaded when missing) or corpus (prepared into shards) as the book's
 * train and validation loaders.
 */
import type { Config, DataSource } from "../config.ts";
import { prepareCorpus } from "../data/corpus.ts";
import {
  defaultShardDir,
  resolveDataSource,
  type ResolvedSource,
  resolveSources,
} from "../data/source.ts";
import { createLoaders, type SplitOptions, type VerdictData } from "../data/data.ts";
import { createShardLoaders, readIndex } from "../data/shards.ts";
import { UserError } from "../errors.ts";
import { MixedLoader, type MixedSource } from "../data/mixture.ts";
import { countOf } from "../progress.ts";
import { createHash } from "node:crypto";

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
export function shardDirOf(
  cfg: Config,
  source: ResolvedSource = resolveDataSource(cfg.data.path),
): string {
  return source.kind === "shards"
    ? cfg.data.path
    : cfg.data.shards ?? defaultShardDir(cfg.data.path);
}

/** The loaders' settings of a config: batch, window, stride, split and seed. */
export function splitOptions(cfg: Config): SplitOptions {
  return {
    trainRatio: cfg.data.train_ratio,
    batchSize: cfg.data.batch_size,
    contextLength: cfg.data.max_length ?? cfg.model.context_length,
    stride: cfg.data.stride ?? cfg.data.max_length ?? cfg.model.context_length,
    seed: cfg.training.seed,
    source: cfg.data.path,
  };
}

/**
 * Builds loaders for the experiment's data and reports its figures. One text file: the book's character split and
 * in-memory loaders. A directory or glob of .txt files: prepared into shards first (a no-op when unchanged), then
 * streamed. A shard directory: streamed. `sources` are the config's data sources resolved (lib/data/source.ts),
 * passed by a caller that resolved them already (the preflight took them too).
 */
export async function prepareData(
  cfg: Config,
  opts: { progress?: boolean; print?: (line: string) => void } = {},
  sources: ResolvedSource[] = resolveSources(cfg),
): Promise<VerdictData> {
  if (cfg.data.sources) return await mixedData(cfg, opts, sources);
  const split = splitOptions(cfg);
  const source = sources[0], kind = source.kind;
  if (kind === "text") return createLoaders(await loadText(cfg), split);
  const dir = shardDirOf(cfg, source);
  if (kind === "corpus") {
    const r = await prepareCorpus(source, {
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

/**
 * The data of `data.sources`: each source prepared as `data.path` would be (its own shards for a corpus), its
 * windows mixed by weight into the train and validation loaders (lib/data/mixture.ts), and its own validation
 * loader kept for its loss apart.
 */
async function mixedData(
  cfg: Config,
  opts: { progress?: boolean; print?: (line: string) => void },
  sources: ResolvedSource[],
): Promise<VerdictData> {
  const parts: (DataSource & { whole: VerdictData; one: VerdictData })[] = [];
  for (const [i, s] of cfg.data.sources!.entries()) {
    const alone = (batch: number): Config => ({
      ...cfg,
      data: {
        ...cfg.data,
        path: s.path,
        url: null,
        shards: null,
        sources: null,
        batch_size: batch,
      },
    });
    // at the run's batch size (the source's own validation loss), and one window at a time (the mixture's)
    parts.push({
      ...s,
      whole: await prepareData(alone(cfg.data.batch_size), opts, [sources[i]]),
      one: await prepareData(alone(1), opts, [sources[i]]),
    });
  }
  const mixed = (split: "trainLoader" | "valLoader"): MixedSource[] =>
    parts.map((p) => ({ name: p.path, weight: p.weight, windows: p.one[split] }));
  const B = cfg.data.batch_size, seed = cfg.training.seed;
  const trainLoader = new MixedLoader(mixed("trainLoader"), B, seed, true);
  const valLoader = new MixedLoader(mixed("valLoader"), B, seed, false);
  const sum = (f: (d: VerdictData) => number) => parts.reduce((n, p) => n + f(p.whole), 0);
  const total = parts.reduce((n, p) => n + p.weight, 0);
  return {
    chars: sum((d) => d.chars),
    tokens: sum((d) => d.tokens),
    trainTokens: sum((d) => d.trainTokens),
    valTokens: sum((d) => d.valTokens),
    trainLoader,
    valLoader,
    valBySource: parts.map((p) => ({ name: p.path, loader: p.whole.valLoader })),
    summary: `data: ${parts.length} sources by weight: ${
      parts.map((p) => `${p.path} ${(p.weight / total).toFixed(2)} (${p.whole.tokens} tokens)`)
        .join(", ")
    }; train ${countOf(trainLoader.length, "batch")}, val ${
      countOf(valLoader.length, "batch")
    } of ${B}×${cfg.data.max_length ?? cfg.model.context_length}`,
    source: "data.sources",
    fingerprint: createHash("sha256").update(JSON.stringify(parts.map((p) => [
      p.path,
      p.weight,
      p.whole.fingerprint ?? `${p.whole.tokens} tokens`,
    ]))).digest("hex").slice(0, 16),
  };
}
