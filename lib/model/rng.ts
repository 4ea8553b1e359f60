/**
 * PyTorch's CPU random generator, draw for draw: ATen's `CPUGeneratorImpl` (an mt19937 engine) and the CPU kernels
 * of the random operations the book uses (`torch.manual_seed`, `rand`/`uniform_`, `randn`/`normal_`,
 * `exponential_`, `multinomial(p, 1)`). Seeded alike, it yields the float32 values of PyTorch 1.13 and 2.x on
 * x86-64: those builds compile the float kernels with GCC for AVX2 + FMA, which contracts `a * b + c` into one
 * fused operation, so the kernels below fuse exactly where GCC does (checked bit for bit against PyTorch 1.13).
 *
 * Sources (ATen): `core/MT19937RNGEngine.h`, `CPUGeneratorImpl.cpp`, `core/DistributionsHelper.h`,
 * `core/TransformationHelper.h`, `native/cpu/DistributionTemplates.h`, `native/cpu/avx_mathfun.h`,
 * `native/Distributions.cpp` (`multinomial`).
 */
import { UserError } from "../errors.ts";

const N = 624; // mt19937 state words
const M = 397;
const MATRIX_A = 0x9908b0df | 0;
const UPPER = 0x80000000 | 0;
const LOWER = 0x7fffffff;

const CHUNK = 4096; // 32-bit draws made at a time by the bulk fills

/** PyTorch's default seed (`default_rng_seed_val`), used when no seed is given. */
export const DEFAULT_SEED = 67280421310721;

const NORMAL_FILL_MIN = 16; // from this size, normal_ on float32 takes the vectorised Box-Muller path

/** A generator's whole state as plain JSON data: what a checkpoint stores to resume a run's random stream. */
export interface TorchGeneratorState {
  seed: number; // the last manual seed
  mt: number[]; // the 624 mt19937 state words
  left: number; // draws left before the next twist, plus one (ATen's `left_`)
  next: number; // index of the next state word (ATen's `next_`)
  nextNormal: number | null; // Box-Muller's cached second double normal (`next_double_normal_sample_`)
}

const f32 = Math.fround;
const TWO_POW_M24 = 2 ** -24; // a float32 uniform keeps the low 24 bits of one draw
const TWO_POW_M53 = 2 ** -53;
const TWO_POW_32 = 2 ** 32;
const MASK21 = 0x1fffff; // a double uniform keeps the low 53 bits of a 64-bit draw: 21 of them from the high word

/**
 * float32 `fma(a, b, c)` with a single rounding, for float32 inputs. The product is exact in a double; the sum may
 * round there and again to float32, which differs from one rounding only when the double lands on a float32
 * midpoint (rare: {@link fma32Midpoint} then settles it).
 */
function fma32(a: number, b: number, c: number): number {
  const s = a * b + c;
  const r = f32(s);
  const t = r + 2 * (s - r); // the other float32 neighbour when s is a midpoint
  return t === r || f32(t) !== t ? r : fma32Midpoint(a * b, c, s, r, t);
}

/** `fma32` when the double sum s of p + c is a float32 midpoint between r and t: the exact remainder decides. */
function fma32Midpoint(p: number, c: number, s: number, r: number, t: number): number {
  const bb = s - p;
  const err = (p - (s - bb)) + (c - bb); // TwoSum: p + c = s + err exactly
  if (err === 0) return r; // a true tie: f32 already rounded it to even
  return (err > 0) === (t > r) ? t : r;
}

// avx_mathfun.h's Cephes constants, as float32.
const SQRTHF = f32(0.707106781186547524);
const LOG_P0 = f32(7.0376836292e-2);
const LOG_P1 = f32(-1.1514610310e-1);
const LOG_P2 = f32(1.1676998740e-1);
const LOG_P3 = f32(-1.2420140846e-1);
const LOG_P4 = f32(1.4249322787e-1);
const LOG_P5 = f32(-1.6668057665e-1);
const LOG_P6 = f32(2.0000714765e-1);
const LOG_P7 = f32(-2.4999993993e-1);
const LOG_P8 = f32(3.3333331174e-1);
const LOG_Q1 = f32(-2.12194440e-4);
const LOG_Q2 = f32(0.693359375);
const DP1 = f32(-0.78515625);
const DP2 = f32(-2.4187564849853515625e-4);
const DP3 = f32(-3.77489497744594108e-8);
const SIN_P0 = f32(-1.9515295891e-4);
const SIN_P1 = f32(8.3321608736e-3);
const SIN_P2 = f32(-1.6666654611e-1);
const COS_P0 = f32(2.443315711809948e-5);
const COS_P1 = f32(-1.388731625493765e-3);
const COS_P2 = f32(4.166664568298827e-2);
const FOPI = f32(1.27323954473516); // 4 / pi
const TWO_PI_F = f32(2 * Math.PI);
const INV_POW2 = Float64Array.from({ length: 26 }, (_, i) => 2 ** -i);

/** mt19937's tempering of one state word (int32 bit patterns in and out). */
function temper(word: number): number {
  let y = word;
  y ^= y >>> 11;
  y ^= (y << 7) & 0x9d2c5680;
  y ^= (y << 15) & 0xefc60000;
  return y ^ (y >>> 18);
}

// The 8 lanes of normal_fill_16_AVX2's vectors. Working a step across all lanes before the next (as the vector
// code does) lets the CPU overlap the lanes' long dependency chains: twice as fast as one lane at a time.
const LX = new Float64Array(8);
const LY = new Float64Array(8);
const LZ = new Float64Array(8);
const LE = new Float64Array(8);
const LR = new Float64Array(8);
const LS = new Float64Array(8);
const LJ = new Int32Array(8);

/**
 * `normal_fill_16_AVX2`: Box-Muller on 16 uniforms in place, the first 8 giving the radii and the last 8 the
 * angles: d[k] = r cos(theta) * std + mean, d[k + 8] = r sin(theta) * std + mean, where r = sqrt(-2 log(1 - u))
 * with avx_mathfun.h's `log256_ps` and theta = 2 pi u' with its `sincos256_ps`, fused where GCC fuses them (the
 * Horner steps and `y * z + e * q1` in the log; the range reduction, `y * z - z / 2` and `y2 * x + x` in sincos).
 * Those fused steps are written `f32(a * b + c)`: rounding twice (to double, then float32) gives the single rounding
 * of an FMA for every one of the 2^24 uniforms each lane can get, which tests/rng_test.ts checks exhaustively.
 * Exported for that test.
 */
export function normalFill16(d: Float32Array, o: number, mean: number, std: number): void {
  // log256_ps(1 - u): 1 - u = i * 2^-24 exactly, i in [1, 2^24]
  for (let k = 0; k < 8; k++) {
    const i = 16777216 - d[o + k] * 16777216;
    const bits = 32 - Math.clz32(i);
    const m = i * INV_POW2[bits]; // mantissa in [0.5, 1)
    const small = m < SQRTHF;
    LE[k] = small ? bits - 25 : bits - 24; // exponent + 1, less 1 when the mantissa is doubled
    const x = small ? m + m - 1 : m - 1; // exact
    LX[k] = x;
    LZ[k] = f32(x * x);
    LY[k] = f32(LOG_P0 * x + LOG_P1);
  }
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P2);
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P3);
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P4);
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P5);
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P6);
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P7);
  for (let k = 0; k < 8; k++) LY[k] = f32(LY[k] * LX[k] + LOG_P8);
  for (let k = 0; k < 8; k++) {
    const x = LX[k];
    const z = LZ[k];
    const e = LE[k];
    let y = f32(LY[k] * x);
    y = f32(y * z + f32(e * LOG_Q1));
    y = f32(y - z * 0.5); // z * 0.5 is exact
    const log = f32(f32(x + y) + e * LOG_Q2); // e * q2 is exact
    LR[k] = f32(Math.sqrt(-2 * log));
  }

  // sincos256_ps(theta), theta >= 0: LY gets the cosine polynomial, LS the sine one
  for (let k = 0; k < 8; k++) {
    const theta = f32(TWO_PI_F * d[o + k + 8]);
    const j = ((f32(theta * FOPI) | 0) + 1) & ~1;
    LJ[k] = j;
    let x = f32(j * DP1 + theta); // "extended precision modular arithmetic"
    x = f32(j * DP2 + x);
    x = f32(j * DP3 + x);
    const z = f32(x * x);
    LX[k] = x;
    LZ[k] = z;
    LY[k] = f32(COS_P0 * z + COS_P1);
    LS[k] = f32(SIN_P0 * z + SIN_P1);
  }
  for (let k = 0; k < 8; k++) {
    const z = LZ[k];
    LY[k] = f32(LY[k] * z + COS_P2);
    LS[k] = f32(LS[k] * z + SIN_P2);
  }
  for (let k = 0; k < 8; k++) {
    const x = LX[k];
    const z = LZ[k];
    const j = LJ[k];
    let c = f32(LY[k] * z);
    c = f32(f32(c * z - z * 0.5) + 1);
    let s = f32(LS[k] * z);
    s = f32(s * x + x);
    const swap = (j & 2) !== 0; // which polynomial serves which function
    let sin = swap ? c : s;
    let cos = swap ? s : c;
    if (j & 4) sin = -sin;
    if (~(j - 2) & 4) cos = -cos;
    d[o + k] = fma32(f32(LR[k] * cos), std, mean);
    d[o + k + 8] = fma32(f32(LR[k] * sin), std, mean);
  }
}

/**
 * PyTorch's CPU generator (`torch.Generator()` / the default generator): mt19937 seeded as `torch.manual_seed`
 * seeds it, with the float32 sampling kernels of ATen's CPU backend.
 *
 * @example
 * const rng = new TorchGenerator(123);
 * rng.rand(3); // torch.manual_seed(123); torch.rand(3)
 */
export class TorchGenerator {
  private mt = new Int32Array(N); // words as int32: the bit patterns of uint32
  private left = 1;
  private next = 0;
  private seed = DEFAULT_SEED;
  private nextNormal: number | null = null;
  private scratch = new Int32Array(CHUNK);

  /** A generator seeded with `seed` (PyTorch's default seed when omitted). */
  constructor(seed: number = DEFAULT_SEED) {
    this.manualSeed(seed);
  }

  /** `torch.manual_seed(seed)`: reseeds mt19937 and drops the cached normal. */
  manualSeed(seed: number): this {
    if (!Number.isSafeInteger(seed)) {
      throw new RangeError(`manualSeed: ${seed} is not a safe integer`);
    }
    const mt = this.mt;
    mt[0] = seed >>> 0; // the engine keeps the seed's low 32 bits (uint64 wrap for negatives)
    for (let j = 1; j < N; j++) {
      const p = mt[j - 1] ^ (mt[j - 1] >>> 30);
      mt[j] = Math.imul(1812433253, p) + j;
    }
    this.left = 1;
    this.next = 0;
    this.seed = seed;
    this.nextNormal = null;
    return this;
  }

  /** The seed last set (`torch.initial_seed()`). */
  initialSeed(): number {
    return this.seed;
  }

  /** One 32-bit draw (`CPUGeneratorImpl::random()`), an integer in [0, 2^32). */
  random(): number {
    if (--this.left === 0) this.twist();
    return temper(this.mt[this.next++]) >>> 0;
  }

  /** One 64-bit draw (`random64()`): the first 32-bit draw is the high word. */
  random64(): bigint {
    const hi = this.random();
    return (BigInt(hi) << 32n) | BigInt(this.random());
  }

  /** Skips `count` 32-bit draws, as if they had been made (like `std::mt19937::discard`). */
  discard(count: number): this {
    let n = count;
    while (n > 0) {
      const free = this.left - 1; // draws that need no twist
      if (n <= free) {
        this.left -= n;
        this.next += n;
        return this;
      }
      this.left = 1;
      this.next += free;
      n -= free;
      this.twist(); // the draw that twists takes word 0
      this.next = 1;
      n--;
    }
    return this;
  }

  /** The next `count` (at most {@link CHUNK}) 32-bit draws, in a scratch buffer reused by the next call. */
  private words(count: number): Int32Array {
    const out = this.scratch;
    const mt = this.mt;
    let i = 0;
    while (i < count) {
      if (this.left === 1) {
        this.twist();
        this.left = N + 1; // the draw that twists does not count down
      }
      const k = Math.min(this.left - 1, count - i);
      for (let t = 0, w = this.next; t < k; t++, w++) out[i + t] = temper(mt[w]);
      this.left -= k;
      this.next += k;
      i += k;
    }
    return out;
  }

  /** `uniform_(from, to)` on a float32 tensor: one 32-bit draw per element, `x * (to - from) + from` fused. */
  fillUniform(out: Float32Array, from = 0, to = 1): Float32Array {
    const a = f32(from);
    const w = f32(f32(to) - a);
    if (!(a <= f32(to))) throw new RangeError(`uniform_: expects from <= to, got ${from} > ${to}`);
    // x * w is exact in a double (24 + 24 bits); when `from` is within a factor 2^24 of w the sum is exact too
    // (at most 50 bits), so one rounding to float32 is the FMA's: the case of every initialiser's U(-b, b).
    const sumExact = a === 0 || (Math.abs(a) <= 2 * w && Math.abs(a) >= w * TWO_POW_M24);
    for (let i = 0; i < out.length; i += CHUNK) {
      const k = Math.min(CHUNK, out.length - i);
      const words = this.words(k);
      if (sumExact) {
        for (let t = 0; t < k; t++) out[i + t] = (words[t] & 0xffffff) * TWO_POW_M24 * w + a;
      } else {
        for (let t = 0; t < k; t++) out[i + t] = fma32((words[t] & 0xffffff) * TWO_POW_M24, w, a);
      }
    }
    return out;
  }

  /** Fills `out` (at most {@link CHUNK} long) with [0, 1) uniforms: the low 24 bits of one draw each. */
  private uniform24(out: Float32Array): void {
    const words = this.words(out.length);
    for (let t = 0; t < out.length; t++) out[t] = (words[t] & 0xffffff) * TWO_POW_M24;
  }

  /** `torch.rand(n)`: n float32 uniforms in [0, 1). */
  rand(n: number): Float32Array {
    return this.fillUniform(new Float32Array(n));
  }

  /**
   * `normal_(mean, std)` on a contiguous float32 tensor. From 16 elements: uniforms for all,
   * then Box-Muller in blocks of 16 (AVX2 kernel); a tail block is recomputed from 16 fresh uniforms over the last
   * 16 elements. Smaller tensors: the double-precision Box-Muller, one normal per element, caching the second.
   */
  fillNormal(out: Float32Array, mean = 0, std = 1): Float32Array {
    const n = out.length;
    if (n < NORMAL_FILL_MIN) {
      for (let i = 0; i < n; i++) out[i] = this.normalDouble(mean, std);
      return out;
    }
    const m = f32(mean);
    const s = f32(std);
    // Chunk by chunk (while the uniforms are in cache): the draws come in the same order as ATen's.
    for (let i = 0; i < n; i += CHUNK) {
      const k = Math.min(CHUNK, n - i);
      this.uniform24(out.subarray(i, i + k));
      for (let b = i; b + 16 <= i + k; b += 16) normalFill16(out, b, m, s);
    }
    if (n % 16 !== 0) {
      this.uniform24(out.subarray(n - 16));
      normalFill16(out, n - 16, m, s);
    }
    return out;
  }

  /** `torch.randn(n)`: n float32 standard normals. */
  randn(n: number): Float32Array {
    return this.fillNormal(new Float32Array(n));
  }

  /**
   * `exponential_(lambd)` on a float32 tensor: `-1 / lambd * log(1 - u)` in double per element, u a 53-bit uniform.
   * (V8's `Math.log` and glibc's `log` can differ in a double's last bit; that reaches a float32 result about once
   * in 10^12 draws.)
   */
  fillExponential(out: Float32Array, lambd = 1): Float32Array {
    const scale = -1 / lambd;
    for (let i = 0; i < out.length; i += CHUNK / 2) {
      const k = Math.min(CHUNK / 2, out.length - i);
      const words = this.words(2 * k);
      for (let t = 0; t < k; t++) {
        const u = ((words[2 * t] & MASK21) * TWO_POW_32 + (words[2 * t + 1] >>> 0)) * TWO_POW_M53;
        out[i + t] = scale * Math.log(1 - u);
      }
    }
    return out;
  }

  /**
   * `bernoulli_(p)` on a float32 tensor: 1 where a 53-bit uniform is below p, else 0. PyTorch's CPU dropout draws
   * its mask this way (`bernoulli_(1 - p)`, then divides by `1 - p` in float32), except in builds with MKL on
   * Intel CPUs, which draw it with MKL's own generator.
   */
  fillBernoulli(out: Float32Array, p: number): Float32Array {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`bernoulli_: expects 0 <= p <= 1, got ${p}`);
    for (let i = 0; i < out.length; i += CHUNK / 2) {
      const k = Math.min(CHUNK / 2, out.length - i);
      const words = this.words(2 * k);
      for (let t = 0; t < k; t++) {
        const u = ((words[2 * t] & MASK21) * TWO_POW_32 + (words[2 * t + 1] >>> 0)) * TWO_POW_M53;
        out[i + t] = u < p ? 1 : 0;
      }
    }
    return out;
  }

  /**
   * `torch.multinomial(probs, 1)` for row-major probabilities [rows, cols] (a 1-D tensor when cols is the length):
   * one index per row, argmax of p / q over the row with q ~ Exp(1) drawn for every element (ATen's one-sample
   * path). Probabilities need not sum to 1.
   */
  multinomial(probs: Float32Array, cols: number = probs.length): Int32Array {
    const rows = probs.length / cols;
    if (!Number.isInteger(rows) || cols < 1) {
      throw new RangeError(
        `multinomial: ${probs.length} probabilities do not fill rows of ${cols}`,
      );
    }
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      for (let c = r * cols; c < (r + 1) * cols; c++) {
        const p = probs[c];
        if (!(p >= 0 && p < Infinity)) {
          throw new RangeError(
            "multinomial: probability tensor contains either `inf`, `nan` or element < 0",
          );
        }
        sum += p;
      }
      if (sum === 0) {
        throw new RangeError(
          "multinomial: invalid multinomial distribution (sum of probabilities <= 0)",
        );
      }
    }
    const q = this.fillExponential(new Float32Array(probs.length));
    const out = new Int32Array(rows);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let best = 0;
      let bestVal = f32(probs[base] / q[base]);
      for (let c = 1; c < cols && bestVal === bestVal; c++) {
        const v = f32(probs[base + c] / q[base + c]);
        if (v > bestVal || v !== v) { // argmax: the first maximum; a NaN (0 / 0) wins
          best = c;
          bestVal = v;
        }
      }
      out[r] = best;
    }
    return out;
  }

  /** The whole state as plain JSON data (`get_state()`), for checkpoints. */
  getState(): TorchGeneratorState {
    return {
      seed: this.seed,
      mt: Array.from(this.mt, (w) => w >>> 0),
      left: this.left,
      next: this.next,
      nextNormal: this.nextNormal,
    };
  }

  /** Restores a state from {@link getState}; the stream then continues exactly where it was taken. */
  setState(state: TorchGeneratorState): this {
    const ok = state !== null && typeof state === "object" && Array.isArray(state.mt) &&
      state.mt.length === N &&
      state.mt.every((w) => Number.isInteger(w) && w >= 0 && w < TWO_POW_32) &&
      Number.isSafeInteger(state.seed) && Number.isInteger(state.left) && state.left >= 1 &&
      state.left <= N && Number.isInteger(state.next) && state.next >= 0 && state.next <= N &&
      (state.nextNormal === null || typeof state.nextNormal === "number");
    if (!ok) {
      throw new UserError(
        "generator state: not a valid mt19937 state (624 words, left, next, seed)",
      );
    }
    this.mt.set(state.mt); // uint32 values wrap to the same int32 bit patterns
    this.left = state.left;
    this.next = state.next;
    this.seed = state.seed;
    this.nextNormal = state.nextNormal;
    return this;
  }

  /** A double uniform in [0, 1): the low 53 bits of one 64-bit draw. */
  private uniformDouble(): number {
    const hi = this.random() & MASK21;
    return (hi * TWO_POW_32 + this.random()) * TWO_POW_M53;
  }

  /** `normal_distribution<double>`: Box-Muller in double, the second normal cached for the next call. */
  private normalDouble(mean: number, std: number): number {
    if (this.nextNormal !== null) {
      const cached = this.nextNormal;
      this.nextNormal = null;
      return cached * std + mean;
    }
    const u1 = this.uniformDouble();
    const u2 = this.uniformDouble();
    const r = Math.sqrt(-2 * Math.log(1 - u2));
    const theta = 2 * Math.PI * u1;
    this.nextNormal = r * Math.sin(theta);
    return r * Math.cos(theta) * std + mean;
  }

  /** mt19937's `next_state`: regenerates all 624 words. */
  private twist(): void {
    const mt = this.mt;
    let k = 0;
    for (; k < N - M; k++) {
      const y = (mt[k] & UPPER) | (mt[k + 1] & LOWER);
      mt[k] = mt[k + M] ^ (y >>> 1) ^ (-(y & 1) & MATRIX_A);
    }
    for (; k < N - 1; k++) {
      const y = (mt[k] & UPPER) | (mt[k + 1] & LOWER);
      mt[k] = mt[k + M - N] ^ (y >>> 1) ^ (-(y & 1) & MATRIX_A);
    }
    const y = (mt[N - 1] & UPPER) | (mt[0] & LOWER);
    mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (-(y & 1) & MATRIX_A);
    this.left = N;
    this.next = 0;
  }
}
