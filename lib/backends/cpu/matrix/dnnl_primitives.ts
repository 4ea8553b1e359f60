/**
 * oneDNN 2.x's primitive C API, as much as our reorder (dnnl_reorder.ts) and matmul (dnnl_matmul.ts) need: one
 * CPU engine and in-order stream per library, memory descriptors written into buffers we hold (`dnnl_memory_desc_t`
 * is a struct in 2.x; 3.x made it opaque, so both callers check the version first), and primitives run with their
 * memory objects' data pointed at our arrays for each call.
 */

const P = "pointer" as const, B = "buffer" as const;
const SYMBOLS = {
  dnnl_engine_create: { parameters: [B, "i32", "usize"], result: "i32" },
  dnnl_stream_create: { parameters: [B, P, "u32"], result: "i32" },
  dnnl_memory_desc_init_by_strides: { parameters: [B, "i32", B, "i32", B], result: "i32" },
  dnnl_reorder_primitive_desc_create: { parameters: [B, B, P, B, P, P], result: "i32" },
  dnnl_matmul_desc_init: { parameters: [B, B, B, P, B], result: "i32" },
  dnnl_primitive_attr_create: { parameters: [B], result: "i32" },
  dnnl_primitive_attr_destroy: { parameters: [P], result: "i32" },
  dnnl_post_ops_create: { parameters: [B], result: "i32" },
  dnnl_post_ops_destroy: { parameters: [P], result: "i32" },
  dnnl_post_ops_append_sum: { parameters: [P, "f32"], result: "i32" },
  dnnl_primitive_attr_set_post_ops: { parameters: [P, P], result: "i32" },
  dnnl_primitive_desc_create: { parameters: [B, B, P, P, P], result: "i32" },
  dnnl_primitive_desc_destroy: { parameters: [P], result: "i32" },
  dnnl_primitive_create: { parameters: [B, P], result: "i32" },
  dnnl_primitive_destroy: { parameters: [P], result: "i32" },
  dnnl_memory_create: { parameters: [B, B, P, P], result: "i32" },
  dnnl_memory_destroy: { parameters: [P], result: "i32" },
  dnnl_memory_set_data_handle: { parameters: [P, P], result: "i32" },
  dnnl_primitive_execute: { parameters: [P, P, "i32", B], result: "i32" },
  dnnl_stream_wait: { parameters: [P], result: "i32" },
} as const;

/** dnnl_types.h (2.x): data types and argument ids. */
export const BF16 = 2, F32 = 3, ARG_SRC = 1, ARG_WEIGHTS = 33, ARG_DST = 17;
const CPU = 1, IN_ORDER = 1;
/** Bytes held for one dnnl_memory_desc_t (696 in 2.6), with room to spare. */
const MD_BYTES = 2048;

/** The library's C functions. */
export type DnnlC = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** A primitive with one memory object per argument, its data set per call. */
export interface Primitive {
  prim: Deno.PointerObject;
  mems: Deno.PointerObject[];
  /** dnnl_exec_arg_t[]: { int arg; dnnl_memory_t memory; } per memory object. */
  args: Uint8Array;
}

/** oneDNN opened for primitives: its functions, one CPU engine, one in-order stream. */
export interface DnnlSession {
  lib: DnnlC;
  engine: Deno.PointerObject;
  stream: Deno.PointerObject;
}

/** Writes a create call's handle into `out` and returns it, or throws naming the call. */
export function created(
  status: number,
  out: BigUint64Array,
  what: string,
): Deno.PointerObject {
  const p = Deno.UnsafePointer.create(out[0]);
  if (status !== 0 || !p) throw new Error(`oneDNN ${what}: status ${status}`);
  return p;
}

/** Throws naming the call where oneDNN reports an error (ours: a bad argument is a bug here, not bad input). */
export function check(status: number, what: string): void {
  if (status !== 0) throw new Error(`oneDNN ${what}: status ${status}`);
}

const sessions = new Map<string, DnnlSession>();

/** The library at `path` with an engine and a stream, opened once per thread (throws where any of it fails). */
export function openSession(path: string): DnnlSession {
  const open = sessions.get(path);
  if (open) return open;
  const lib = Deno.dlopen(path, SYMBOLS).symbols;
  const out = new BigUint64Array(1);
  const engine = created(lib.dnnl_engine_create(out, CPU, 0n), out, "engine_create");
  const stream = created(lib.dnnl_stream_create(out, engine, IN_ORDER), out, "stream_create");
  const s = { lib, engine, stream };
  sessions.set(path, s);
  return s;
}

const dims = (xs: number[]) => new BigInt64Array(xs.map(BigInt));

/** A plain memory descriptor: `shape` with the strides given in elements (an operand's transpose is its strides). */
export function memoryDesc(
  lib: DnnlC,
  type: number,
  shape: number[],
  strides: number[],
): Uint8Array {
  const md = new Uint8Array(MD_BYTES);
  const status = lib.dnnl_memory_desc_init_by_strides(
    md,
    shape.length,
    dims(shape),
    type,
    dims(strides),
  );
  check(status, "memory_desc_init_by_strides");
  return md;
}

/** Makes the primitive of `pd` (which it destroys) with a memory object for each (argument id, descriptor). */
export function primitive(
  s: DnnlSession,
  pd: Deno.PointerObject,
  args: [number, Uint8Array][],
): Primitive {
  const out = new BigUint64Array(1);
  try {
    const prim = created(s.lib.dnnl_primitive_create(out, pd), out, "primitive_create");
    const mems = args.map(([, md]) =>
      created(s.lib.dnnl_memory_create(out, md, s.engine, null), out, "memory_create")
    );
    const view = new DataView(new ArrayBuffer(16 * args.length));
    args.forEach(([id], i) => {
      view.setInt32(16 * i, id, true);
      view.setBigUint64(16 * i + 8, BigInt(Deno.UnsafePointer.value(mems[i])), true);
    });
    return { prim, mems, args: new Uint8Array(view.buffer) };
  } finally {
    s.lib.dnnl_primitive_desc_destroy(pd);
  }
}

/** Runs `p` on `arrays` (one per memory object, in order) and waits for it. */
export function execute(
  s: DnnlSession,
  p: Primitive,
  arrays: ArrayBufferView[],
  what: string,
): void {
  arrays.forEach((a, i) =>
    check(
      s.lib.dnnl_memory_set_data_handle(p.mems[i], Deno.UnsafePointer.of(a)),
      "memory_set_data_handle",
    )
  );
  check(s.lib.dnnl_primitive_execute(p.prim, s.stream, p.mems.length, p.args), what);
  check(s.lib.dnnl_stream_wait(s.stream), "stream_wait");
}

/** Frees `p`'s primitive and memory objects. */
export function destroy(s: DnnlSession, p: Primitive): void {
  s.lib.dnnl_primitive_destroy(p.prim);
  for (const m of p.mems) s.lib.dnnl_memory_destroy(m);
}
