/**
 * The run log: one JSONL file per run (`checkpoints/<name>/log.jsonl`), append-only, one JSON object per line, each
 * line written with a single write so that a crash leaves at most a truncated last line.
 *
 * Line types (field `type`):
 * - `header`: experiment, run, config, config_hash, seed, backend, backend_reason, params, versions, git_commit,
 *   start_time, resumed_from_step (null for a fresh start). A resumed run appends another header.
 * - `eval`: epoch (1-based), step (optimizer steps done), tokens_seen, train_loss, val_loss, lr, elapsed_s,
 *   tokens_per_s, grad_norm?
 * - `sample`: epoch, step, text
 * - `epoch`: epoch, step, tokens_seen, elapsed_s (at each epoch's end)
 * - `summary`: status "finished", steps, tokens_seen, final_train_loss, final_val_loss, best_val_loss, elapsed_s,
 *   tokens_per_s
 * - `interrupted` / `error`: step, reason
 *
 * `elapsed_s` and `tokens_per_s` count from the header that starts their segment (a resumed process starts its
 * own clock).
 */
import { UserError } from "../errors.ts";

/** Appends JSON lines to a run log; never rewrites what is there. */
export class RunLog {
  private constructor(private file: Deno.FsFile, readonly path: string) {}

  /** Opens `path` for appending, creating its directory and the file when needed. */
  static open(path: string): RunLog {
    const slash = path.lastIndexOf("/");
    if (slash > 0) Deno.mkdirSync(path.slice(0, slash), { recursive: true });
    return new RunLog(Deno.openSync(path, { append: true, create: true }), path);
  }

  /** Appends `obj` as one line, in one write (a short write, which regular files do not do, is finished). */
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

/** The line types a reader knows; any other line is foreign and skipped. */
export const LINE_TYPES = ["header", "eval", "sample", "epoch", "summary", "interrupted", "error"];

/**
 * How a run stands, judged from its log: `finished` (the last line other than sample/epoch is a summary),
 * `interrupted` (… is an `interrupted` line), `crashed` (… is an `error` line, or there is no such ending and the
 * file has not changed for {@link RUNNING_WINDOW_S} seconds), else `running`.
 */
export type RunStatus = "finished" | "interrupted" | "crashed" | "running";

/** A log untouched this long, with no ending line, counts as crashed rather than running. */
export const RUNNING_WINDOW_S = 300;

/** A parsed run log. */
export interface RunLogData {
  path: string;
  lines: LogLine[]; // every readable line, in file order
  header: LogLine | null; // the first header (a resumed run appends more: see `headers`)
  headers: LogLine[];
  /**
   * The loss curve as the run's history stands: when a resumed segment starts at step s, the earlier segments'
   * evals past s (work redone after a crash) are dropped.
   */
  evals: LogLine[];
  samples: LogLine[];
  summary: LogLine | null; // set when the status is finished
  status: RunStatus;
  warnings: string[]; // at most one: the skipped lines
}

/**
 * Reads a run log. A truncated last line (a crash mid-write) and foreign lines (not JSON, or JSON without a known
 * `type`) are skipped with one warning for the file; content never throws. Throws a UserError when the file is
 * missing or unreadable.
 *
 * @param now the clock for the running/crashed rule (milliseconds since the epoch)
 */
export function readRunLog(path: string, now = Date.now()): RunLogData {
  let text: string, mtime: number;
  try {
    text = Deno.readTextFileSync(path);
    mtime = Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such run log`);
    if (err instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${path}: is a directory, not a run log`);
    }
    throw new UserError(`${path}: cannot read (${err instanceof Error ? err.message : err})`);
  }
  const lines: LogLine[] = [];
  const bad: number[] = [];
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    try {
      const obj = JSON.parse(raw);
      const known = obj && typeof obj === "object" && !Array.isArray(obj) &&
        LINE_TYPES.includes(obj.type);
      if (known) lines.push(obj);
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

  const headers: LogLine[] = [], samples: LogLine[] = [];
  let evals: LogLine[] = [];
  for (const l of lines) {
    if (l.type === "header") {
      if (headers.length) {
        const from = typeof l.resumed_from_step === "number" ? l.resumed_from_step : 0;
        evals = evals.filter((e) => !(Number(e.step) > from));
      }
      headers.push(l);
    } else if (l.type === "eval") evals.push(l);
    else if (l.type === "sample") samples.push(l);
  }

  const last = lines.findLast((l) => l.type !== "sample" && l.type !== "epoch");
  let status: RunStatus;
  if (last?.type === "summary") status = "finished";
  else if (last?.type === "interrupted") status = "interrupted";
  else if (last?.type === "error") status = "crashed";
  else status = now - mtime < RUNNING_WINDOW_S * 1000 ? "running" : "crashed";

  return {
    path,
    lines,
    header: headers[0] ?? null,
    headers,
    evals,
    samples,
    summary: status === "finished" ? last! : null,
    status,
    warnings,
  };
}
