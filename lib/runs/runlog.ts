/**
 * The run log: one JSONL file per run (`checkpoints/<name>/log.jsonl`), append-only, one JSON object per line, each
 * line written with a single write so that a crash leaves at most a truncated last line.
 *
 * This module is the schema: one typed record per line type ({@link HeaderRecord}, {@link EvalRecord},
 * {@link SampleRecord}, {@link EpochRecord}, {@link SummaryRecord}, {@link InterruptedRecord},
 * {@link ErrorRecord}, {@link CheckpointRecord}, {@link SkipRecord}), one writer ({@link RunLog}) and one reader ({@link readRunLog}). Every writer (this
 * trainer, the PyTorch side) and every reader (reports, `compare`, the dashboard) follows it. The header carries
 * {@link RUN_LOG_SCHEMA}; a header without `schema_version` is version 1 as well (logs written before the field).
 *
 * `elapsed_s` and `tokens_per_s` count from the header that starts their segment (a resumed process starts its
 * own clock).
 */
import { cannotWrite, UserError } from "../errors.ts";
import { currentBackendName } from "../config.ts";

/** The version of the line types below, written in every header as `schema_version`. */
export const RUN_LOG_SCHEMA = 1;

/** Starts each process's segment of a run; a resumed run appends another. */
export interface HeaderRecord {
  type: "header";
  schema_version: number; // RUN_LOG_SCHEMA
  engine: string; // who wrote the segment: "gpt-ts", "torch-ddp", …
  experiment: string;
  run: string;
  config: unknown; // the resolved config (lib/config.ts's Config)
  config_hash: string;
  seed: number;
  backend: string;
  backend_reason: string;
  precision?: string; // "fp32" | "bf16-mixed" (config.precision); absent: fp32 (older logs, other engines)
  precision_detail?: string; // how its products ran, e.g. "bf16-mixed (emulated: …)"
  params: number;
  flops_per_token?: number; // training FLOPs of a token (6·N + 12·L·C·T, lib/train/mfu.ts)
  peak_flops?: number; // measured FLOP/s of the products in the run's precision: MFU's 100 %
  peak_device?: string; // what peak_flops measured (a matrix library and CPU, a GPU)
  versions: Record<string, string>;
  git_commit: string | null;
  start_time: string; // ISO 8601
  resumed_from_step: number | null; // null for a fresh start
  world_size?: number; // processes training together (1 when absent)
  devices?: string[]; // what each rank ran on
}

/** An evaluation: losses on `eval_iter` batches of each split after `step` optimizer steps. */
export interface EvalRecord {
  type: "eval";
  epoch: number; // 1-based
  step: number;
  tokens_seen: number;
  train_loss: number;
  val_loss: number;
  lr: number;
  grad_norm?: number | null;
  elapsed_s: number;
  tokens_per_s: number;
  mfu?: number; // tokens_per_s · flops_per_token / peak_flops (all ranks' tokens over all ranks' peaks)
  mc_items?: number; // training.multiple_choice: items scored, and the fractions right by summed and mean loss
  mc_acc?: number;
  mc_acc_norm?: number;
  val_loss_by_source?: Record<string, number>; // data.sources: each source's own val loss (val_loss: the mixture's)
  rank_tokens_per_s?: number[]; // train_ddp.py: each rank's own tokens/s (tokens_per_s: all ranks')
  peak_mem_bytes?: number[]; // train_ddp.py: each rank's peak memory (CUDA's most allocated, else peak RSS)
}

/** The text sampled at an epoch's end. */
export interface SampleRecord {
  type: "sample";
  epoch: number;
  step: number;
  text: string;
}

/** An epoch's end, after its checkpoint was written. */
export interface EpochRecord {
  type: "epoch";
  epoch: number;
  step: number;
  tokens_seen: number;
  elapsed_s: number;
}

/** The last line of a finished run. */
export interface SummaryRecord {
  type: "summary";
  status: "finished";
  steps: number;
  tokens_seen: number;
  final_train_loss: number | null;
  final_val_loss: number | null;
  best_val_loss: number | null;
  elapsed_s: number;
  tokens_per_s: number;
  skipped_steps?: number; // updates the spike guard skipped (training.skip_spikes set)
  stopped_early?: string; // why the run ended before its epochs (training.early_stop_patience)
}

/** A checkpoint kept besides the latest: `best` (training.keep_best) after an evaluation with a new lowest val loss. */
export interface CheckpointRecord {
  type: "checkpoint";
  kind: "best";
  epoch: number; // 1-based, as in eval lines
  step: number;
  val_loss: number;
}

/** A step whose update the spike guard skipped (training.skip_spikes); z-scores null before the window filled. */
export interface SkipRecord {
  type: "skip";
  step: number;
  loss: number;
  grad_norm: number | null;
  loss_z: number | null;
  grad_z: number | null;
}

/** The last line of a run stopped by a signal or a step limit (a checkpoint was written). */
export interface InterruptedRecord {
  type: "interrupted";
  step: number;
  reason: string;
}

/** The last line of a run that failed. */
export interface ErrorRecord {
  type: "error";
  step: number;
  reason: string;
}

/** Any line of the schema. */
export type LogRecord =
  | HeaderRecord
  | EvalRecord
  | SampleRecord
  | EpochRecord
  | SummaryRecord
  | InterruptedRecord
  | ErrorRecord
  | CheckpointRecord
  | SkipRecord;

/** Appends records to a run log; never rewrites what is there. */
export class RunLog {
  private constructor(private file: Deno.FsFile, readonly path: string) {}

  /** Opens `path` for appending, creating its directory and the file when needed. */
  static open(path: string): RunLog {
    const slash = path.lastIndexOf("/");
    try {
      if (slash > 0) Deno.mkdirSync(path.slice(0, slash), { recursive: true });
      return new RunLog(Deno.openSync(path, { append: true, create: true }), path);
    } catch (err) {
      throw cannotWrite(path, err, "the run log");
    }
  }

  /** Appends `record` as one line, in one write (a short write, which regular files do not do, is finished). */
  write(record: LogRecord): void {
    const bytes = new TextEncoder().encode(JSON.stringify(record) + "\n");
    try {
      for (let off = 0; off < bytes.length;) off += this.file.writeSync(bytes.subarray(off));
    } catch (err) {
      throw cannotWrite(this.path, err, "the run log");
    }
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }
}

/**
 * A line as read back: a record of the schema, whose fields a foreign or older writer may have left out, so
 * readers check what they use (`Number(e.step)`, `typeof h.config`).
 */
export type LogLine = Record<string, unknown> & { type: LogRecord["type"] };

/** The line types a reader knows; any other line is foreign and skipped. */
export const LINE_TYPES: readonly LogRecord["type"][] = [
  "header",
  "eval",
  "sample",
  "epoch",
  "summary",
  "interrupted",
  "error",
  "checkpoint",
  "skip",
];

/** Lines that say what happened along the way, never how a run ended. */
export const ALONG_THE_WAY: readonly string[] = ["sample", "epoch", "checkpoint", "skip"];

/**
 * How a run stands, judged from its log: `finished` (the last line other than sample, epoch, checkpoint and skip lines is a summary),
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
  return parseRunLog(path, text, mtime, now);
}

/**
 * A header written before a backend was renamed (`blas`, now `cpu`) under the new name, in its `backend` and its
 * config's, so that old and new runs of one backend compare as one.
 */
function renameBackend(header: LogLine): void {
  if (typeof header.backend === "string") header.backend = currentBackendName(header.backend);
  const config = header.config as Record<string, unknown> | undefined;
  if (config && typeof config.backend === "string") {
    config.backend = currentBackendName(config.backend);
  }
}

/**
 * {@link readRunLog} on text already read (`mtime`: the file's modification time in milliseconds), for a reader
 * that must know which bytes it parsed, such as the dashboard's live stream.
 */
export function parseRunLog(
  path: string,
  text: string,
  mtime: number,
  now = Date.now(),
): RunLogData {
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
      renameBackend(l);
      if (headers.length) {
        const from = typeof l.resumed_from_step === "number" ? l.resumed_from_step : 0;
        evals = evals.filter((e) => !(Number(e.step) > from));
      }
      headers.push(l);
    } else if (l.type === "eval") evals.push(l);
    else if (l.type === "sample") samples.push(l);
  }

  const last = lines.findLast((l) => !ALONG_THE_WAY.includes(l.type));
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
