/**
 * `deno task dashboard`'s server: a read-only web view of the runs under a checkpoints directory. It serves one
 * page, its script, uPlot from the project's npm dependencies (no CDN), and JSON built with lib/runs/compare.ts,
 * so that the page and `deno task compare` show the same figures. Live lines reach the page over one
 * Server-Sent Events stream per page whose event ids are the byte offsets read so far, so a reconnect resumes.
 */
import uPlot from "uplot";
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

const HERE = new URL("./", import.meta.url);
const UPLOT_DIST = import.meta.resolve("uplot/dist/uPlot.iife.min.js").replace(/[^/]*$/, "");
void uPlot; // imported so that `deno run` installs the package whose dist/ files are served

/** A running dashboard. */
export interface Dashboard {
  url: string;
  shutdown(): Promise<void>;
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
  if (p === "/api/events") {
    const bad = names.find((n) => !runLog(dir, n));
    if (bad === undefined) return events(req, dir, names, streams);
  }
  if (p.startsWith("/api/")) {
    const bad = names.find((n) => !runLog(dir, n));
    if (!names.length || bad !== undefined) {
      return json({ error: `${bad ?? "(none)"}: not a run under the checkpoints directory` }, 404);
    }
  }
  try {
    if (p === "/api/run") return json(runSeries(runLog(dir, names[0])!));
    if (p === "/api/diff") return json(configDiff(dir, names));
  } catch (err) {
    return json({ error: err instanceof Error ? err.message : String(err) }, 404);
  }
  return new Response("not found\n", { status: 404 });
}

async function file(u: URL, type: string): Promise<Response> {
  return new Response(await Deno.readFile(u), { headers: { "content-type": type } });
}
