/**
 * `deno task dashboard`'s server: a read-only web view of the runs under a checkpoints directory. It serves one
 * page, its script, uPlot from the project's npm dependencies (no CDN), and JSON built with lib/views/compare.ts,
 * so that the page and `deno task compare` show the same figures. Live lines reach the page over one
 * Server-Sent Events stream per page whose event ids are the byte offsets read so far, so a reconnect resumes.
 * Every request passes guard.ts first (Host, token, same origin, rate); runs are named relative to the directory
 * and no response carries its absolute path.
 */
import { resolve } from "node:path";
import uPlot from "uplot";
import { Guard, type Limits, refuse, SECURITY_HEADERS } from "./guard.ts";
import { events } from "./live.ts";
import { configDiff, listRuns, runLog, runSeries } from "./runs.ts";

export {
  type DashboardRun,
  listRuns,
  MAX_POINTS,
  runDir,
  runLog,
  runSeries,
  thin,
} from "./runs.ts";
export { isLoopback, LIMITS, type Limits } from "./guard.ts";

const HERE = new URL("./", import.meta.url);
const UPLOT_DIST = import.meta.resolve("uplot/dist/uPlot.iife.min.js").replace(/[^/]*$/, "");
void uPlot; // imported so that `deno run` installs the package whose dist/ files are served

/** A running dashboard: `url` carries the token where one is needed (print it once). */
export interface Dashboard {
  url: string;
  shutdown(): Promise<void>;
}

/** Where and for whom a dashboard serves. */
export interface DashboardOptions {
  host?: string;
  port?: number;
  /** Extra names allowed in `Host` (a reverse proxy's). */
  allowedHosts?: string[];
  /** The token every request must carry (in the URL once, then a cookie; or `Authorization: Bearer`). */
  token?: string | null;
  limits?: Partial<Limits>;
}

const JS = "text/javascript; charset=utf-8", CSS = "text/css; charset=utf-8";
/** The page's files, read once: path → (file, type). */
const STATIC: Record<string, [URL, string]> = {
  "/": [new URL("index.html", HERE), "text/html; charset=utf-8"],
  "/app.js": [new URL("app.js", HERE), JS],
  "/style.css": [new URL("style.css", HERE), CSS],
  "/uplot.js": [new URL("uPlot.iife.min.js", UPLOT_DIST), JS],
  "/uplot.css": [new URL("uPlot.min.css", UPLOT_DIST), CSS],
};

/** Starts the dashboard on `host:port` (port 0: any free one) over checkpoints directory `dir`. */
export function startDashboard(dir: string, opts: DashboardOptions = {}): Dashboard {
  const files = new Map(
    Object.entries(STATIC).map(([p, [u, type]]) => [p, { body: Deno.readFileSync(u), type }]),
  );
  const streams = new Set<() => void>();
  const ac = new AbortController();
  const ctx = { dir, files, streams, scrub: scrubber(dir), guard: null as Guard | null };
  const server = Deno.serve({
    hostname: opts.host ?? "127.0.0.1",
    port: opts.port ?? 8080,
    signal: ac.signal,
    onListen: () => {},
  }, (req, info) => {
    const res = handle(req, (info.remoteAddr as Deno.NetAddr).hostname, ctx);
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.headers.set(k, v);
    return res;
  });
  const { hostname, port } = server.addr;
  ctx.guard = new Guard({ ...opts, host: hostname, port, token: opts.token ?? null });
  const shown = hostname === "0.0.0.0" ? "127.0.0.1" : hostname === "::" ? "::1" : hostname;
  const base = `http://${shown.includes(":") ? `[${shown}]` : shown}:${port}/`;
  return {
    url: opts.token ? `${base}?token=${encodeURIComponent(opts.token)}` : base,
    async shutdown() {
      for (const close of streams) close();
      await server.shutdown();
    },
  };
}

/** Takes the checkpoints directory's absolute path (as given and as resolved) out of a response's text. */
function scrubber(dir: string): (text: string) => string {
  const roots = [resolve(dir)];
  try {
    roots.push(Deno.realPathSync(dir));
  } catch { /* not there (yet) */ }
  roots.sort((a, b) => b.length - a.length);
  return (text) => roots.reduce((t, r) => t.replaceAll(`${r}/`, "").replaceAll(r, "."), text);
}

interface Context {
  dir: string;
  files: Map<string, { body: Uint8Array<ArrayBuffer>; type: string }>;
  streams: Set<() => void>;
  scrub: (text: string) => string;
  guard: Guard | null;
}

function handle(req: Request, client: string, ctx: Context): Response {
  const { dir, guard } = ctx;
  const refusal = guard!.check(req);
  if (refusal) return refusal;
  if (req.method !== "GET") return new Response("read-only\n", { status: 405 });
  const adopted = guard!.adoptToken(req);
  if (adopted) return adopted;
  const url = new URL(req.url), p = url.pathname;
  const file = ctx.files.get(p);
  if (file) return new Response(file.body, { headers: { "content-type": file.type } });
  if (!p.startsWith("/api/")) return new Response("not found\n", { status: 404 });
  const json = (v: unknown, status = 200) =>
    new Response(ctx.scrub(JSON.stringify(v)), {
      status,
      headers: { "content-type": "application/json", "cache-control": "no-store" },
    });
  const names = url.searchParams.getAll("run");
  const bad = names.find((n) => !runLog(dir, n));
  if (p === "/api/events" && bad === undefined) {
    const release = guard!.admitStream(client);
    if (!release) {
      return refuse(503, "too many live views open: close some\n", { "retry-after": "10" });
    }
    if (!guard!.take(client)) return release(), tooMany();
    return events(req, dir, names, { streams: ctx.streams, release, scrub: ctx.scrub });
  }
  if (!guard!.take(client)) return tooMany();
  if (p === "/api/runs") return json(listRuns(dir));
  if (!names.length || bad !== undefined) {
    return json({ error: `${bad ?? "(none)"}: not a run under the checkpoints directory` }, 404);
  }
  try {
    if (p === "/api/run") return json(runSeries(runLog(dir, names[0])!, names[0]));
    if (p === "/api/diff") return json(configDiff(dir, names));
  } catch (err) {
    return json({ error: err instanceof Error ? err.message : String(err) }, 404);
  }
  return new Response("not found\n", { status: 404 });
}

const tooMany = () => refuse(429, "too many requests: slow down\n", { "retry-after": "1" });
