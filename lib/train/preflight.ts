/**
 * Checks of what only the data, the tokenizer or a weights file can reveal, run before anything is written: a
 * failure is one {@link UserError} line naming the file, the key and the fix, instead of a kernel's exception
 * (`GatherV2: the index value 284 is not in [0, 99]`) once the data meets the model.
 */
import type { Config } from "../config.ts";
import { dataSourceKind } from "../data/corpus.ts";
import { GPT2_VOCAB_SIZE } from "../data/shards.ts";
import { UserError } from "../errors.ts";
import { readSafetensorsHeader, type TensorInfo } from "../weights/safetensors.ts";

/**
 * Token ids of a text file come from the GPT-2 tokenizer: every one must have a row in the token embedding.
 * (Shard directories carry their own `vocab_size`, checked against the model by `readIndex`.)
 */
export function checkTokenizerFits(cfg: Config): void {
  if (dataSourceKind(cfg.data.path) !== "text") return;
  if (cfg.model.vocab_size < GPT2_VOCAB_SIZE) {
    throw new UserError(
      `${cfg.data.path}: model.vocab_size: ${cfg.model.vocab_size} is smaller than the GPT-2 tokenizer's ` +
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
export async function preflight(cfg: Config): Promise<void> {
  checkTokenizerFits(cfg);
  await checkInitWeights(cfg);
}
