/**
 * A run lock: `checkpoints/<name>.lock` holds the pid of the process training that run, so a second process of
 * the same run refuses to start instead of interleaving writes. A lock left by a dead process is taken over.
 */
import { UserError } from "./errors.ts";

function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return Deno.build.os !== "linux"; // without /proc, assume the holder may still run
  }
}

/** Takes the lock at `path` for this process; returns its release function. */
export function acquireRunLock(
  path: string,
  run: string,
  note: (s: string) => void = console.error,
): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const file = Deno.openSync(path, { write: true, createNew: true });
      file.writeSync(new TextEncoder().encode(`${Deno.pid}\n`));
      file.close();
      return () => {
        try {
          if (Number(Deno.readTextFileSync(path).trim()) === Deno.pid) Deno.removeSync(path);
        } catch { /* already gone */ }
      };
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) {
        throw new UserError(
          `${path}: cannot create the run lock (${err instanceof Error ? err.message : err})`,
        );
      }
      let pid = NaN;
      try {
        pid = Number(Deno.readTextFileSync(path).trim());
      } catch { /* removed meanwhile */ }
      if (alive(pid)) {
        throw new UserError(
          `${path}: run ${run} is already being trained by process ${pid}; wait for it or use another name ` +
            `(--set name=…)`,
        );
      }
      note(`note: ${path}: taking over a stale lock of process ${Number.isNaN(pid) ? "?" : pid}`);
      try {
        Deno.removeSync(path);
      } catch { /* raced with another taker: the next attempt decides */ }
    }
  }
  throw new UserError(`${path}: could not take the run lock (another process took it)`);
}
