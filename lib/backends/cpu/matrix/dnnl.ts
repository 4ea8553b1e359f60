/**
 * oneDNN (Debian `libdnnl2`, Fedora `onednn`) as a matrix library through Deno FFI: its BLAS-like calls
 * `dnnl_sgemm` (fp32) and `dnnl_gemm_bf16bf16f32` (bf16 inputs, fp32 accumulation and output; exported by 2.x,
 * though its header does not declare it). Both are row-major and pick their kernel per call (AVX-512, AMX where
 * the CPU has it), so no primitive or descriptor is kept per shape for them; bf16 products of 16 rows or more go
 * to matmul primitives instead, made once per shape (dnnl_matmul.ts), whose AMX kernels are faster. Its threads
 * are OpenMP's (libgomp), set per calling thread with `omp_set_num_threads`.
 */
import type { Sgemm } from "./cblas.ts";
import type { GemmBf16 } from "./libraries.ts";
import { firstLine } from "../../../errors.ts";
import { withoutSignals } from "./signal_mask.ts";
import { check } from "./dnnl_primitives.ts";

const GEMM_PARAMS = [
  "u8",
  "u8",
  "i64",
  "i64",
  "i64",
  "f32",
  "buffer",
  "i64",
  "buffer",
  "i64",
  "f32",
  "buffer",
  "i64",
] as const;

const DNNL_SYMBOLS = {
  dnnl_sgemm: { parameters: GEMM_PARAMS, result: "i32" },
  dnnl_gemm_bf16bf16f32: { parameters: GEMM_PARAMS, result: "i32" },
  dnnl_version: { parameters: [], result: "pointer" },
} as const;

const OMP_SYMBOLS = {
  omp_set_num_threads: { parameters: ["i32"], result: "void" },
  omp_get_max_threads: { parameters: [], result: "i32" },
} as const;

/**
 * Measured on oneDNN 2.6.3 (tests and the README say so): its fp32 products give the same bits on 1 and 2 threads;
 * its bf16 matmul primitives split a product's depth between the threads for some shapes, and its one-row bf16
 * products differ too, so bf16 results are the same run to run on one thread count only.
 */
export const DNNL_THREAD_NOTE = "its bf16 products depend on the thread count";

/** Where the library is looked for, in order. */
export const DNNL_CANDIDATES = ["libdnnl.so.3", "libdnnl.so.2", "libdnnl.so"];

/** oneDNN opened on this thread: its two products, its thread control and its version. */
export interface Dnnl {
  sgemm: Sgemm;
  gemmBf16: GemmBf16;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  /** e.g. "oneDNN 2.6.3". */
  version: string;
  path: string;
}

const NO_TRANS = 111;
/** CBLAS's transpose code as the 'N'/'T' character oneDNN takes. */
const trans = (t: number) => (t === NO_TRANS ? 78 : 84);

function versionOf(ptr: Deno.PointerValue): string {
  if (!ptr) return "oneDNN";
  const v = new Deno.UnsafePointerView(ptr); // dnnl_version_t: int major, minor, patch; const char *hash
  return `oneDNN ${v.getInt32(0)}.${v.getInt32(4)}.${v.getInt32(8)}`;
}

/** A CBLAS-style call's arguments as oneDNN takes them: 'N'/'T' characters and 64-bit sizes. */
function dnnlArgs(
  tA: number,
  tB: number,
  M: number,
  N: number,
  K: number,
  alpha: number,
  A: ArrayBufferView,
  lda: number,
  B: ArrayBufferView,
  ldb: number,
  beta: number,
  C: Float32Array,
  ldc: number,
) {
  const big = BigInt;
  return [
    trans(tA),
    trans(tB),
    big(M),
    big(N),
    big(K),
    alpha,
    A,
    big(lda),
    B,
    big(ldb),
    beta,
    C,
    big(ldc),
  ] as const;
}

/** The two products, each run with the thread's signals blocked (signal_mask.ts says why). */
function wrap(
  s: Deno.DynamicLibrary<typeof DNNL_SYMBOLS>["symbols"],
): Pick<Dnnl, "sgemm" | "gemmBf16"> {
  const [f32, bf16] = [withoutSignals(s.dnnl_sgemm), withoutSignals(s.dnnl_gemm_bf16bf16f32)];
  const sgemm: Sgemm = (_o, ...args) => check(f32(...dnnlArgs(...args)), "sgemm");
  const gemmBf16: GemmBf16 = (...args) => check(bf16(...dnnlArgs(...args)), "gemm_bf16bf16f32");
  return { sgemm, gemmBf16 };
}

/**
 * libgomp's idle threads spin after each parallel region (OMP_WAIT_POLICY's default) on the cores where OpenBLAS,
 * the WebAssembly GEMM's helpers and our JS kernels run next: measured on our 2-core VM with other work running,
 * the b2 step's products took 8.6 s spinning and 3.1 s passive (bf16 3.4 s and 1.0 s). libgomp reads the variable
 * when it loads, so it is set before `dlopen`; a value the user set is kept.
 */
function passiveOmpThreads(): void {
  try {
    if (Deno.env.get("OMP_WAIT_POLICY") === undefined) Deno.env.set("OMP_WAIT_POLICY", "passive");
  } catch {
    // no --allow-env: libgomp's default
  }
}

/**
 * Opens oneDNN and libgomp on the calling thread (a helper Worker opens its own), or returns why not in one line.
 * `threads` sets this thread's OpenMP thread count when given.
 */
export function openDnnl(threads?: number): Dnnl | string {
  passiveOmpThreads();
  const errors: string[] = [];
  for (const path of DNNL_CANDIDATES) {
    try {
      const lib = Deno.dlopen(path, DNNL_SYMBOLS).symbols;
      const omp = Deno.dlopen("libgomp.so.1", OMP_SYMBOLS).symbols;
      if (threads !== undefined) omp.omp_set_num_threads(threads);
      return {
        ...wrap(lib),
        setNumThreads: (n) => omp.omp_set_num_threads(n),
        getNumThreads: () => omp.omp_get_max_threads(),
        version: versionOf(lib.dnnl_version()),
        path,
      };
    } catch (err) {
      errors.push(`${path}: ${firstLine(err)}`);
      if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
        break;
      }
    }
  }
  return `oneDNN did not load (${errors.join("; ")})`;
}
