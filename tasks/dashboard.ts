/**
 * `deno task dashboard [--port 8080] [--host 127.0.0.1] [checkpoints dir]`: a live, read-only web view of the runs
 * under the checkpoints directory (lib/views/dashboard/). Serves on loopback unless `--host` says otherwise; off
 * loopback every request needs a token (generated, or `--token`), printed once in the URL.
 *
 * Exit codes: 0 stopped with Ctrl-C; 2 bad arguments, a directory that is not there, or a port already in use.
 */
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { isLoopback, startDashboard } from "../lib/views/dashboard/server.ts";

const USAGE = `usage: deno task dashboard [options] [checkpoints dir]

Serves a live view of every run under the checkpoints directory (default checkpoints/).
Over SSH (the safe way to a remote dashboard): ssh -L 8080:127.0.0.1:8080 host, then open
http://127.0.0.1:8080/ here.

options:
  --port n              the port (default 8080; 0 picks a free one)
  --host addr           the address to listen on (default 127.0.0.1); any other than loopback
                        needs a token, printed once in the URL
  --token t             the token to require (16 characters or more; default: a random one
                        off loopback, none on loopback)
  --allowed-host name   a name besides localhost and the address that may reach the page, e.g.
                        a reverse proxy's (repeatable)
  -h, --help            show this help`;

/** The checkpoints directory named on the command line: it must be a directory (the default may not exist yet). */
function checkDir(dir: string, named: boolean): void {
  try {
    if (!Deno.statSync(dir).isDirectory) {
      throw new UserError(`dashboard: ${dir}: not a directory (name the checkpoints directory)`);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
    if (named) throw new UserError(`dashboard: ${dir}: no such directory`);
  }
}

/** 24 random bytes as hex: what Jupyter's generated tokens hold. */
const randomToken = () =>
  Array.from(crypto.getRandomValues(new Uint8Array(24)), (b) => b.toString(16).padStart(2, "0"))
    .join("");

await runTask(async () => {
  const parsed = parseTaskArgs("dashboard", USAGE, {
    port: { type: "string", default: "8080" },
    host: { type: "string", default: "127.0.0.1" },
    token: { type: "string" },
    "allowed-host": { type: "string", multiple: true, default: [] },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UserError(`dashboard: --port ${values.port}: not a port number (0–65535)`);
  }
  if (positionals.length > 1) throw new UserError("dashboard: name one checkpoints directory");
  const dir = positionals[0] ?? "checkpoints";
  checkDir(dir, positionals.length > 0);
  if (values.token !== undefined && values.token.length < 16) {
    throw new UserError(
      "dashboard: --token: 16 characters or more (or leave it out for a random one)",
    );
  }
  const token = values.token ??
    (isLoopback(values.host) ? null : randomToken());
  let dash;
  try {
    dash = startDashboard(dir, {
      host: values.host,
      port,
      token,
      allowedHosts: values["allowed-host"],
    });
  } catch (err) {
    if (err instanceof Deno.errors.AddrInUse) {
      throw new UserError(`dashboard: --port ${port}: already in use (try --port 0)`);
    }
    throw new UserError(
      `dashboard: cannot listen on ${values.host}:${port} (${
        err instanceof Error ? err.message : err
      })`,
    );
  }
  console.log(`dashboard of ${dir}/ at ${dash.url} (Ctrl-C stops it)`);
  if (!isLoopback(values.host)) {
    console.log(
      `listening on ${values.host}: anyone who can reach it needs the token in that URL; keep it secret ` +
        `(ssh -L 8080:127.0.0.1:8080 to a loopback dashboard is safer)`,
    );
  }
  await new Promise<void>((resolve) => {
    Deno.addSignalListener("SIGINT", () => dash.shutdown().then(resolve));
  });
});
