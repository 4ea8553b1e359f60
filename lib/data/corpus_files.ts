/**
 * Which files a corpus path names: a glob's matches, every text, JSON Lines and Parquet file under a directory
 * (walked at any depth, links followed, loops skipped), a nanoGPT directory's train.bin and val.bin, or one file
 * that is a corpus of its own.
 */
import { UserError } from "../errors.ts";
import { isCompressed, sourceFormat } from "./formats.ts";

/** Whether a path has glob characters. */
export function isGlob(path: string): boolean {
  return /[*?[]/.test(path);
}

/** The file or directory at `path` (links followed), or null where there is none or it cannot be read. */
export function statOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.statSync(path);
  } catch {
    return null;
  }
}

/** A single file that is a corpus of its own: one not read as the book's text (Parquet, JSONL, compressed). */
export function isOneFileCorpus(path: string): boolean {
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
