/**
 * The experiment config: one typed record, every default in {@link DEFAULTS}, loaded from YAML and validated.
 * Keys use the book's snake_case names (GPT_CONFIG_124M) so a YAML file reads like the book's dictionaries.
 */

/** The book's GPT_CONFIG_124M keys (section 4.1). */
export interface ModelConfig {
  vocab_size: number; // GPT-2 BPE vocabulary
  context_length: number; // longest input the position embedding covers
  emb_dim: number; // width of every token vector
  n_heads: number; // attention heads; must divide emb_dim
  n_layers: number; // transformer blocks
  drop_rate: number; // dropout on embeddings, attention weights and shortcuts
  qkv_bias: boolean; // bias on W_query/W_key/W_value (GPT-2 checkpoints have one)
}

/** Where the text comes from and how it becomes batches (section 2.6, 5.1). */
export interface DataConfig {
  path: string; // text file, relative to the working directory
  url: string | null; // downloaded to `path` when the file is missing
  train_ratio: number; // character split: first floor(ratio * chars) characters train
  batch_size: number;
  stride: number | null; // null: stride = context_length (no overlap)
}

/** The training loop of section 5.2. */
export interface TrainingConfig {
  epochs: number;
  lr: number;
  weight_decay: number;
  eval_freq: number; // evaluate every eval_freq optimizer steps
  eval_iter: number; // batches per evaluation, train and val
  seed: number;
  start_context: string; // greedy sample after each epoch
}

/** Decoding settings (section 5.3) used by `sample` and reports. */
export interface SamplingConfig {
  temperature: number; // 0 = greedy
  top_k: number | null;
  max_new_tokens: number;
  eos_id: number | null;
}

/** Backend names a user may ask for. */
export const BACKENDS = ["auto", "cpu", "wasm", "webgpu", "tensorflow"] as const;
export type BackendName = typeof BACKENDS[number];

/** A whole experiment. */
export interface Config {
  name: string; // run directory: checkpoints/<name>/
  model: ModelConfig;
  data: DataConfig;
  training: TrainingConfig;
  sampling: SamplingConfig;
  backend: BackendName;
}

/** Every default in one place: the book's chapter-5 run (GPT_CONFIG_124M with context 256). */
export const DEFAULTS: Config = {
  name: "",
  model: {
    vocab_size: 50257,
    context_length: 256, // the book shortens GPT-2's 1024 to train on a laptop
    emb_dim: 768,
    n_heads: 12,
    n_layers: 12,
    drop_rate: 0.1,
    qkv_bias: false,
  },
  data: {
    path: "data/the-verdict.txt",
    url:
      "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
    train_ratio: 0.9,
    batch_size: 2,
    stride: null,
  },
  training: {
    epochs: 10,
    lr: 4e-4,
    weight_decay: 0.1,
    eval_freq: 5,
    eval_iter: 5,
    seed: 123,
    start_context: "Every effort moves you",
  },
  sampling: { temperature: 1.4, top_k: 25, max_new_tokens: 25, eos_id: null },
  backend: "auto",
};
