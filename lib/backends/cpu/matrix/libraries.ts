/**
 * The matrix libraries the `blas` backend can use: a native CBLAS through Deno FFI (OpenBLAS on Linux and Windows,
 * Accelerate on macOS), oneDNN through FFI (dnnl.ts), and the WebAssembly SIMD GEMM of wasm_gemm.ts on every thread,
 * which needs nothing installed. Which one runs is choice.ts's business.
 */
import { gemmBuild, wasmSgemm } from "./wasm_gemm.ts";
import { type Sgemm, SGEMM_SYMBOLS, type Sgemv, SGEMV_SYMBOLS } from "./cblas.ts";
import {
  DNNL_GEMM,
  parallelWasmSgemm,
  parallelWasmSgemv,
  setSgemm,
  setWasmGemmThreads,
  WASM_GEMM,
} from "./split_products.ts";
import { openDnnl } from "./dnnl.ts";
import { openDnnlMatmul } from "./dnnl_matmul.ts";
import { openDnnlReorder } from "./dnnl_reorder.ts";
import type { Bf16Converter } from "../bf16.ts";
import { setParallelism } from "../pool.ts";
import { firstLine, UserError } from "../../../errors.ts";

const OPENBLAS_SYMBOLS = {
  openblas_set_num_threads: { parameters: ["i32"], result: "void" },
  openblas_get_num_threads: { parameters: [], result: "i32" },
  openblas_get_config: { parameters: [], result: "pointer" },
  openblas_get_corename: { parameters: [], result: "pointer" },
} as const;

/** OpenBLAS's kernels for CPUs without AVX: what 0.3.21 falls back to on a CPU it does not know. */
const GENERIC_CORES = [
  "Prescott",
  "Katmai",
  "Coppermine",
  "Northwood",
  "Banias",
  "Core2",
  "Penryn",
  "Dunnington",
  "Nehalem",
  "Atom",
];

/** How the `cpu` backend's matrix products compute: "fp32", or "bf16-mixed" (operands rounded to bf16, fp32 out). */
export type Precision = "fp32" | "bf16-mixed";

/** A loaded matrix library: `cblas_sgemm` (row-major), its thread control, and what it is. */
export interface BlasLib {
  sgemm: Sgemm;
  /** `cblas_sgemv` for one-row products (sampling with the KV cache), or null where the library lacks it. */
  sgemv: Sgemv | null;
  /**
   * bf16 × bf16 → fp32 product (row-major, CBLAS trans codes; bf16 as the high 16 bits of an fp32, in a
   * Uint16Array), where the library computes in bf16 (oneDNN); absent elsewhere (products are then emulated).
   */
  gemmBf16?: GemmBf16;
  /** All of attention's heads of one product in bf16 at once, where the library has that (oneDNN). */
  headsBf16?: HeadsBf16;
  /** fp32 → bf16 bits for {@link gemmBf16}'s operands by the library itself (oneDNN's reorder); absent elsewhere. */
  bf16Bits?: Bf16Converter;
  /** "native": a CBLAS through FFI; "dnnl": oneDNN through FFI; "wasm": the WebAssembly GEMM. */
  kind: "native" | "dnnl" | "wasm";
  /** OpenBLAS's kernel set (`openblas_get_corename`, e.g. "SkylakeX"), where the library is OpenBLAS. */
  core?: string;
  /** A one-line fix where the library runs far below this CPU's speed (OpenBLAS on a generic core), else absent. */
  warning?: string;
  /** For the run header, e.g. "OpenBLAS 0.3.21, 2 threads" or "WebAssembly SIMD GEMM, relaxed FMA, 2 threads". */
  describe(): string;
  /** The name {@link setSgemm} takes: the library's path, or "wasm". */
  name: string;
  /** Sets the library's thread count; undefined for libraries without thread control (Accelerate). */
  setNumThreads?: (n: number) => void;
  /** The library's thread count; undefined for libraries without thread control. */
  getNumThreads?: () => number;
}

/** C = alpha·op(A)·op(B) + beta·C with bf16 A and B (Uint16Array) and fp32 C, row-major; trans as CBLAS codes. */
export type GemmBf16 = (
  transA: number,
  transB: number,
  M: number,
  N: number,
  K: number,
  alpha: number,
  A: Uint16Array,
  lda: number,
  B: Uint16Array,
  ldb: number,
  beta: number,
  C: Float32Array,
  ldc: number,
) => void;

/** A batch of strided products, one per (batch item, head): `HeadsMatMul`'s attributes (cpu_backend.ts). */
export interface HeadsShape {
  batch: number;
  heads: number;
  transA: boolean;
  transB: boolean;
  M: number;
  N: number;
  K: number;
  /** Strides in elements: [per batch item, per head, leading dimension]. */
  sa: number[];
  sb: number[];
  sc: number[];
}

/**
 * Every head's C = op(A)·op(B) with bf16 A and B (Uint16Array) and fp32 C in one call; false where the library
 * leaves these to the caller (which then runs them head by head).
 */
export type HeadsBf16 = (h: HeadsShape, A: Uint16Array, B: Uint16Array, C: Float32Array) => boolean;

/** Result of loading a library: the library, or a one-line reason. */
export type LoadBlasResult = { ok: true; lib: BlasLib; name: string } | {
  ok: false;
  reason: string;
};

const CANDIDATES = Deno.build.os === "darwin"
  ? ["/System/Library/Frameworks/Accelerate.framework/Accelerate"]
  : Deno.build.os === "windows"
  ? ["libopenblas.dll", "openblas.dll"]
  : ["libopenblas.so.0", "libopenblas.so", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"];

/** How to get the native library on this OS, for the header line where it did not load. */
export const NATIVE_HINT = Deno.build.os === "windows"
  ? "for faster training put OpenBLAS's libopenblas.dll on PATH"
  : Deno.build.os === "darwin"
  ? "Accelerate did not load"
  : "for faster training: sudo apt-get install libopenblas0-pthread (Fedora: dnf install openblas)";

export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env
  }
}

/**
 * OpenBLAS's idle threads spin (sched_yield) for about 2^28 cycles after each product before they sleep, on the
 * cores where our helper Workers then run the JS kernels: the two share each core and both slow down. 2^4 cycles
 * lets them sleep at once (measured on our 2-core VM: the batch-2 step 5.4–6.1 s instead of 5.9–7.0 s with two JS
 * threads; no change with one). OpenBLAS reads the variable when it loads, so it is set before `dlopen`; a value
 * the user set is kept.
 */
function shortenThreadSpin(): void {
  try {
    if (setParallelism() > 1 && Deno.env.get("OPENBLAS_THREAD_TIMEOUT") === undefined) {
      Deno.env.set("OPENBLAS_THREAD_TIMEOUT", "4");
    }
  } catch {
    // no --allow-env: OpenBLAS's default
  }
}

/** `lib` with OpenBLAS's thread control and its "OpenBLAS 0.3.21, 2 threads" description, where it is OpenBLAS. */
function withOpenBlas(lib: BlasLib, path: string): BlasLib {
  try {
    const o = Deno.dlopen(path, OPENBLAS_SYMBOLS).symbols;
    const ptr = o.openblas_get_config();
    const config = ptr ? Deno.UnsafePointerView.getCString(ptr) : "OpenBLAS";
    const version = config.split(" ").slice(0, 2).join(" ");
    const corePtr = o.openblas_get_corename();
    const core = corePtr ? Deno.UnsafePointerView.getCString(corePtr) : undefined;
    lib.core = core;
    lib.warning = core ? genericCoreWarning(core) : undefined;
    lib.setNumThreads = (n) => o.openblas_set_num_threads(n);
    lib.getNumThreads = () => o.openblas_get_num_threads();
    lib.describe = () =>
      `${version} (${core ?? "core unknown"}), ${threads(o.openblas_get_num_threads())}`;
  } catch {
    // Accelerate and reference CBLAS have no OpenBLAS thread control.
  }
  return lib;
}

/** "1 thread", "2 threads". */
export function threads(n: number): string {
  return `${n} thread${n === 1 ? "" : "s"}`;
}

const LIBC_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

/**
 * The text of /proc/cpuinfo on Linux, else "". Deno grants that file only with --allow-all, which our tasks do
 * not ask for, so where reading it is refused it is read through libc with the FFI permission they have.
 */
export function cpuInfo(): string {
  if (Deno.build.os !== "linux") return "";
  try {
    return Deno.readTextFileSync("/proc/cpuinfo");
  } catch {
    return cpuInfoThroughLibc();
  }
}

function cpuInfoThroughLibc(): string {
  try {
    const c = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
    try {
      const fd = c.symbols.open(new TextEncoder().encode("/proc/cpuinfo\0"), 0);
      if (fd < 0) return "";
      const parts: Uint8Array[] = [], buf = new Uint8Array(1 << 16);
      for (let n; (n = Number(c.symbols.read(fd, buf, BigInt(buf.length)))) > 0;) {
        parts.push(buf.slice(0, n));
      }
      c.symbols.close(fd);
      const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
      parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
      return new TextDecoder().decode(all);
    } finally {
      c.close();
    }
  } catch {
    return ""; // no --allow-ffi, or no glibc
  }
}

/** The CPU's feature flags (Linux /proc/cpuinfo), or an empty set where unreadable. */
export function cpuFlags(): Set<string> {
  const line = cpuInfo().split("\n").find((l) => l.startsWith("flags"));
  return new Set(line?.split(":")[1].trim().split(/\s+/) ?? []);
}

/**
 * The fix for an OpenBLAS that fell back to generic SSE kernels on a CPU with AVX-512 or AVX2 (0.3.21 does not
 * know Intel's Sapphire and Emerald Rapids): the core type to name before the library loads.
 */
function genericCoreWarning(core: string): string | undefined {
  if (!GENERIC_CORES.includes(core)) return undefined;
  const f = cpuFlags();
  const fix = f.has("avx512_bf16")
    ? "Cooperlake"
    : f.has("avx512f")
    ? "SkylakeX"
    : f.has("avx2")
    ? "Haswell"
    : null;
  return fix
    ? `OpenBLAS runs its generic ${core} kernels on this CPU (about 4× slower): start with OPENBLAS_CORETYPE=${fix} set`
    : undefined;
}

/** The library's `cblas_sgemv`, or null where it has none (one-row products then go through sgemm). */
function openSgemv(path: string): Sgemv | null {
  try {
    return Deno.dlopen(path, SGEMV_SYMBOLS).symbols.cblas_sgemv as unknown as Sgemv;
  } catch {
    return null;
  }
}

let native: LoadBlasResult | null = null;

/** Opens a native CBLAS once per process. Never throws: when none loads, the result carries a one-line reason. */
export function loadNativeBlas(): LoadBlasResult {
  if (native) return native;
  shortenThreadSpin();
  const errors: string[] = [];
  for (const path of CANDIDATES) {
    let dl: Deno.DynamicLibrary<typeof SGEMM_SYMBOLS>;
    try {
      dl = Deno.dlopen(path, SGEMM_SYMBOLS);
    } catch (err) {
      errors.push(`${path}: ${firstLine(err)}`);
      if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
        break;
      }
      continue;
    }
    const base: BlasLib = {
      sgemm: dl.symbols.cblas_sgemm as unknown as Sgemm,
      sgemv: openSgemv(path),
      kind: "native",
      name: path,
      describe: () => path.split("/").pop()!,
    };
    return (native = { ok: true, lib: withOpenBlas(base, path), name: path });
  }
  return (native = { ok: false, reason: `no CBLAS library loaded (${errors.join("; ")})` });
}

let wasm: LoadBlasResult | null = null;

/** The WebAssembly GEMM as a library; `ok: false` only where the runtime has no WebAssembly SIMD. */
export function loadWasmBlas(): LoadBlasResult {
  if (wasm) return wasm;
  const build = gemmBuild();
  if (!build) return (wasm = { ok: false, reason: "this runtime has no WebAssembly SIMD" });
  const fma = build === "relaxed" ? "relaxed FMA" : "SIMD128, no FMA";
  const lib: BlasLib = {
    sgemm: parallelWasmSgemm,
    sgemv: parallelWasmSgemv,
    kind: "wasm",
    name: WASM_GEMM,
    describe: () => `WebAssembly SIMD GEMM, ${fma}, ${threads(setWasmGemmThreads())}`,
    setNumThreads: (n) => setWasmGemmThreads(n),
    getNumThreads: () => setWasmGemmThreads(),
  };
  return (wasm = { ok: true, lib, name: WASM_GEMM });
}

let dnnl: LoadBlasResult | null = null;

/** oneDNN as a library (dnnl.ts), or why it did not load; opened once per process. */
export function loadDnnlBlas(): LoadBlasResult {
  if (dnnl) return dnnl;
  const d = openDnnl();
  if (typeof d === "string") return (dnnl = { ok: false, reason: d });
  const matmul = openDnnlMatmul(d.path, d.version, d.gemmBf16, d.getNumThreads);
  const lib: BlasLib = {
    sgemm: d.sgemm,
    sgemv: null,
    gemmBf16: matmul?.gemmBf16 ?? d.gemmBf16,
    headsBf16: matmul?.headsBf16,
    bf16Bits: openDnnlReorder(d.path, d.version) ?? undefined,
    kind: "dnnl",
    name: DNNL_GEMM,
    describe: () => `${d.version}, ${threads(d.getNumThreads())}`,
    setNumThreads: d.setNumThreads,
    getNumThreads: d.getNumThreads,
  };
  return (dnnl = { ok: true, lib, name: d.path });
}

/** The libraries `GPT_BLAS` can name, and the loader of each. */
export const LIBRARIES = {
  native: loadNativeBlas,
  dnnl: loadDnnlBlas,
  wasm: loadWasmBlas,
} as const;

/** A library `GPT_BLAS` or a benchmark names. */
export type LibraryKind = keyof typeof LIBRARIES;

/** `GPT_BLAS`'s library (openblas and accelerate mean native; onednn means dnnl), or undefined for the measured choice. */
export function forcedLibrary(): LibraryKind | undefined {
  const v = env("GPT_BLAS")?.toLowerCase();
  if (!v || v === "auto") return undefined;
  if (v === "openblas" || v === "accelerate" || v === "native") return "native";
  if (v === "onednn" || v === "dnnl") return "dnnl";
  if (v === "wasm") return "wasm";
  throw new UserError(`GPT_BLAS=${v}: expected auto, openblas (native), onednn (dnnl) or wasm`);
}

/** Makes `lib` the one `sgemmHeads` calls on every thread. */
export function useForHeads(lib: BlasLib): void {
  setSgemm(lib.name, lib.kind === "wasm" ? wasmSgemm : lib.sgemm);
}
