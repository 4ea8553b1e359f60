/**
 * Jump-ahead for the xoshiro128** stream that draws dropout masks (row_kernels.ts), so that threads can each draw a
 * part of one mask: the state transition is linear over GF(2), so the state k draws ahead is a 128×128 bit matrix
 * (a product of precomputed M^(2^b)) times the state.
 */

/** xoshiro128**'s state transition (no output) on s, in place. */
function xoshiroStep(s: Uint32Array): void {
  const t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = (s[3] << 11) | (s[3] >>> 21);
}

/** JUMPS[b]: the transition applied 2^b times, as 128 columns (the images of the unit states) of 4 words. */
const JUMPS: Uint32Array[] = [];

/** m · v over GF(2): the XOR of the columns of m where v has a bit set. */
function matVec(m: Uint32Array, v: Uint32Array): Uint32Array {
  const r = new Uint32Array(4);
  for (let j = 0; j < 128; j++) {
    if ((v[j >>> 5] >>> (j & 31)) & 1) {
      const o = j * 4;
      r[0] ^= m[o], r[1] ^= m[o + 1], r[2] ^= m[o + 2], r[3] ^= m[o + 3];
    }
  }
  return r;
}

function jumpMatrix(b: number): Uint32Array {
  while (JUMPS.length <= b) {
    const m = new Uint32Array(512), prev = JUMPS[JUMPS.length - 1];
    for (let j = 0; j < 128; j++) {
      let col: Uint32Array = new Uint32Array(4);
      col[j >>> 5] = 1 << (j & 31);
      if (prev) col = matVec(prev, matVec(prev, col));
      else xoshiroStep(col);
      m.set(col, j * 4);
    }
    JUMPS.push(m);
  }
  return JUMPS[b];
}

/** The xoshiro128** state `k` draws after `s` (k < 2^53). */
export function xoshiroJump(s: ArrayLike<number>, k: number): Uint32Array {
  let v: Uint32Array = Uint32Array.from(s);
  for (let b = 0; k > 0; b++, k = Math.floor(k / 2)) if (k % 2) v = matVec(jumpMatrix(b), v);
  return v;
}
