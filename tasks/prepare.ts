/**
 * `deno task prepare <experiment.yaml> [--force] [--workers n] [--set key=value …]`: tokenizes the experiment's
 * corpus (data.path: a directory or glob of text, JSON Lines and Parquet files, or nanoGPT's
 * train.bin and val.bin) once into uint16 shards plus index.json under data.shards
 * (default <corpus dir>.shards). Re-running skips unchanged files. Exit codes: 0 done, 2 bad input.
 */
import { prepareCorpus } from "../lib/data/corpus.ts";
import { resolveDataSource } from "../lib/data/source.ts";
import { loadExperiment } from "../lib/config.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { shardDirOf } from "../lib/runs/run.ts";
import { countOf, formatBytes } from "../lib/progress.ts";
import { sourceFiles } from "../lib/data/shards.ts";

const USAGE = `usage: deno task prepare <experiment.yaml> [options]

Tokenizes the experiment's corpus (data.path: a directory or glob of .txt, .jsonl, .parquet files, also
.txt.gz/.zst and .jsonl.gz/.zst, or a directory with nanoGPT's train.bin and val.bin) into
shards of uint16 GPT-2 token ids plus index.json in data.shards, split into train and val by document.

options:
  --force            tokenize every file again, even unchanged ones
  --workers n        tokenizing threads (default: every core)
  --set key=value    override a config key (repeatable)
  -h, --help         show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("prepare", USAGE, {
    force: { type: "boolean", default: false },
    workers: { type: "string" },
    set: { type: "string", multiple: true, default: [] },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UserError(`prepare: expected one experiment file (see --help)`);
  }
  let workers: number | undefined;
  if (values.workers !== undefined) {
    workers = Number(values.workers);
    if (!Number.isInteger(workers) || workers < 1) {
      throw new UserError(`prepare: --workers ${values.workers}: expected a positive integer`);
    }
  }
  const cfg = await loadExperiment(positionals[0], values.set ?? []);
  const source = resolveDataSource(cfg.data.path), kind = source.kind;
  let missing = false;
  try {
    await Deno.stat(cfg.data.path);
  } catch {
    missing = kind === "text";
  }
  if (missing) {
    throw new UserError(
      `${
        positionals[0]
      }: data.path: ${cfg.data.path}: no such file or directory (prepare takes a ` +
        `directory or glob of .txt files)`,
    );
  }
  if (kind === "text") {
    throw new UserError(
      `${
        positionals[0]
      }: data.path: ${cfg.data.path} is one text file, which train reads directly; ` +
        `prepare takes a directory or glob of corpus files`,
    );
  }
  if (kind === "shards") return console.log(`${cfg.data.path}: already a prepared shard directory`);
  const dir = shardDirOf(cfg, source);
  const r = await prepareCorpus(source, {
    shardDir: dir,
    seed: cfg.training.seed,
    trainRatio: cfg.data.train_ratio,
    shardTokens: cfg.data.shard_tokens,
    textField: cfg.data.text_field,
    splitOnEot: cfg.data.split_on_eot,
    stripGutenberg: cfg.data.strip_gutenberg,
    workers,
    force: values.force,
  });
  const { train, val } = r.index.splits;
  if (r.upToDate) {
    console.log(`${dir}: up to date (${countOf(sourceFiles(r.index).files, "file")} unchanged)`);
  } else {
    console.log(
      `${dir}: ${countOf(r.tokenized, "file")} tokenized (${formatBytes(r.tokenizedBytes)}, ` +
        `${formatBytes(r.tokenizedBytes / r.seconds)}/s, ${
          (100 * r.cacheHitRate).toFixed(1)
        } % of words from the cache), ` +
        `${r.reused} unchanged, ${r.skipped.length} skipped, in ${r.seconds.toFixed(1)} s` +
        (cfg.data.strip_gutenberg
          ? `; ${r.gutenberg} had Project Gutenberg headers, stripped`
          : ""),
    );
  }
  const split = (s: typeof train) =>
    `${countOf(s.documents, "document")}, ${countOf(s.tokens, "token")}, ` +
    countOf(s.shards.length, "shard");
  console.log(`train: ${split(train)}; val: ${split(val)}`);
});
