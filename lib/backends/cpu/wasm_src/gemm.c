// Single-precision GEMM in WebAssembly SIMD, BLIS style, for the `blas` backend where no native BLAS loads
// (../matrix/wasm_gemm.ts drives it). The caller copies blocks of its operands into this module's staging arrays; the module
// packs them into MR-tall A panels and NR-wide B panels and runs a register-blocked MR x NR micro-kernel that
// accumulates straight into a block of C (the slab) held here.
//
// Every element of C is the same sequence of operations whatever block, thread or slab it falls in: beta * C,
// then for each KC-deep slice of k in order, one multiply-add per k. So splitting C between threads never
// changes a bit. Built twice by `deno task build-wasm`: with relaxed SIMD (f32x4.relaxed_madd, one FMA) and
// with plain SIMD128 (a multiply and an add).

#include <wasm_simd128.h>

#define MR 4  /* the micro-kernel and the A-panel transposes are written for 4 rows */
#define NR 8
#define KC 256
#define NC 512
#define MC (32 * MR)  /* whole MR panels: a block's padded rows never reach the next block's */
#define SLAB_ROWS (128 * MR)

typedef v128_t f4;

static float STAGE_A[MC * KC];
static float PACK_A[MC * KC];
static float STAGE_B[KC * NC];
static float PACK_B[KC * NC];
static float SLAB[SLAB_ROWS * NC];

/** Byte offsets of the staging arrays and the slab, and the block sizes, for the caller. */
__attribute__((export_name("layout"))) int layout(int i) {
  switch (i) {
  case 0: return (int)STAGE_A;
  case 1: return (int)STAGE_B;
  case 2: return (int)SLAB;
  case 3: return MR;
  case 4: return NR;
  case 5: return KC;
  case 6: return NC;
  case 7: return MC;
  case 8: return SLAB_ROWS;
#ifdef __wasm_relaxed_simd__
  case 9: return 1;
#endif
  default: return 0;
  }
}

static inline f4 madd(f4 a, f4 b, f4 c) {
#ifdef __wasm_relaxed_simd__
  // clang 14 emits this as the draft f32x4.fma; build-wasm rewrites it to f32x4.relaxed_madd, a * b + c.
  return (f4)__builtin_wasm_fma_f32x4((__f32x4)a, (__f32x4)b, (__f32x4)c);
#else
  return wasm_f32x4_add(c, wasm_f32x4_mul(a, b));
#endif
}

/** d[q * ldd + r] = s[r * ld + q] for r, q < 4: a 4 x 4 transpose in registers. */
static void transpose_4x4(const float *s, int ld, float *d, int ldd) {
  const f4 r0 = wasm_v128_load(s), r1 = wasm_v128_load(s + ld);
  const f4 r2 = wasm_v128_load(s + 2 * ld), r3 = wasm_v128_load(s + 3 * ld);
  const f4 t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
  const f4 t2 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
  wasm_v128_store(d, wasm_i64x2_shuffle(t0, t2, 0, 2));
  wasm_v128_store(d + ldd, wasm_i64x2_shuffle(t0, t2, 1, 3));
  wasm_v128_store(d + 2 * ldd, wasm_i64x2_shuffle(t1, t3, 0, 2));
  wasm_v128_store(d + 3 * ldd, wasm_i64x2_shuffle(t1, t3, 1, 3));
}

/**
 * Packs the staged slice of op(B), kc x nc, into NR-wide panels (k-major inside each, zero-padded on the right).
 * Staged as rows of op(B) (kc x nc) when tb is 0, as its columns (nc x kc) when tb is 1.
 */
__attribute__((export_name("pack_b"))) void pack_b(int tb, int kc, int nc) {
  float *d = PACK_B;
  for (int j = 0; j < nc; j += NR) {
    const int nr = nc - j < NR ? nc - j : NR;
    if (!tb && nr == NR) {
      for (int p = 0; p < kc; p++, d += NR) {
        const float *s = STAGE_B + p * nc + j;
        wasm_v128_store(d, wasm_v128_load(s));
        wasm_v128_store(d + 4, wasm_v128_load(s + 4));
      }
      continue;
    }
    int p = 0;
    if (tb && nr == NR) {
      for (; p + 4 <= kc; p += 4, d += 4 * NR) {
        transpose_4x4(STAGE_B + j * kc + p, kc, d, NR);
        transpose_4x4(STAGE_B + (j + 4) * kc + p, kc, d + 4, NR);
      }
    }
    for (; p < kc; p++) {
      for (int jj = 0; jj < NR; jj++) {
        *d++ = jj >= nr ? 0.0f : tb ? STAGE_B[(j + jj) * kc + p] : STAGE_B[p * nc + j + jj];
      }
    }
  }
}

/**
 * Packs the staged block of op(A), mc x kc, times alpha into MR-tall panels (k-major, zero-padded below).
 * Staged as rows of op(A) (mc x kc) when ta is 0, as its columns (kc x mc) when ta is 1.
 */
__attribute__((export_name("pack_a"))) void pack_a(int ta, int mc, int kc, float alpha) {
  float *d = PACK_A;
  for (int i = 0; i < mc; i += MR) {
    const int mr = mc - i < MR ? mc - i : MR;
    int p = 0;
    if (!ta && mr == MR && alpha == 1.0f) {
      for (; p + 4 <= kc; p += 4, d += 4 * MR) transpose_4x4(STAGE_A + i * kc + p, kc, d, MR);
    }
    if (ta && mr == MR && alpha == 1.0f) {
      for (; p < kc; p++, d += MR) wasm_v128_store(d, wasm_v128_load(STAGE_A + p * mc + i));
    }
    for (; p < kc; p++) {
      for (int ii = 0; ii < MR; ii++) {
        const float v = ii >= mr ? 0.0f : ta ? STAGE_A[p * mc + i + ii] : STAGE_A[(i + ii) * kc + p];
        *d++ = alpha == 1.0f ? v : alpha * v;
      }
    }
  }
}

/** c (MR x NR, row stride ldc) += packed A panel x packed B panel over kc. */
static void micro(const float *a, const float *b, int kc, float *c, int ldc) {
  f4 c00 = wasm_v128_load(c), c01 = wasm_v128_load(c + 4);
  f4 c10 = wasm_v128_load(c + ldc), c11 = wasm_v128_load(c + ldc + 4);
  f4 c20 = wasm_v128_load(c + 2 * ldc), c21 = wasm_v128_load(c + 2 * ldc + 4);
  f4 c30 = wasm_v128_load(c + 3 * ldc), c31 = wasm_v128_load(c + 3 * ldc + 4);
  for (int p = 0; p < kc; p++, a += MR, b += NR) {
    const f4 b0 = wasm_v128_load(b), b1 = wasm_v128_load(b + 4);
    f4 x = wasm_v128_load32_splat(a);
    c00 = madd(x, b0, c00), c01 = madd(x, b1, c01);
    x = wasm_v128_load32_splat(a + 1);
    c10 = madd(x, b0, c10), c11 = madd(x, b1, c11);
    x = wasm_v128_load32_splat(a + 2);
    c20 = madd(x, b0, c20), c21 = madd(x, b1, c21);
    x = wasm_v128_load32_splat(a + 3);
    c30 = madd(x, b0, c30), c31 = madd(x, b1, c31);
  }
  wasm_v128_store(c, c00), wasm_v128_store(c + 4, c01);
  wasm_v128_store(c + ldc, c10), wasm_v128_store(c + ldc + 4, c11);
  wasm_v128_store(c + 2 * ldc, c20), wasm_v128_store(c + 2 * ldc + 4, c21);
  wasm_v128_store(c + 3 * ldc, c30), wasm_v128_store(c + 3 * ldc + 4, c31);
}

/**
 * Slab rows [row0, row0 + mc) (row stride ldc, a multiple of NR) += the packed A block x the packed B slice
 * (mc x nc over kc). The slab has room below and to the right for whole MR x NR tiles.
 */
__attribute__((export_name("macro"))) void macro(int mc, int nc, int kc, int row0, int ldc) {
  for (int j = 0; j < nc; j += NR) {
    const float *b = PACK_B + j * kc;
    for (int i = 0; i < mc; i += MR) micro(PACK_A + i * kc, b, kc, SLAB + (row0 + i) * ldc + j, ldc);
  }
}

/** Scales the first n floats of the slab by beta (beta 0 writes zeros: NaN in C does not leak). */
__attribute__((export_name("scale_slab"))) void scale_slab(int n, float beta) {
  const f4 s = wasm_f32x4_splat(beta);
  for (int i = 0; i < n; i += 4) {
    f4 *p = (f4 *)(SLAB + i);
    *p = beta == 0.0f ? wasm_f32x4_splat(0.0f) : wasm_f32x4_mul(*p, s);
  }
}

/** acc += x[p..p+3] x the 4 rows r[0..3] at p..p+3 (row stride k), one k at a time in order, as `micro` does. */
static inline f4 dot4x4(const float *x, const float *r, int k, f4 acc) {
  const f4 r0 = wasm_v128_load(r), r1 = wasm_v128_load(r + k);
  const f4 r2 = wasm_v128_load(r + 2 * k), r3 = wasm_v128_load(r + 3 * k);
  const f4 t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
  const f4 t2 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
  acc = madd(wasm_v128_load32_splat(x), wasm_i64x2_shuffle(t0, t2, 0, 2), acc);
  acc = madd(wasm_v128_load32_splat(x + 1), wasm_i64x2_shuffle(t0, t2, 1, 3), acc);
  acc = madd(wasm_v128_load32_splat(x + 2), wasm_i64x2_shuffle(t1, t3, 0, 2), acc);
  return madd(wasm_v128_load32_splat(x + 3), wasm_i64x2_shuffle(t1, t3, 1, 3), acc);
}

/** acc += x[p] x the 4 rows r[0..3] at p (row stride k). */
static inline f4 dot4x1(const float *x, const float *r, int k, f4 acc) {
  const f4 col = wasm_f32x4_make(r[0], r[k], r[2 * k], r[3 * k]);
  return madd(wasm_v128_load32_splat(x), col, acc);
}

/**
 * One-row products (y = alpha x op(B), op(B) = Bᵀ stored as rows): slab[row0 + j] += x . row j of the n staged rows
 * of STAGE_B (each k long), x (alpha already applied) in STAGE_A, for j < n rounded up to 16 (rows past n are
 * read from the staging array and their sums dropped by the caller, so n must be a multiple of 16 except in a
 * call's last block). Each sum runs over k in order with one multiply-add per k, as in the GEMM: the same bits as
 * a product of one row through `macro`.
 */
__attribute__((export_name("gemv_rows"))) void gemv_rows(int n, int k, int row0) {
  const float *x = STAGE_A;
  for (int j = 0; j < n; j += 16) {
    const float *r = STAGE_B + j * k;
    float *c = SLAB + row0 + j;
    f4 a0 = wasm_v128_load(c), a1 = wasm_v128_load(c + 4);
    f4 a2 = wasm_v128_load(c + 8), a3 = wasm_v128_load(c + 12);
    int p = 0;
    for (; p + 4 <= k; p += 4) {
      a0 = dot4x4(x + p, r + p, k, a0);
      a1 = dot4x4(x + p, r + 4 * k + p, k, a1);
      a2 = dot4x4(x + p, r + 8 * k + p, k, a2);
      a3 = dot4x4(x + p, r + 12 * k + p, k, a3);
    }
    for (; p < k; p++) {
      a0 = dot4x1(x + p, r + p, k, a0), a1 = dot4x1(x + p, r + 4 * k + p, k, a1);
      a2 = dot4x1(x + p, r + 8 * k + p, k, a2), a3 = dot4x1(x + p, r + 12 * k + p, k, a3);
    }
    wasm_v128_store(c, a0), wasm_v128_store(c + 4, a1);
    wasm_v128_store(c + 8, a2), wasm_v128_store(c + 12, a3);
  }
}
