/**
 * The helper-thread pool: `parallelFor` hands a range of a kernel's work to helper Workers that share the arrays'
 * memory (SharedArrayBuffer), runs the rest itself, then waits (Atomics) until all parts are done. OpenBLAS (or the
 * WebAssembly GEMM) spreads the matrix products over every core; between products the JS kernels (GELU, LayerNorm,
 * softmax, cross-entropy, AdamW, …) would otherwise run on one.
 *
 * The pool knows no kernel: modules that define kernels (row_kernels.ts, matrix/split_products.ts) register them by name with
 * {@link registerKernels}, and the Workers' entry (pool_worker.ts) loads those modules. Values a kernel needs on
 * every thread that are not arrays or numbers (the BLAS library's path) travel as settings
 * ({@link setHelperSetting}). Arrays not backed by a SharedArrayBuffer, small amounts of work, or Workers that are
 * not up yet: the whole range runs on the calling thread, with the same result (each unit is computed by the same
 * code either way, so results are bit-identical). Workers start on first use and close themselves after
 * {@link IDLE_MS} without work, so a finished program exits.
 */

/** A typed array a kernel reads or writes; shared ones can be handed to Workers without a copy. */
export type Arr = Float32Array | Float64Array | Int32Array;

/** A kernel over work units [lo, hi): `part` is the index of the range (0 = the caller's). */
export type RangeKernel = (a: Arr[], s: number[], lo: number, hi: number, part: number) => void;

const kernels: Record<string, RangeKernel> = {};

/**
 * Makes `table`'s kernels runnable by name in {@link parallelFor} on this thread; a module defining kernels calls
 * it when it loads (each Worker loads the same modules, so the names mean the same there).
 */
export function registerKernels(table: Record<string, RangeKernel>): void {
  Object.assign(kernels, table);
}

function kernelNamed(name: string): RangeKernel {
  const k = kernels[name];
  if (!k) {
    throw new Error(
      `parallelFor: no kernel named "${name}" (its module registers it when imported)`,
    );
  }
  return k;
}

/** Settings every thread sees: set on the caller, sent with each job, read by kernels on any thread. */
const settings: Record<string, string | null> = {};

/** Sets a value that kernels read with {@link helperSetting} on every thread (sent along with each job). */
export function setHelperSetting(key: string, value: string | null): void {
  settings[key] = value;
}

/** The value {@link setHelperSetting} gave `key` on the calling thread (on a helper: as of its current job). */
export function helperSetting(key: string): string | null {
  return settings[key] ?? null;
}

/**
 * A helper Worker closes itself after this long without work (so that a finished program can exit), unless
 * {@link holdHelpers} holds it open.
 */
export const IDLE_MS = 1000;

/** [holds]: while positive, idle helpers stay open; shared with every helper. */
const hold = new Int32Array(new SharedArrayBuffer(4));

/** Worker states, in `state[0]`. */
const IDLE = 1, BUSY = 2, CLOSED = 3; // 0: starting

interface Helper {
  worker: Worker;
  /** [state, done, failed] */
  state: Int32Array;
}

let helpers: Helper[] = [];
let threads: number | null = null;
/** Work (units × cost per unit) below which a call runs on the calling thread only, unless set otherwise. */
export const DEFAULT_MIN_WORK = 1 << 16;
let minWork = DEFAULT_MIN_WORK;
let workersBroken = false;
let splits = 0;

/** How many `parallelFor` calls so far had helpers take part (tests check that the split really happens). */
export function splitCalls(): number {
  return splits;
}

/**
 * One thread per core (at most 8), or `GPT_JS_THREADS` when set. OpenBLAS uses every core for the products; the
 * helpers take the JS kernels between them (GPT-124M on our 2-core VM, steps alternating: batch 8 18.0–20.7 s
 * instead of 21.6–23.6 s with one thread; same peak RSS). The lost helper that once kept this off was a stale
 * notify read as a failure (see the wait in `parallelFor`).
 */
function defaultThreads(): number {
  let n = Math.max(1, navigator.hardwareConcurrency ?? 1);
  try {
    const env = Deno.env.get("GPT_JS_THREADS");
    if (env) n = Math.max(1, Math.floor(Number(env)) || 1);
  } catch {
    // no --allow-env: one per core
  }
  return Math.min(n, 8);
}

/**
 * Sets how many threads `parallelFor` uses (the caller counts as one; 1 = no Workers) and, optionally, the work
 * below which it stays on the calling thread (tests lower it to exercise the split on small arrays). Returns the
 * thread count in force. Default: one per core, or `GPT_JS_THREADS` when set; at most 8.
 */
export function setParallelism(n?: number, minWorkUnits?: number): number {
  if (n !== undefined) {
    threads = Math.max(1, Math.floor(n));
    for (const h of helpers.slice(threads - 1)) {
      if (Atomics.compareExchange(h.state, 0, IDLE, CLOSED) === IDLE) h.worker.terminate();
    }
    helpers = helpers.slice(0, threads - 1);
  }
  if (minWorkUnits !== undefined) minWork = minWorkUnits;
  return threads ??= defaultThreads();
}

/** True when `a` lives in shared memory (a Worker can write it). */
export function isShared(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer !== "undefined" && a.buffer instanceof SharedArrayBuffer;
}

/** A zeroed Float32Array, in shared memory when more than one thread is in use (else plain: less RSS). */
export function sharedF32(n: number): Float32Array {
  return (threads ?? setParallelism()) > 1
    ? new Float32Array(new SharedArrayBuffer(n * 4))
    : new Float32Array(n);
}

/** `a` itself when shared or single-threaded, else a shared copy (for small read-only inputs such as ids). */
export function shared<T extends Arr>(a: T): T {
  if (isShared(a) || (threads ?? setParallelism()) <= 1) return a;
  const C = a.constructor as new (b: SharedArrayBuffer) => T;
  const c = new C(new SharedArrayBuffer(a.byteLength));
  c.set(a as never);
  return c;
}

function startHelper(): Helper | null {
  if (workersBroken) return null;
  try {
    const state = new Int32Array(new SharedArrayBuffer(12));
    const worker = new Worker(new URL("./pool_worker.ts", import.meta.url).href, {
      type: "module",
    });
    worker.onerror = (e) => {
      e.preventDefault(); // a Worker that cannot load (permissions): stay on one thread
      workersBroken = true;
      Atomics.store(state, 0, CLOSED);
    };
    worker.postMessage({ state, hold });
    return { worker, state };
  } catch {
    workersBroken = true;
    return null;
  }
}

/**
 * Runs the kernel registered as `name` over work units [0, n): the caller takes the first share, each ready helper Worker one of
 * the others. `cost` is the work per unit (e.g. a row's length) for the small-work cutoff. Runs everything on the
 * calling thread when the work is small, when any array is not shared, or when no Worker is ready.
 */
export function parallelFor(name: string, a: Arr[], s: number[], n: number, cost = 1): void {
  const kernel = kernelNamed(name);
  const t = threads ?? setParallelism();
  if (t <= 1 || n < 2 || n * cost < minWork || !a.every(isShared)) return kernel(a, s, 0, n, 0);
  // Claim the idle helpers (start missing or closed ones for next time).
  const ready: Helper[] = [];
  for (let i = 0; i < t - 1; i++) {
    let h = helpers[i];
    if (!h || Atomics.load(h.state, 0) === CLOSED) {
      const fresh = startHelper();
      if (!fresh) break;
      helpers[i] = h = fresh;
    }
    if (Atomics.compareExchange(h.state, 0, IDLE, BUSY) === IDLE) ready.push(h);
  }
  if (ready.length === 0) return kernel(a, s, 0, n, 0);
  splits++;
  const parts = ready.length + 1;
  const bound = (p: number) => Math.round((n * p) / parts);
  ready.forEach((h, i) => {
    Atomics.store(h.state, 1, 0);
    h.worker.postMessage({
      k: name,
      a,
      s,
      lo: bound(i + 1),
      hi: bound(i + 2),
      part: i + 1,
      settings,
    });
  });
  let error: unknown = null;
  try {
    kernel(a, s, 0, bound(1), 0);
  } catch (err) {
    error = err;
  }
  for (const h of ready) {
    // The done flag decides, not the wake-up: a helper stores the flag, then notifies, so a wake-up can be the late
    // notify of its previous job, which the caller already saw done through the flag.
    while (Atomics.load(h.state, 1) === 0) {
      const woke = Atomics.wait(h.state, 1, 0, 60_000);
      if (woke === "timed-out" && Atomics.load(h.state, 0) === CLOSED) break; // died without finishing
    }
    if (Atomics.load(h.state, 2) !== 0 || Atomics.load(h.state, 1) === 0) {
      Atomics.store(h.state, 2, 0);
      error ??= new Error(`parallelFor(${name}): a helper Worker failed`);
    }
  }
  if (error) throw error;
}

/**
 * Starts the helper Workers that are not running and resolves once each is ready for work (or could not start):
 * `parallelFor` never waits for a starting helper, so a caller that wants the first call split (tests) waits here.
 * Returns how many helpers are ready.
 */
export async function readyHelpers(timeoutMs = 30_000): Promise<number> {
  const t = threads ?? setParallelism();
  for (let i = 0; i < t - 1; i++) {
    if (!helpers[i] || Atomics.load(helpers[i].state, 0) === CLOSED) {
      const fresh = startHelper();
      if (!fresh) break;
      helpers[i] = fresh;
    }
  }
  const deadline = performance.now() + timeoutMs;
  while (helpers.some((h) => Atomics.load(h.state, 0) === 0) && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
  }
  return helpers.filter((h) => Atomics.load(h.state, 0) === IDLE).length;
}

/**
 * Runs `f` with the helper Workers held open: without work for longer than {@link IDLE_MS} (a batch-8 step's
 * largest BLAS products take longer than that) they would close and the next kernel would find them starting
 * again, and run on one thread. Holds nest; once none is left, idle helpers close after IDLE_MS as before.
 */
export async function holdHelpers<T>(f: () => T | Promise<T>): Promise<T> {
  Atomics.add(hold, 0, 1);
  try {
    return await f();
  } finally {
    Atomics.sub(hold, 0, 1);
  }
}

/**
 * The Worker side (pool_worker.ts calls this): marks itself idle, runs posted ranges, signals completion and
 * closes itself after {@link IDLE_MS} without work — unless the caller claimed it in the meantime.
 */
export function serveWorker(scope: {
  onmessage: ((e: MessageEvent) => void) | null;
  close(): void;
}): void {
  let state: Int32Array | null = null;
  let held: Int32Array | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const idle = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (held && Atomics.load(held, 0) > 0) return idle();
      if (state && Atomics.compareExchange(state, 0, IDLE, CLOSED) === IDLE) scope.close();
    }, IDLE_MS);
  };
  scope.onmessage = (e: MessageEvent) => {
    const d = e.data;
    if (d.state) {
      state = d.state as Int32Array;
      held = d.hold as Int32Array;
      Atomics.store(state, 0, IDLE);
      idle();
      return;
    }
    const st = state!;
    Object.assign(settings, d.settings);
    try {
      kernelNamed(d.k)(d.a, d.s, d.lo, d.hi, d.part);
    } catch {
      Atomics.store(st, 2, 1);
    }
    Atomics.store(st, 0, IDLE);
    Atomics.store(st, 1, 1);
    Atomics.notify(st, 1);
    idle();
  };
}
