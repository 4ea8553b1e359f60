import {
  deepStrictEqual as assertEquals,
  ok as assert,
  throws as assertThrows,
} from "node:assert/strict";
import { normalFill16, TorchGenerator, type TorchGeneratorState } from "../lib/model/rng.ts";

const fixture = JSON.parse(
  Deno.readTextFileSync(new URL("../../shared/fixtures/torch-seed123.json", import.meta.url)),
);
const streams: Record<string, number[]> = fixture.streams;

/** The float32 values as plain numbers, for exact comparison with PyTorch's `tolist()`. */
const list = (a: Float32Array): number[] => Array.from(a);

Deno.test("streams after torch.manual_seed(123) match PyTorch exactly", () => {
  const rng = new TorchGenerator(123);
  assertEquals(list(rng.rand(20)), streams["rand_20"]);
  rng.manualSeed(123);
  assertEquals(
    list(rng.fillUniform(new Float32Array(10), -0.5, 0.5)),
    streams["uniform_-0.5_0.5_10"],
  );
  rng.manualSeed(123);
  assertEquals(list(rng.randn(16)), streams["randn_16"]);
  rng.manualSeed(123);
  assertEquals(list(rng.randn(37)), streams["randn_37"]); // the tail block recomputed from fresh draws
  rng.manualSeed(123);
  assertEquals(list(rng.randn(5)), streams["randn_5"]); // the double-precision path
  rng.manualSeed(123);
  assertEquals([...rng.randn(20), ...rng.rand(3)], streams["randn_20_then_rand_3"]);
});

// Values from PyTorch 1.13 (`torch.manual_seed(seed)` then the call named), for paths the fixture leaves out.
// deno-fmt-ignore
const TORCH = {
  // uniform_(1.0, 1.3), seed 5: x * w + from is fused (one rounding); unfused differs at 9, 13
  uniform_1_13: [
    1.2490755319595337, 1.0378332138061523, 1.2722408771514893, 1.2459781169891357,
    1.2760310173034668, 1.0349935293197632, 1.049317479133606, 1.221375823020935,
    1.0099793672561646, 1.2982553243637085, 1.1819285154342651, 1.1693713665008545,
    1.0217236280441284, 1.1978017091751099, 1.2145017385482788, 1.1737982034683228,
  ],
  // uniform_(-b, b) with nn.Linear(768, ...)'s kaiming bound, seed 123
  kaiming_768: [
    -0.014714352786540985, 0.0011952797649428248, -0.01792162097990513, 0.013607913628220558,
    -0.030745888128876686, 0.026451442390680313, -0.026227587834000587, -0.02868860401213169,
  ],
  // normal_(0.5, 0.02) on 20 elements (a tail block) and on 5 (the double path), seed 11
  normal_20: [
    0.4897840619087219, 0.5205654501914978, 0.49293696880340576, 0.5024598240852356,
    0.496907502412796, 0.4780712127685547, 0.5273319482803345, 0.5137856602668762,
    0.5014888048171997, 0.49631407856941223, 0.5159207582473755, 0.5191847085952759,
    0.5403508543968201, 0.4766274094581604, 0.4735161066055298, 0.5225348472595215,
    0.5382254719734192, 0.505958080291748, 0.4859175384044647, 0.5099660158157349,
  ],
  normal_5: [
    0.5147525668144226, 0.5389185547828674, 0.4860091805458069, 0.47395405173301697,
    0.4897347688674927,
  ],
  // exponential_() on 8 elements, seed 3
  exponential_8: [
    0.03470345586538315, 0.3379095792770386, 1.4824306964874268, 0.19228345155715942,
    1.4080078601837158, 0.9371330142021179, 0.2215537577867508, 0.5681291222572327,
  ],
  // ten calls of multinomial(w, 1), w = WEIGHTS [3, 8], seed 42; then ten on its first row, seed 42
  multinomial_2d: [
    [3, 0, 4], [3, 0, 7], [4, 0, 5], [3, 0, 0], [5, 7, 0],
    [3, 0, 4], [3, 0, 0], [7, 0, 3], [3, 0, 3], [3, 0, 4],
  ],
  multinomial_1d: [3, 3, 4, 3, 5, 3, 4, 4, 5, 3],
  // where torch.empty(200).bernoulli_(0.9) (and so dropout(p=0.1)'s mask) is 0, seed 1
  bernoulli_zeros: [
    20, 21, 27, 33, 34, 36, 61, 82, 87, 90, 99, 100,
    108, 110, 112, 116, 122, 132, 136, 151, 170, 179, 197,
  ],
  // randn(3), randn(3), then manual_seed(7) and randn(3) again: reseeding drops the cached normal
  randn_3_3: [
    -0.1467950940132141, 0.7861412763595581, 0.9468216300010681,
    -1.1143440008163452, 1.6907901763916016, -0.8948279023170471,
  ],
};
const WEIGHTS = new Float32Array([
  0,
  1,
  0,
  5,
  2,
  3,
  0,
  1,
  4,
  0,
  0,
  0,
  0,
  0,
  0,
  1,
  1,
  1,
  1,
  1,
  1,
  1,
  1,
  1,
]);

Deno.test("uniform_, normal_, exponential_, bernoulli_ match PyTorch on the fused, tail and double paths", () => {
  const a = Math.sqrt(5);
  const b = Math.sqrt(3) * (Math.sqrt(2 / (1 + a * a)) / Math.sqrt(768)); // torch.nn.init's kaiming bound
  assertEquals(
    list(new TorchGenerator(5).fillUniform(new Float32Array(16), 1, 1.3)),
    TORCH.uniform_1_13,
  );
  assertEquals(
    list(new TorchGenerator(123).fillUniform(new Float32Array(8), -b, b)),
    TORCH.kaiming_768,
  );
  assertEquals(
    list(new TorchGenerator(11).fillNormal(new Float32Array(20), 0.5, 0.02)),
    TORCH.normal_20,
  );
  assertEquals(
    list(new TorchGenerator(11).fillNormal(new Float32Array(5), 0.5, 0.02)),
    TORCH.normal_5,
  );
  assertEquals(
    list(new TorchGenerator(3).fillExponential(new Float32Array(8))),
    TORCH.exponential_8,
  );
  const mask = new TorchGenerator(1).fillBernoulli(new Float32Array(200), 0.9);
  assertEquals([...mask.keys()].filter((i) => mask[i] === 0), TORCH.bernoulli_zeros);
  assert(mask.every((x) => x === 0 || x === 1));
  const rng = new TorchGenerator(7);
  assertEquals([...rng.randn(3), ...rng.randn(3)], TORCH.randn_3_3);
  rng.manualSeed(7);
  assertEquals(list(rng.randn(3)), TORCH.randn_3_3.slice(0, 3));
});

Deno.test("multinomial(p, 1) matches PyTorch on 2-D and 1-D inputs with zero probabilities", () => {
  const rng = new TorchGenerator(42);
  assertEquals(
    TORCH.multinomial_2d.map(() => Array.from(rng.multinomial(WEIGHTS, 8))),
    TORCH.multinomial_2d,
  );
  rng.manualSeed(42);
  const row = WEIGHTS.subarray(0, 8);
  assertEquals(TORCH.multinomial_1d.map(() => rng.multinomial(row)[0]), TORCH.multinomial_1d);
  assertThrows(() => rng.multinomial(new Float32Array([0.5, -0.1])), /element < 0/);
  assertThrows(() => rng.multinomial(new Float32Array([0.5, NaN])), /nan/);
  assertThrows(() => rng.multinomial(new Float32Array([1, 0, 0, 0]), 2), /sum of probabilities/);
});

Deno.test("book 5.3.1: 1,000 draws of multinomial(softmax(logits), 1) after seed 123", () => {
  const { logits, seed, draws, counts } = fixture.book_multinomial_5_3_1;
  const max = Math.max(...logits);
  const exps = logits.map((x: number) => Math.exp(x - max));
  const total = exps.reduce((a: number, b: number) => a + b, 0);
  const probs = new Float32Array(exps.map((e: number) => e / total));
  const rng = new TorchGenerator(seed);
  const got = new Array(logits.length).fill(0);
  for (let i = 0; i < draws; i++) got[rng.multinomial(probs)[0]]++;
  assertEquals(got, counts);
});

Deno.test("getState/setState through JSON continues the stream identically", () => {
  const a = new TorchGenerator(123);
  a.randn(5); // leaves a cached second normal in the state
  a.rand(700); // crosses a twist
  const saved: TorchGeneratorState = JSON.parse(JSON.stringify(a.getState()));
  assert(saved.nextNormal !== null);
  const b = new TorchGenerator(1).setState(saved);
  const draw = (g: TorchGenerator) => [
    ...g.randn(3), // uses the cached normal
    ...g.randn(1000),
    ...g.fillUniform(new Float32Array(50), -0.1, 0.1),
    ...g.fillExponential(new Float32Array(7)),
    ...g.fillBernoulli(new Float32Array(9), 0.5),
    ...g.multinomial(WEIGHTS, 8),
    g.random(),
    Number(g.random64() % 1000003n),
  ];
  assertEquals(draw(b), draw(a));
  assertEquals(b.initialSeed(), 123);
  assertThrows(() => b.setState({ ...saved, mt: saved.mt.slice(1) }), /generator state/);
});

Deno.test("discard(n) skips exactly n 32-bit draws", () => {
  for (const n of [0, 1, 623, 624, 625, 5000]) {
    const a = new TorchGenerator(9);
    const b = new TorchGenerator(9);
    a.rand(3);
    b.rand(3);
    for (let i = 0; i < n; i++) a.random();
    b.discard(n);
    assertEquals(b.rand(700), a.rand(700));
  }
});

// An exact float32 fma for the reference kernel: one rounding of a * b + c (a * b is exact in a double; when the
// double sum lands on a float32 midpoint, the sum's exact remainder says which way the true value lies).
function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = Math.fround(s);
  const other = r + 2 * (s - r);
  if (other === r || Math.fround(other) !== other) return r;
  const v = s - p;
  const rest = (p - (s - v)) + (c - v);
  return rest === 0 ? r : (rest > 0) === (other > r) ? other : r;
}

const F32 = new Float32Array(1);
const I32 = new Int32Array(F32.buffer);
const LOG_P = [
  7.0376836292e-2,
  -1.1514610310e-1,
  1.1676998740e-1,
  -1.2420140846e-1,
  1.4249322787e-1,
  -1.6668057665e-1,
  2.0000714765e-1,
  -2.4999993993e-1,
  3.3333331174e-1,
].map(Math.fround);

/** avx_mathfun.h's log256_ps for one lane, with GCC's FMA contractions done exactly. */
function refLog(x0: number): number {
  const f = Math.fround;
  F32[0] = x0;
  const bits = I32[0];
  let e = f((bits >>> 23) - 0x7f + 1);
  I32[0] = (bits & ~0x7f800000) | 0x3f000000; // keep the mantissa, in [0.5, 1)
  const m = F32[0];
  let x = f(m - 1);
  if (m < f(0.707106781186547524)) {
    e = f(e - 1);
    x = f(x + m);
  }
  const z = f(x * x);
  let y = fmaf(LOG_P[0], x, LOG_P[1]);
  for (let i = 2; i < 9; i++) y = fmaf(y, x, LOG_P[i]);
  y = f(y * x);
  y = fmaf(y, z, f(e * f(-2.12194440e-4)));
  y = fmaf(-z, 0.5, y);
  return fmaf(e, f(0.693359375), f(x + y));
}

/** avx_mathfun.h's sincos256_ps for one lane (x >= 0), with GCC's FMA contractions done exactly. */
function refSinCos(x0: number): [number, number] {
  const f = Math.fround;
  const j = ((f(x0 * f(1.27323954473516)) | 0) + 1) & ~1;
  let x = fmaf(j, f(-0.78515625), x0);
  x = fmaf(j, f(-2.4187564849853515625e-4), x);
  x = fmaf(j, f(-3.77489497744594108e-8), x);
  const z = f(x * x);
  let c = fmaf(f(2.443315711809948e-5), z, f(-1.388731625493765e-3));
  c = fmaf(c, z, f(4.166664568298827e-2));
  c = f(c * z);
  c = fmaf(c, z, -f(z * 0.5));
  c = f(c + 1);
  let s = fmaf(f(-1.9515295891e-4), z, f(8.3321608736e-3));
  s = fmaf(s, z, f(-1.6666654611e-1));
  s = f(s * z);
  s = fmaf(s, x, x);
  const polySwap = (j & 2) !== 0;
  const sin = (polySwap ? c : s) * (j & 4 ? -1 : 1);
  const cos = (polySwap ? s : c) * (~(j - 2) & 4 ? -1 : 1);
  return [sin, cos];
}

Deno.test("Box-Muller kernel equals the exactly fused AVX2 kernel for all 2^24 uniforms", () => {
  const f = Math.fround;
  const twoPi = f(2 * Math.PI);
  const block = new Float32Array(16);
  let mismatches = 0;
  for (let base = 0; base < 1 << 24; base += 8) {
    for (let k = 0; k < 8; k++) block[k] = block[k + 8] = (base + k) * 2 ** -24;
    normalFill16(block, 0, 0, 1);
    for (let k = 0; k < 8; k++) {
      const u = (base + k) * 2 ** -24;
      const radius = f(Math.sqrt(f(-2 * refLog(f(1 - u)))));
      const [sin, cos] = refSinCos(f(twoPi * u));
      if (block[k] !== f(radius * cos) || block[k + 8] !== f(radius * sin)) mismatches++;
    }
  }
  assertEquals(mismatches, 0);
});
