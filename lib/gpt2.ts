/**
 * OpenAI's GPT-2 weights in Hugging Face's layout (section 5.5) mapped onto the book's parameter names: Conv1D
 * weights are stored [in, out] and transposed to Linear's [out, in]; the fused `c_attn` splits into W_query,
 * W_key and W_value; the output head is tied to the token embedding.
 */
import type { ModelConfig } from "./config.ts";
import { UserError } from "./errors.ts";
import type { NamedParam } from "./params.ts";
import { readSafetensors, type SafeTensor } from "./safetensors.ts";

/** How the tied head is represented: `omit` (the model reuses tok_emb) or `copy` (an untied out_head copy). */
export interface GPT2LoadOptions {
  tieHead: "omit" | "copy";
}

function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}

/** Loads a Hugging Face GPT-2 `model.safetensors` (F32, F16 or BF16) as the book's named parameters. */
export async function loadHFGPT2(
  path: string,
  cfg: ModelConfig,
  opts: GPT2LoadOptions = { tieHead: "omit" },
): Promise<NamedParam[]> {
  const { tensors } = await readSafetensors(path);
  const C = cfg.emb_dim;
  const get = (name: string, shape: number[]): SafeTensor => {
    const t = tensors.get(name) ?? tensors.get(`transformer.${name}`);
    if (!t) {
      throw new UserError(`${path}: tensor ${name} missing (not a GPT-2 checkpoint of this size?)`);
    }
    if (t.shape.join() !== shape.join()) {
      throw new UserError(
        `${path}: tensor ${name}: shape [${t.shape}], the config needs [${shape}]`,
      );
    }
    return t;
  };
  if (!cfg.qkv_bias) {
    throw new UserError(`${path}: GPT-2 weights have qkv biases; set model.qkv_bias: true`);
  }
  const out: NamedParam[] = [];
  const add = (name: string, shape: number[], data: Float32Array) =>
    out.push({ name, shape, data });
  const wte = get("wte.weight", [cfg.vocab_size, C]);
  add("tok_emb.weight", wte.shape, wte.data);
  add("pos_emb.weight", [cfg.context_length, C], get("wpe.weight", [cfg.context_length, C]).data);
  for (let i = 0; i < cfg.n_layers; i++) {
    const h = `h.${i}`, b = `trf_blocks.${i}`;
    const qkv = get(`${h}.attn.c_attn.weight`, [C, 3 * C]).data; // [in, out]: q | k | v along out
    const qkvBias = get(`${h}.attn.c_attn.bias`, [3 * C]).data;
    ["W_query", "W_key", "W_value"].forEach((w, k) => {
      const part = new Float32Array(C * C); // [out, in]
      for (let r = 0; r < C; r++) {
        for (let c = 0; c < C; c++) part[c * C + r] = qkv[r * 3 * C + k * C + c];
      }
      add(`${b}.att.${w}.weight`, [C, C], part);
      add(`${b}.att.${w}.bias`, [C], qkvBias.slice(k * C, (k + 1) * C));
    });
    const linear = (src: string, dst: string, nIn: number, nOut: number) => {
      add(
        `${b}.${dst}.weight`,
        [nOut, nIn],
        transpose(get(`${h}.${src}.weight`, [nIn, nOut]).data, nIn, nOut),
      );
      add(`${b}.${dst}.bias`, [nOut], get(`${h}.${src}.bias`, [nOut]).data);
    };
    linear("attn.c_proj", "att.out_proj", C, C);
    linear("mlp.c_fc", "ff.layers.0", C, 4 * C);
    linear("mlp.c_proj", "ff.layers.2", 4 * C, C);
    add(`${b}.norm1.scale`, [C], get(`${h}.ln_1.weight`, [C]).data);
    add(`${b}.norm1.shift`, [C], get(`${h}.ln_1.bias`, [C]).data);
    add(`${b}.norm2.scale`, [C], get(`${h}.ln_2.weight`, [C]).data);
    add(`${b}.norm2.shift`, [C], get(`${h}.ln_2.bias`, [C]).data);
  }
  add("final_norm.scale", [C], get("ln_f.weight", [C]).data);
  add("final_norm.shift", [C], get("ln_f.bias", [C]).data);
  if (opts.tieHead === "copy") add("out_head.weight", wte.shape, wte.data.slice());
  return out;
}
