/**
 * The run log: one JSONL file per run (`checkpoints/<name>/log.jsonl`), append-only, one JSON object per line,
 * each line written with a single write so a crash leaves at most a truncated last line.
 */

/** Appends JSON lines to a run log. */
export class RunLog {
  private constructor(private file: Deno.FsFile, readonly path: string) {}

  /** Opens (creating directories and the file when needed) for appending. */
  static open(path: string): RunLog {
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    Deno.mkdirSync(dir, { recursive: true });
    return new RunLog(Deno.openSync(path, { append: true, create: true }), path);
  }

  /** Appends one line. */
  write(obj: Record<string, unknown>): void {
    const bytes = new TextEncoder().encode(JSON.stringify(obj) + "\n");
    for (let off = 0; off < bytes.length;) off += this.file.writeSync(bytes.subarray(off));
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }
}

/** A line of the log; `type` says which (header, eval, sample, epoch, summary, interrupted, error). */
export type LogLine = Record<string, unknown> & { type: string };

const KNOWN = new Set(["header", "eval", "sample", "epoch", "summary", "interrupted", "error"]);

/** How a run stands, judged from its log. */
export type RunStatus = "finished" | "interrupted" | "crashed" | "running";

/** A parsed run log. */
export interface RunLogData {
  path: string;
  lines: LogLine[];
  header: LogLine | null; // the first header (a resumed run appends more)
  evals: LogLine[];
  samples: LogLine[];
  summary: LogLine | null;
  status: RunStatus;
  warnings: string[];
}

/** A log untouched this long with no summary counts as crashed rather than running. */
export const RUNNING_WINDOW_S = 300;

/**
 * Reads a run log, tolerating a truncated last line (a crash mid-write) and foreign lines: they are skipped with one
 * warning for the file. Throws only when the file cannot be read.
 */
export function readRunLog(path: string): RunLogData {
  const text = Deno.readTextFileSync(path);
  const lines: LogLine[] = [];
  const bad: number[] = [];
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    try {
      const obj = JSON.parse(raw);
      if (obj && typeof obj === "object" && KNOWN.has(obj.type)) lines.push(obj);
      else bad.push(i + 1);
    } catch {
      bad.push(i + 1);
    }
  });
  const warnings = bad.length
    ? [
      `${path}: skipped ${bad.length} unreadable line${bad.length > 1 ? "s" : ""} (first: line ${
        bad[0]
      })`,
    ]
    : [];
  const last = [...lines].reverse().find((l) => l.type !== "sample" && l.type !== "epoch");
  let status: RunStatus;
  if (last?.type === "summary") status = "finished";
  else if (last?.type === "interrupted") status = "interrupted";
  else if (last?.type === "error") status = "crashed";
  else {
    const mtime = Deno.statSync(path).mtime?.getTime() ?? 0;
    status = Date.now() - mtime < RUNNING_WINDOW_S * 1000 ? "running" : "crashed";
  }
  const of = (t: string) => lines.filter((l) => l.type === t);
  return {
    path,
    lines,
    header: of("header")[0] ?? null,
    evals: of("eval"),
    samples: of("sample"),
    summary: status === "finished" ? last! : null,
    status,
    warnings,
  };
}
