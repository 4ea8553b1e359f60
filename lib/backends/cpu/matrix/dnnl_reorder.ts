/**
 * fp32 → bf16 conversion by oneDNN's reorder primitive (round to nearest even, as bf16.ts's own): on a CPU with
 * AVX512-BF16 it converts with `vcvtneps2bf16` in place, on oneDNN's threads, where our WebAssembly conversion copies
 * each chunk into its module and out again. Measured on the Intel Xeon kind (2 threads, another job running): 25.7 M
 * elements (the output head's gradient) in 14 ms, a 1.5 M-element attention block in 0.17 ms. Its bits are bf16.ts's
 * except for subnormal inputs (below 1.2e-38), which become zero: oneDNN's bf16 products take them as zero anyway,
 * so the products are the same (tests/bf16_test.ts).
 *
 * The C API of oneDNN 2.x only (its memory descriptor is a struct the caller holds; 3.x made it opaque): with
 * another version, or where a call fails, {@link openDnnlReorder} returns null and bf16.ts converts. Like the
 * products, it runs with the thread's signals blocked (signal_mask.ts).
 */

import type { Bf16Converter } from "../bf16.ts";
import { withoutSignals } from "./signal_mask.ts";

const P = "pointer" as const, B = "buffer" as const;
const SYMBOLS = {
  dnnl_engine_create: { parameters: [B, "i32", "usize"], result: "i32" },
  dnnl_stream_create: { parameters: [B, P, "u32"], result: "i32" },
  dnnl_memory_desc_init_by_tag: { parameters: [B, "i32", B, "i32", "i32"], result: "i32" },
  dnnl_reorder_primitive_desc_create: { parameters: [B, B, P, B, P, P], result: "i32" },
  dnnl_primitive_create: { parameters: [B, P], result: "i32" },
  dnnl_primitive_desc_destroy: { parameters: [P], result: "i32" },
  dnnl_memory_create: { parameters: [B, B, P, P], result: "i32" },
  dnnl_memory_set_data_handle: { parameters: [P, P], result: "i32" },
  dnnl_primitive_execute: { parameters: [P, P, "i32", B], result: "i32" },
  dnnl_stream_wait: { parameters: [P], result: "i32" },
} as const;

// dnnl_types.h (2.x): engine kind, data types, the plain 1-D format tag, argument ids, stream flags.
const CPU = 1, BF16 = 2, F32 = 3, TAG_A = 2, ARG_SRC = 1, ARG_DST = 17, IN_ORDER = 1;
/** Bytes held for one dnnl_memory_desc_t (696 in 2.6), with room to spare. */
const MD_BYTES = 2048;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** A handle a create call wrote into `out`, or an error naming the call. */
function created(status: number, out: BigUint64Array, what: string): Deno.PointerObject {
  const p = Deno.UnsafePointer.create(out[0]);
  if (status !== 0 || !p) throw new Error(`oneDNN ${what}: status ${status}`);
  return p;
}

/** One reorder per element count, with its two memory objects (their data set per call). */
function makeReorder(lib: Lib, engine: Deno.PointerObject, n: number) {
  const out = new BigUint64Array(1);
  const desc = (type: number) => {
    const md = new Uint8Array(MD_BYTES);
    const status = lib.dnnl_memory_desc_init_by_tag(
      md,
      1,
      new BigInt64Array([BigInt(n)]),
      type,
      TAG_A,
    );
    if (status !== 0) throw new Error(`oneDNN memory_desc_init_by_tag: status ${status}`);
    return md;
  };
  const [src, dst] = [desc(F32), desc(BF16)];
  const pd = created(
    lib.dnnl_reorder_primitive_desc_create(out, src, engine, dst, engine, null),
    out,
    "reorder",
  );
  const prim = created(lib.dnnl_primitive_create(out, pd), out, "primitive_create");
  lib.dnnl_primitive_desc_destroy(pd);
  const mem = (md: Uint8Array) =>
    created(lib.dnnl_memory_create(out, md, engine, null), out, "memory_create");
  const [ms, md] = [mem(src), mem(dst)];
  const args = new DataView(new ArrayBuffer(32)); // dnnl_exec_arg_t[2]: { int arg; dnnl_memory_t memory; }
  args.setInt32(0, ARG_SRC, true),
    args.setBigUint64(8, Deno.UnsafePointer.value(ms) as bigint, true);
  args.setInt32(16, ARG_DST, true),
    args.setBigUint64(24, Deno.UnsafePointer.value(md) as bigint, true);
  return { prim, ms, md, args: new Uint8Array(args.buffer) };
}

/**
 * oneDNN's fp32 → bf16 reorder from the library at `path` (already opened by dnnl.ts, whose `version` it gives, e.g.
 * "oneDNN 2.6.3"), or null where it is not oneDNN 2.x or does not set up. Made once per process, where the library
 * is loaded as a matrix library (libraries.ts), not in the helper threads, which only multiply.
 */
export function openDnnlReorder(path: string, version: string): Bf16Converter | null {
  if (!version.startsWith("oneDNN 2.")) return null;
  try {
    const lib = Deno.dlopen(path, SYMBOLS).symbols;
    const out = new BigUint64Array(1);
    const engine = created(lib.dnnl_engine_create(out, CPU, 0n), out, "engine_create");
    const stream = created(lib.dnnl_stream_create(out, engine, IN_ORDER), out, "stream_create");
    const byCount = new Map<number, ReturnType<typeof makeReorder>>();
    return withoutSignals((src: Float32Array, dst: Uint16Array) => {
      let r = byCount.get(src.length);
      if (!r) byCount.set(src.length, r = makeReorder(lib, engine, src.length));
      const set = (m: Deno.PointerObject, a: ArrayBufferView) =>
        lib.dnnl_memory_set_data_handle(m, Deno.UnsafePointer.of(a));
      if (set(r.ms, src) !== 0 || set(r.md, dst) !== 0) {
        throw new Error("oneDNN memory_set_data_handle failed");
      }
      const status = lib.dnnl_primitive_execute(r.prim, stream, 2, r.args);
      if (status !== 0 || lib.dnnl_stream_wait(stream) !== 0) {
        throw new Error(`oneDNN reorder: status ${status}`);
      }
    });
  } catch {
    return null;
  }
}
