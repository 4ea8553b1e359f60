/**
 * oneDNN's fp32 products with K > 2048 (the kernels that move the stack pointer into their workspace) while the test
 * (dnnl_signals_test.ts) sends SIGWINCH: products run until `want` signals have been handled (argument 1), each one
 * checked; prints {signals, products} and exits 0. Each product's C is a fresh heap allocation, as in a training
 * step, so a signal frame written into the heap is found by malloc.
 */
import { openDnnl } from "../lib/backends/cpu/matrix/dnnl.ts";

const want = Number(Deno.args[0]);
const dnnl = openDnnl(2);
if (typeof dnnl === "string") throw new Error(dnnl);
let signals = 0;
Deno.addSignalListener("SIGWINCH", () => signals++);

const M = 64, N = 256, K = 3072;
const A = new Float32Array(M * K).fill(0.5), B = new Float32Array(K * N).fill(0.25);
let products = 0;
while (signals < want) {
  for (let i = 0; i < 10; i++, products++) {
    const C = new Float32Array(M * N); // (M, N)
    dnnl.sgemm(101, 111, 111, M, N, K, 1, A, K, B, N, 0, C, N);
    if (C.some((v) => v !== 0.5 * 0.25 * K)) throw new Error(`product ${products} is wrong`);
  }
  await new Promise((r) => setTimeout(r, 0)); // the listener runs here
}
console.log(JSON.stringify({ signals, products }));
Deno.exit(0);
