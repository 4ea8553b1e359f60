/**
 * Checks of what only the data, the tokenizer or a weights file can reveal, run before anything is written: a
 * failure is one {@link UserError} line naming the file, the key and the fix, instead of a kernel's exception
 * (`GatherV2: the index value 284 is not in [0, 99]`) once the data meets the model.
 */
import { countOf } from "../progress.ts";
import { RECENT_BYTES } from "../backends/backend.ts";
import type { Config } from "../config.ts";
import { type ResolvedSource, resolveSources } from "../data/source.ts";
import { GPT2_VOCAB_SIZE } from "../data/shards.ts";
import { UserError } from "../errors.ts";
import { readSafetensorsHeader, type TensorInfo } from "../weights/safetensors.ts";

/**
 * Token ids of a text file come from the GPT-2 tokenizer: every one must have a row in the token embedding.
 * (Shard directories carry their own `vocab_size`, checked against the model by `readIndex`.) `sources`: the
 * config's data sources, resolved.
 */
export function checkTokenizerFits(
  cfg: Config,
  sources: ResolvedSource[] = resolveSources(cfg),
): void {
  const text = sources.find((s) => s.kind === "text")?.path;
  if (text === undefined) return;
  if (cfg.model.vocab_size < GPT2_VOCAB_SIZE) {
    throw new UserError(
      `${text}: model.vocab_size: ${cfg.model.vocab_size} is smaller than the GPT-2 tokenizer's ` +
        `${GPT2_VOCAB_SIZE} ids; set model.vocab_size: ${GPT2_VOCAB_SIZE} or more`,
    );
  }
}

/**
 * `init.weights` (a Hugging Face GPT-2 `model.safetensors`) against the config: its token and position embeddings
 * must cover `model.vocab_size` and `model.context_length`, and its width must be `model.emb_dim`.
 */
export async function checkInitWeights(cfg: Config): Promise<void> {
  if (cfg.init.from !== "gpt2" || !cfg.init.weights) return;
  const path = cfg.init.weights;
  try {
    await Deno.stat(path);
  } catch {
    return; // initialParams names the file and where to download it
  }
  let tensors: Map<string, TensorInfo>;
  try {
    tensors = (await readSafetensorsHeader(path)).tensors;
  } catch (err) {
    if (err instanceof UserError) throw err;
    throw new UserError(`${path}: init.weights: unreadable (${(err as Error).message})`);
  }
  const find = (name: string) =>
    [...tensors].find(([k]) => k === name || k.endsWith(`.${name}`))?.[1];
  const wte = find("wte.weight"), wpe = find("wpe.weight");
  if (!wte || !wpe) {
    throw new UserError(
      `${path}: init.weights: not GPT-2 weights (no wte.weight/wpe.weight tensors); ` +
        `use a Hugging Face GPT-2 model.safetensors`,
    );
  }
  const m = cfg.model;
  if (wte.shape[1] !== m.emb_dim) {
    throw new UserError(
      `${path}: model.emb_dim: ${m.emb_dim}, but wte.weight is [${wte.shape}] (emb_dim ${
        wte.shape[1]
      }); ` +
        `set model.emb_dim: ${wte.shape[1]}`,
    );
  }
  if (wte.shape[0] !== m.vocab_size) {
    throw new UserError(
      `${path}: model.vocab_size: ${m.vocab_size}, but wte.weight has ${wte.shape[0]} rows; ` +
        `set model.vocab_size: ${wte.shape[0]}`,
    );
  }
  if (wpe.shape[0] < m.context_length) {
    throw new UserError(
      `${path}: model.context_length: ${m.context_length} exceeds the ${
        wpe.shape[0]
      } positions of ` +
        `wpe.weight; set model.context_length: ${wpe.shape[0]} or less`,
    );
  }
}

/** Sampling settings (after the CLI's overrides) against the model: top-k and the end-of-text id must be token ids. */
export function checkSampling(
  cfg: Config,
  s: { topK: number | null; eosId: number | null },
): void {
  const vocab = cfg.model.vocab_size;
  if (s.topK !== null && s.topK > vocab) {
    throw new UserError(
      `sampling.top_k (--top-k): ${s.topK} exceeds model.vocab_size ${vocab}; use ${vocab} or less`,
    );
  }
  if (s.eosId !== null && s.eosId >= vocab) {
    throw new UserError(
      `sampling.eos_id (--eos-id): ${s.eosId} is not a token id of model.vocab_size ${vocab}; use less than ${vocab}`,
    );
  }
}

/** Every check of this module that applies to a training run. */
export async function preflight(cfg: Config, sources = resolveSources(cfg)): Promise<void> {
  checkTokenizerFits(cfg, sources);
  await checkInitWeights(cfg);
}

/** What a command does with the model: training keeps gradients, AdamW moments and the tape's activations. */
export type MemoryUse = "train" | "eval" | "sample";

/** A run's estimated memory, in bytes, by part (see {@link memoryEstimate}). */
export interface MemoryEstimate {
  params: number;
  grads: number;
  adamw: number;
  activations: number;
  logits: number;
  bf16: number; // bf16-mixed's copies of the products' inputs (0 in fp32)
  runtime: number;
  total: number;
}

const F32 = 4;
const MB = 2 ** 20;
// Calibrated on the peak RSS of 2 training steps and a checkpoint (bench/memory.ts; README: Memory).
/** Deno, V8, the kernels, the tokenizer and the data. */
const RUNTIME_BYTES = 250 * MB;
/** Floats the tape keeps per token per layer, in units of emb_dim (norms, q/k/v, context, projections, MLP). */
const ACT_PER_TOKEN_C = 24;
/** Floats the tape keeps per token per layer per head per attended position (scores, softmax, dropout mask). */
const ACT_PER_SCORE = 4;
/** Copies of the logits alive at the peak of a training step (the logits and their gradient), or of sampling. */
const LOGIT_COPIES_TRAIN = 2;
/** Evaluation, without a tape: layers' activations alive at once, copies of the logits (logits, log-softmax, loss). */
const LAYERS_LIVE_EVAL = 4;
const LOGIT_COPIES_EVAL = 3;

/**
 * bf16-mixed's copies of the products' inputs (lib/backends/cpu/bf16.ts): a bf16 copy of every weight, made once per
 * optimizer step and kept, at 4 bytes a parameter (the emulated path keeps a bf16-rounded fp32 copy; oneDNN's keeps
 * 2 bytes, so 4 is the upper bound); and the copies of recent activations, at 4 bytes an element too: the last two
 * (counted as two of the largest activation operand of a product) and RECENT_BYTES (256 MiB) more. The largest operand is the
 * attention weights (B·heads·T·T) or the MLP's hidden layer (B·T·4C), and in training the logits' gradient
 * (B·T·vocab), an operand of the output head's backward products.
 */
function bf16Bytes(cfg: Config, use: MemoryUse, B: number, T: number): number {
  if (cfg.precision === "fp32") return 0;
  const m = cfg.model;
  const operand = Math.max(
    B * m.n_heads * T * T,
    B * T * 4 * m.emb_dim,
    use === "train" ? B * T * m.vocab_size : 0,
  );
  return F32 * (paramCount(m) + 2 * operand) + RECENT_BYTES;
}

/** Parameters of the book's GPTModel for `m` (untied output head). */
export function paramCount(m: Config["model"]): number {
  const C = m.emb_dim;
  const block = 12 * C * C + (m.qkv_bias ? 3 * C : 0) + 9 * C + 4 * C;
  return 2 * m.vocab_size * C + m.context_length * C + m.n_layers * block + 2 * C;
}

/**
 * Memory a run of `cfg` needs at its peak, by part: parameters; for training their gradients, AdamW's two moments
 * and the activations the tape keeps for the backward pass at `data.batch_size` windows of the configured context;
 * the logits over the vocabulary; in bf16-mixed, the bf16 copies of the weights and recent activations. `sample`
 * holds one sequence and its KV cache. Calibrated against the peak RSS of real fp32 runs (README: Memory).
 */
export function memoryEstimate(cfg: Config, use: MemoryUse): MemoryEstimate {
  const m = cfg.model, P = paramCount(m);
  const T = use === "sample" ? m.context_length : cfg.data.max_length ?? m.context_length;
  const B = use === "sample" ? 1 : cfg.data.batch_size;
  const train = use === "train";
  const perLayer = B * T * (ACT_PER_TOKEN_C * m.emb_dim + ACT_PER_SCORE * m.n_heads * T);
  const activations = F32 * (use === "sample"
    ? 2 * m.n_layers * T * m.emb_dim // the KV cache
    : train
    ? m.n_layers * perLayer
    : LAYERS_LIVE_EVAL * perLayer);
  const logitRows = use === "sample" ? T : B * T;
  const e = {
    params: F32 * P,
    grads: train ? F32 * P : 0,
    adamw: train ? 2 * F32 * P : 0,
    activations,
    logits: F32 * logitRows * m.vocab_size *
      (use === "eval" ? LOGIT_COPIES_EVAL : LOGIT_COPIES_TRAIN),
    bf16: bf16Bytes(cfg, use, B, T),
    runtime: RUNTIME_BYTES,
  };
  return { ...e, total: Object.values(e).reduce((a, b) => a + b, 0) };
}

/** Memory available to a run, in bytes: `GPT_MEMORY_LIMIT_MB` when set, else the OS's available memory. */
export function availableMemory(): { bytes: number; source: string } {
  const env = Deno.env.get("GPT_MEMORY_LIMIT_MB");
  if (env !== undefined && env !== "") {
    const mb = Number(env);
    if (!(mb > 0)) {
      throw new UserError(`GPT_MEMORY_LIMIT_MB=${env}: expected a positive number of MiB`);
    }
    return { bytes: mb * MB, source: "GPT_MEMORY_LIMIT_MB" };
  }
  const os = Deno.systemMemoryInfo().available;
  const cgroup = cgroupHeadroom();
  return cgroup !== null && cgroup < os
    ? { bytes: cgroup, source: "the cgroup's memory.max" }
    : { bytes: os, source: "available memory" };
}

/** What a cgroup v2 limit (a container's) leaves this process, in bytes; null where there is none. */
function cgroupHeadroom(): number | null {
  try {
    const read = (f: string) => Deno.readTextFileSync(`/sys/fs/cgroup/${f}`).trim();
    const max = Number(read("memory.max")), current = Number(read("memory.current"));
    return Number.isFinite(max) && Number.isFinite(current) ? max - current : null;
  } catch {
    return null;
  }
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

/** The fix to suggest when `cfg` does not fit in `avail` bytes: the largest batch that does, or a shorter context. */
function howToFit(cfg: Config, use: MemoryUse, avail: number): string {
  const B = cfg.data.batch_size, k = cfg.training.grad_accum_steps;
  const one = memoryEstimate({ ...cfg, data: { ...cfg.data, batch_size: 1 } }, use).total;
  const perWindow = B > 1 ? (memoryEstimate(cfg, use).total - one) / (B - 1) : 0;
  const fits = perWindow > 0 ? Math.floor((avail - one) / perWindow) + 1 : 0;
  if (use === "train" && fits >= 1) {
    const accum = Math.ceil((B * k) / fits);
    return `set data.batch_size: ${fits} with training.grad_accum_steps: ${accum} ` +
      `(the same ${B * k} windows per step), or a shorter context (data.max_length)`;
  }
  if (fits >= 1) return `set data.batch_size: ${fits} or less`;
  const e = memoryEstimate(cfg, use);
  const copies = e.bf16 > 0 ? F32 * paramCount(cfg.model) : 0; // bf16-mixed's copies of the weights
  const weights = e.params + e.grads + e.adamw + copies + e.runtime;
  if (weights > avail) {
    return `its weights${
      use === "train" ? ", gradients and AdamW moments" : ""
    } alone need about ` +
      `${gib(weights)}: a smaller model, or a machine with more memory`;
  }
  return `even data.batch_size 1 does not fit: a shorter context (data.max_length)`;
}

/**
 * Refuses a run whose {@link memoryEstimate} exceeds the memory available ({@link availableMemory}), before anything
 * is allocated or written: one line naming the model, the estimate, the memory and how to fit it. Within 10 % of
 * the limit it only warns. The `webgpu` backend holds the model in the GPU's memory: not checked here.
 */
export function checkMemoryFits(
  cfg: Config,
  use: MemoryUse,
  warn: (s: string) => void = (s) => console.error(`warning: ${s}`),
): void {
  if (cfg.backend === "webgpu") return;
  const need = memoryEstimate(cfg, use).total;
  const { bytes: avail, source } = availableMemory();
  const m = cfg.model;
  const what = `${cfg.name}: the model (${(paramCount(m) / 1e6).toFixed(0)}M parameters, ` +
    `${countOf(m.n_layers, "layer")} × ${m.emb_dim}) at data.batch_size ${
      use === "sample" ? 1 : cfg.data.batch_size
    }`;
  if (need > avail) {
    throw new UserError(
      `${what} needs about ${gib(need)} to ${use}, more than the ${gib(avail)} of ${source}; ` +
        howToFit(cfg, use, avail),
    );
  }
  if (need > 0.9 * avail) {
    warn(
      `${what} needs about ${gib(need)} to ${use}, within 10 % of the ${gib(avail)} of ${source}`,
    );
  }
}
