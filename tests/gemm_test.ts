/**
 * The portable WebAssembly GEMM (lib/backends/cpu/matrix/wasm_gemm.ts): both builds against a double-precision reference and
 * against OpenBLAS on awkward shapes, bit-identical results on 1 and 2 threads, a training step equal to the
 * OpenBLAS path's, and the run header naming the library.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import {
  GEMM_BUILT_FROM,
  type GemmArgs,
  gemmBlock,
  useGemmBuild,
} from "../lib/backends/cpu/matrix/wasm_gemm.ts";
import {
  parallelWasmSgemm,
  parallelWasmSgemv,
  setWasmGemmThreads,
} from "../lib/backends/cpu/matrix/split_products.ts";
import {
  holdHelpers,
  readyHelpers,
  setParallelism,
  sharedF32,
  splitCalls,
} from "../lib/backends/cpu/pool.ts";
import { loadNativeBlas, useMatrixLibrary } from "../lib/backends/cpu/cpu_backend.ts";
import { initBackend } from "../lib/backends/backend.ts";
import { loadExperiment } from "../lib/config.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { GPTModel } from "../lib/model/model.ts";
import { DropoutRng } from "../lib/model/ops.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { AdamW } from "../lib/train/adamw.ts";
import { trainStep } from "../lib/train/train.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { sourceSha256 } from "../tasks/build_wasm.ts";
import {
  ensureVerdict,
  ignoredBecause,
  NO_OPENBLAS,
  tempDir,
  TINY_GPT,
  TINY_RUN,
} from "./_helpers.ts";

const native = loadNativeBlas();
const noNative = { ignore: !native.ok, sanitizeResources: false, sanitizeOps: false };
/** The name suffix of the tests that need OpenBLAS: why they are ignored here, if they are. */
const needsNative = ignoredBecause(native.ok ? null : NO_OPENBLAS);

/** [M, N, K]: single elements, primes, K across the 256-deep slices, M and N across the 128-row and 512-column blocks. */
const SHAPES = [[1, 1, 1], [1, 7, 3], [7, 13, 17], [37, 61, 263], [5, 9, 0], [131, 517, 300], [
  4,
  8,
  512,
]];
const TRANSPOSES = [[false, false], [false, true], [true, false], [true, true]];

/** A product with random operands (seeded), leading dimensions `pad` wider than needed, C filled with `c0`. */
function product(M: number, N: number, K: number, tA: boolean, tB: boolean, seed: number, pad = 0) {
  const rng = new TorchGenerator(seed);
  const rows = (r: number, c: number) => Float32Array.from(rng.rand(r * (c + pad)), (u) => u - 0.5);
  const lda = (tA ? M : K) + pad, ldb = (tB ? K : N) + pad, ldc = N + pad;
  const A = rows(tA ? K : M, tA ? M : K), B = rows(tB ? N : K, tB ? K : N);
  const C = Float32Array.from(rng.rand(M * ldc), (u) => u - 0.5);
  return { transA: tA, transB: tB, M, N, K, alpha: 1, A, lda, B, ldb, beta: 0, C, ldc };
}

/** The product in double precision, and Σ|a||b| + |beta·c| per element (the scale of its rounding error). */
function reference(g: GemmArgs): { c: Float64Array; scale: Float64Array } {
  const c = new Float64Array(g.M * g.N), scale = new Float64Array(g.M * g.N);
  for (let i = 0; i < g.M; i++) {
    for (let j = 0; j < g.N; j++) {
      let s = 0, abs = 0;
      for (let p = 0; p < g.K; p++) {
        const a = g.transA ? g.A[p * g.lda + i] : g.A[i * g.lda + p];
        const b = g.transB ? g.B[j * g.ldb + p] : g.B[p * g.ldb + j];
        s += a * b, abs += Math.abs(a * b);
      }
      const c0 = g.beta === 0 ? 0 : g.beta * g.C[i * g.ldc + j];
      c[i * g.N + j] = g.alpha * s + c0;
      scale[i * g.N + j] = Math.abs(g.alpha) * abs + Math.abs(c0);
    }
  }
  return { c, scale };
}

/** Asserts C within float32 rounding of the reference: |error| ≤ (K + 2)·2⁻²³·scale per element. */
function assertNear(
  g: GemmArgs,
  C: Float32Array,
  want: ReturnType<typeof reference>,
  what: string,
) {
  for (let i = 0; i < g.M; i++) {
    for (let j = 0; j < g.N; j++) {
      const got = C[i * g.ldc + j], e = want.c[i * g.N + j];
      const tol = (g.K + 2) * 2 ** -23 * want.scale[i * g.N + j] + 1e-30;
      ok(
        Math.abs(got - e) <= tol,
        `${what} C[${i},${j}] = ${got}, reference ${e} (tolerance ${tol})`,
      );
    }
  }
}

const CASES = SHAPES.flatMap(([M, N, K]) =>
  TRANSPOSES.flatMap(([tA, tB]) =>
    [[1, 0, 0], [1, 1, 3], [-0.5, 0.5, 0]].map(([alpha, beta, pad]) => ({
      M,
      N,
      K,
      tA,
      tB,
      alpha,
      beta,
      pad,
    }))
  )
);

for (const build of ["relaxed", "plain"] as const) {
  Deno.test(`the WebAssembly GEMM (${build}) equals a double-precision reference on awkward shapes`, () => {
    ok(useGemmBuild(build) === build, `${build} build runs here`);
    try {
      for (const [n, c] of CASES.entries()) {
        const g = { ...product(c.M, c.N, c.K, c.tA, c.tB, n, c.pad), alpha: c.alpha, beta: c.beta };
        const want = reference(g);
        const padding = g.C.slice();
        gemmBlock(g);
        assertNear(g, g.C, want, `${build} ${JSON.stringify(c)}`);
        for (let i = 0; i < g.M; i++) { // the padding beyond N is left alone
          for (let j = g.N; j < g.ldc; j++) {
            assertEquals(g.C[i * g.ldc + j], padding[i * g.ldc + j]);
          }
        }
      }
    } finally {
      useGemmBuild("auto");
    }
  });
}

Deno.test("beta 0 overwrites C: NaN already there does not leak", () => {
  const g = product(9, 11, 5, false, true, 3);
  g.C.fill(NaN);
  gemmBlock(g);
  ok(g.C.every(Number.isFinite));
});

Deno.test({
  name: `the WebAssembly GEMM agrees with OpenBLAS on every shape and transpose${needsNative}`,
  ...noNative,
  fn: () => {
    if (!native.ok) return;
    for (const [n, c] of CASES.entries()) {
      const g = { ...product(c.M, c.N, c.K, c.tA, c.tB, n, c.pad), alpha: c.alpha, beta: c.beta };
      const theirs = g.C.slice(), want = reference(g);
      gemmBlock(g);
      native.lib.sgemm(
        101,
        c.tA ? 112 : 111,
        c.tB ? 112 : 111,
        g.M,
        g.N,
        g.K,
        g.alpha,
        g.A,
        g.lda,
        g.B,
        g.ldb,
        g.beta,
        theirs,
        g.ldc,
      );
      assertNear(g, theirs, want, `OpenBLAS ${JSON.stringify(c)}`);
      for (let i = 0; i < g.M * g.ldc; i++) {
        const tol = 2 * (g.K + 2) * 2 ** -23 * want.scale[Math.min(i, want.scale.length - 1)] +
          1e-6;
        ok(
          Math.abs(g.C[i] - theirs[i]) <= tol,
          `${JSON.stringify(c)} [${i}]: ${g.C[i]} vs ${theirs[i]}`,
        );
      }
    }
  },
});

Deno.test({
  name:
    "a product on 2 threads equals one on 1 thread, bit for bit (tiles of rows, of columns, of both)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const threadsBefore = setParallelism();
    setParallelism(2);
    ok(await readyHelpers() === 1, "the helper Worker starts");
    try {
      const cases = [[300, 200, 270, 0, 1], [3, 2000, 100, 1, 0], [700, 1100, 300, 1, 1]];
      for (const [M, N, K, tA, tB] of cases) {
        const g = product(M, N, K, tA === 1, tB === 1, M);
        const shared = (a: Float32Array) => {
          const s = sharedF32(a.length);
          s.set(a);
          return s;
        };
        const A = shared(g.A),
          B = shared(g.B),
          run = (t: number) => {
            setWasmGemmThreads(t);
            const C = sharedF32(M * N);
            parallelWasmSgemm(
              101,
              tA ? 112 : 111,
              tB ? 112 : 111,
              M,
              N,
              K,
              1,
              A,
              g.lda,
              B,
              g.ldb,
              0,
              C,
              N,
            );
            return C;
          };
        const one = run(1), before = splitCalls(), two = run(2);
        ok(splitCalls() > before, `${M}×${N}×${K}: the product was split`);
        // The first differing element, not deepStrictEqual's diff of whole arrays (minutes to print for these).
        const bad = two.findIndex((v, i) => !Object.is(v, one[i]));
        ok(bad < 0, `${M}×${N}×${K}: C[${bad}] is ${two[bad]} on 2 threads, ${one[bad]} on 1`);
      }
    } finally {
      setWasmGemmThreads(8);
      setParallelism(threadsBefore);
    }
  },
});

Deno.test({
  name:
    "a one-row product through the GEMV equals the GEMM's bit for bit, on 1 and 2 threads, both builds",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const threadsBefore = setParallelism();
    setParallelism(2);
    ok(await readyHelpers() === 1, "the helper Worker starts");
    // Held open: building the operands can outlast the helper's idle timeout.
    await holdHelpers(() => {
      const helpersBuild = useGemmBuild("auto"); // the helper's module: its default build
      for (const build of ["relaxed", "plain"] as const) {
        if (!useGemmBuild(build)) continue;
        // [N, K, pad, alpha, beta]: GPT-2's head and MLP shapes, an odd tail, a padded B, alpha and beta.
        for (
          const [N, K, pad, alpha, beta] of [[5003, 768, 0, 1, 0], [1031, 3072, 0, 1, 1], [
            77,
            13,
            3,
            0.5,
            1.5,
          ]]
        ) {
          const g = { ...product(1, N, K, false, true, N + K, pad), alpha, beta };
          const want = g.C.slice();
          gemmBlock({ ...g, C: want });
          const A = sharedF32(g.B.length), x = sharedF32(K);
          A.set(g.B), x.set(g.A.subarray(0, K));
          const run = (t: number) => {
            setWasmGemmThreads(t);
            const y = sharedF32(N);
            y.set(g.C.subarray(0, N));
            parallelWasmSgemv(101, 111, N, K, alpha, A, g.ldb, x, 1, beta, y, 1);
            return y;
          };
          const one = run(1), before = splitCalls(), two = run(2);
          ok(N * K < 1 << 16 || splitCalls() > before, `${N}×${K}: the product was split`);
          assertEquals(one, want.subarray(0, N), `${build} ${N}×${K}, 1 thread`);
          if (build === helpersBuild) {
            assertEquals(two, want.subarray(0, N), `${build} ${N}×${K}, 2 threads`);
          }
        }
        // Transposed (y = x·A, A's columns strided): the one-row GEMM, the same bits.
        const g = product(1, 300, 200, false, false, 5);
        const want = g.C.slice();
        gemmBlock({ ...g, C: want });
        const y = g.C.slice(0, 300);
        parallelWasmSgemv(101, 112, 200, 300, 1, g.B, g.ldb, g.A, 1, 0, y, 1);
        assertEquals(y, want.subarray(0, 300), `${build} transposed`);
      }
    }).finally(() => {
      useGemmBuild("auto");
      setWasmGemmThreads(8);
      setParallelism(threadsBefore);
    });
  },
});

Deno.test({
  name:
    `OpenBLAS's sgemv agrees with the double-precision reference on one-row products, both layouts${needsNative}`,
  ...noNative,
  fn: () => {
    const sgemv = native.ok ? native.lib.sgemv : null;
    ok(sgemv, "OpenBLAS exports cblas_sgemv");
    for (const tB of [true, false]) {
      const g = { ...product(1, 1001, 770, false, tB, 11, 2), beta: 0.5 };
      const y = g.C.slice(0, g.N), want = reference(g);
      if (tB) sgemv(101, 111, g.N, g.K, 1, g.B, g.ldb, g.A, 1, g.beta, y, 1);
      else sgemv(101, 112, g.K, g.N, 1, g.B, g.ldb, g.A, 1, g.beta, y, 1);
      assertNear({ ...g, ldc: g.N }, y, want, `sgemv transB ${tB}`);
    }
  },
});

Deno.test({
  name:
    `a training step on the WebAssembly GEMM equals the OpenBLAS path's within the golden tolerance${needsNative}`,
  ...noNative,
  fn: async () => {
    const cfg = await loadExperiment("experiments/verdict-small.yaml", TINY_GPT);
    await initBackend("cpu");
    const rng = new TorchGenerator(7);
    const ids = () => Int32Array.from(rng.rand(4 * 16), (u) => Math.floor(u * 50257));
    const batch = { inputs: ids(), targets: ids(), batchSize: 4, maxLength: 16 };
    const step = async (lib: "native" | "wasm") => {
      ok(useMatrixLibrary(lib).ok);
      const model = new GPTModel(cfg.model, initGPTParams(cfg.model, new TorchGenerator(123)));
      const opt = new AdamW(model.params, { lr: 4e-4, weightDecay: 0.1 });
      const { loss } = await trainStep(model, opt, batch, new DropoutRng(9));
      const params = (await model.toNamedParams()).map((p) => p.data);
      opt.dispose();
      model.dispose();
      return { loss, params };
    };
    try {
      const ours = await step("wasm"), openblas = await step("native");
      ok(Math.abs(ours.loss - openblas.loss) <= 1e-4, `loss ${ours.loss} vs ${openblas.loss}`);
      let worst = 0;
      ours.params.forEach((p, i) =>
        p.forEach((v, j) => worst = Math.max(worst, Math.abs(v - openblas.params[i][j])))
      );
      ok(worst <= 1e-4, `largest parameter difference after the step ${worst}`);
    } finally {
      useMatrixLibrary("auto");
    }
  },
});

Deno.test({
  name: "the run header names the matrix library: the WebAssembly GEMM where it is forced",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    await ensureVerdict();
    const dir = tempDir();
    const cfg = await loadExperiment("experiments/verdict-small.yaml", [
      ...TINY_RUN,
      "backend=cpu",
      "training.epochs=1",
      "name=portable",
    ]);
    ok(useMatrixLibrary("wasm").ok);
    try {
      const r = await runTraining(cfg, { print: () => {}, progress: false, checkpointsDir: dir });
      assertEquals(r.status, "finished");
      const header = readRunLog(`${dir}/portable/log.jsonl`).header!;
      ok(
        /WebAssembly SIMD GEMM, (relaxed FMA|SIMD128, no FMA), \d+ threads/.test(
          String(header.backend_reason),
        ),
        String(header.backend_reason),
      );
    } finally {
      useMatrixLibrary("auto");
    }
  },
});

Deno.test("wasm_gemm_binary.ts was built from the current gemm.c (run `deno task build-wasm` after editing it)", async () => {
  const text = await Deno.readTextFile(
    new URL("../lib/backends/cpu/wasm_src/gemm.c", import.meta.url),
  );
  assertEquals(GEMM_BUILT_FROM, await sourceSha256(text));
});
