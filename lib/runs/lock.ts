/**
 * A run lock: `checkpoints/<name>.lock` holds the pid of the process training that run, and that process holds an
 * exclusive OS lock (flock) on the file for as long as it runs, so a second process of the same run refuses to
 * start instead of interleaving writes. The OS drops the lock when its holder dies however it dies (kill -9
 * included), so a lock file left behind is taken over; no pid or /proc check is needed (Deno's permissions deny
 * /proc to the tasks anyway), and pid reuse cannot fool it.
 */
import { UserError } from "../errors.ts";

/**
 * Takes the lock at `path` for this process and returns its release function; refuses with a UserError naming the
 * lock and its holder while another process (or this one, for another call) holds it.
 *
 * @example
 * const release = acquireRunLock("checkpoints/verdict.lock", "verdict");
 * try { await train(); } finally { release(); }
 */
export function acquireRunLock(
  path: string,
  run: string,
  note: (s: string) => void = console.error,
): () => void {
  for (let attempt = 0; attempt < 3; attempt++) {
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true, write: true, create: true });
    } catch (err) {
      throw new UserError(
        `${path}: cannot create the run lock (${err instanceof Error ? err.message : err})`,
      );
    }
    if (!tryLockPatiently(file)) {
      file.close();
      let pid = "another process";
      try {
        const text = Deno.readTextFileSync(path).trim();
        if (/^\d+$/.test(text)) pid = `process ${text}`;
      } catch { /* removed meanwhile */ }
      throw new UserError(
        `${path}: run ${run} is already being trained by ${pid}; wait for it or use another name ` +
          `(--set name=…)`,
      );
    }
    // The holder that just released may have removed the file after we opened it: then our lock is on a
    // deleted file, and we start over on the path's new file.
    let same = false;
    try {
      same = Deno.statSync(path).ino === file.statSync().ino;
    } catch { /* removed */ }
    if (!same) {
      file.close();
      continue;
    }
    const old = new TextDecoder().decode(readAll(file)).trim();
    if (old !== "") note(`note: ${path}: taking over a stale lock of process ${old}`);
    file.truncateSync(0);
    file.seekSync(0, Deno.SeekMode.Start);
    let named = true;
    try {
      file.writeSync(new TextEncoder().encode(`${Deno.pid}\n`));
    } catch {
      // A disk too full for these few bytes: the OS lock is what guards the run, the pid only names its holder
      // to a second process. The run's first real write, its log's first line, then fails naming log.jsonl.
      named = false;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (named) releaseRunLock(path);
      else {
        try {
          Deno.removeSync(path); // ours (locked, the same file), though it holds no pid
        } catch { /* already gone */ }
      }
      file.close(); // drops the OS lock
    };
  }
  throw new UserError(`${path}: could not take the run lock (another process keeps replacing it)`);
}

/**
 * How long a lock taken by someone else is tried again before it counts as held: {@link runLockHeld} (compare's
 * look at a run) holds a shared lock for microseconds, which must not make a run that starts meanwhile refuse.
 */
const PROBE_GRACE_MS = 50;

/** Takes the exclusive lock, trying again for {@link PROBE_GRACE_MS} while someone else holds it. */
function tryLockPatiently(file: Deno.FsFile): boolean {
  const end = Date.now() + PROBE_GRACE_MS;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (!file.tryLockSync(true)) {
    if (Date.now() >= end) return false;
    Atomics.wait(pause, 0, 0, 2);
  }
  return true;
}

/**
 * Whether a live process holds the run lock at `path` (one taking it now, or training the run). False when there is
 * no lock file: a run whose log ends without a summary and whose lock is not held was stopped without writing its
 * end (kill -9, the OOM killer, a power cut). It looks by taking a shared lock for a moment, never the file's
 * content, and creates nothing.
 */
export function runLockHeld(path: string): boolean {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch {
    return false; // no lock file (or none readable): nobody trains the run here
  }
  try {
    if (!file.tryLockSync(false)) return true;
    file.unlockSync();
    return false;
  } finally {
    file.close();
  }
}

function readAll(file: Deno.FsFile): Uint8Array {
  const buf = new Uint8Array(64);
  const n = file.readSync(buf) ?? 0;
  return buf.subarray(0, n);
}

/**
 * Removes the lock file at `path` if it names this process (safe to call twice, or from a signal handler that
 * exits right after; the OS lock goes with the process).
 */
export function releaseRunLock(path: string): void {
  try {
    if (Number(Deno.readTextFileSync(path).trim()) === Deno.pid) Deno.removeSync(path);
  } catch { /* already gone */ }
}
