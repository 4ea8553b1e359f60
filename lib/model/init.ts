/**
 * The book's `GPTModel(cfg)` parameters with PyTorch's default initialisation (section 4.6), drawn from a
 * {@link TorchGenerator} in the order PyTorch creates them: `torch.manual_seed(123); GPTModel(cfg)` and
 * `initGPTParams(cfg, new TorchGenerator(123))` give the same numbers.
 */
import type { ModelConfig } from "../config.ts";
import type { NamedParam } from "./params.ts";
import type { TorchGenerator } from "./rng.ts";
import { hostArray } from "../backends/backend.ts";

/** `nn.Embedding(rows, cols)`: weight ~ N(0, 1). */
function embedding(name: string, rows: number, cols: number, rng: TorchGenerator): NamedParam {
  return {
    name: `${name}.weight`,
    shape: [rows, cols],
    data: rng.fillNormal(hostArray(rows * cols)),
  };
}

/**
 * `nn.Linear(inF, outF, bias)`: weight [outF, inF] by `kaiming_uniform_(a=sqrt(5))`, then the bias by
 * U(-1/sqrt(inF), 1/sqrt(inF)), with the bounds computed in double as torch.nn.init does.
 */
function linear(
  name: string,
  inF: number,
  outF: number,
  bias: boolean,
  rng: TorchGenerator,
): NamedParam[] {
  const a = Math.sqrt(5);
  const gain = Math.sqrt(2 / (1 + a * a)); // calculate_gain("leaky_relu", a)
  const bound = Math.sqrt(3) * (gain / Math.sqrt(inF)); // = 1/sqrt(inF) up to rounding
  const weight = rng.fillUniform(hostArray(outF * inF), -bound, bound);
  const params = [{ name: `${name}.weight`, shape: [outF, inF], data: weight }];
  if (bias) {
    const b = 1 / Math.sqrt(inF);
    params.push({
      name: `${name}.bias`,
      shape: [outF],
      data: rng.fillUniform(hostArray(outF), -b, b),
    });
  }
  return params;
}

/** The book's `LayerNorm(emb)`: scale = 1, shift = 0 (no random draws). */
function layerNorm(name: string, emb: number): NamedParam[] {
  return [
    { name: `${name}.scale`, shape: [emb], data: hostArray(emb).fill(1) },
    { name: `${name}.shift`, shape: [emb], data: hostArray(emb) },
  ];
}

/**
 * Builds the book's GPTModel parameters in PyTorch's registration order (the generator's draws follow it):
 * tok_emb, pos_emb; per block att.W_query/W_key/W_value (bias when `qkv_bias`), att.out_proj, ff.layers.0,
 * ff.layers.2, norm1, norm2; final_norm, out_head. Linear weights are [out, in], row-major.
 *
 * With `tieHead`, out_head.weight is left out (the model reuses tok_emb.weight) but its draws are still skipped,
 * as in PyTorch when a built model's head is tied afterwards: what the generator draws next (dropout, sampling)
 * does not depend on tying.
 *
 * @example
 * const params = initGPTParams(DEFAULTS.model, new TorchGenerator(123)); // torch.manual_seed(123); GPTModel(cfg)
 */
export function initGPTParams(
  cfg: ModelConfig,
  rng: TorchGenerator,
  opts: { tieHead?: boolean } = {},
): NamedParam[] {
  const emb = cfg.emb_dim;
  const params: NamedParam[] = [
    embedding("tok_emb", cfg.vocab_size, emb, rng),
    embedding("pos_emb", cfg.context_length, emb, rng),
  ];
  for (let i = 0; i < cfg.n_layers; i++) {
    const pre = `trf_blocks.${i}`;
    params.push(
      ...linear(`${pre}.att.W_query`, emb, emb, cfg.qkv_bias, rng),
      ...linear(`${pre}.att.W_key`, emb, emb, cfg.qkv_bias, rng),
      ...linear(`${pre}.att.W_value`, emb, emb, cfg.qkv_bias, rng),
      ...linear(`${pre}.att.out_proj`, emb, emb, true, rng),
      ...linear(`${pre}.ff.layers.0`, emb, 4 * emb, true, rng),
      ...linear(`${pre}.ff.layers.2`, 4 * emb, emb, true, rng),
      ...layerNorm(`${pre}.norm1`, emb),
      ...layerNorm(`${pre}.norm2`, emb),
    );
  }
  params.push(...layerNorm("final_norm", emb));
  if (opts.tieHead) rng.discard(cfg.vocab_size * emb); // one 32-bit draw per uniform
  else params.push(...linear("out_head", emb, cfg.vocab_size, false, rng));
  return params;
}
