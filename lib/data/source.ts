/**
 * The data source a config names (`data.path`, or each of `data.sources`), resolved once into one value: its kind
 * — the book's one text file, a corpus that `prepare` tokenizes into shards, or a directory of prepared shards —
 * and for a corpus its source files and their formats, listed on first use and kept. The preflight, the data
 * setup and `prepare` take this value instead of each classifying the path again.
 */
import type { Config } from "../config.ts";
import { corpusBase, isGlob, isOneFileCorpus, listSources, statOrNull } from "./corpus_files.ts";
import { type SourceFormat, sourceFormat } from "./formats.ts";
import { isShardDir } from "./shards.ts";

/** What `data.path` names. */
export type DataSourceKind = "text" | "corpus" | "shards";

/** Classifies `data.path`: one text file (the book), a directory or glob of .txt files, or a shard directory. */
export function dataSourceKind(path: string): DataSourceKind {
  if (isGlob(path)) return "corpus";
  const st = statOrNull(path);
  if (!st) return "text"; // missing: the book's file, downloaded from data.url
  if (!st.isDirectory) return isOneFileCorpus(path) ? "corpus" : "text";
  return isShardDir(path) ? "shards" : "corpus";
}

/** Where prepare writes a corpus's shards when `data.shards` is null: `<corpus dir>.shards`. */
export function defaultShardDir(path: string): string {
  if (isOneFileCorpus(path)) {
    return `${path.replace(/\.(gz|zst)$/, "").replace(/\.\w+$/, "")}.shards`;
  }
  const base = corpusBase(path);
  return base === "." ? "corpus.shards" : `${base}.shards`;
}

/** A data path resolved: its kind, and (listed once, on first use) its files and their formats. */
export interface ResolvedSource {
  /** The path as the config says it. */
  readonly path: string;
  readonly kind: DataSourceKind;
  /** A corpus's source files, sorted (a UserError when it has none); the text file itself; none for shards. */
  readonly files: readonly string[];
  /** The format of each of {@link files}, in their order. */
  readonly formats: readonly SourceFormat[];
}

/** Resolves `path` (see {@link ResolvedSource}); its files are listed when first asked for, then kept. */
export function resolveDataSource(path: string): ResolvedSource {
  const kind = dataSourceKind(path);
  let files: string[] | null = null, formats: SourceFormat[] | null = null;
  const list = () =>
    files ??= kind === "corpus" ? listSources(path) : kind === "text" ? [path] : [];
  return {
    path,
    kind,
    get files() {
      return list();
    },
    get formats() {
      return formats ??= list().map(sourceFormat);
    },
  };
}

/** The data sources of a config, each resolved once: those of `data.sources` in order, else `data.path`. */
export function resolveSources(cfg: Config): ResolvedSource[] {
  return (cfg.data.sources?.map((s) => s.path) ?? [cfg.data.path]).map(resolveDataSource);
}
