/**
 * OpenAI's GPT-2 weights in Hugging Face's layout (section 5.5, `load_weights_into_gpt`) mapped onto the book's
 * parameter names, and back. One table ({@link hfLayout}) says, for every Hugging Face tensor, its shape and how it
 * becomes the book's parameters: Conv1D weights are stored [in, out] and transposed to Linear's [out, in]; the fused
 * `c_attn` (query | key | value along its output axis) splits into W_query, W_key and W_value; the output head is
 * tied to the token embedding.
 */
import type { ModelConfig } from "../config.ts";
import { hostArray } from "../backends/backend.ts";
import { UserError } from "../errors.ts";
import type { NamedParam } from "../model/params.ts";
import {
  readSafetensorsHeader,
  readSafetensorsStreaming,
  type TensorToWrite,
  writeSafetensors,
} from "./safetensors.ts";

/** How the tied head is represented: `omit` (the model reuses tok_emb) or `copy` (an out_head copy of tok_emb). */
export interface GPT2LoadOptions {
  tieHead?: "omit" | "copy";
}

/** What a GPT-2 file says about the model (n_heads only from a `config.json` beside it). */
export interface GPT2FileConfig {
  vocab_size: number;
  context_length: number;
  emb_dim: number;
  n_layers: number;
  qkv_bias: boolean;
  n_heads: number | null;
}

/** One Hugging Face tensor: its shape, and how it maps to and from the book's parameters. */
interface Mapping {
  shape: number[];
  load: (x: Float32Array) => NamedParam[];
  save: (get: (book: string) => Float32Array | null) => Float32Array;
}

const TILE = 64; // a tiled transpose is 2.5× faster than a plain one on a [1600, 6400] matrix (cache lines)

/** Columns c0 … c0 + n of x [rows, cols], transposed: a new [n, rows] (all of x by default). */
function transpose(x: Float32Array, rows: number, cols: number, c0 = 0, n = cols): Float32Array {
  const out = hostArray(n * rows);
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(r0 + TILE, rows);
    for (let j0 = 0; j0 < n; j0 += TILE) {
      for (let j = j0; j < Math.min(j0 + TILE, n); j++) {
        const o = j * rows, i = c0 + j;
        for (let r = r0; r < r1; r++) out[o + r] = x[r * cols + i];
      }
    }
  }
  return out;
}

const QKV = ["W_query", "W_key", "W_value"] as const;

/** Every tensor of a Hugging Face GPT-2 `state_dict` for `cfg`, in its order, keyed by name without `transformer.`. */
function hfLayout(cfg: ModelConfig): Map<string, Mapping> {
  const C = cfg.emb_dim, H = 4 * C, out = new Map<string, Mapping>();
  const need = (get: (b: string) => Float32Array | null, book: string) => {
    const x = get(book);
    if (!x) throw new Error(`exportHFGPT2: parameter ${book} missing`); // checked before saving
    return x;
  };
  const same = (hf: string, book: string, shape: number[]) =>
    out.set(hf, {
      shape,
      load: (x) => [{ name: book, shape, data: x }],
      save: (get) => need(get, book),
    });
  const conv1d = (hf: string, book: string, nIn: number, nOut: number) =>
    // Conv1D [in, out]
    out.set(hf, {
      shape: [nIn, nOut],
      load: (x) => [{ name: book, shape: [nOut, nIn], data: transpose(x, nIn, nOut) }],
      save: (get) => transpose(need(get, book), nOut, nIn),
    });
  same("wte.weight", "tok_emb.weight", [cfg.vocab_size, C]);
  same("wpe.weight", "pos_emb.weight", [cfg.context_length, C]);
  for (let i = 0; i < cfg.n_layers; i++) {
    const h = `h.${i}`, b = `trf_blocks.${i}`;
    same(`${h}.ln_1.weight`, `${b}.norm1.scale`, [C]);
    same(`${h}.ln_1.bias`, `${b}.norm1.shift`, [C]);
    out.set(`${h}.attn.c_attn.weight`, {
      shape: [C, 3 * C], // [in, q | k | v]
      load: (x) =>
        QKV.map((w, k) => ({
          name: `${b}.att.${w}.weight`,
          shape: [C, C], // (out, in)
          data: transpose(x, C, 3 * C, k * C, C),
        })),
      save: (get) => {
        const x = new Float32Array(C * 3 * C);
        QKV.forEach((w, k) => {
          const part = transpose(need(get, `${b}.att.${w}.weight`), C, C); // (in, out)
          for (let r = 0; r < C; r++) x.set(part.subarray(r * C, (r + 1) * C), r * 3 * C + k * C);
        });
        return x;
      },
    });
    out.set(`${h}.attn.c_attn.bias`, {
      shape: [3 * C],
      load: (x) =>
        QKV.map((w, k) => ({
          name: `${b}.att.${w}.bias`,
          shape: [C],
          data: x.slice(k * C, (k + 1) * C),
        })),
      save: (get) => { // a model without qkv bias exports zeros: GPT-2 always has the tensor
        const x = new Float32Array(3 * C);
        QKV.forEach((w, k) => x.set(get(`${b}.att.${w}.bias`) ?? new Float32Array(C), k * C));
        return x;
      },
    });
    conv1d(`${h}.attn.c_proj.weight`, `${b}.att.out_proj.weight`, C, C);
    same(`${h}.attn.c_proj.bias`, `${b}.att.out_proj.bias`, [C]);
    same(`${h}.ln_2.weight`, `${b}.norm2.scale`, [C]);
    same(`${h}.ln_2.bias`, `${b}.norm2.shift`, [C]);
    conv1d(`${h}.mlp.c_fc.weight`, `${b}.ff.layers.0.weight`, C, H);
    same(`${h}.mlp.c_fc.bias`, `${b}.ff.layers.0.bias`, [H]);
    conv1d(`${h}.mlp.c_proj.weight`, `${b}.ff.layers.2.weight`, H, C);
    same(`${h}.mlp.c_proj.bias`, `${b}.ff.layers.2.bias`, [C]);
  }
  same("ln_f.weight", "final_norm.scale", [C]);
  same("ln_f.bias", "final_norm.shift", [C]);
  return out;
}

/** The book's parameter names and shapes in PyTorch's registration order (GPTModel's `state_dict`). */
function bookLayout(cfg: ModelConfig, head: boolean): [string, number[]][] {
  const C = cfg.emb_dim, H = 4 * C;
  const out: [string, number[]][] = [
    ["tok_emb.weight", [cfg.vocab_size, C]],
    ["pos_emb.weight", [cfg.context_length, C]],
  ];
  for (let i = 0; i < cfg.n_layers; i++) {
    const b = `trf_blocks.${i}`;
    for (const w of QKV) {
      out.push([`${b}.att.${w}.weight`, [C, C]]);
      if (cfg.qkv_bias) out.push([`${b}.att.${w}.bias`, [C]]);
    }
    out.push([`${b}.att.out_proj.weight`, [C, C]], [`${b}.att.out_proj.bias`, [C]]);
    out.push([`${b}.ff.layers.0.weight`, [H, C]], [`${b}.ff.layers.0.bias`, [H]]);
    out.push([`${b}.ff.layers.2.weight`, [C, H]], [`${b}.ff.layers.2.bias`, [C]]);
    for (const n of ["norm1", "norm2"]) {
      out.push([`${b}.${n}.scale`, [C]], [`${b}.${n}.shift`, [C]]);
    }
  }
  out.push(["final_norm.scale", [C]], ["final_norm.shift", [C]]);
  if (head) out.push(["out_head.weight", [cfg.vocab_size, C]]);
  return out;
}

const plain = (name: string) => name.replace(/^transformer\./, "");
const dirOf = (path: string) =>
  path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";

/**
 * Reads the model dimensions a Hugging Face GPT-2 `model.safetensors` holds from its header (no tensor data), and
 * n_heads from a GPT-2 `config.json` beside it when there is one for the same width.
 */
export async function readHFGPT2Config(path: string): Promise<GPT2FileConfig> {
  const { tensors } = await readSafetensorsHeader(path);
  const names = new Map([...tensors].map(([n, t]) => [plain(n), t.shape]));
  const wte = names.get("wte.weight"), wpe = names.get("wpe.weight");
  if (!wte || wte.length !== 2 || !wpe || wpe.length !== 2) {
    const some = [...tensors.keys()].slice(0, 3).join(", ");
    throw new UserError(
      `${path}: not a GPT-2 checkpoint (no wte.weight/wpe.weight matrices; its tensors: ${
        some || "none"
      })`,
    );
  }
  let layers = 0;
  for (const n of names.keys()) {
    const m = /^h\.(\d+)\./.exec(n);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  let heads: number | null = null;
  try {
    const hf = JSON.parse(await Deno.readTextFile(`${dirOf(path)}/config.json`));
    if (hf.n_embd === wte[1] && Number.isInteger(hf.n_head)) heads = hf.n_head;
  } catch {
    // no config.json beside the weights (a bare download): n_heads cannot be checked
  }
  return {
    vocab_size: wte[0],
    context_length: wpe[0],
    emb_dim: wte[1],
    n_layers: layers,
    qkv_bias: names.has("h.0.attn.c_attn.bias"),
    n_heads: heads,
  };
}

/** Throws a UserError listing every model dimension where `cfg` and the file differ. */
function checkConfig(path: string, cfg: ModelConfig, file: GPT2FileConfig): void {
  const diffs: string[] = [];
  for (const k of ["vocab_size", "context_length", "emb_dim", "n_layers", "n_heads"] as const) {
    const want = file[k];
    if (want !== null && cfg[k] !== want) {
      diffs.push(`model.${k} is ${cfg[k]}, the file has ${want}`);
    }
  }
  if (file.qkv_bias && !cfg.qkv_bias) diffs.push("model.qkv_bias is false, GPT-2 has qkv biases");
  if (diffs.length > 0) {
    throw new UserError(
      `${path}: GPT-2 weights (vocab ${file.vocab_size}, context ${file.context_length}, emb ${file.emb_dim}, ` +
        `${file.n_layers} layers) do not fit the config: ${diffs.join("; ")}`,
    );
  }
}

/**
 * Loads a Hugging Face GPT-2 `model.safetensors` (gpt2, gpt2-medium, -large, -xl; F32, F16 or BF16; names with or
 * without `transformer.`) as the book's named parameters in the book's order. Tensors are mapped as they are read,
 * so memory peaks near the float32 weights' size. A file whose dimensions differ from `cfg`, a tensor of the wrong
 * shape or a missing one is a UserError naming the file, the tensor, and the expected and found shapes.
 *
 * @example
 * const params = await loadHFGPT2("models/gpt2-124m/model.safetensors", { ...cfg, context_length: 1024,
 *   qkv_bias: true }, { tieHead: "omit" });
 */
export async function loadHFGPT2(
  path: string,
  cfg: ModelConfig,
  opts: GPT2LoadOptions = {},
): Promise<NamedParam[]> {
  checkConfig(path, cfg, await readHFGPT2Config(path));
  const layout = hfLayout(cfg), seen = new Set<string>(), got = new Map<string, NamedParam>();
  await readSafetensorsStreaming(
    path,
    (name, t) => {
      const hf = plain(name), m = layout.get(hf)!;
      if (t.shape.join() !== m.shape.join()) {
        throw new UserError(
          `${path}: tensor ${name} has shape [${t.shape.join(", ")}], the config needs [${
            m.shape.join(", ")
          }]`,
        );
      }
      if (seen.has(hf)) throw new UserError(`${path}: tensor ${hf} is stored twice`);
      seen.add(hf);
      for (const p of m.load(t.data)) got.set(p.name, p);
    },
    // The causal-mask buffers (attn.bias, attn.masked_bias) and a saved lm_head (tied to wte) are not read.
    { only: (name) => layout.has(plain(name)) },
  );
  const missing = [...layout.keys()].find((hf) => !seen.has(hf));
  if (missing) {
    throw new UserError(
      `${path}: tensor ${missing} missing (shape [${
        layout.get(missing)!.shape.join(", ")
      }] expected)`,
    );
  }
  const params = bookLayout(cfg, false).map(([name]) => got.get(name)!);
  if (opts.tieHead === "copy") {
    params.push({ name: "out_head.weight", shape: params[0].shape, data: params[0].data.slice() });
  }
  return params;
}

/** The Hugging Face `GPT2Config` (config.json) of a model, so transformers' `GPT2LMHeadModel` can load it. */
export function hfGPT2Config(cfg: ModelConfig): Record<string, unknown> {
  return {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    vocab_size: cfg.vocab_size,
    n_positions: cfg.context_length,
    n_ctx: cfg.context_length,
    n_embd: cfg.emb_dim,
    n_head: cfg.n_heads,
    n_layer: cfg.n_layers,
    n_inner: null, // 4 * n_embd
    activation_function: "gelu_new", // the tanh approximation, the book's GELU
    layer_norm_epsilon: 1e-5,
    resid_pdrop: cfg.drop_rate,
    embd_pdrop: cfg.drop_rate,
    attn_pdrop: cfg.drop_rate,
    initializer_range: 0.02,
    scale_attn_weights: true,
    tie_word_embeddings: true,
    bos_token_id: 50256, // <|endoftext|> of the GPT-2 tokenizer
    eos_token_id: 50256,
    torch_dtype: "float32",
  };
}

/**
 * Writes the book's parameters as a Hugging Face GPT-2 `model.safetensors` (Conv1D [in, out] weights, fused
 * c_attn, `format: pt` metadata) plus `config.json` beside it. Returns warnings for what GPT-2's layout cannot hold:
 * missing qkv biases are written as zeros, and an untied out_head is dropped (GPT2LMHeadModel ties lm_head to wte).
 *
 * @example
 * const { warnings } = await exportHFGPT2("out/model.safetensors", await model.toNamedParams(), cfg.model);
 */
export async function exportHFGPT2(
  path: string,
  params: NamedParam[],
  cfg: ModelConfig,
): Promise<{ warnings: string[] }> {
  const by = new Map(params.map((p) => [p.name, p]));
  for (const [name, shape] of bookLayout(cfg, false)) {
    const p = by.get(name);
    if (!p) throw new UserError(`${path}: cannot export: parameter ${name} missing`);
    if (p.shape.join() !== shape.join() || p.data.length !== p.shape.reduce((a, b) => a * b, 1)) {
      throw new UserError(
        `${path}: cannot export: parameter ${name} has shape [${
          p.shape.join(", ")
        }], the config needs [${shape.join(", ")}]`,
      );
    }
  }
  const warnings: string[] = [];
  if (!cfg.qkv_bias) {
    warnings.push("the model has no qkv bias; GPT-2's attn.c_attn.bias is written as zeros");
  }
  const head = by.get("out_head.weight")?.data, tok = by.get("tok_emb.weight")!.data;
  if (head && head !== tok && head.some((v, i) => v !== tok[i])) {
    warnings.push(
      "out_head.weight differs from tok_emb.weight, but GPT2LMHeadModel ties lm_head to wte: " +
        "the untied head is not representable, the exported model uses tok_emb.weight as its head",
    );
  }
  const get = (name: string) => by.get(name)?.data ?? null;
  const tensors: TensorToWrite[] = [];
  for (const [name, m] of hfLayout(cfg)) {
    tensors.push({ name, shape: m.shape, data: () => m.save(get) }); // made when written: one copy at a time
  }
  await writeSafetensors(path, tensors, { format: "pt" });
  const json = `${dirOf(path)}/config.json`, tmp = `${json}.tmp-${Deno.pid}`;
  try {
    await Deno.writeTextFile(tmp, JSON.stringify(hfGPT2Config(cfg), null, 2) + "\n");
    await Deno.rename(tmp, json);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw new UserError(`${json}: cannot write (${err instanceof Error ? err.message : err})`);
  }
  return { warnings };
}
