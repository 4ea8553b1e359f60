/**
 * Which matrix library the `cpu` backend runs, chosen by measurement: on the first run on a machine, every
 * library that loads (OpenBLAS or Accelerate, oneDNN, the WebAssembly GEMM) times three of a training step's
 * products (about 2.7 GFLOP, well under a second in all), and the GFLOP/s are cached per machine (CPU model and
 * flags, each library's version, kernel and threads) in the user's cache directory. `auto` then takes the fastest
 * for the run's precision; `GPT_BLAS=openblas|onednn|wasm` forces one.
 */
import {
  type BlasLib,
  cpuFlags,
  cpuInfo,
  env,
  forcedLibrary,
  LIBRARIES,
  type LibraryKind,
  type LoadBlasResult,
  NATIVE_HINT,
  type Precision,
} from "./libraries.ts";
import { sharedF32 } from "../pool.ts";
import { bf16Array, toBf16 } from "../bf16.ts";

/** Measured GFLOP/s of one library, per precision (bf16: emulated libraries time their fp32 product). */
export interface LibrarySpeed {
  describe: string;
  fp32: number;
  "bf16-mixed": number;
}

/** One machine's measurements in the cache file: each figure the best of `samples` runs' measurements. */
export interface MachineSpeeds {
  measured: string;
  speeds: Partial<Record<LibraryKind, LibrarySpeed>>;
  samples?: number;
}

/**
 * The first runs on a machine measure again and keep each library's best figure: other work on the machine only
 * slows a measurement, so one taken in a busy moment does not decide for good.
 */
const SAMPLES = 3;

const ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;
/** M, N, K, transA, transB: a linear layer's forward, a dx of the MLP and a dW, at 256 tokens. */
const SHAPES: [number, number, number, boolean, boolean][] = [
  [256, 768, 768, false, true],
  [256, 3072, 768, false, false],
  [768, 3072, 256, true, false],
];

/** The cache file: `GPT_MATMUL_CACHE`, else `<user cache dir>/gpt-ts/matrix-libraries.json`, or null. */
export function cachePath(): string | null {
  const forced = env("GPT_MATMUL_CACHE");
  if (forced) return forced;
  const home = env("HOME") ?? env("USERPROFILE");
  const base = env("XDG_CACHE_HOME") ??
    (Deno.build.os === "darwin" && home ? `${home}/Library/Caches` : env("LOCALAPPDATA")) ??
    (home ? `${home}/.cache` : undefined);
  return base ? `${base}/gpt-ts/matrix-libraries.json` : null;
}

/** FNV-1a of a string, hex: keeps the cache key short where the CPU's flag list is long. */
function fnv(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16).padStart(8, "0");
}

function cpuModel(): string {
  const l = cpuInfo().split("\n").find((x) => x.startsWith("model name"));
  return l?.split(":")[1].trim() ?? Deno.build.arch;
}

/** The cache key of this machine with these libraries loaded: CPU model and flags, each library as it describes itself. */
export function machineKey(libs: BlasLib[]): string {
  const flags = fnv([...cpuFlags()].sort().join(" "));
  const coretype = env("OPENBLAS_CORETYPE") ?? "";
  return [cpuModel(), `flags ${flags}`, coretype, ...libs.map((l) => l.describe())].join(" | ");
}

/** A cache file's entries by key; {} where it is absent, unreadable or damaged (then measured again). */
export function readCache<T>(path: string | null): Record<string, T> {
  if (!path) return {};
  try {
    const parsed = JSON.parse(Deno.readTextFileSync(path));
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
  } catch {
    return {}; // absent, unreadable or damaged: measure again
  }
}

/** Writes a cache atomically (a temporary file renamed over it); a cache that cannot be written is skipped. */
export function writeCache<T>(path: string | null, all: Record<string, T>): void {
  if (!path) return;
  try {
    Deno.mkdirSync(path.replace(/[/\\][^/\\]*$/, ""), { recursive: true });
    const tmp = `${path}.${Deno.pid}.tmp`;
    Deno.writeTextFileSync(tmp, JSON.stringify(all, null, 1) + "\n");
    Deno.renameSync(tmp, path);
  } catch {
    // read-only home, no --allow-write: measured again next time
  }
}

/** The products of {@link SHAPES} on `lib`, ready to run (operands made once). */
function productsOn(lib: BlasLib, bf16: boolean): () => void {
  const runs = SHAPES.map(([M, N, K, tA, tB]) => {
    const A = sharedF32(M * K).map((_, i) => ((i * 7) % 13) / 13 - 0.5);
    const B = sharedF32(K * N).map((_, i) => ((i * 5) % 11) / 11 - 0.5);
    const C = sharedF32(M * N);
    const lda = tA ? M : K,
      ldb = tB ? K : N,
      ta = tA ? TRANS : NO_TRANS,
      tb = tB ? TRANS : NO_TRANS;
    if (bf16 && lib.gemmBf16) {
      const bf16 = (x: Float32Array) => toBf16(x, bf16Array(x.length, true)) as Uint16Array;
      const a = bf16(A), b = bf16(B), g = lib.gemmBf16;
      return () => g(ta, tb, M, N, K, 1, a, lda, b, ldb, 0, C, N);
    }
    return () => lib.sgemm(ROW_MAJOR, ta, tb, M, N, K, 1, A, lda, B, ldb, 0, C, N);
  });
  return () => runs.forEach((run) => run());
}

/**
 * GFLOP/s of each library and precision: a warm-up pass, then the best of two timed passes, the libraries taking
 * turns so that a burst of other work on the machine slows them alike.
 */
function measure(libs: Map<LibraryKind, BlasLib>): MachineSpeeds {
  const cases = [...libs].flatMap(([kind, lib]) =>
    [false, true].filter((bf16) => !bf16 || lib.gemmBf16).map((bf16) => ({
      kind,
      bf16,
      run: productsOn(lib, bf16),
      best: Infinity,
    }))
  );
  for (let pass = 0; pass < 3; pass++) {
    for (const c of cases) {
      const t0 = performance.now();
      c.run();
      if (pass > 0) c.best = Math.min(c.best, (performance.now() - t0) / 1000);
    }
  }
  const flops = SHAPES.reduce((s, [M, N, K]) => s + 2 * M * N * K, 0) / 1e9;
  const speeds: MachineSpeeds["speeds"] = {};
  for (const [kind, lib] of libs) {
    const of = (bf16: boolean) =>
      round(flops / cases.find((c) => c.kind === kind && c.bf16 === bf16)!.best);
    speeds[kind] = {
      describe: lib.describe(),
      fp32: of(false),
      "bf16-mixed": lib.gemmBf16 ? of(true) : of(false),
    };
  }
  return { measured: new Date().toISOString(), speeds };
}

const round = (x: number) => Math.round(x * 10) / 10;

/** The measurements of this machine: from the cache once it holds {@link SAMPLES}, else measured now and merged. */
export function librarySpeeds(
  libs: Map<LibraryKind, BlasLib>,
): MachineSpeeds & { cached: boolean } {
  const path = cachePath(), key = machineKey([...libs.values()]);
  const hit = readCache<MachineSpeeds>(path)[key];
  const complete = hit && [...libs.keys()].every((k) => hit.speeds?.[k]);
  if (complete && (hit.samples ?? SAMPLES) >= SAMPLES) return { ...hit, cached: true };
  const fresh = measure(libs);
  if (complete) {
    for (const [k, s] of Object.entries(fresh.speeds) as [LibraryKind, LibrarySpeed][]) {
      const old = hit.speeds[k]!;
      s.fp32 = Math.max(s.fp32, old.fp32);
      s["bf16-mixed"] = Math.max(s["bf16-mixed"], old["bf16-mixed"]);
    }
  }
  fresh.samples = complete ? (hit.samples ?? 0) + 1 : 1;
  writeCache(path, { ...readCache(path), [key]: fresh });
  return { ...fresh, cached: false };
}

/** Every library that loads here, in order of preference on a tie. */
export function loadedLibraries(): { libs: Map<LibraryKind, BlasLib>; missing: string[] } {
  const libs = new Map<LibraryKind, BlasLib>(), missing: string[] = [];
  for (const kind of ["dnnl", "native", "wasm"] as const) {
    const r = LIBRARIES[kind]();
    if (r.ok) libs.set(kind, r.lib);
    else missing.push(r.reason);
  }
  return { libs, missing };
}

/** "oneDNN 2.6.3 1340, OpenBLAS 0.3.21 (SkylakeX) 380, WebAssembly GEMM 31 GFLOP/s bf16-mixed (measured …)". */
function speedTable(s: MachineSpeeds & { cached: boolean }, precision: Precision): string {
  const rows = Object.values(s.speeds).sort((a, b) => b[precision] - a[precision])
    .map((l) => `${l.describe.replace(/, \d+ threads?$/, "")} ${Math.round(l[precision])}`);
  const when = s.cached
    ? `cached ${s.measured.slice(0, 10)}`
    : `measured now, run ${s.samples} of ${SAMPLES}`;
  return `${rows.join(", ")} GFLOP/s ${precision} (${when})`;
}

/**
 * The library the `blas` backend uses for `precision`: the one `GPT_BLAS` names, else the fastest measured here.
 * Its description then says what was measured and, where the native library is missing or degraded, the fix.
 */
export function loadBlas(precision: Precision = "fp32"): LoadBlasResult {
  const forced = forcedLibrary();
  if (forced) return LIBRARIES[forced]();
  const { libs, missing } = loadedLibraries();
  if (libs.size === 0) return { ok: false, reason: missing.join("; ") };
  const speeds = librarySpeeds(libs);
  const [kind, lib] = [...libs].reduce((best, cur) =>
    (speeds.speeds[cur[0]]?.[precision] ?? 0) > (speeds.speeds[best[0]]?.[precision] ?? 0)
      ? cur
      : best
  );
  const notes = [`fastest measured: ${speedTable(speeds, precision)}`];
  const native = libs.get("native");
  if (native?.warning) notes.push(native.warning);
  if (!native) notes.push(`no native BLAS, ${NATIVE_HINT}`);
  const describe = () => `${lib.describe()}; ${notes.join("; ")}`;
  return { ok: true, lib: { ...lib, describe }, name: kind };
}
