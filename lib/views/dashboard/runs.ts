/**
 * What the dashboard serves about runs: which names are runs under the checkpoints directory (no `..`, no symlink
 * out of it), the run list's rows (compare's figures, cached by file size and time), and one run's curves.
 * Only complete lines are read: a line still being written waits until its newline is there.
 */
import { diffConfigs, liveStatus, runConfig, type RunRow, summarizeRun } from "../compare.ts";
import { runLockHeld } from "../../runs/lock.ts";
import { type LogLine, parseRunLog, RUNNING_WINDOW_S } from "../../runs/runlog.ts";

/** The most points one curve is served with; longer logs are thinned evenly (the last point always kept). */
export const MAX_POINTS = 2000;

/** A row of the run list: compare's figures, its sweep group, and a warning for a log it could not read well. */
export interface DashboardRun extends Partial<RunRow> {
  name: string;
  group: string | null;
  warning: string | null;
}

/** Whether `real` is `root` or lies under it. */
const inside = (root: string, real: string) => real.startsWith(root + "/");

/**
 * The run directory of `name` under `dir`, or null when the name could leave it: a path separator, `..`, or a
 * symlink whose target lies outside.
 */
export function runDir(dir: string, name: string): string | null {
  if (!name || name.includes("/") || name.includes("\\") || name === "." || name === "..") {
    return null;
  }
  try {
    const root = Deno.realPathSync(dir), real = Deno.realPathSync(`${dir}/${name}`);
    return inside(root, real) ? real : null;
  } catch {
    return null;
  }
}

/** The log file of run `name`, or null when it is missing, not a file, or a symlink out of `dir`. */
export function runLog(dir: string, name: string): string | null {
  const real = runDir(dir, name);
  if (!real) return null;
  try {
    const log = Deno.realPathSync(`${real}/log.jsonl`);
    return inside(Deno.realPathSync(dir), log) && Deno.statSync(log).isFile ? log : null;
  } catch {
    return null;
  }
}

/** A log's complete lines: the text up to its last newline, that many bytes, and the file's mtime (ms). */
export function readComplete(path: string): { text: string; size: number; mtime: number } {
  const st = Deno.statSync(path);
  const bytes = Deno.readFileSync(path);
  const size = bytes.lastIndexOf(10) + 1;
  return {
    text: new TextDecoder().decode(bytes.subarray(0, size)),
    size,
    mtime: st.mtime?.getTime() ?? 0,
  };
}

/** The sweep a run belongs to: the part of its name before the first `.` (`verdict-lr-sweep.lr=0.002`). */
function groupOf(name: string): string | null {
  const dot = name.indexOf(".");
  return dot > 0 ? name.slice(0, dot) : null;
}

interface Cached {
  size: number;
  mtime: number;
  at: number; // when it was summarised
  cost: number; // how long that took (ms)
  row: DashboardRun;
}
const rows = new Map<string, Cached>();

/**
 * One run's row, from compare's summary of its complete lines; a log without a header is a warning row. Cached
 * until the file changes (or a running run's window for counting as running passes). `throttle`: a changed log
 * is read again at most every `throttle` ms, and every 4 times what reading it cost, so that a live view of a
 * 100k-line log does not spend its time re-reading it.
 */
function runRow(name: string, path: string, throttle = 0): DashboardRun {
  const st = Deno.statSync(path), now = Date.now();
  const mtime = st.mtime?.getTime() ?? 0, key = `${name}\0${path}`;
  const hit = rows.get(key);
  const same = hit && hit.size === st.size && hit.mtime === mtime &&
    !(hit.row.status === "running" && now - mtime >= RUNNING_WINDOW_S * 1000);
  if (hit && (same || now - hit.at < Math.max(throttle, 4 * hit.cost))) {
    return stillRunning(hit.row, path);
  }
  let row: DashboardRun;
  try {
    const { text } = readComplete(path);
    const log = parseRunLog(`${name}/log.jsonl`, text, mtime, now); // named relative to the directory
    if (!log.header) {
      const why = "no header line: not a gpt-ts run log";
      row = { name, group: null, warning: log.warnings[0] ? `${log.warnings[0]}; ${why}` : why };
    } else {
      row = { ...summarizeRun(log), name, group: null, warning: log.warnings[0] ?? null };
      row.status = liveStatus(log, lockOf(path));
    }
  } catch {
    row = { name, group: null, warning: `${name}/log.jsonl: cannot read` };
  }
  rows.set(key, { size: st.size, mtime, at: now, cost: Date.now() - now, row });
  return row;
}

/** The run lock beside the run directory of the log at `path` (`…/<name>/log.jsonl` → `…/<name>.lock`). */
const lockOf = (path: string) => path.replace(/\/log\.jsonl$/, ".lock");

/**
 * A cached row as it stands now: a run that was running when its row was made is `stopped` once no live process
 * holds its lock (killed with SIGKILL, its log stays as it was, so the cache alone would keep it running).
 */
function stillRunning(row: DashboardRun, path: string): DashboardRun {
  if (row.status !== "running" || runLockHeld(lockOf(path))) return row;
  return { ...row, status: "stopped" };
}

/**
 * Every run under `dir` (a directory holding log.jsonl), as the run list shows it, sorted by name; runs whose
 * name shares a sweep prefix with another are grouped. `throttle`: see {@link runRow}.
 */
export function listRuns(dir: string, throttle = 0): DashboardRun[] {
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isDirectory || e.isSymlink)
      .map((e) => e.name).sort();
  } catch { /* no directory yet: no runs */ }
  const out: DashboardRun[] = [];
  for (const name of names) {
    const path = runLog(dir, name);
    if (!path) continue;
    try {
      out.push({ ...runRow(name, path, throttle), group: groupOf(name) });
    } catch { /* removed while listing */ }
  }
  const sizes = new Map<string, number>();
  for (const r of out) if (r.group) sizes.set(r.group, (sizes.get(r.group) ?? 0) + 1);
  for (const r of out) if (r.group && sizes.get(r.group)! < 2) r.group = null;
  return out;
}

/** Keeps at most `max` items, evenly spaced, always the first and the last. */
export function thin<T>(xs: T[], max = MAX_POINTS): T[] {
  if (xs.length <= max) return xs;
  const out: T[] = [];
  const stride = (xs.length - 1) / (max - 1);
  for (let i = 0; i < max; i++) out.push(xs[Math.round(i * stride)]);
  return out;
}

/**
 * One run's curves as columns (step, tokens seen, wall seconds summed over segments, train/val loss, lr,
 * grad_norm, the multiple-choice scores), thinned to {@link MAX_POINTS}, its samples, config, how many headers it has, and the bytes read
 * (complete lines only: where the live stream starts). `name`: the run's name, which its warnings carry.
 */
export function runSeries(path: string, name = path.split("/").at(-2) ?? path) {
  const { text, size, mtime } = readComplete(path);
  const log = parseRunLog(`${name}/log.jsonl`, text, mtime);
  // wall time: each segment's elapsed_s counts from its header
  let base = 0, segMax = 0;
  const wallOf = new Map<LogLine, number>();
  for (const l of log.lines) {
    if (l.type === "header") base += segMax, segMax = 0;
    const e = Number(l.elapsed_s);
    if (Number.isFinite(e)) segMax = Math.max(segMax, e), wallOf.set(l, base + e);
  }
  const evals = thin(log.evals);
  const col = (k: string) => evals.map((e) => typeof e[k] === "number" ? e[k] as number : null);
  return {
    size,
    headers: log.headers.length,
    wall_base: base, // the last segment's start, for live lines
    wall_seg: segMax,
    points: log.evals.length,
    series: {
      step: col("step"),
      tokens: col("tokens_seen"),
      wall: evals.map((e) => wallOf.get(e) ?? null),
      train: col("train_loss"),
      val: col("val_loss"),
      lr: col("lr"),
      grad_norm: col("grad_norm"),
      mc_acc: col("mc_acc"),
      mc_acc_norm: col("mc_acc_norm"),
    },
    samples: log.samples.map((s) => ({ step: s.step, epoch: s.epoch, text: s.text })),
    config: runConfig(log),
    warnings: log.warnings,
  };
}

/** The config keys that differ between runs, each run's value of each (compare's `differs`). */
export function configDiff(dir: string, names: string[]) {
  const logs = names.map((n) => {
    const { text, mtime } = readComplete(runLog(dir, n)!);
    return parseRunLog(`${n}/log.jsonl`, text, mtime);
  });
  const cfgs = logs.map(runConfig);
  const keys = diffConfigs(cfgs.filter((c) => c !== null));
  const flat = (o: unknown, p = "", out: Record<string, unknown> = {}) => {
    if (o && typeof o === "object" && !Array.isArray(o)) {
      for (const [k, v] of Object.entries(o)) flat(v, p ? `${p}.${k}` : k, out);
    } else out[p] = o;
    return out;
  };
  const flats = cfgs.map((c) => flat(c ?? {}));
  return {
    keys,
    values: Object.fromEntries(names.map((n, i) => [n, keys.map((k) => flats[i][k] ?? null)])),
  };
}
