/**
 * Comparing runs through their JSONL logs: which config keys differ, how far each run got, its final and best
 * losses, speed and status; a table for the terminal, JSON for scripts, and one SVG with every run's curves.
 */
import { UserError } from "./errors.ts";
import { lineChartSVG, PALETTE, type Series } from "./plot.ts";
import { readRunLog, type RunLogData, type RunStatus } from "./runlog.ts";

/** One run's figures (also the `--json` schema: an array of these). */
export interface RunRow {
  name: string; // run name from the header (else the directory)
  path: string; // the log file
  differs: Record<string, unknown>; // config keys that differ between the compared runs → this run's value
  steps: number;
  tokens_seen: number;
  final_train_loss: number | null;
  final_val_loss: number | null;
  best_train_loss: number | null;
  best_val_loss: number | null;
  val_perplexity: number | null; // exp(final_val_loss)
  tokens_per_s: number | null;
  wall_s: number | null;
  status: RunStatus;
}

/** Columns a table can be sorted by. */
export const SORT_KEYS = [
  "name",
  "steps",
  "tokens_seen",
  "final_train_loss",
  "final_val_loss",
  "best_train_loss",
  "best_val_loss",
  "val_perplexity",
  "tokens_per_s",
  "wall_s",
  "status",
] as const;

function flatten(
  obj: unknown,
  prefix = "",
  out: Record<string, unknown> = {},
): Record<string, unknown> {
  if (obj && typeof obj === "object" && !Array.isArray(obj)) {
    for (const [k, v] of Object.entries(obj)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else out[prefix] = obj;
  return out;
}

/** Dotted config keys whose values are not the same in every config (the run name excluded). */
export function diffConfigs(configs: unknown[]): string[] {
  const flat = configs.map((c) => flatten(c));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].filter((k) => k !== "name");
  return keys.filter((k) => new Set(flat.map((f) => JSON.stringify(f[k]))).size > 1).sort();
}

function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function minOf(xs: (number | null)[]): number | null {
  const ok = xs.filter((x): x is number => x !== null);
  return ok.length ? Math.min(...ok) : null;
}

/** A run's figures from its log; `diffKeys` picks the config keys shown. */
export function summarizeRun(log: RunLogData, diffKeys: string[] = []): RunRow {
  const cfg = flatten(log.header?.config ?? {});
  const last = log.evals.at(-1);
  const finalVal = num(last?.val_loss);
  const stepsOf = (l: Record<string, unknown> | undefined) => num(l?.step) ?? 0;
  const lastLine = log.lines.at(-1);
  return {
    name: String(log.header?.run ?? log.path.split("/").at(-2) ?? log.path),
    path: log.path,
    differs: Object.fromEntries(diffKeys.map((k) => [k, cfg[k]])),
    steps: Math.max(stepsOf(log.summary ?? undefined), stepsOf(last), stepsOf(lastLine)),
    tokens_seen: num(log.summary?.tokens_seen) ?? num(last?.tokens_seen) ?? 0,
    final_train_loss: num(last?.train_loss),
    final_val_loss: finalVal,
    best_train_loss: minOf(log.evals.map((e) => num(e.train_loss))),
    best_val_loss: minOf(log.evals.map((e) => num(e.val_loss))),
    val_perplexity: finalVal === null ? null : Math.exp(finalVal),
    tokens_per_s: num(log.summary?.tokens_per_s) ?? num(last?.tokens_per_s),
    wall_s: num(log.summary?.elapsed_s) ?? num(last?.elapsed_s),
    status: log.status,
  };
}

/** Sorts rows by a column: numbers ascending with missing values last, text alphabetically. */
export function sortRows(rows: RunRow[], key: typeof SORT_KEYS[number]): RunRow[] {
  return [...rows].sort((a, b) => {
    const x = a[key], y = b[key];
    if (typeof x === "number" || typeof y === "number") {
      return (typeof x === "number" ? x : Infinity) - (typeof y === "number" ? y : Infinity);
    }
    return String(x).localeCompare(String(y));
  });
}

function cell(v: unknown, digits = 3): string {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** A plain-text table, one row per run. */
export function formatTable(rows: RunRow[]): string {
  const diffKeys = rows.length ? Object.keys(rows[0].differs) : [];
  const head = [
    "run",
    ...diffKeys,
    "steps",
    "tokens",
    "train",
    "val",
    "best val",
    "val ppl",
    "tok/s",
    "wall s",
    "status",
  ];
  const body = rows.map((r) => [
    r.name,
    ...diffKeys.map((k) => cell(r.differs[k], 6)),
    cell(r.steps),
    cell(r.tokens_seen),
    cell(r.final_train_loss),
    cell(r.final_val_loss),
    cell(r.best_val_loss),
    cell(r.val_perplexity, 1),
    cell(r.tokens_per_s, 1),
    cell(r.wall_s, 0),
    r.status,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cols: string[]) =>
    cols.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/** Every run's train (solid) and val (dashed) loss against tokens seen, one colour per run. */
export function compareSVG(logs: RunLogData[], rows: RunRow[]): string {
  const series: Series[] = [];
  logs.forEach((log, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = (k: string) =>
      log.evals.map((e) => [Number(e.tokens_seen), Number(e[k])] as [number, number]);
    series.push({ label: `${rows[i].name} train`, points: pts("train_loss"), color });
    series.push({ label: `${rows[i].name} val`, points: pts("val_loss"), color, dash: true });
  });
  return lineChartSVG({
    title: "Training and validation loss",
    xLabel: "Tokens seen",
    yLabel: "Loss",
    series,
    width: 900,
    height: Math.max(440, 60 + series.length * 18),
  });
}

function globToRegExp(glob: string): RegExp {
  const esc = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*").replaceAll("?", ".");
  return new RegExp(`^${esc}$`);
}

function isFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

/**
 * Resolves command-line arguments to log files: a `.jsonl` path, a run directory, an experiment name
 * (checkpoints/<name>/), an experiment YAML path (its name), or a glob (`*`, `?`) in the last path component.
 */
export function resolveRunLogs(args: string[], checkpointsDir = "checkpoints"): string[] {
  const out: string[] = [];
  for (const arg of args) {
    const slash = arg.lastIndexOf("/");
    const last = arg.slice(slash + 1);
    if (/[*?]/.test(last)) {
      const dir = slash >= 0 ? arg.slice(0, slash) || "/" : checkpointsDir;
      const re = globToRegExp(last);
      let found = 0;
      try {
        for (const e of [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name))) {
          if (!re.test(e.name)) continue;
          const p = e.isDirectory ? `${dir}/${e.name}/log.jsonl` : `${dir}/${e.name}`;
          if (isFile(p) && (e.isDirectory || p.endsWith(".jsonl"))) out.push(p), found++;
        }
      } catch { /* reported below */ }
      if (!found) throw new UserError(`compare: ${arg}: matches no run logs`);
      continue;
    }
    const candidates = arg.endsWith(".jsonl")
      ? [arg]
      : /\.ya?ml$/i.test(arg)
      ? [`${checkpointsDir}/${last.replace(/\.ya?ml$/i, "")}/log.jsonl`]
      : [`${arg}/log.jsonl`, `${checkpointsDir}/${arg}/log.jsonl`];
    const hit = candidates.find(isFile);
    if (!hit) {
      throw new UserError(`compare: ${arg}: no run log (looked for ${candidates.join(", ")})`);
    }
    out.push(hit);
  }
  return [...new Set(out)];
}

/** Reads and summarises runs; warnings collect the skipped-line notes of every log. */
export function compareRuns(
  paths: string[],
): { logs: RunLogData[]; rows: RunRow[]; warnings: string[] } {
  const logs = paths.map((p) => readRunLog(p));
  const keys = diffConfigs(logs.map((l) => l.header?.config ?? {}));
  return {
    logs,
    rows: logs.map((l) => summarizeRun(l, keys)),
    warnings: logs.flatMap((l) => l.warnings),
  };
}
