/**
 * The one rule for every path a user names for a command to write (`handoff --out`, `export --out`, `compare --out`,
 * `train --slurm-array`/`--k8s-job`, `download-gpt2 --out`): a command writes there only when nothing would be lost,
 * i.e. the path is absent, an empty file or directory, or the command's own earlier output, which it recognizes by
 * its mark (`written by gpt-ts: deno task <task>, flag <flag>`): in a file's first KiB, or in a directory's manifest
 * file. The mark holds no `--`, which an XML comment (an SVG's) may not contain; the older mark with the flag as
 * typed (`deno task compare --out`) is still recognized, so a file written before is replaced, not refused.
 * Anything else is refused with one line naming the path, the cause and what to do; nothing is deleted.
 */
import { UserError } from "./errors.ts";

/** How a command recognizes its own earlier output at a path. */
export type OwnOutput =
  /** A file carrying {@link outputMark} (in a comment of its format) in its first KiB. */
  | { kind: "file"; mark: string }
  /**
   * A directory holding `manifest`, a file carrying `mark` in its first KiB (any content, without a mark), or only
   * entries named like `leftovers` (what the command writes before its manifest, e.g. when it was interrupted).
   */
  | { kind: "dir"; manifest: string; mark?: string; leftovers?: RegExp };

/** What is at an output path that {@link claimOutput} let through. */
export type OutputState = "absent" | "empty" | "own";

/** How the bytes this many from a file's start are searched for a mark. */
const MARK_WINDOW = 1024;

const MARK_PREFIX = "written by gpt-ts: deno task ";

/**
 * The mark a command writes into its output so that a later run recognizes it as its own: for `what` =
 * `compare --out`, `written by gpt-ts: deno task compare, flag out`. It is valid inside a comment of every format
 * it goes into: no `--` (XML), no newline, no quote or backslash (JSON, YAML).
 */
export function outputMark(what: string): string {
  return MARK_PREFIX + what.replace(/ --([\w-]+)/g, ", flag $1");
}

/** The marks that name `mark`'s command: `mark` and the form before it (`… deno task compare --out`). */
function markForms(mark: string): string[] {
  if (!mark.startsWith(MARK_PREFIX)) return [mark];
  return [mark, mark.replace(/, flag ([\w-]+)/g, " --$1")];
}

async function head(path: string): Promise<string> {
  const file = await Deno.open(path);
  try {
    const buf = new Uint8Array(MARK_WINDOW);
    const n = await file.read(buf) ?? 0;
    return new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    file.close();
  }
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw new UserError(`${path}: cannot read (${(err as Error).message})`);
  }
}

/** Whether `path` is a file with `mark` (or its older form) in its first KiB (false when it cannot be read). */
async function hasMark(path: string, mark: string): Promise<boolean> {
  const forms = markForms(mark);
  return await head(path).then((text) => forms.some((m) => text.includes(m)), () => false);
}

/**
 * Checks that the command `what` (`handoff --out`, for the message) may write its output at `path`, and says what is
 * there; throws a {@link UserError} of one line otherwise. Call it before any work is done or anything is written.
 *
 * @example
 * await claimOutput("notes.txt", "compare --out", { kind: "file", mark: outputMark("compare --out") });
 * // error: compare --out notes.txt: a file that compare did not write (22 bytes); it is left as it is: name a new file
 */
export async function claimOutput(
  path: string,
  what: string,
  own: OwnOutput,
): Promise<OutputState> {
  if (path === "") throw new UserError(`${what}: needs a path (see --help)`);
  const info = await statOrNull(path);
  if (!info) return "absent";
  const task = what.split(" ")[0];
  const needs = own.kind === "dir" ? "a new or empty directory" : "a new file";
  if (own.kind === "file") {
    if (info.isDirectory) {
      throw new UserError(`${what} ${path}: a directory, where a file belongs; name ${needs}`);
    }
    if (info.size === 0) return "empty";
    if (await hasMark(path, own.mark)) return "own";
    throw new UserError(
      `${what} ${path}: a file that ${task} did not write (${info.size} bytes); ` +
        `it is left as it is: name ${needs}`,
    );
  }
  if (!info.isDirectory) {
    throw new UserError(
      `${what} ${path}: a file (${info.size} bytes), where a directory belongs; ` +
        `it is left as it is: name ${needs}`,
    );
  }
  const entries = await Array.fromAsync(Deno.readDir(path));
  if (entries.length === 0) return "empty";
  if (await hasMark(`${path}/${own.manifest}`, own.mark ?? "")) return "own";
  if (own.leftovers && entries.every((e) => own.leftovers!.test(e.name))) return "own";
  throw new UserError(
    `${what} ${path}: a directory of ${entries.length} entries that ${task} did not write ` +
      `(no ${own.manifest} of its own); it is left as it is: name ${needs}`,
  );
}

/**
 * Puts the finished directory `tmp` at `out`, which {@link claimOutput} let through: an earlier output of the same
 * command there is moved aside first and removed only once the new one is in place.
 */
export async function replaceDir(tmp: string, out: string, state: OutputState): Promise<void> {
  if (state === "absent") return await Deno.rename(tmp, out);
  const aside = `${out}.old-${Deno.pid}`;
  await Deno.rename(out, aside);
  await Deno.rename(tmp, out);
  await Deno.remove(aside, { recursive: true });
}

/**
 * Writes `text` (which carries {@link outputMark}`(what)`, in a comment of its format) to the file `path` a user named
 * for the command `what`, atomically (temporary file, then rename), after {@link claimOutput}.
 *
 * @example
 * await writeOutputFile("sweep.sbatch", "train --slurm-array", `#!/bin/bash\n# ${outputMark("train --slurm-array")}\n…`);
 */
export async function writeOutputFile(path: string, what: string, text: string): Promise<void> {
  const mark = outputMark(what);
  if (!text.slice(0, MARK_WINDOW).includes(mark)) {
    throw new Error(`${what}: output without its mark`);
  }
  await claimOutput(path, what, { kind: "file", mark });
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new UserError(`${what} ${path}: cannot write (${(err as Error).message})`);
  }
}
