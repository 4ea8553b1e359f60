/**
 * What the dashboard's tests and bench share: generated run logs; real HTTP against a dashboard on loopback below
 * what `fetch` allows (any `Host`, `Origin` or `Sec-Fetch-Site` header, many event streams held open at once);
 * and `deno task dashboard` run as its own process, with its memory read from /proc.
 */
import { taskArgs } from "./_helpers.ts";

/**
 * Writes `dir/name/log.jsonl`: a header and `evals` eval lines of a made-up, noisy loss curve at learning rate
 * `lr`, then one sample line per text in `samples`.
 */
export function writeRunLog(
  dir: string,
  name: string,
  evals: number,
  lr: number,
  samples: string[] = [],
): string {
  Deno.mkdirSync(`${dir}/${name}`, { recursive: true });
  const lines = [JSON.stringify({
    type: "header",
    schema_version: 1,
    engine: "gpt-ts",
    run: name,
    experiment: name,
    backend: "cpu",
    config: { name, training: { lr, seed: 123 } },
    resumed_from_step: null,
  })];
  for (let i = 1; i <= evals; i++) {
    const loss = 10 * Math.exp(-i / (evals / 3)) + 1 + 0.3 * Math.sin(i * 7.1);
    lines.push(JSON.stringify({
      type: "eval",
      epoch: 1,
      step: i,
      tokens_seen: 512 * i,
      train_loss: loss,
      val_loss: loss + 0.5,
      lr,
      grad_norm: 1 + Math.cos(i),
      elapsed_s: i * 0.1,
      tokens_per_s: 5120,
    }));
  }
  for (const text of samples) {
    lines.push(JSON.stringify({ type: "sample", epoch: 1, step: evals, text }));
  }
  const path = `${dir}/${name}/log.jsonl`;
  Deno.writeTextFileSync(path, lines.join("\n") + "\n");
  return path;
}

/** One HTTP/1.1 response as raw bytes arrived: its status, lower-cased headers, and body text. */
export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

function parseHead(head: string): Omit<RawResponse, "body"> {
  const [status, ...rest] = head.split("\r\n");
  const headers: Record<string, string> = {};
  for (const l of rest) {
    const i = l.indexOf(":");
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(status.split(" ")[1]), headers };
}

const request = (path: string, headers: Record<string, string>) =>
  new TextEncoder().encode(
    `GET ${path} HTTP/1.1\r\n` +
      Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n",
  );

/**
 * GET `path` from 127.0.0.1:`port` with exactly `headers` (give `host` yourself), reading to the end of the
 * response (the connection is closed after it).
 */
export async function rawGet(
  port: number,
  path: string,
  headers: Record<string, string>,
): Promise<RawResponse> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(request(path, { ...headers, connection: "close" }));
    const bytes = new Uint8Array(await new Response(conn.readable).arrayBuffer());
    const text = new TextDecoder().decode(bytes);
    const end = text.indexOf("\r\n\r\n");
    const head = parseHead(text.slice(0, end));
    let body = text.slice(end + 4);
    if (head.headers["transfer-encoding"] === "chunked") body = unchunk(body);
    return { ...head, body };
  } finally {
    try {
      conn.close();
    } catch { /* closed by reading to the end */ }
  }
}

function unchunk(s: string): string {
  let out = "", i = 0;
  while (i < s.length) {
    const nl = s.indexOf("\r\n", i), n = parseInt(s.slice(i, nl), 16);
    if (!n) break;
    out += s.slice(nl + 2, nl + 2 + n), i = nl + 4 + n;
  }
  return out;
}

/** An open connection that sent one request and read its response's head (an event stream stays open). */
export interface HeldRequest {
  status: number;
  conn: Deno.Conn;
}

/** Sends GET `path` and reads up to the end of the response head, leaving the connection open. */
export async function holdGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<HeldRequest> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(request(path, { host: `127.0.0.1:${port}`, ...headers }));
  let text = "";
  const buf = new Uint8Array(4096);
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) break;
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  return { status: parseHead(text.slice(0, text.indexOf("\r\n\r\n"))).status, conn };
}

/**
 * The resident set size of process `pid` in KiB, from `ps` (Deno lets only --allow-all read another process's
 * /proc files; the test task has --allow-run); null where `ps` (Debian's procps) is not installed.
 */
export async function rssKb(pid: number): Promise<number | null> {
  let out;
  try {
    out = await new Deno.Command("ps", { args: ["-o", "rss=", "-p", String(pid)] }).output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  const kb = Number(new TextDecoder().decode(out.stdout).trim());
  if (!out.success || !(kb > 0)) throw new Error(`ps -o rss= -p ${pid}: no such process`);
  return kb;
}

/** `deno task dashboard` running as its own process, its URL read from the line it printed. */
export interface DashboardProcess {
  proc: Deno.ChildProcess;
  /** What it printed: the URL line first. */
  out: string[];
  url: string;
  port: number;
  /** Stops it with Ctrl-C's signal and waits for it to exit. */
  stop(): Promise<void>;
}

/** A dashboard process that exited before printing its URL: its exit code and what it wrote to stderr. */
export class DashboardExit extends Error {
  constructor(readonly code: number, readonly stdout: string, readonly stderr: string) {
    super(`dashboard exited (code ${code}) before its URL: ${stdout}${stderr}`);
  }
}

/**
 * Starts `deno task dashboard ...args` and waits for the line that names its URL; throws a
 * {@link DashboardExit} when it exits first.
 */
export async function spawnDashboard(args: string[]): Promise<DashboardProcess> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: taskArgs("dashboard", args),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const err = new Response(proc.stderr).text();
  const lines = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const out: string[] = [];
  let text = "";
  while (!out.some((l) => / at http:\/\/\S+/.test(l))) {
    const { value, done } = await lines.read();
    if (done) throw new DashboardExit((await proc.status).code, text, await err);
    text += value;
    out.splice(0, out.length, ...text.split("\n").filter(Boolean));
  }
  (async () => {
    while (!(await lines.read()).done) { /* drain */ }
  })();
  const url = out.find((l) => / at http:\/\/\S+/.test(l))!.match(/ at (http:\/\/\S+)/)![1];
  return {
    proc,
    out,
    url,
    port: Number(new URL(url).port),
    async stop() {
      try {
        proc.kill("SIGINT");
      } catch { /* already gone */ }
      await proc.status, await err;
    },
  };
}
