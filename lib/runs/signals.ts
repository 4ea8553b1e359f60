/**
 * Ctrl-C and SIGTERM for a training run: a stop flag the loop reads between steps, raised from a worker thread.
 */

/** Signals this close to the first one are the same Ctrl-C (the terminal's and `deno task`'s copies). */
export const REPEAT_MS = 1000;

/**
 * Ctrl-C and SIGTERM are watched from a worker thread: a training step keeps the main thread busy for seconds
 * (minutes on large models) and the loop awaits only between epochs, so a listener on the main thread would run
 * far too late. The first signal raises a flag that the loop reads between steps; a second one removes the run
 * lock and re-raises the signal with its default action, which ends the process at once (exit status 130 for
 * SIGINT, 143 for SIGTERM) wherever it was, even mid-write: checkpoints are renamed into place, so the previous
 * one stays whole, and the next start removes the temporary file.
 *
 * A terminal's Ctrl-C under `deno task` arrives twice within a millisecond: the terminal signals the whole
 * foreground process group, and `deno task` forwards its own copy to the child. So a signal within
 * {@link REPEAT_MS} of the first is taken as the same press; the worker's clock is not held up by the step.
 */
const SIGNAL_WORKER = `
const signals = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
let flag, lock, first = 0;
const handlers = signals.map((sig) => [sig, () => {
  if (Atomics.exchange(flag, 0, 1) === 0) {
    first = performance.now();
    console.error("\\nstopping after this step (Ctrl-C again to quit at once)…");
    return;
  }
  if (performance.now() - first < ${REPEAT_MS}) return; // the same press, delivered twice
  try {
    if (Number(Deno.readTextFileSync(lock).trim()) === Deno.pid) Deno.removeSync(lock);
  } catch { /* gone, or not ours */ }
  for (const [s, f] of handlers) Deno.removeSignalListener(s, f);
  try { Deno.kill(Deno.pid, sig); } catch { Deno.kill(Deno.pid, "SIGKILL"); }
}]);
self.onmessage = (e) => {
  flag = new Int32Array(e.data.flag);
  lock = e.data.lock;
  for (const [s, f] of handlers) Deno.addSignalListener(s, f);
  self.postMessage("ready");
};
`;

/** A stop request (Ctrl-C, SIGTERM), readable between steps while the main thread computes. */
export interface StopSignal {
  requested(): boolean;
  close(): void;
}

/** Starts the signal watcher; a second signal removes the lock at `lockPath` and ends the process. */
export async function watchSignals(lockPath: string): Promise<StopSignal> {
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const url = URL.createObjectURL(new Blob([SIGNAL_WORKER], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  try {
    await new Promise((resolve, reject) => {
      worker.onmessage = resolve;
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new Error(`signal watcher: ${e.message}`));
      };
      worker.postMessage({ flag: flag.buffer, lock: lockPath });
    });
  } catch (err) {
    worker.terminate();
    throw err;
  } finally {
    URL.revokeObjectURL(url);
  }
  return { requested: () => Atomics.load(flag, 0) !== 0, close: () => worker.terminate() };
}
