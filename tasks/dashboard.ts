/**
 * `deno task dashboard [--port 8080] [--host 127.0.0.1] [checkpoints dir]`: a live, read-only web view of the runs
 * under the checkpoints directory (lib/runs/dashboard/). Serves on loopback unless `--host` says otherwise.
 *
 * Exit codes: 0 stopped with Ctrl-C; 2 bad arguments or a port already in use.
 */
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { startDashboard } from "../lib/runs/dashboard/server.ts";

const USAGE = `usage: deno task dashboard [options] [checkpoints dir]

Serves a live view of every run under the checkpoints directory (default checkpoints/).
Over SSH: ssh -L 8080:127.0.0.1:8080 host, then open http://127.0.0.1:8080/ here.

options:
  --port n      the port (default 8080; 0 picks a free one)
  --host addr   the address to listen on (default 127.0.0.1; the page has no login)
  -h, --help    show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("dashboard", USAGE, {
    port: { type: "string", default: "8080" },
    host: { type: "string", default: "127.0.0.1" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UserError(`dashboard: --port ${values.port}: not a port number (0–65535)`);
  }
  if (positionals.length > 1) throw new UserError("dashboard: name one checkpoints directory");
  const dir = positionals[0] ?? "checkpoints";
  const info = await Deno.stat(dir).catch(() => null); // absent: runs appear there later
  if (info && !info.isDirectory) {
    throw new UserError(`dashboard: ${dir}: a file, where the checkpoints directory belongs`);
  }
  if (!["127.0.0.1", "localhost", "::1"].includes(values.host)) {
    console.error(
      `warning: listening on ${values.host}: the dashboard has no login; anyone who reaches it sees every run`,
    );
  }
  let dash;
  try {
    dash = startDashboard(dir, { host: values.host, port });
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
  await new Promise<void>((resolve) => {
    Deno.addSignalListener("SIGINT", () => dash.shutdown().then(resolve));
  });
});
