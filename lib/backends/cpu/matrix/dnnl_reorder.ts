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
import {
  ARG_DST,
  ARG_SRC,
  BF16,
  created,
  type DnnlSession,
  execute,
  F32,
  memoryDesc,
  openSession,
  primitive,
} from "./dnnl_primitives.ts";

/** One reorder per element count, fp32 in and bf16 out. */
function makeReorder(s: DnnlSession, n: number) {
  const [src, dst] = [memoryDesc(s.lib, F32, [n], [1]), memoryDesc(s.lib, BF16, [n], [1])];
  const out = new BigUint64Array(1);
  const status = s.lib.dnnl_reorder_primitive_desc_create(out, src, s.engine, dst, s.engine, null);
  return primitive(s, created(status, out, "reorder"), [[ARG_SRC, src], [ARG_DST, dst]]);
}

/**
 * oneDNN's fp32 → bf16 reorder from the library at `path` (already opened by dnnl.ts, whose `version` it gives, e.g.
 * "oneDNN 2.6.3"), or null where it is not oneDNN 2.x or does not set up. Made once per process, where the library
 * is loaded as a matrix library (libraries.ts), not in the helper threads, which only multiply.
 */
export function openDnnlReorder(path: string, version: string): Bf16Converter | null {
  if (!version.startsWith("oneDNN 2.")) return null;
  try {
    const s = openSession(path);
    const byCount = new Map<number, ReturnType<typeof makeReorder>>();
    return withoutSignals((src: Float32Array, dst: Uint16Array) => {
      let r = byCount.get(src.length);
      if (!r) byCount.set(src.length, r = makeReorder(s, src.length));
      execute(s, r, [src, dst], "reorder");
    });
  } catch {
    return null;
  }
}
