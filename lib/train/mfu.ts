/**
 * Model FLOPs utilisation (MFU): the FLOP/s a run's tokens/s stand for, as nanoGPT's `estimate_mfu` and PaLM's
 * appendix B count them, over the measured peak of the products (lib/backends/cpu/matrix/peak.ts).
 *
 * A trained token costs 6·N FLOPs in the weights' products (2·N forward, 4·N backward; N counts the weights that
 * products read: every parameter but the two embeddings, which are looked up, plus the output head, which is the
 * token embedding where it is tied, as nanoGPT's is: there "all but the position embedding" is the same N) plus
 * 12·L·C·T in attention's two products per layer (forward and backward, T the window length, C = heads × head
 * size). For GPT-124M as the book trains it (untied head, T 256): N = 162,419,712 − 256·768 − 50,257·768 =
 * 123,625,728, so 6·N = 741,754,368 and 12·12·768·256 = 28,311,552: 770,065,920 FLOPs a token.
 */
import { type ModelConfig, paramCount } from "../config.ts";

/** What a run's MFU counts against (the run log's header records it). */
export interface MfuBasis {
  flopsPerToken: number;
  peakFlops: number; // measured FLOP/s of the products in the run's precision
  device: string; // what was measured
}

/** Training FLOPs of one token at window length `T` (6·N + 12·L·C·T). */
export function flopsPerToken(m: ModelConfig, T = m.context_length): number {
  // paramCount counts the head apart from the token embedding (the book's untied model): one of them is a product
  const N = paramCount(m) - m.context_length * m.emb_dim - m.vocab_size * m.emb_dim;
  return 6 * N + 12 * m.n_layers * m.emb_dim * T;
}

/** The fraction of `peakFlops` that `tokensPerS` tokens a second of training use. */
export function mfu(tokensPerS: number, flopsPerTok: number, peakFlops: number): number {
  return (tokensPerS * flopsPerTok) / peakFlops;
}

/** "1.00 GFLOP", "612 GFLOP", "1.2 TFLOP" (append "/s" for a rate). */
export function formatFlops(f: number): string {
  return f >= 1e12
    ? `${(f / 1e12).toFixed(f >= 1e13 ? 0 : 1)} TFLOP`
    : f >= 1e10
    ? `${(f / 1e9).toFixed(0)} GFLOP`
    : `${(f / 1e9).toFixed(2)} GFLOP`;
}
