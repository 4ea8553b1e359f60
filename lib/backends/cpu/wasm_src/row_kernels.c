// Element-wise and row-wise float32 kernels in WebAssembly SIMD (4 lanes), for lib/backends/cpu/simd_kernels.ts. The JS side
// copies a chunk of its arrays into the BUF scratch arrays, calls a kernel on offsets into them, and copies the
// results back, so every kernel works on this module's own memory only.
//
// Sums (softmax denominators, LayerNorm moments, dot products) accumulate in double; the rest is float32 with
// exp and tanh from Cephes' expf/tanhf (a few ulp). Each lane computes exactly what a lone element would, so a
// result never depends on where a range was cut between threads.
//
// Build: deno task build-wasm (clang --target=wasm32 -msimd128), which rewrites ../simd_kernels_wasm.ts.

#include <wasm_simd128.h>

typedef v128_t f4;

#define CHUNK 65536
/** Scratch arrays the JS side fills and reads: BUF[i] is at buf(i). */
static float BUF[6][CHUNK];

__attribute__((export_name("buf"))) float *buf(int i) { return BUF[i]; }

static inline f4 splat(float x) { return wasm_f32x4_splat(x); }
static inline f4 fma4(f4 a, f4 b, f4 c) { return wasm_f32x4_add(wasm_f32x4_mul(a, b), c); }

/** Lanes k < n of the 4 starting at element k0: all-ones where k0 + lane < n. */
static inline f4 lanes_below(int k0, int n) {
  return wasm_i32x4_lt(wasm_i32x4_add(wasm_i32x4_splat(k0), wasm_i32x4_make(0, 1, 2, 3)),
                       wasm_i32x4_splat(n));
}

// The constants live in memory and are loaded once per call: as v128.const operands inside a loop V8 builds each
// one anew on every iteration, which took longer than the arithmetic.
float KONST[] = {
    -87.33654f,      88.0f,           1.44269504088896341f, 12582912.0f,     0.693359375f,
    -2.12194440e-4f, 1.9875691500E-4f, 1.3981999507E-3f,    8.3334519073E-3f, 4.1665795894E-2f,
    1.6666665459E-1f, 5.0000001201E-1f, 1.0f,               -5.70498872745E-3f, 2.06390887954E-2f,
    -5.37397155531E-2f, 1.33314422036E-1f, -3.33332819422E-1f, 10.0f,           0.625f,
    0.7978845608028654f, 0.044715f,    0.5f,                3.0f * 0.044715f,  -__builtin_inff(),
    1e4f,
};

typedef struct {
  f4 lo, hi, log2e, magic, ln2hi, ln2lo, e0, e1, e2, e3, e4, e5, one, t0, t1, t2, t3, t4, tclamp, tsmall;
  f4 gelu_c, gelu_a, half, gelu_3a, ninf, cap;
} Konst;

static inline Konst konst(void) {
  const float *c = KONST;
  return (Konst){splat(c[0]),  splat(c[1]),  splat(c[2]),  splat(c[3]),  splat(c[4]),  splat(c[5]),  splat(c[6]),
                 splat(c[7]),  splat(c[8]),  splat(c[9]),  splat(c[10]), splat(c[11]), splat(c[12]), splat(c[13]),
                 splat(c[14]), splat(c[15]), splat(c[16]), splat(c[17]), splat(c[18]), splat(c[19]), splat(c[20]),
                 splat(c[21]), splat(c[22]), splat(c[23]), splat(c[24]), splat(c[25])};
}

/**
 * e^x per lane (Cephes expf): x = n·ln2 + r, |r| ≤ ln2/2, e^r by a degree-7 polynomial, 2^n put in the exponent
 * (n rounded by adding 1.5·2^23, whose low bits are then n itself). Below −87.33 (float32's smallest normal, and
 * −∞) gives 0; above 88 is taken as 88; NaN stays NaN.
 */
static inline f4 exp4(f4 x, const Konst *k) {
  const f4 under = wasm_f32x4_lt(x, k->lo);
  const f4 c = wasm_f32x4_pmin(wasm_f32x4_pmax(x, k->lo), k->hi);
  const f4 t = fma4(c, k->log2e, k->magic);
  const f4 n = wasm_f32x4_sub(t, k->magic);
  f4 r = wasm_f32x4_sub(c, wasm_f32x4_mul(n, k->ln2hi));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, k->ln2lo));
  const f4 z = wasm_f32x4_mul(r, r);
  f4 p = fma4(k->e0, r, k->e1);
  p = fma4(p, r, k->e2);
  p = fma4(p, r, k->e3);
  p = fma4(p, r, k->e4);
  p = fma4(p, r, k->e5);
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(p, z), r), k->one);
  const f4 pow2n = wasm_i32x4_add(wasm_i32x4_shl(t, 23), k->one); // (n + 127) << 23: 1.0f's bits are 127 << 23
  return wasm_v128_andnot(wasm_f32x4_mul(p, pow2n), under);
}

/** tanh per lane (Cephes tanhf): an odd polynomial below |x| = 0.625, else 1 − 2/(e^{2|x|} + 1) with x's sign. */
static inline f4 tanh4(f4 x, const Konst *k) {
  const f4 a = wasm_f32x4_abs(x);
  const f4 z = wasm_f32x4_mul(x, x);
  f4 p = fma4(k->t0, z, k->t1);
  p = fma4(p, z, k->t2);
  p = fma4(p, z, k->t3);
  p = fma4(p, z, k->t4);
  const f4 small = fma4(wasm_f32x4_mul(p, z), x, x);
  const f4 e = exp4(wasm_f32x4_add(wasm_f32x4_pmin(a, k->tclamp), wasm_f32x4_pmin(a, k->tclamp)), k);
  const f4 big = wasm_f32x4_sub(k->one, wasm_f32x4_div(wasm_f32x4_add(k->one, k->one), wasm_f32x4_add(e, k->one)));
  const f4 sign = wasm_v128_xor(x, a);
  return wasm_v128_bitselect(small, wasm_v128_or(big, sign), wasm_f32x4_lt(a, k->tsmall));
}

/** Σ of the 4 lanes into two double accumulators (low and high pair). */
static inline void acc2(f4 v, v128_t *lo, v128_t *hi) {
  *lo = wasm_f64x2_add(*lo, wasm_f64x2_promote_low_f32x4(v));
  *hi = wasm_f64x2_add(*hi, wasm_f64x2_promote_low_f32x4(wasm_i32x4_shuffle(v, v, 2, 3, 0, 1)));
}

static inline double hsum2(v128_t lo, v128_t hi) {
  const v128_t s = wasm_f64x2_add(lo, hi);
  return wasm_f64x2_extract_lane(s, 0) + wasm_f64x2_extract_lane(s, 1);
}

static inline float hmax4(f4 v) {
  v = wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
  v = wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 1, 0, 3, 2));
  return wasm_f32x4_extract_lane(v, 0);
}

/** y = GPT-2's tanh-GELU of x and t = the tanh (kept for the gradient), over n (a multiple of 4) elements. */
__attribute__((export_name("gelu_tanh"))) void gelu_tanh(const float *x, float *y, float *t, int n) {
  const Konst k = konst();
  for (int i = 0; i < n; i += 4) {
    const f4 v = wasm_v128_load(x + i);
    const f4 u = wasm_f32x4_mul(k.gelu_c, fma4(wasm_f32x4_mul(wasm_f32x4_mul(v, v), v), k.gelu_a, v));
    const f4 th = tanh4(u, &k);
    wasm_v128_store(t + i, th);
    wasm_v128_store(y + i, wasm_f32x4_mul(wasm_f32x4_mul(k.half, v), wasm_f32x4_add(k.one, th)));
  }
}

/** dx = dy·(0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)) over n (a multiple of 4) elements. */
__attribute__((export_name("gelu_tanh_grad")))
void gelu_tanh_grad(const float *g, const float *x, const float *t, float *dx, int n) {
  const Konst k = konst();
  const f4 half_c = wasm_f32x4_mul(k.half, k.gelu_c);
  for (int i = 0; i < n; i += 4) {
    const f4 v = wasm_v128_load(x + i), th = wasm_v128_load(t + i);
    // x² capped: past |x| = 100, 1 − t² is 0 and an infinite x² would make it NaN
    const f4 inner = fma4(wasm_f32x4_pmin(wasm_f32x4_mul(v, v), k.cap), k.gelu_3a, k.one);
    const f4 sech2 = wasm_f32x4_sub(k.one, wasm_f32x4_mul(th, th));
    const f4 d = fma4(wasm_f32x4_mul(wasm_f32x4_mul(half_c, v), sech2), inner,
                      wasm_f32x4_mul(k.half, wasm_f32x4_add(k.one, th)));
    wasm_v128_store(dx + i, wasm_f32x4_mul(wasm_v128_load(g + i), d));
  }
}

/**
 * p[0…n) = e^{(z − max)·scale} over z[0…n) (lanes past n read as −∞, so p there is 0); returns Σ p in double and
 * writes the max to *max. p may be z. Writes up to n rounded up to 4.
 */
static double exp_row(const float *z, float *p, int n, float scale, float *max, const Konst *c) {
  f4 m = c->ninf;
  for (int k = 0; k < n; k += 4) {
    m = wasm_f32x4_pmax(m, wasm_v128_bitselect(wasm_v128_load(z + k), c->ninf, lanes_below(k, n)));
  }
  const float mx = hmax4(m);
  const f4 mv = splat(mx), sv = splat(scale);
  v128_t lo = wasm_f64x2_splat(0), hi = wasm_f64x2_splat(0);
  for (int k = 0; k < n; k += 4) {
    const f4 v = wasm_v128_bitselect(wasm_v128_load(z + k), c->ninf, lanes_below(k, n));
    const f4 e = exp4(wasm_f32x4_mul(wasm_f32x4_sub(v, mv), sv), c);
    wasm_v128_store(p + k, e);
    acc2(e, &lo, &hi);
  }
  *max = mx;
  return hsum2(lo, hi);
}

/**
 * Softmax of each of `rows` rows of length n, times k (z to p, p may be z); out[2r] = the row's Σ e^{z − max} and
 * out[2r+1] = its max, from which the JS side takes log-sum-exp. Row stride: n rounded up to 4.
 */
__attribute__((export_name("softmax_rows")))
void softmax_rows(const float *z, float *p, int rows, int n, double k, double *out) {
  const int stride = (n + 3) & ~3;
  const Konst c = konst();
  for (int r = 0; r < rows; r++) {
    float mx;
    const double sum = exp_row(z + r * stride, p + r * stride, n, 1.0f, &mx, &c);
    const f4 inv = splat((float)(k / sum));
    for (int j = 0; j < n; j += 4) {
      wasm_v128_store(p + r * stride + j, wasm_f32x4_mul(wasm_v128_load(p + r * stride + j), inv));
    }
    out[2 * r] = sum, out[2 * r + 1] = mx;
  }
}

/**
 * Causal softmax of x·scale over `rows` rows of length T (a multiple of 4), the first being row r0 of the whole
 * tensor: row r sees keys 0…(r mod T); the rest of its output is 0. With a dropout mask (else null), also
 * out = y ⊙ mask.
 */
__attribute__((export_name("causal_softmax")))
void causal_softmax(const float *x, float *y, const float *mask, float *out, int rows, int T, int r0, float scale) {
  const Konst c = konst();
  for (int i = 0; i < rows; i++) {
    const float *xr = x + i * T;
    float *yr = y + i * T, mx;
    const int n = (r0 + i) % T + 1;
    const double sum = exp_row(xr, yr, n, scale, &mx, &c);
    const f4 inv = splat((float)(1.0 / sum));
    int k = 0;
    for (; k < n; k += 4) wasm_v128_store(yr + k, wasm_f32x4_mul(wasm_v128_load(yr + k), inv));
    for (; k < T; k += 4) wasm_v128_store(yr + k, splat(0.0f));
    if (mask) {
      for (k = 0; k < T; k += 4) {
        wasm_v128_store(out + i * T + k, wasm_f32x4_mul(wasm_v128_load(yr + k), wasm_v128_load(mask + i * T + k)));
      }
    }
  }
}

/**
 * dx = scale·y ⊙ (dy − Σ dy·y) over the visible part of each row (as causal_softmax), 0 elsewhere; with a dropout
 * mask (else null), dy ⊙ mask in place of dy (the gradient through out = y ⊙ mask). g is overwritten.
 */
__attribute__((export_name("causal_softmax_grad")))
void causal_softmax_grad(float *g, const float *y, const float *mask, float *dx, int rows, int T, int r0, float scale) {
  for (int i = 0; i < rows; i++) {
    const int o = i * T, n = (r0 + i) % T + 1;
    if (mask) {
      for (int k = 0; k < n; k += 4) {
        wasm_v128_store(g + o + k, wasm_f32x4_mul(wasm_v128_load(g + o + k), wasm_v128_load(mask + o + k)));
      }
    }
    v128_t lo = wasm_f64x2_splat(0), hi = wasm_f64x2_splat(0);
    for (int k = 0; k < n; k += 4) {
      const f4 gy = wasm_f32x4_mul(wasm_v128_load(g + o + k), wasm_v128_load(y + o + k));
      acc2(wasm_v128_and(gy, lanes_below(k, n)), &lo, &hi);
    }
    const f4 dot = splat((float)hsum2(lo, hi)), sv = splat(scale);
    int k = 0;
    for (; k < n; k += 4) {
      const f4 d = wasm_f32x4_mul(wasm_f32x4_mul(sv, wasm_v128_load(y + o + k)),
                                  wasm_f32x4_sub(wasm_v128_load(g + o + k), dot));
      wasm_v128_store(dx + o + k, wasm_v128_and(d, lanes_below(k, n)));
    }
    for (; k < T; k += 4) wasm_v128_store(dx + o + k, splat(0.0f));
  }
}

/** LayerNorm of `rows` rows of C (a multiple of 4) values: y = (x − mean)·rstd·g + b; biased variance. */
__attribute__((export_name("layer_norm")))
void layer_norm(const float *x, const float *g, const float *b, float *y, float *mean, float *rstd, int rows,
                int C, float eps) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + r * C;
    v128_t lo = wasm_f64x2_splat(0), hi = wasm_f64x2_splat(0);
    for (int k = 0; k < C; k += 4) acc2(wasm_v128_load(xr + k), &lo, &hi);
    const double m = hsum2(lo, hi) / C;
    const v128_t md = wasm_f64x2_splat(m);
    lo = wasm_f64x2_splat(0), hi = wasm_f64x2_splat(0);
    for (int k = 0; k < C; k += 4) {
      const f4 v = wasm_v128_load(xr + k);
      const v128_t a = wasm_f64x2_sub(wasm_f64x2_promote_low_f32x4(v), md);
      const v128_t c = wasm_f64x2_sub(wasm_f64x2_promote_low_f32x4(wasm_i32x4_shuffle(v, v, 2, 3, 0, 1)), md);
      lo = wasm_f64x2_add(lo, wasm_f64x2_mul(a, a)), hi = wasm_f64x2_add(hi, wasm_f64x2_mul(c, c));
    }
    const double rs = 1.0 / __builtin_sqrt(hsum2(lo, hi) / C + eps);
    // x − mean as (x − m₃₂) − (mean − m₃₂): a large mean with a small spread loses no digits to m₃₂'s rounding
    const float mf = (float)m;
    const f4 mv = splat(mf), dm = splat((float)(m - mf)), rv = splat((float)rs);
    for (int k = 0; k < C; k += 4) {
      const f4 xh = wasm_f32x4_mul(wasm_f32x4_sub(wasm_f32x4_sub(wasm_v128_load(xr + k), mv), dm), rv);
      wasm_v128_store(y + r * C + k, fma4(xh, wasm_v128_load(g + k), wasm_v128_load(b + k)));
    }
    mean[r] = (float)m, rstd[r] = (float)rs;
  }
}

/** LayerNorm's input gradient for `rows` rows of C (a multiple of 4): dx = rstd·(dŷ − mean(dŷ) − x̂·mean(dŷ·x̂)). */
__attribute__((export_name("layer_norm_grad_x")))
void layer_norm_grad_x(const float *g, const float *x, const float *w, const float *mean, const float *rstd,
                       float *dx, int rows, int C) {
  for (int r = 0; r < rows; r++) {
    const int o = r * C;
    const f4 mv = splat(mean[r]), rv = splat(rstd[r]);
    v128_t glo = wasm_f64x2_splat(0), ghi = wasm_f64x2_splat(0);
    v128_t xlo = wasm_f64x2_splat(0), xhi = wasm_f64x2_splat(0);
    for (int k = 0; k < C; k += 4) {
      const f4 dxh = wasm_f32x4_mul(wasm_v128_load(g + o + k), wasm_v128_load(w + k));
      const f4 xh = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + o + k), mv), rv);
      acc2(dxh, &glo, &ghi);
      acc2(wasm_f32x4_mul(dxh, xh), &xlo, &xhi);
    }
    const f4 mG = splat((float)(hsum2(glo, ghi) / C)), mGX = splat((float)(hsum2(xlo, xhi) / C));
    for (int k = 0; k < C; k += 4) {
      const f4 dxh = wasm_f32x4_mul(wasm_v128_load(g + o + k), wasm_v128_load(w + k));
      const f4 xh = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + o + k), mv), rv);
      wasm_v128_store(dx + o + k, wasm_f32x4_mul(rv, wasm_f32x4_sub(wasm_f32x4_sub(dxh, mG), wasm_f32x4_mul(xh, mGX))));
    }
  }
}

/** out = a ∘ b over n (a multiple of 4) elements; op: 0 add, 1 subtract, 2 multiply, 3 divide (row_kernels.ts's OP). */
__attribute__((export_name("binary"))) void binary(const float *a, const float *b, float *out, int n, int op) {
  if (op == 0) {
    for (int i = 0; i < n; i += 4) wasm_v128_store(out + i, wasm_f32x4_add(wasm_v128_load(a + i), wasm_v128_load(b + i)));
  } else if (op == 1) {
    for (int i = 0; i < n; i += 4) wasm_v128_store(out + i, wasm_f32x4_sub(wasm_v128_load(a + i), wasm_v128_load(b + i)));
  } else if (op == 2) {
    for (int i = 0; i < n; i += 4) wasm_v128_store(out + i, wasm_f32x4_mul(wasm_v128_load(a + i), wasm_v128_load(b + i)));
  } else {
    for (int i = 0; i < n; i += 4) wasm_v128_store(out + i, wasm_f32x4_div(wasm_v128_load(a + i), wasm_v128_load(b + i)));
  }
}

/**
 * One AdamW step over n (a multiple of 4) parameters in place, in float32: m ← β1·m + (1−β1)·g;
 * v ← β2·v + (1−β2)·g²; p ← p·decay − s·m / (√v + e) (s and e carry the bias corrections; see ../row_kernels.ts).
 */
__attribute__((export_name("adamw")))
void adamw(float *p, const float *g, float *m, float *v, int n, float b1, float c1, float b2, float c2, float decay,
           float s, float e) {
  const f4 vb1 = splat(b1), vc1 = splat(c1), vb2 = splat(b2), vc2 = splat(c2), vd = splat(decay);
  const f4 vs = splat(s), ve = splat(e);
  for (int i = 0; i < n; i += 4) {
    const f4 gi = wasm_v128_load(g + i);
    const f4 mi = fma4(vb1, wasm_v128_load(m + i), wasm_f32x4_mul(vc1, gi));
    const f4 vi = fma4(vb2, wasm_v128_load(v + i), wasm_f32x4_mul(wasm_f32x4_mul(vc2, gi), gi));
    wasm_v128_store(m + i, mi);
    wasm_v128_store(v + i, vi);
    const f4 step = wasm_f32x4_div(wasm_f32x4_mul(vs, mi), wasm_f32x4_add(wasm_f32x4_sqrt(vi), ve));
    wasm_v128_store(p + i, wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(p + i), vd), step));
  }
}

/**
 * bf16 of n (a multiple of 8) floats at x, round to nearest even (a NaN stays a quiet NaN): the rounded values in
 * place as floats (low 16 bits zero) and, where `bits` is not null, their high halves there as n uint16.
 */
__attribute__((export_name("bf16_round")))
void bf16_round(float *x, unsigned short *bits, int n) {
  const v128_t bias = wasm_i32x4_splat(0x7fff), one = wasm_i32x4_splat(1), high = wasm_i32x4_splat((int)0xffff0000);
  const v128_t abs = wasm_i32x4_splat(0x7fffffff), inf = wasm_i32x4_splat(0x7f800000), quiet = wasm_i32x4_splat(0x400000);
  for (int i = 0; i < n; i += 8) {
    v128_t r[2];
    for (int h = 0; h < 2; h++) {
      const v128_t u = wasm_v128_load(x + i + 4 * h);
      const v128_t even = wasm_v128_and(wasm_u32x4_shr(u, 16), one);
      const v128_t up = wasm_v128_and(wasm_i32x4_add(wasm_i32x4_add(u, bias), even), high);
      const v128_t nan = wasm_i32x4_gt(wasm_v128_and(u, abs), inf);
      r[h] = wasm_v128_bitselect(wasm_v128_or(u, quiet), up, nan);
      wasm_v128_store(x + i + 4 * h, r[h]);
    }
    if (bits) {
      wasm_v128_store(bits + i, wasm_i8x16_shuffle(r[0], r[1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27,
                                                    30, 31));
    }
  }
}
