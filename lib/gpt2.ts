/**
 * OpenAI's GPT-2 weights in Hugging Face's layout (section 5.5) mapped onto the book's parameter names: Conv1D
 * weights are stored [in, out] and transposed to Linear's [out, in]; the fused `c_attn` splits into W_query,
 * W_key and W_value; the output head is tied to the token embedding.
 */
import type { ModelConfig } from "./config.ts";
import { UserError } from "./errors.ts";
import type { NamedParam } from "./params.ts";
import { readSafetensors, type SafeTensor, writeSafetensors } from "./safetensors.ts";

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

/** Writes IEEE half-precision values (round to nearest even), for F16 weight files. */
export function float32ToFloat16(v: Float32Array): Uint16Array {
  const out = new Uint16Array(v.length);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < v.length; i++) {
    f[0] = v[i];
    const x = u[0], sign = (x >>> 16) & 0x8000, exp = (x >>> 23) & 0xff, man = x & 0x7fffff;
    if (exp === 0xff) out[i] = sign | 0x7c00 | (man ? 0x200 : 0);
    else if (exp > 142) out[i] = sign | 0x7c00; // overflow → ±inf
    else if (exp < 103) out[i] = sign; // underflow → ±0
    else if (exp < 113) { // subnormal half
      const m = man | 0x800000, shift = 126 - exp;
      let h = m >>> shift;
      const rem = m & ((1 << shift) - 1), half = 1 << (shift - 1);
      if (rem > half || (rem === half && (h & 1))) h++;
      out[i] = sign | h;
    } else {
      let h = ((exp - 112) << 10) | (man >>> 13);
      const rem = man & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
      out[i] = sign | h;
    }
  }
  return out;
}

/**
 * Writes the book's parameters as a Hugging Face GPT-2 `model.safetensors` (Conv1D [in, out] weights, fused
 * c_attn, tied head) plus `config.json` beside it, so PyTorch/transformers can load the model. Returns warnings for
 * what GPT-2's layout cannot hold (an untied head, missing qkv biases written as zeros).
 */
export async function exportHFGPT2(
  path: string,
  params: NamedParam[],
  cfg: ModelConfig,
): Promise<string[]> {
  const by = new Map(params.map((p) => [p.name, p]));
  const get = (n: string) => {
    const p = by.get(n);
    if (!p) throw new UserError(`${path}: cannot export: parameter ${n} missing`);
    return p.data;
  };
  const C = cfg.emb_dim, warnings: string[] = [];
  const out: NamedParam[] = [];
  const add = (name: string, shape: number[], data: Float32Array) =>
    out.push({ name, shape, data });
  add("wte.weight", [cfg.vocab_size, C], get("tok_emb.weight"));
  add("wpe.weight", [cfg.context_length, C], get("pos_emb.weight"));
  if (!cfg.qkv_bias) {
    warnings.push("the model has no qkv biases; GPT-2's c_attn.bias is written as zeros");
  }
  for (let i = 0; i < cfg.n_layers; i++) {
    const h = `h.${i}`, b = `trf_blocks.${i}`;
    add(`${h}.ln_1.weight`, [C], get(`${b}.norm1.scale`));
    add(`${h}.ln_1.bias`, [C], get(`${b}.norm1.shift`));
    const qkv = new Float32Array(C * 3 * C), qkvBias = new Float32Array(3 * C);
    ["W_query", "W_key", "W_value"].forEach((w, k) => {
      const part = get(`${b}.att.${w}.weight`); // [out, in]
      for (let r = 0; r < C; r++) {
        for (let c = 0; c < C; c++) qkv[r * 3 * C + k * C + c] = part[c * C + r];
      }
      if (cfg.qkv_bias) qkvBias.set(get(`${b}.att.${w}.bias`), k * C);
    });
    add(`${h}.attn.c_attn.weight`, [C, 3 * C], qkv);
    add(`${h}.attn.c_attn.bias`, [3 * C], qkvBias);
    const conv = (src: string, dst: string, nIn: number, nOut: number) => {
      add(`${h}.${dst}.weight`, [nIn, nOut], transpose(get(`${b}.${src}.weight`), nOut, nIn));
      add(`${h}.${dst}.bias`, [nOut], get(`${b}.${src}.bias`));
    };
    conv("att.out_proj", "attn.c_proj", C, C);
    add(`${h}.ln_2.weight`, [C], get(`${b}.norm2.scale`));
    add(`${h}.ln_2.bias`, [C], get(`${b}.norm2.shift`));
    conv("ff.layers.0", "mlp.c_fc", C, 4 * C);
    conv("ff.layers.2", "mlp.c_proj", 4 * C, C);
  }
  add("ln_f.weight", [C], get("final_norm.scale"));
  add("ln_f.bias", [C], get("final_norm.shift"));
  const head = by.get("out_head.weight");
  if (head) {
    const tok = get("tok_emb.weight");
    if (head.data.some((v, i) => v !== tok[i])) {
      warnings.push(
        "the output head is untied; GPT-2 ties lm_head to wte, so the exported model uses wte as its head",
      );
    }
  }
  await writeSafetensors(path, out, { format: "pt" });
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  const config = {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    vocab_size: cfg.vocab_size,
    n_positions: cfg.context_length,
    n_ctx: cfg.context_length,
    n_embd: C,
    n_head: cfg.n_heads,
    n_layer: cfg.n_layers,
    activation_function: "gelu_new",
    layer_norm_epsilon: 1e-5,
    resid_pdrop: cfg.drop_rate,
    embd_pdrop: cfg.drop_rate,
    attn_pdrop: cfg.drop_rate,
    bos_token_id: 50256,
    eos_token_id: 50256,
  };
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
  return warnings;
}
