/**
 * bf16-mixed on every matrix library that loads here (OpenBLAS, oneDNN, the WebAssembly GEMM): a product's
 * operands are rounded to bf16 (round to nearest even) and multiplied in fp32; five AdamW steps of the shared tiny
 * GPT-2 give PyTorch's autocast-bf16 losses and gradient norms (tests/fixtures_gen/gpt2_tiny.py) within 1e-2
 * relative, and the emulated libraries agree with oneDNN's bf16 kernels.
 */
import { ok } from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { AdamW } from "../lib/train/adamw.ts";
import { fusedAttention, initBackend, usePrecision } from "../lib/backends/backend.ts";
import { LIBRARIES, type LibraryKind } from "../lib/backends/cpu/matrix/libraries.ts";
import { useMatrixLibrary } from "../lib/backends/cpu/cpu_backend.ts";
import { bf16Array, roundToBf16, toBf16 } from "../lib/backends/cpu/bf16.ts";
import { type Dnnl, openDnnl } from "../lib/backends/cpu/matrix/dnnl.ts";
import { openDnnlReorder } from "../lib/backends/cpu/matrix/dnnl_reorder.ts";
import { MATMUL_CACHED, MATMUL_MIN_ROWS } from "../lib/backends/cpu/matrix/dnnl_matmul.ts";
import { useSimd } from "../lib/backends/cpu/simd_kernels.ts";
import { setParallelism } from "../lib/backends/cpu/pool.ts";
import { loadHFGPT2 } from "../lib/weights/gpt2.ts";
import { GPTModel } from "../lib/model/model.ts";
import { accumulateGradients } from "../lib/train/train.ts";
import { globalNorm } from "../lib/train/schedule.ts";
import { fixturesDir, ignoredBecause } from "./_helpers.ts";

const FIXTURES = fixturesDir();
const fx = JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES)));
const torchFx = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/gpt2-tiny-torch.json", import.meta.url)),
);
const KINDS: LibraryKind[] = ["native", "dnnl", "wasm"];
const opts = { sanitizeResources: false, sanitizeOps: false };

/** Why library `kind` cannot run here, or null. */
function missing(kind: LibraryKind): string | null {
  const r = LIBRARIES[kind]();
  return r.ok ? null : r.reason;
}

function relClose(got: number, want: number, tol: number, what: string): void {
  const rel = Math.abs(got - want) / Math.abs(want);
  ok(rel <= tol, `${what}: ${got} vs ${want} (relative ${rel.toExponential(2)} > ${tol})`);
}

Deno.test("roundToBf16 rounds to nearest even and keeps NaN and infinities", () => {
  ok(roundToBf16(1 + 2 ** -8) === 1, "a tie rounds to the even neighbour below");
  ok(roundToBf16(1 + 3 * 2 ** -8) === 1 + 2 ** -6, "a tie rounds to the even neighbour above");
  ok(roundToBf16(1 + 2 ** -8 + 2 ** -20) === 1 + 2 ** -7, "past the tie rounds up");
  ok(roundToBf16(-(1 + 2 ** -8 + 2 ** -20)) === -(1 + 2 ** -7), "negative values round alike");
  ok(Number.isNaN(roundToBf16(NaN)) && roundToBf16(Infinity) === Infinity);
  ok(roundToBf16(3.4028234663852886e38) === Infinity, "the largest float rounds up to infinity");
});

Deno.test("bf16 conversions in WebAssembly SIMD give the JS loop's bits, ties, NaN and infinities included", () => {
  const special = [
    1 + 2 ** -8,
    1 + 3 * 2 ** -8,
    -0,
    Infinity,
    -Infinity,
    NaN,
    3.4028234663852886e38,
    1e-45,
  ];
  const src = new Float32Array(70_003).map((
    _,
    i,
  ) => (i < special.length ? special[i] : Math.sin(i) * 10 ** (i % 9 - 4)));
  const simd = useSimd(), threads = setParallelism();
  setParallelism(1); // the calling thread does it all, with and without SIMD
  try {
    for (const bits of [true, false]) {
      const viaSimd = toBf16(src, bf16Array(src.length, bits));
      useSimd(false);
      const viaJs = toBf16(src, bf16Array(src.length, bits));
      useSimd(simd);
      const a = new Uint16Array(viaSimd.buffer, viaSimd.byteOffset, viaSimd.byteLength / 2);
      const b = new Uint16Array(viaJs.buffer, viaJs.byteOffset, viaJs.byteLength / 2);
      const first = a.findIndex((x, i) => x !== b[i]);
      ok(first < 0, `${bits ? "bits" : "rounded"}: first difference at ${first}`);
      if (!bits) ok((viaJs as Float32Array).every((x, i) => Object.is(x, roundToBf16(src[i]))));
    }
  } finally {
    useSimd(simd);
    setParallelism(threads);
  }
});

/** Seeded values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0, s = seed >>> 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** `x`'s bf16 bits (round to nearest even), as oneDNN's bf16 products take them. */
function bf16Bits(x: Float32Array): Uint16Array {
  return toBf16(x, bf16Array(x.length, true)) as Uint16Array;
}

/** op(A)·op(B) in float64 from float32 operands (row-major, 2-D). */
function reference(
  a: Float32Array,
  b: Float32Array,
  M: number,
  N: number,
  K: number,
  tA: boolean,
  tB: boolean,
) {
  const c = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        s += a[tA ? k * M + i : i * K + k] * b[tB ? j * K + k : k * N + j];
      }
      c[i * N + j] = s;
    }
  }
  return c;
}

/** Largest |got − want| / (1 + |want|). */
function worst(got: Float32Array, want: Float64Array): number {
  let w = 0;
  for (let i = 0; i < got.length; i++) {
    w = Math.max(w, Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i])));
  }
  return w;
}

/** A linear layer's product with its bias added (C starts as the bias: oneDNN's matmul adds it as a sum post-op). */
function biasedProduct(kind: LibraryKind): void {
  const [M, N, K] = [48, 40, 72];
  const a = values(M * K, 9), b = values(N * K, 10), bias = values(N, 11);
  const got = tf.tidy(() =>
    tf.fused.matMul({
      a: tf.tensor2d(a, [M, K]),
      b: tf.tensor2d(b, [N, K]),
      transposeB: true,
      bias: tf.tensor1d(bias),
    }).dataSync() as Float32Array
  );
  const want = reference(a.map(roundToBf16), b.map(roundToBf16), M, N, K, false, true)
    .map((x, i) => x + bias[i % N]);
  ok(
    worst(got, want) < 1e-6,
    `${kind} ${M}×${N}×${K} + bias: ${worst(got, want)} from the rounded product`,
  );
}

for (const kind of KINDS) {
  Deno.test({
    name: `bf16-mixed products on ${kind} are fp32 products of bf16-rounded operands${
      ignoredBecause(missing(kind))
    }`,
    ignore: missing(kind) !== null,
    ...opts,
    fn: async () => {
      await initBackend("cpu");
      ok(useMatrixLibrary(kind).ok);
      usePrecision("bf16-mixed", "cpu", []);
      try {
        for (
          const [M, N, K, tA, tB] of [[64, 96, 200, false, true], [
            96,
            40,
            64,
            true,
            false,
          ]] as const
        ) {
          const a = values(M * K, 1 + M), b = values(K * N, 2 + N);
          const got = tf.tidy(() =>
            tf.matMul(
              tf.tensor2d(a, tA ? [K, M] : [M, K]),
              tf.tensor2d(b, tB ? [N, K] : [K, N]),
              tA,
              tB,
            )
              .dataSync() as Float32Array
          );
          const want = reference(a.map(roundToBf16), b.map(roundToBf16), M, N, K, tA, tB);
          ok(
            worst(got, want) < 1e-6,
            `${kind} ${M}×${N}×${K}: ${worst(got, want)} from the rounded product`,
          );
          ok(worst(got, reference(a, b, M, N, K, tA, tB)) > 1e-4, "the operands were not rounded");
        }
        biasedProduct(kind);
        // A batch of small products (attention's heads) is shared out between the threads, one product each.
        const [H, M, N, K] = [24, 128, 96, 64];
        const a = values(H * M * K, 3), b = values(H * K * N, 4);
        const got = tf.tidy(() =>
          tf.matMul(tf.tensor3d(a, [H, M, K]), tf.tensor3d(b, [H, N, K]), false, true)
            .dataSync() as Float32Array
        );
        const want = new Float64Array(H * M * N);
        for (let h = 0; h < H; h++) {
          const ah = a.subarray(h * M * K, (h + 1) * M * K).map(roundToBf16);
          const bh = b.subarray(h * K * N, (h + 1) * K * N).map(roundToBf16);
          want.set(reference(ah, bh, M, N, K, false, true), h * M * N);
        }
        ok(
          worst(got, want) < 1e-6,
          `${kind} ${H} heads: ${worst(got, want)} from the rounded product`,
        );
      } finally {
        usePrecision("fp32", "cpu", []);
      }
    },
  });
}

/** Causal attention on (1·132, 8) q, k, v in bf16-mixed on library `kind`: the context and the three gradients. */
async function attentionBf16(kind: LibraryKind): Promise<Float32Array[]> {
  await initBackend("cpu");
  ok(useMatrixLibrary(kind).ok);
  usePrecision("bf16-mixed", "cpu", []);
  try {
    const [T, H, C] = [132, 2, 8]; // 132: each head's products in causal parts of 64 rows (64, 64, 4)
    const [q, k, v, r] = [5, 6, 7, 8].map((seed) => tf.tensor2d(values(T * C, seed), [T, C]));
    const attn = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) =>
      fusedAttention(x as tf.Tensor2D, y as tf.Tensor2D, z as tf.Tensor2D, 1, H, 0.5, null)!;
    const out = tf.tidy(() => [
      attn(q, k, v),
      ...tf.grads((x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => tf.sum(tf.mul(attn(x, y, z), r)))([
        q,
        k,
        v,
      ]),
    ]);
    const res = out.map((t) => t.dataSync() as Float32Array);
    tf.dispose([q, k, v, r, ...out]);
    return res;
  } finally {
    usePrecision("fp32", "cpu", []);
  }
}

Deno.test({
  name:
    `bf16-mixed causal attention: oneDNN's bf16 head products by parts agree with the emulated ones${
      ignoredBecause(missing("dnnl"))
    }`,
  ignore: missing("dnnl") !== null,
  ...opts,
  fn: async () => {
    const [dnnl, wasm] = [await attentionBf16("dnnl"), await attentionBf16("wasm")];
    ["context", "dq", "dk", "dv"].forEach((what, i) => {
      const d = worst(dnnl[i], Float64Array.from(wasm[i]));
      ok(d < 1e-5, `${what}: ${d} from the emulated bf16 products`);
    });
  },
});

/** Five AdamW steps (lr 4e-4, wd 0.1) on the golden batch in bf16-mixed: each step's loss and gradient norm. */
async function fiveSteps(kind: LibraryKind): Promise<{ losses: number[]; norms: number[] }> {
  await initBackend("cpu");
  ok(useMatrixLibrary(kind).ok);
  const model = new GPTModel(
    fx.config,
    await loadHFGPT2(
      new URL("gpt2-tiny.safetensors", FIXTURES).pathname,
      fx.config,
      { tieHead: "copy" },
    ),
  );
  usePrecision("bf16-mixed", "cpu", [...model.params.values()]);
  const optimizer = new AdamW(model.params, { lr: 4e-4, weightDecay: 0.1 });
  const batch = {
    inputs: Int32Array.from(fx.input_ids.flat()),
    targets: Int32Array.from(fx.target_ids.flat()),
    batchSize: 2,
    maxLength: 32,
  };
  const losses: number[] = [], norms: number[] = [];
  try {
    for (let step = 0; step < 5; step++) {
      const { loss, grads } = await accumulateGradients(model, [batch], null);
      losses.push(loss);
      norms.push(await globalNorm(grads.values()));
      optimizer.applyGradients(grads);
      tf.dispose([...grads.values()]);
    }
  } finally {
    usePrecision("fp32", "cpu", []);
    optimizer.dispose();
    model.dispose();
  }
  return { losses, norms };
}

const runs = new Map<LibraryKind, { losses: number[]; norms: number[] }>();
for (const kind of KINDS) {
  Deno.test({
    name:
      `bf16-mixed on ${kind}: 5 AdamW steps of the tiny GPT-2 within 1e-2 of PyTorch's autocast${
        ignoredBecause(missing(kind))
      }`,
    ignore: missing(kind) !== null,
    ...opts,
    fn: async () => {
      const got = await fiveSteps(kind);
      runs.set(kind, got);
      const want = torchFx.bf16_autocast;
      got.losses.forEach((l, i) => relClose(l, want.losses[i], 1e-2, `step ${i + 1} loss`));
      got.norms.forEach((n, i) => relClose(n, want.grad_norms[i], 1e-2, `step ${i + 1} grad norm`));
      ok(got.losses[4] < got.losses[0], "the loss falls over the 5 steps");
    },
  });
}

Deno.test({
  name: `bf16-mixed: the emulated libraries agree with oneDNN's bf16 kernels within 1e-2${
    ignoredBecause(missing("dnnl"))
  }`,
  ignore: missing("dnnl") !== null,
  ...opts,
  fn: async () => {
    const dnnl = runs.get("dnnl") ?? await fiveSteps("dnnl");
    for (const kind of ["native", "wasm"] as const) {
      if (missing(kind)) continue;
      const other = runs.get(kind) ?? await fiveSteps(kind);
      other.losses.forEach((l, i) =>
        relClose(l, dnnl.losses[i], 1e-2, `${kind} step ${i + 1} loss`)
      );
      other.norms.forEach((n, i) =>
        relClose(n, dnnl.norms[i], 1e-2, `${kind} step ${i + 1} grad norm`)
      );
    }
  },
});

Deno.test({
  name:
    `oneDNN's reorder converts to bf16.ts's bits, views at an offset included; a subnormal becomes zero, which ` +
    `its bf16 products make of it anyway${ignoredBecause(missing("dnnl"))}`,
  ignore: missing("dnnl") !== null,
  fn: () => {
    const d = openDnnl() as Dnnl, reorder = openDnnlReorder(d.path, d.version);
    if (!d.version.startsWith("oneDNN 2.")) return ok(reorder === null, d.version);
    ok(reorder, `${d.version}: the reorder did not set up`);
    const special = [
      0,
      -0,
      Infinity,
      -Infinity,
      NaN,
      3.4028234663852886e38,
      1 + 2 ** -8,
      1 + 3 * 2 ** -8,
    ];
    const src = new Float32Array(70_003).map((_, i) =>
      special[i] ?? Math.sin(i) * 10 ** (i % 9 - 4)
    );
    const u = new Uint32Array(src.buffer);
    u.set([0x7fa00001, 0xffc00000, 0x7f800001, 0x000ae398, 0x800ae398, 0x007fffff, 1], 20); // NaNs, subnormals
    const ours = bf16Bits(src);
    const theirs = new Uint16Array(src.length + 8).subarray(3, 3 + src.length);
    reorder(src.subarray(0), theirs);
    const subnormal = (i: number) => (u[i] & 0x7f800000) === 0 && (u[i] & 0x7fffff) !== 0;
    const first = ours.findIndex((x, i) =>
      x !== (subnormal(i) ? theirs[i] | (x & 0x7fff) : theirs[i])
    );
    ok(first < 0, `first difference at ${first}: ${u[first]?.toString(16)}`);
    ok([23, 24, 25, 26].every((i) => (theirs[i] & 0x7fff) === 0), "subnormals become zero");
    // Where the two differ (subnormals), oneDNN's bf16 product takes ours as zero too.
    const n = 64,
      a = new Uint16Array(n * n).fill(ours[23]),
      b = new Uint16Array(n * n).fill(0x3f80);
    const c = new Float32Array(n * n).fill(1);
    d.gemmBf16(111, 111, n, n, n, 1, a, n, b, n, 0, c, n);
    ok(c.every((x) => x === 0), `a subnormal bf16 times 1 summed ${n} times gives ${c[0]}`);
  },
});

Deno.test({
  name:
    `oneDNN's bf16 matmul primitives: more shapes than its cache keeps, each product right, freed ones made again${
      ignoredBecause(missing("dnnl"))
    }`,
  ignore: missing("dnnl") !== null,
  fn: () => {
    const lib = LIBRARIES.dnnl();
    ok(lib.ok && lib.lib.gemmBf16, "oneDNN loads as a library");
    const gemm = lib.lib.gemmBf16, [N, K] = [24, 40];
    const b = values(K * N, 5), b16 = bf16Bits(b);
    const rows = Array.from({ length: MATMUL_CACHED + 8 }, (_, i) => MATMUL_MIN_ROWS + i);
    for (const M of [...rows, ...rows.slice(0, 4)]) { // the first shapes again, after the cache freed them
      const a = values(M * K, M), a16 = bf16Bits(a);
      const c = new Float32Array(M * N).fill(NaN);
      gemm(111, 111, M, N, K, 1, a16, K, b16, N, 0, c, N);
      const want = reference(a.map(roundToBf16), b.map(roundToBf16), M, N, K, false, false);
      ok(worst(c, want) < 1e-6, `${M}×${N}×${K}: ${worst(c, want)} from the rounded product`);
    }
  },
});

/** Head `i` = (b, h) of a strided batch (strides [per batch item, per head, ld]) as a dense row-major matrix. */
function head(
  x: Float32Array,
  st: number[],
  H: number,
  i: number,
  rows: number,
  cols: number,
): Float32Array {
  const o = Math.floor(i / H) * st[0] + (i % H) * st[1];
  return Float32Array.from(
    { length: rows * cols },
    (_, j) => x[o + Math.floor(j / cols) * st[2] + (j % cols)],
  );
}

Deno.test({
  name: `oneDNN multiplies all of attention's heads at once, in each of their six layouts${
    ignoredBecause(missing("dnnl"))
  }`,
  ignore: missing("dnnl") !== null,
  fn: () => {
    const lib = LIBRARIES.dnnl();
    ok(lib.ok && lib.lib.headsBf16, "oneDNN has a batched bf16 product");
    const [Bn, H, T, D] = [2, 3, 20, 8], C = H * D;
    const act = [T * C, D, C], sq = [H * T * T, T * T, T]; // (B·T, C) activations; (B, H, T, T) weights
    // [M, N, K, transA, transB, A's, B's and C's strides]: Q·Kᵀ, w·V, dctx·Vᵀ, wᵀ·dctx, ds·K, dsᵀ·Q.
    const kinds = [
      [T, T, D, false, true, act, act, sq],
      [T, D, T, false, false, sq, act, act],
      [T, T, D, false, true, act, act, sq],
      [T, D, T, true, false, sq, act, act],
      [T, D, T, false, false, sq, act, act],
      [T, D, T, true, false, sq, act, act],
    ] as const;
    for (const [M, N, K, transA, transB, sa, sb, sc] of kinds) {
      const size = (st: readonly number[]) => Bn * st[0];
      const a = values(size(sa), M + K), b = values(size(sb), N + 2 * K);
      const [a16, b16] = [a, b].map(bf16Bits);
      const c = new Float32Array(size(sc)).fill(NaN);
      const h = {
        batch: Bn,
        heads: H,
        transA,
        transB,
        M,
        N,
        K,
        sa: [...sa],
        sb: [...sb],
        sc: [...sc],
      };
      ok(
        lib.lib.headsBf16(h, a16, b16, c),
        `${M}×${N}×${K} tA ${transA} tB ${transB}: not run at once`,
      );
      for (let i = 0; i < Bn * H; i++) {
        const [ra, ca] = transA ? [K, M] : [M, K], [rb, cb] = transB ? [N, K] : [K, N];
        const want = reference(
          head(a, sa, H, i, ra, ca).map(roundToBf16),
          head(b, sb, H, i, rb, cb).map(roundToBf16),
          M,
          N,
          K,
          transA,
          transB,
        );
        const got = head(c, sc, H, i, M, N);
        ok(
          worst(got, want) < 1e-6,
          `head ${i} of ${M}×${N}×${K} tA ${transA}: ${worst(got, want)}`,
        );
      }
    }
  },
});

Deno.test({
  name:
    `oneDNN's fp32 and BLAS-like bf16 products of many rows give the same bits on 1 and 2 threads, its bf16 matmul primitives the same bits run to run${
      ignoredBecause(missing("dnnl"))
    }`,
  ignore: missing("dnnl") !== null,
  fn: () => {
    const d = openDnnl() as Dnnl;
    const lib = LIBRARIES.dnnl(), before = d.getNumThreads();
    ok(lib.ok && lib.lib.gemmBf16, "oneDNN loads as a library");
    const matmul = lib.lib.gemmBf16; // matmul primitives from 16 rows (dnnl_matmul.ts)
    try {
      for (
        const [M, N, K, tA] of [
          [512, 768, 768, false],
          [768, 3072, 512, true],
          [64, 96, 8192, false],
        ] as const
      ) {
        const a = values(M * K, 3), b = values(K * N, 4), lda = tA ? M : K;
        const a16 = bf16Bits(a);
        const b16 = bf16Bits(b);
        const run = (threads: number) => {
          d.setNumThreads(threads);
          const c32 = new Float32Array(M * N), c16 = new Float32Array(M * N);
          d.sgemm(101, tA ? 112 : 111, 111, M, N, K, 1, a, lda, b, N, 0, c32, N);
          d.gemmBf16(tA ? 112 : 111, 111, M, N, K, 1, a16, lda, b16, N, 0, c16, N);
          const cm = new Float32Array(M * N);
          matmul(tA ? 112 : 111, 111, M, N, K, 1, a16, lda, b16, N, 0, cm, N);
          return [c32, c16, cm];
        };
        const [one, two] = [run(1), run(2)];
        ok(
          one[0].every((x, i) => x === two[0][i]),
          `fp32 ${M}×${N}×${K} differs between 1 and 2 threads`,
        );
        ok(
          one[1].every((x, i) => x === two[1][i]),
          `bf16 ${M}×${N}×${K} differs between 1 and 2 threads`,
        );
        const again = run(2)[2]; // the primitives may split K between threads: their bits are per thread count
        ok(
          again.every((x, i) => x === two[2][i]),
          `bf16 matmul primitive ${M}×${N}×${K} differs between two runs on 2 threads`,
        );
      }
    } finally {
      d.setNumThreads(before);
    }
  },
});
