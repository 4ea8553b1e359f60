/**
 * Comparing runs through their JSONL logs: which config keys differ, how far each run got, its final and best
 * losses, speed and status; a table for the terminal, JSON for scripts, and one SVG with every run's curves.
 */
import { closest, loadExperiment } from "../config.ts";
import { UserError } from "../errors.ts";
import { lineChartSVG, PALETTE, type Series } from "./plot.ts";
import { formatDuration } from "../progress.ts";
import {
  ALONG_THE_WAY,
  type LogLine,
  readRunLog,
  type RunLogData,
  type RunStatus,
} from "../runs/runlog.ts";
import { runLockHeld } from "../runs/lock.ts";
import { readSweep } from "../runs/sweep.ts";

/**
 * One run's figures. `deno task compare --json` prints an array of these, sorted like the table:
 *
 * | field | type | meaning |
 * |---|---|---|
 * | name | string | run name from the log's header (else its directory); where two compared runs share one, their directory's names (`verdict-small.2026-12-06T06-03-43-627Z`, as the dashboard names it) |
 * | path | string | the log file |
 * | differs | {[dotted key]: value} | the config keys whose values differ between the compared runs → this run's value (null: absent) |
 * | backend | string \| null | the backend that ran it (last header) |
 * | precision | string \| null | its segments' precisions in order, each once: `fp32`, `bf16-mixed`, `bf16-mixed→fp32` (a header without one: fp32) |
 * | resumes | number | how many times the run was resumed |
 * | steps | number | optimizer steps done |
 * | tokens_seen | number | training tokens consumed |
 * | final_train_loss, final_val_loss | number \| null | at the last evaluation |
 * | best_train_loss, best_val_loss | number \| null | lowest over the evaluations |
 * | val_perplexity | number \| null | exp(final_val_loss) |
 * | tokens_per_s | number \| null | training throughput over all of the run's segments |
 * | mc_acc, mc_acc_norm | number \| null | multiple-choice scores at the last evaluation that had them (training.multiple_choice) |
 * | mfu | number \| null | model FLOPs utilisation at the last evaluation (a fraction of the measured peak; null: not logged) |
 * | wall_s | number \| null | seconds of training, summed over the run's segments |
 * | status | "finished" \| "interrupted" \| "crashed" \| "running" \| "stopped" | see {@link RowStatus} |
 */
export interface RunRow {
  name: string;
  path: string;
  differs: Record<string, unknown>;
  backend: string | null;
  precision: string | null;
  resumes: number;
  steps: number;
  tokens_seen: number;
  final_train_loss: number | null;
  final_val_loss: number | null;
  best_train_loss: number | null;
  best_val_loss: number | null;
  val_perplexity: number | null;
  tokens_per_s: number | null;
  mfu: number | null;
  mc_acc: number | null;
  mc_acc_norm: number | null;
  wall_s: number | null;
  status: RowStatus;
}

/**
 * A run's status in compare: the log's own ({@link RunStatus}), or `stopped` for a gpt-ts run whose log ends without
 * a summary, interruption or error while no live process holds its run lock (killed with SIGKILL, by the OOM
 * killer, a power cut): it will not go on. While a process holds the lock, such a run is `running` however long its
 * log has been quiet.
 */
export type RowStatus = RunStatus | "stopped";

/** Columns a table can be sorted by (besides the differing config keys). */
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
  "mfu",
  "mc_acc",
  "mc_acc_norm",
  "wall_s",
  "status",
] as const;

/** Columns where more is better: sorted high to low, so that the best run always comes first. */
const HIGHER_FIRST = new Set<string>([
  "steps",
  "tokens_seen",
  "tokens_per_s",
  "mfu",
  "mc_acc",
  "mc_acc_norm",
]);

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

/**
 * The dotted config keys whose values are not the same in every config, in the order they first appear (the run
 * name excluded: it always differs).
 *
 * @example
 * diffConfigs([{ training: { lr: 1e-3, seed: 1 } }, { training: { lr: 4e-4, seed: 1 } }]); // ["training.lr"]
 */
export function diffConfigs(configs: unknown[]): string[] {
  const flat = configs.map((c) => flatten(c));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].filter((k) => k !== "name");
  return keys.filter((k) => new Set(flat.map((f) => JSON.stringify(f[k] ?? null))).size > 1);
}

/** The config a run last ran with (its last header's), or null when the log has no header. */
export function runConfig(log: RunLogData): Record<string, unknown> | null {
  const cfg = log.headers.at(-1)?.config;
  return cfg && typeof cfg === "object" ? cfg as Record<string, unknown> : null;
}

function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function minOf(xs: (number | null)[]): number | null {
  const ok = xs.filter((x): x is number => x !== null);
  return ok.length ? Math.min(...ok) : null;
}

/** The last value of `key` (a finite number) among the lines. */
function lastNum(lines: LogLine[], ...keys: string[]): number | null {
  for (let i = lines.length - 1; i >= 0; i--) {
    for (const k of keys) {
      const v = num(lines[i][k]);
      if (v !== null) return v;
    }
  }
  return null;
}

/**
 * Wall time and throughput over a run's segments (each header starts one, with its own clock): seconds summed,
 * tokens/s weighted by each segment's time.
 */
function timing(lines: LogLine[]): { wall: number | null; rate: number | null } {
  let wall = 0, rated = 0, tokens = 0, seen = false;
  let segWall = 0, segRate: [number, number] | null = null; // (tokens/s, at elapsed_s)
  const close = () => {
    wall += segWall;
    if (segRate) tokens += segRate[0] * segRate[1], rated += segRate[1];
    segWall = 0, segRate = null;
  };
  for (const l of lines) {
    if (l.type === "header") close();
    const e = num(l.elapsed_s), r = num(l.tokens_per_s);
    if (e === null) continue;
    seen = true;
    segWall = Math.max(segWall, e);
    if (r !== null) segRate = [r, e];
  }
  close();
  return { wall: seen ? wall : null, rate: rated > 0 ? tokens / rated : null };
}

/**
 * The precisions a run's segments ran in, in order, each once (`bf16-mixed→fp32`: resumed with another); a header
 * without one (an older log, another engine) ran in fp32. Null when the log has no header.
 */
function precisionOf(log: RunLogData): string | null {
  const seq = log.headers.map((h) => typeof h.precision === "string" ? h.precision : "fp32");
  return seq.length ? seq.filter((p, i) => p !== seq[i - 1]).join("→") : null;
}

/** A run's figures from its log; `diffKeys` picks the config keys shown in `differs`. */
export function summarizeRun(log: RunLogData, diffKeys: string[] = []): RunRow {
  const cfg = flatten(runConfig(log) ?? {});
  const last = log.evals.at(-1);
  const finalVal = num(last?.val_loss);
  const { wall, rate } = timing(log.lines);
  const header = log.headers.at(-1);
  return {
    name: typeof header?.run === "string" ? header.run : log.path.split("/").at(-2) ?? log.path,
    path: log.path,
    differs: Object.fromEntries(diffKeys.map((k) => [k, cfg[k] ?? null])),
    backend: typeof header?.backend === "string" ? header.backend : null,
    precision: precisionOf(log),
    resumes: Math.max(0, log.headers.length - 1),
    steps: lastNum(log.lines, "steps", "step") ?? 0,
    tokens_seen: lastNum(log.lines, "tokens_seen") ?? 0,
    final_train_loss: num(last?.train_loss),
    final_val_loss: finalVal,
    best_train_loss: minOf(log.evals.map((e) => num(e.train_loss))),
    best_val_loss: minOf(log.evals.map((e) => num(e.val_loss))),
    val_perplexity: finalVal === null ? null : Math.exp(finalVal),
    tokens_per_s: rate,
    mfu: num(last?.mfu),
    mc_acc: num(log.evals.findLast((e) => e.mc_acc !== undefined)?.mc_acc),
    mc_acc_norm: num(log.evals.findLast((e) => e.mc_acc_norm !== undefined)?.mc_acc_norm),
    wall_s: wall,
    status: log.status,
  };
}

/** Whether `key` names a column of these rows: one of {@link SORT_KEYS} or a differing config key. */
export function isSortKey(rows: RunRow[], key: string): boolean {
  return (SORT_KEYS as readonly string[]).includes(key) || rows.some((r) => key in r.differs);
}

/** The table's column headings (see {@link formatTable}) → the row field they show. */
export const COLUMN_KEYS: Record<string, (typeof SORT_KEYS)[number]> = {
  run: "name",
  steps: "steps",
  tokens: "tokens_seen",
  train: "final_train_loss",
  val: "final_val_loss",
  "best train": "best_train_loss",
  "best val": "best_val_loss",
  "val ppl": "val_perplexity",
  "tok/s": "tokens_per_s",
  MFU: "mfu",
  acc: "mc_acc",
  acc_norm: "mc_acc_norm",
  wall: "wall_s",
  status: "status",
};

/**
 * The row field `--sort key` means: a column heading as the table prints it (`best val`, `best_val` or `best-val`),
 * a field of `--json` (`best_val_loss`), or a differing config key. Anything else is a UserError with the nearest
 * heading or key.
 */
export function resolveSortKey(rows: RunRow[], key: string): string {
  if (isSortKey(rows, key)) return key;
  const configKey = key.replace(/ \(config\)$/, ""); // a heading of keyHeading's
  if (configKey !== key && rows.some((r) => configKey in r.differs)) return configKey;
  const heading = key.trim().toLowerCase().replace(/[_-]/g, " ");
  if (heading in COLUMN_KEYS) return COLUMN_KEYS[heading];
  const differing = [...new Set(rows.flatMap((r) => Object.keys(r.differs)))];
  const near = closest(heading, Object.keys(COLUMN_KEYS)) ??
    closest(key, [...SORT_KEYS, ...differing]);
  const columns = Object.keys(COLUMN_KEYS).map((c) => c.includes(" ") ? `"${c}"` : c).join(", ");
  throw new UserError(
    `compare: --sort ${key}: not a column${
      near ? `; did you mean ${near.includes(" ") ? `"${near}"` : near}?` : ""
    }` +
      ` (columns: ${columns}${differing.length ? `, ${differing.join(", ")}` : ""})`,
  );
}

/**
 * Sorts rows by a column, best first: losses, perplexity and wall time low to high; steps, tokens and tokens/s
 * high to low; text and config values ascending. Missing values go last.
 */
export function sortRows(rows: RunRow[], key: string): RunRow[] {
  const value = (r: RunRow): unknown =>
    key in r.differs ? r.differs[key] : (r as unknown as Record<string, unknown>)[key];
  const sign = HIGHER_FIRST.has(key) ? -1 : 1;
  return [...rows].sort((a, b) => {
    const x = value(a), y = value(b);
    const xm = x === null || x === undefined, ym = y === null || y === undefined;
    if (xm || ym) return Number(xm) - Number(ym);
    if (typeof x === "number" && typeof y === "number") return sign * (x - y);
    return String(x).localeCompare(String(y));
  });
}

/** A figure with fixed decimals (`-` when missing), so that a column's points line up. */
function cell(v: number | null, digits: number): string {
  return v === null ? "-" : v.toFixed(digits);
}

/** A config value as written in a YAML file: 0.0004, not 0.000400. */
function configCell(v: unknown): string {
  if (v === null || v === undefined) return "-";
  return typeof v === "string" ? v : JSON.stringify(v);
}

/**
 * The lock file of the run whose log is at `path` (`checkpoints/<name>/log.jsonl` → `checkpoints/<name>.lock`), or
 * null for a log file named otherwise (no run directory of ours).
 */
function lockOf(path: string): string | null {
  const m = path.match(/^(.*[^/])\/+log\.jsonl$/);
  return m ? `${m[1]}.lock` : null;
}

/**
 * Where the log has not ended (no summary, interrupted or error line) and a gpt-ts process wrote it: `running` while
 * a live process holds the run's lock at `lockPath`, else `stopped`. Any other log keeps its own status.
 */
export function liveStatus(log: RunLogData, lockPath: string | null): RowStatus {
  const end = log.lines.findLast((l) => !ALONG_THE_WAY.includes(l.type))?.type;
  const ended = end === "summary" || end === "interrupted" || end === "error";
  if (ended || lockPath === null || log.headers.at(-1)?.engine !== "gpt-ts") return log.status;
  return runLockHeld(lockPath) ? "running" : "stopped";
}

/**
 * Rows named apart: runs that share a name (a run and the earlier one `--fresh` moved aside both say
 * `verdict-small` in their header) are named by their directory, as the dashboard names them, or by their log's
 * path where those agree too.
 */
function distinctNames(rows: RunRow[]): RunRow[] {
  const count = (names: string[], n: string) => names.filter((x) => x === n).length;
  const dirOf = (r: RunRow) => r.path.match(/([^/]+)\/+log\.jsonl$/)?.[1] ?? r.path;
  const first = rows.map((r) => r.name);
  const second = rows.map((r, i) => count(first, first[i]) > 1 ? dirOf(r) : first[i]);
  return rows.map((r, i) => ({
    ...r,
    name: count(second, second[i]) > 1 && second[i] !== first[i] ? r.path : second[i],
  }));
}

/**
 * The heading of a differing config key's column: the key, or `<key> (config)` where a column of the table already
 * has that heading (`backend`: the one that ran; the configured one may be `auto`).
 */
function keyHeading(key: string): string {
  return key in COLUMN_KEYS || key === "backend" || key === "precision" ? `${key} (config)` : key;
}

/**
 * A plain-text table, one row per run, in the rows' order: the run, the differing config keys, the backend and the
 * precision when the runs' differ, then steps, tokens, final/best losses, val perplexity, tokens/s, MFU (where a
 * run logged it), wall time, status.
 */
export function formatTable(rows: RunRow[]): string {
  const diffKeys = [...new Set(rows.flatMap((r) => Object.keys(r.differs)))];
  const showBackend = new Set(rows.map((r) => r.backend)).size > 1;
  const showPrecision = new Set(rows.map((r) => r.precision)).size > 1;
  const cols: [string, (r: RunRow) => string][] = [
    ["run", (r) => r.name],
    ...diffKeys.map((k) =>
      [keyHeading(k), (r: RunRow) => configCell(r.differs[k])] as [string, (r: RunRow) => string]
    ),
    ...(showBackend
      ? [["backend", (r: RunRow) => r.backend ?? "-"] as [string, (r: RunRow) => string]]
      : []),
    ...(showPrecision
      ? [["precision", (r: RunRow) => r.precision ?? "-"] as [string, (r: RunRow) => string]]
      : []),
    ["steps", (r) => cell(r.steps, 0)],
    ["tokens", (r) => cell(r.tokens_seen, 0)],
    ["train", (r) => cell(r.final_train_loss, 3)],
    ["val", (r) => cell(r.final_val_loss, 3)],
    ["best train", (r) => cell(r.best_train_loss, 3)],
    ["best val", (r) => cell(r.best_val_loss, 3)],
    ["val ppl", (r) => cell(r.val_perplexity, 1)],
    ["tok/s", (r) => cell(r.tokens_per_s, 1)],
    ...(rows.some((r) => r.mfu !== null)
      ? [["MFU", (r: RunRow) => r.mfu === null ? "-" : `${(r.mfu * 100).toFixed(1)}%`] as [
        string,
        (r: RunRow) => string,
      ]]
      : []),
    ...(rows.some((r) => r.mc_acc !== null)
      ? [["acc", (r: RunRow) => cell(r.mc_acc, 3)], [
        "acc_norm",
        (r: RunRow) => cell(r.mc_acc_norm, 3),
      ]] as [
        string,
        (r: RunRow) => string,
      ][]
      : []),
    ["wall", (r) => r.wall_s === null ? "-" : formatDuration(r.wall_s)],
    ["status", (r) => r.status + (r.resumes ? ` (${r.resumes}× resumed)` : "")],
  ];
  const body = rows.map((r) => cols.map(([, f]) => f(r)));
  const head = cols.map(([h]) => h);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const leftAligned = new Set([0, cols.length - 1]); // run and status read as text
  const line = (cells: string[]) =>
    cells.map((c, i) => leftAligned.has(i) ? c.padEnd(widths[i]) : c.padStart(widths[i]))
      .join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

/**
 * Epoch ticks for a chart's top axis, when every run that logged epoch ends agrees on the tokens seen at each
 * (runs of one sweep usually do); null otherwise.
 */
function epochTicks(logs: RunLogData[]): [number, string][] | null {
  const at = new Map<number, number>(); // epoch → tokens seen at its end
  for (const log of logs) {
    for (const l of log.lines) {
      const e = num(l.epoch), t = num(l.tokens_seen);
      if (l.type !== "epoch" || e === null || t === null) continue;
      if (at.has(e) && at.get(e) !== t) return null;
      at.set(e, t);
    }
  }
  if (!at.size) return null;
  return [[0, "0"], ...[...at].map(([e, t]) => [t, String(e)] as [number, string])];
}

/**
 * One chart of every run's train (solid) and val (dashed) loss against tokens seen, one colour per run, epochs on
 * top when the runs agree on them; below it, where runs logged multiple-choice scores, a chart of those.
 */
export function compareSVG(logs: RunLogData[], rows: RunRow[]): string {
  const series: Series[] = [];
  logs.forEach((log, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = (k: string) =>
      log.evals.map((e) => [num(e.tokens_seen) ?? NaN, num(e[k]) ?? NaN] as [number, number]);
    const group = rows[i].name;
    series.push({ label: "train", group, points: pts("train_loss"), color });
    series.push({ label: "val", group, points: pts("val_loss"), color, dash: true });
  });
  const ticks = epochTicks(logs);
  const loss = lineChartSVG({
    title: rows.length === 1
      ? `${rows[0].name}: training and validation loss`
      : "Training and validation loss",
    xLabel: "Tokens seen",
    yLabel: "Loss",
    series,
    width: 900,
    height: 480,
    secondaryX: ticks ? { label: "Epochs", ticks } : undefined,
  });
  const scores = choiceChart(logs, rows);
  if (!scores) return loss;
  // the two charts stacked in one file: nested <svg> elements, each placed by its y
  return `<svg xmlns="http://www.w3.org/2000/svg" width="900" height="840" viewBox="0 0 900 840">` +
    loss.replace("<svg ", `<svg y="0" `) + scores.replace("<svg ", `<svg y="480" `) + "</svg>\n";
}

/** Every run's multiple-choice acc (solid) and acc_norm (dashed) against tokens seen; null where no run has them. */
function choiceChart(logs: RunLogData[], rows: RunRow[]): string | null {
  if (!rows.some((r) => r.mc_acc !== null)) return null;
  const series: Series[] = [];
  logs.forEach((log, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = (k: string) =>
      log.evals.filter((e) => e[k] !== undefined)
        .map((e) => [num(e.tokens_seen) ?? NaN, num(e[k]) ?? NaN] as [number, number]);
    series.push({ label: "acc", group: rows[i].name, points: pts("mc_acc"), color });
    series.push({
      label: "acc_norm",
      group: rows[i].name,
      points: pts("mc_acc_norm"),
      color,
      dash: true,
    });
  });
  return lineChartSVG({
    title: "Multiple choice: acc and acc_norm",
    xLabel: "Tokens seen",
    yLabel: "Fraction right",
    series,
    width: 900,
    height: 360,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Finding the logs

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

/** Run names under `dir` (directories holding a log.jsonl), sorted. */
function runsIn(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)]
      .filter((e) => e.isDirectory && isFile(`${dir}/${e.name}/log.jsonl`))
      .map((e) => e.name).sort();
  } catch {
    return [];
  }
}

function globLogs(arg: string, checkpointsDir: string): string[] {
  const slash = arg.lastIndexOf("/");
  const dir = slash >= 0 ? arg.slice(0, slash) || "/" : checkpointsDir;
  if (/[*?]/.test(dir)) {
    throw new UserError(`compare: ${arg}: only the last path component may hold * or ?`);
  }
  const pattern = arg.slice(slash + 1), re = globToRegExp(pattern);
  let entries: Deno.DirEntry[] = [];
  try {
    entries = [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name));
  } catch { /* no such directory: matches nothing */ }
  const out: string[] = [];
  for (const e of entries) {
    if (!re.test(e.name) || (e.name.startsWith(".") && !pattern.startsWith("."))) continue;
    if (e.isDirectory && isFile(`${dir}/${e.name}/log.jsonl`)) {
      out.push(`${dir}/${e.name}/log.jsonl`);
    } else if (!e.isDirectory && e.name.endsWith(".jsonl")) out.push(`${dir}/${e.name}`);
  }
  if (!out.length) throw new UserError(`compare: ${arg}: matches no run logs in ${dir}/`);
  return out;
}

/** An experiment YAML's run logs: its sweep's points that have one, else the run it names. */
async function yamlLogs(
  arg: string,
  checkpointsDir: string,
  warnings: string[],
): Promise<string[]> {
  const points = await readSweep(arg);
  const names = points ? points.map((p) => p.name) : [(await loadExperiment(arg)).name];
  const found = names.filter((n) => isFile(`${checkpointsDir}/${n}/log.jsonl`));
  const missing = names.length - found.length;
  if (!found.length) {
    throw new UserError(
      `compare: ${arg}: no run log yet (looked for ${checkpointsDir}/${names[0]}/log.jsonl${
        names.length > 1 ? ` and ${names.length - 1} more` : ""
      })`,
    );
  }
  if (missing) warnings.push(`${arg}: ${missing} of ${names.length} sweep points have no log yet`);
  return found.map((n) => `${checkpointsDir}/${n}/log.jsonl`);
}

/**
 * Resolves command-line arguments to log files. An argument is a `.jsonl` path, a run directory, a run name
 * (`checkpoints/<name>/`), an experiment YAML (its run, or every point of its sweep that has a log), or a glob
 * with `*` and `?` in its last component (`verdict-lr-sweep.*` looks under checkpoints/). Unknown runs throw a
 * UserError; `warnings` notes sweep points without logs.
 */
export async function resolveRunLogs(
  args: string[],
  checkpointsDir = "checkpoints",
): Promise<{ paths: string[]; warnings: string[] }> {
  const paths: string[] = [], warnings: string[] = [];
  for (const arg of args) {
    if (/[*?]/.test(arg)) paths.push(...globLogs(arg, checkpointsDir));
    else if (/\.ya?ml$/i.test(arg)) paths.push(...await yamlLogs(arg, checkpointsDir, warnings));
    else {
      const candidates = arg.endsWith(".jsonl")
        ? [arg]
        : [`${arg.replace(/\/+$/, "")}/log.jsonl`, `${checkpointsDir}/${arg}/log.jsonl`];
      const hit = candidates.find(isFile);
      if (!hit) {
        const known = runsIn(checkpointsDir);
        const hint = known.length
          ? `; ${checkpointsDir}/ holds ${known.slice(0, 8).join(", ")}${
            known.length > 8 ? ", …" : ""
          }`
          : "";
        throw new UserError(
          `compare: ${arg}: no run log (looked for ${candidates.join(", ")})${hint}`,
        );
      }
      paths.push(hit);
    }
  }
  return { paths: [...new Set(paths)], warnings };
}

/**
 * Reads and summarises runs: the config keys are diffed over the runs whose log has a header. `warnings` collects
 * each log's note on skipped lines.
 */
export function compareRuns(
  paths: string[],
): { logs: RunLogData[]; rows: RunRow[]; warnings: string[] } {
  const logs = paths.map((p) => readRunLog(p));
  const keys = diffConfigs(logs.map(runConfig).filter((c) => c !== null))
    .filter((k) => k !== "precision"); // a column of its own, from every segment's header
  return {
    logs,
    rows: distinctNames(
      logs.map((l) => ({ ...summarizeRun(l, keys), status: liveStatus(l, lockOf(l.path)) })),
    ),
    warnings: logs.flatMap((l) => l.warnings),
  };
}
