/**
 * `deno task dashboard`'s server: a read-only web view of the runs under a checkpoints directory. It serves one
 * page, its script, uPlot from the project's npm dependencies (no CDN), and JSON built with lib/runs/compare.ts,
 * so that the page and `deno task compare` show the same figures. Live lines reach the page over one
 * Server-Sent Events stream per page whose event ids are the byte offsets read so far, so a reconnect resumes.
 */
import uPlot from "uplot";
import { compareRuns, diffConfigs, runConfig, type RunRow } from "../compare.ts";
import { type LogLine, readRunLog } from "../runlog.ts";

/** The most points one curve is served with; longer logs are thinned evenly (the last point always kept). */
export const MAX_POINTS = 2000;
/** How often the live stream looks at the followed logs' sizes (Deno.watchFs misses events on some mounts). */
const POLL_MS = 400;
const PING_MS = 15_000;

const HERE = new URL("./", import.meta.url);
const UPLOT_DIST = import.meta.resolve("uplot/dist/uPlot.iife.min.js").replace(/[^/]*$/, "");
void uPlot; // imported so that `deno run` installs the package whose dist/ files are served

/** A running dashboard. */
export interface Dashboard {
  url: string;
  shutdown(): Promise<void>;
}

/** A row of the run list: compare's figures, its sweep group, and a warning for a log it could not read well. */
export interface DashboardRun extends Partial<RunRow> {
  name: string;
  group: string | null;
  warning: string | null;
}

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
    return real.startsWith(root + "/") ? real : null;
  } catch {
    return null;
  }
}

/** The sweep a run belongs to: the part of its name before the first `.` (`verdict-lr-sweep.lr=0.002`). */
function groupOf(name: string): string | null {
  const dot = name.indexOf(".");
  return dot > 0 ? name.slice(0, dot) : null;
}

/** Every run under `dir` (a directory holding log.jsonl), as the run list shows it. */
export function listRuns(dir: string): DashboardRun[] {
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isDirectory || e.isSymlink).map((e) =>
      e.name
    )
      .sort();
  } catch { /* no directory yet: no runs */ }
  const out: DashboardRun[] = [];
  for (const name of names) {
    const real = runDir(dir, name);
    if (!real) continue;
    const path = `${real}/log.jsonl`;
    try {
      if (!Deno.statSync(path).isFile) continue;
    } catch {
      continue;
    }
    try {
      const { rows, logs, warnings } = compareRuns([path]);
      const foreign = logs[0].header ? null : "no header line: not a gpt-ts run log";
      out.push({ ...rows[0], name, group: groupOf(name), warning: warnings[0] ?? foreign });
    } catch (err) {
      out.push({
        name,
        group: groupOf(name),
        warning: err instanceof Error ? err.message : `${err}`,
      });
    }
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
 * grad_norm), thinned to {@link MAX_POINTS}, its samples, config and the log's byte size (where the live stream
 * starts).
 */
export function runSeries(path: string) {
  const size = Deno.statSync(path).size;
  const log = readRunLog(path);
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
    },
    samples: log.samples.map((s) => ({ step: s.step, epoch: s.epoch, text: s.text })),
    config: runConfig(log),
    warnings: log.warnings,
  };
}

/** The config keys that differ between runs, each run's value of each (compare's `differs`). */
function configDiff(dir: string, names: string[]) {
  const logs = names.map((n) => readRunLog(`${runDir(dir, n)}/log.jsonl`));
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

const json = (v: unknown, status = 200) =>
  new Response(JSON.stringify(v), { status, headers: { "content-type": "application/json" } });

/** Starts the dashboard on `host:port` (port 0: any free one) over checkpoints directory `dir`. */
export function startDashboard(
  dir: string,
  opts: { host?: string; port?: number } = {},
): Dashboard {
  const streams = new Set<() => void>();
  const ac = new AbortController();
  const server = Deno.serve({
    hostname: opts.host ?? "127.0.0.1",
    port: opts.port ?? 8080,
    signal: ac.signal,
    onListen: () => {},
  }, (req) => handle(req, dir, streams));
  const { hostname, port } = server.addr;
  return {
    url: `http://${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}/`,
    async shutdown() {
      for (const close of streams) close();
      await server.shutdown();
    },
  };
}

const TYPES: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "app.js": "text/javascript; charset=utf-8",
  "style.css": "text/css; charset=utf-8",
};

function handle(
  req: Request,
  dir: string,
  streams: Set<() => void>,
): Response | Promise<Response> {
  const url = new URL(req.url);
  const p = url.pathname;
  if (req.method !== "GET") return new Response("read-only\n", { status: 405 });
  if (p === "/") return file(new URL("index.html", HERE), TYPES["index.html"]);
  if (p === "/app.js" || p === "/style.css") {
    return file(new URL(p.slice(1), HERE), TYPES[p.slice(1)]);
  }
  if (p === "/uplot.js") return file(new URL("uPlot.iife.min.js", UPLOT_DIST), TYPES["app.js"]);
  if (p === "/uplot.css") return file(new URL("uPlot.min.css", UPLOT_DIST), TYPES["style.css"]);
  if (p === "/api/runs") return json(listRuns(dir));
  const names = url.searchParams.getAll("run");
  if (p.startsWith("/api/")) {
    const bad = names.find((n) => !runDir(dir, n));
    if (!names.length || bad !== undefined) {
      return json({ error: `${bad ?? "(none)"}: not a run under the checkpoints directory` }, 404);
    }
  }
  try {
    if (p === "/api/run") return json(runSeries(`${runDir(dir, names[0])}/log.jsonl`));
    if (p === "/api/diff") return json(configDiff(dir, names));
  } catch (err) {
    return json({ error: err instanceof Error ? err.message : String(err) }, 404);
  }
  if (p === "/api/events") return events(req, dir, names, streams);
  return new Response("not found\n", { status: 404 });
}

async function file(u: URL, type: string): Promise<Response> {
  return new Response(await Deno.readFile(u), { headers: { "content-type": type } });
}

/**
 * The live stream: for each followed run, the complete lines appended past its offset (a truncated last line
 * waits for its newline). Offsets start from `?from=` (the sizes the page loaded) or the `Last-Event-ID` of a
 * reconnecting EventSource, and each event's id carries them all.
 */
function events(req: Request, dir: string, names: string[], streams: Set<() => void>): Response {
  const url = new URL(req.url);
  const from = url.searchParams.getAll("from").map(Number);
  let offsets: Record<string, number> = {};
  try {
    offsets = JSON.parse(req.headers.get("last-event-id") ?? "null") ?? {};
  } catch { /* a foreign id: start from ?from= */ }
  names.forEach((n, i) => offsets[n] ??= Number.isFinite(from[i]) ? from[i] : 0);
  const enc = new TextEncoder();
  let timer: ReturnType<typeof setInterval> | undefined,
    ping: ReturnType<typeof setInterval> | undefined;
  let closed = false;
  let close = () => {};
  const body = new ReadableStream<Uint8Array>({
    start(ctrl) {
      close = () => {
        if (closed) return;
        closed = true, clearInterval(timer), clearInterval(ping), streams.delete(close);
        try {
          ctrl.close();
        } catch { /* already cancelled */ }
      };
      streams.add(close);
      ctrl.enqueue(enc.encode("retry: 1000\n\n"));
      ping = setInterval(() => ctrl.enqueue(enc.encode(": ping\n\n")), PING_MS);
      timer = setInterval(() => {
        if (closed) return;
        for (const n of names) {
          const lines = readNew(`${runDir(dir, n)}/log.jsonl`, offsets, n);
          if (!lines.length) continue;
          const data = JSON.stringify({ run: n, lines });
          ctrl.enqueue(
            enc.encode(`id: ${JSON.stringify(offsets)}\nevent: lines\ndata: ${data}\n\n`),
          );
        }
      }, POLL_MS);
    },
    cancel() {
      close();
    },
  });
  return new Response(body, {
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
  });
}

/** The complete, parsable lines of `path` past `offsets[name]`; advances the offset past them. */
function readNew(path: string, offsets: Record<string, number>, name: string): unknown[] {
  let f: Deno.FsFile | null = null;
  try {
    const size = Deno.statSync(path).size;
    if (size < offsets[name]) offsets[name] = 0; // replaced (`--fresh`): read it again
    if (size === offsets[name]) return [];
    f = Deno.openSync(path);
    f.seekSync(offsets[name], Deno.SeekMode.Start);
    const buf = new Uint8Array(size - offsets[name]);
    let got = 0;
    while (got < buf.length) {
      const n = f.readSync(buf.subarray(got));
      if (!n) break;
      got += n;
    }
    const end = buf.subarray(0, got).lastIndexOf(10); // held back: a line without its newline yet
    if (end < 0) return [];
    offsets[name] += end + 1;
    const out: unknown[] = [];
    for (const raw of new TextDecoder().decode(buf.subarray(0, end)).split("\n")) {
      try {
        if (raw.trim()) out.push(JSON.parse(raw));
      } catch { /* a foreign line: readRunLog warns about it on the next load */ }
    }
    return out;
  } catch {
    return [];
  } finally {
    f?.close();
  }
}
