import { createHash } from "node:crypto";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { UserError } from "./errors.ts";

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
  path: string; // one text file (the book); a corpus: a directory, glob or file of .txt/.jsonl/.parquet (.gz, .zst), nanoGPT's .bin; or shards
  url: string | null; // downloaded to `path` when the file is missing (one text file only)
  train_ratio: number; // one file: first floor(ratio * chars) characters train; a corpus: fraction of documents
  shards: string | null; // where `deno task prepare` writes a corpus's shards (null: <corpus dir>.shards)
  shard_tokens: number; // tokens per shard file (uint16 ids: 2 bytes each)
  shuffle_shards: number; // shards whose windows the train loader mixes at a time (memory: this many shards)
  text_field: string; // the column (Parquet) or field (JSONL) that holds each document's text
  split_on_eot: boolean; // `<|endoftext|>` written in a text file ends a document (TinyStories' one big file)
  strip_gutenberg: boolean; // drop Project Gutenberg licence headers and footers (by their *** markers)
  batch_size: number;
  stride: number | null; // null: stride = the window length (no overlap)
  max_length: number | null; // tokens per window; null: model.context_length
  /** Weighted sources, each any form `path` takes, mixed by weight (null: `path` alone; when set, `path` is unused). */
  sources: DataSource[] | null;
}

/** One of data.sources: a text file or corpus, and its share of the training windows (weights are relative). */
export interface DataSource {
  path: string;
  weight: number;
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
  // Appendix D (all off by default, which is the book's chapter-5 loop):
  warmup: number; // warmup steps; a value below 1 is a fraction of all steps (0.2 in the book)
  initial_lr: number | null; // lr of the first warmup step (null: lr)
  lr_schedule: "constant" | "cosine"; // after warmup: keep lr, or cosine-decay it to min_lr
  min_lr: number; // floor of the cosine decay
  max_grad_norm: number | null; // clip gradients by global norm after warmup (null: no clipping)
  grad_accum_steps: number; // micro-batches per optimizer step (nanoGPT's gradient accumulation)
  // Checkpoints kept and when to stop (nanoGPT, llm.c; off by default: the last checkpoint only):
  keep_best: boolean; // write best.safetensors whenever the val loss improves on every earlier evaluation
  keep_last: number | null; // also keep the last n epochs' checkpoints (checkpoint-epoch<k>.safetensors)
  early_stop_patience: number | null; // end the run after this many evaluations without a better val loss
  skip_spikes: SpikeGuard | null; // llm.c's -sl/-sg: skip the update of a step whose loss or norm is an outlier
  multiple_choice: string | null; // a JSONL of HellaSwag-form items scored at every evaluation (acc, acc_norm)
}

/** llm.c's outlier guard: z-scores of a step's loss and gradient norm against the last `window` steps'. */
export interface SpikeGuard {
  loss_z: number | null; // skip when the loss is this many standard deviations above the window's mean
  grad_z: number | null; // the same for the global gradient norm
  window: number; // steps in the window; no step is skipped before the window has this many
}

/** Decoding settings (section 5.3) used by `sample` and reports. */
export interface SamplingConfig {
  temperature: number; // 0 = greedy
  top_k: number | null;
  max_new_tokens: number;
  eos_id: number | null;
}

/** Where the initial weights come from (section 5.5). */
export interface InitConfig {
  from: "random" | "gpt2"; // random: PyTorch's init for training.seed; gpt2: OpenAI's weights
  weights: string | null; // Hugging Face GPT-2 model.safetensors (F32/F16/BF16) when from is gpt2
}

/**
 * Backend names a user may ask for: `cpu` is our CPU path (TF.js's cpu backend with fast kernels and a matrix
 * library), `tfjs-cpu` and `wasm` are TF.js's own pure-JS and WebAssembly backends.
 */
export const BACKENDS = ["auto", "cpu", "tfjs-cpu", "wasm", "webgpu", "tensorflow"] as const;
export type BackendName = typeof BACKENDS[number];

/** Former backend names, read as their new ones (in a YAML, a checkpoint's config, a run log's header). */
export const RENAMED_BACKENDS: Readonly<Record<string, BackendName>> = { blas: "cpu" };

/** `name` under its current name: a former one ({@link RENAMED_BACKENDS}) becomes the new, others stay. */
export function currentBackendName(name: string): string {
  return Object.hasOwn(RENAMED_BACKENDS, name) ? RENAMED_BACKENDS[name] : name;
}

/**
 * How a run's matrix products compute (LitGPT's names): `fp32`, or `bf16-mixed` (each product's inputs rounded to
 * bf16, fp32 accumulation and output; weights, gradients, AdamW moments and checkpoints stay fp32). The kernels'
 * own list is lib/backends/cpu/matrix/libraries.ts's `Precision`; tests/precision_test.ts checks the two are the same.
 */
export const PRECISIONS = ["fp32", "bf16-mixed"] as const;
export type PrecisionName = typeof PRECISIONS[number];

/** A whole experiment. */
export interface Config {
  name: string; // run directory: checkpoints/<name>/
  model: ModelConfig;
  data: DataConfig;
  training: TrainingConfig;
  sampling: SamplingConfig;
  backend: BackendName;
  precision: PrecisionName; // fp32, or bf16-mixed products (cpu backend only, for now)
  init: InitConfig;
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
    shards: null,
    shard_tokens: 1_000_000, // 2 MB per shard
    shuffle_shards: 4, // a streaming train loader holds 4 shards (8 MB) and shuffles their windows together
    text_field: "text", // Hugging Face datasets' usual column
    split_on_eot: false,
    strip_gutenberg: false,
    batch_size: 2,
    stride: null,
    max_length: null,
    sources: null,
  },
  training: {
    epochs: 10,
    lr: 4e-4,
    weight_decay: 0.1,
    eval_freq: 5,
    eval_iter: 5,
    seed: 123,
    start_context: "Every effort moves you",
    warmup: 0,
    initial_lr: null,
    lr_schedule: "constant",
    min_lr: 0,
    max_grad_norm: null,
    grad_accum_steps: 1,
    keep_best: false,
    keep_last: null,
    early_stop_patience: null,
    skip_spikes: null,
    multiple_choice: null,
  },
  sampling: { temperature: 1.4, top_k: 25, max_new_tokens: 25, eos_id: null },
  backend: "auto",
  precision: "fp32",
  init: { from: "random", weights: null },
};

// ---------------------------------------------------------------------------------------------------------------
// Loading and validation

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Check = (v: Json) => string | null; // null: fine; else the cause

const isInt = (v: Json) => typeof v === "number" && Number.isInteger(v);
const positiveInt: Check = (v) =>
  isInt(v) && (v as number) > 0 ? null : `${fmt(v)} is not a positive integer`;
const nonNegInt: Check = (v) =>
  isInt(v) && (v as number) >= 0 ? null : `${fmt(v)} is not an integer >= 0`;
const num = (lo: number, hi: number, open: [boolean, boolean]): Check => (v) => {
  if (typeof v !== "number" || !Number.isFinite(v)) return `${fmt(v)} is not a number`;
  const okLo = open[0] ? v > lo : v >= lo, okHi = open[1] ? v < hi : v <= hi;
  if (okLo && okHi) return null;
  const right = hi === Infinity ? "∞)" : `${hi}${open[1] ? ")" : "]"}`;
  return `${v} is outside ${open[0] ? "(" : "["}${lo}, ${right}`;
};
const bool: Check = (v) => typeof v === "boolean" ? null : `${fmt(v)} is not true or false`;
const str: Check = (v) =>
  typeof v === "string" && v.length > 0 ? null : `${fmt(v)} is not a non-empty string`;
const nullable = (c: Check): Check => (v) => v === null ? null : c(v);
const oneOf = (xs: readonly string[]): Check => (v) =>
  typeof v === "string" && xs.includes(v) ? null : `${fmt(v)} is not one of ${xs.join(", ")}`;

function fmt(v: Json | undefined): string {
  return typeof v === "number" ? String(v) : JSON.stringify(v) ?? String(v); // Infinity, not null
}

/** The window of {@link SpikeGuard} when the YAML leaves it out (llm.c uses 128 steps; the verdict run has 90). */
export const SPIKE_WINDOW = 16;

/** `{loss_z, grad_z, window}`, each optional but one of the z-scores; fills in the missing ones (null, 16). */
const spikeGuard: Check = (v) => {
  const keys = ["loss_z", "grad_z", "window"];
  if (!isMap(v)) return `${fmt(v)} is not a mapping like {loss_z: 3.5, grad_z: 3.5}`;
  const extra = Object.keys(v).find((k) => !keys.includes(k));
  if (extra) return `unknown key ${extra} (expected ${keys.join(", ")})`;
  for (const k of ["loss_z", "grad_z"]) {
    const why = v[k] === undefined ? null : nullable(num(0, Infinity, [true, false]))(v[k]);
    if (why) return `${k}: ${why}`;
  }
  if ((v.loss_z ?? null) === null && (v.grad_z ?? null) === null) {
    return "sets neither loss_z nor grad_z";
  }
  const w = v.window === undefined ? null : positiveInt(v.window);
  if (w || (v.window !== undefined && (v.window as number) < 2)) {
    return `window: ${fmt(v.window)} is not an integer >= 2`;
  }
  v.loss_z ??= null, v.grad_z ??= null, v.window ??= SPIKE_WINDOW;
  return null;
};

/** `[{path, weight}, …]`: one or more sources, paths distinct, weights above 0. */
const dataSources: Check = (v) => {
  if (!Array.isArray(v) || v.length === 0) {
    return `${fmt(v)} is not a list like [{path: a, weight: 0.7}, …]`;
  }
  const seen = new Set<string>();
  for (const [i, s] of v.entries()) {
    if (!isMap(s)) return `source ${i + 1}: ${fmt(s)} is not a mapping {path, weight}`;
    const extra = Object.keys(s).find((k) => k !== "path" && k !== "weight");
    if (extra) return `source ${i + 1}: unknown key ${extra} (expected path, weight)`;
    const why = str(s.path ?? null) ?? num(0, Infinity, [true, false])(s.weight ?? null);
    if (why) return `source ${i + 1}: ${why}`;
    if (seen.has(s.path as string)) return `source ${i + 1}: ${s.path} is listed twice`;
    seen.add(s.path as string);
  }
  return null;
};

/** The check of every key; the schema mirrors {@link DEFAULTS}. */
const SCHEMA: Record<string, Check | Record<string, Check>> = {
  name: (v) =>
    typeof v === "string" && /^[A-Za-z0-9._=,-]*$/.test(v) && !v.startsWith(".")
      ? null
      : `${fmt(v)} is not a run name (letters, digits, . _ - = , and not starting with .)`,
  model: {
    vocab_size: positiveInt,
    context_length: positiveInt,
    emb_dim: positiveInt,
    n_heads: positiveInt,
    n_layers: positiveInt,
    drop_rate: num(0, 1, [false, true]),
    qkv_bias: bool,
  },
  data: {
    path: str,
    url: nullable(str),
    train_ratio: num(0, 1, [true, true]),
    shards: nullable(str),
    shard_tokens: positiveInt,
    shuffle_shards: positiveInt,
    text_field: str,
    split_on_eot: bool,
    strip_gutenberg: bool,
    batch_size: positiveInt,
    stride: nullable(positiveInt),
    max_length: nullable(positiveInt),
    sources: nullable(dataSources),
  },
  training: {
    epochs: positiveInt,
    lr: num(0, Infinity, [true, false]),
    weight_decay: num(0, Infinity, [false, false]),
    eval_freq: positiveInt,
    eval_iter: positiveInt,
    seed: nonNegInt,
    start_context: str,
    warmup: num(0, Infinity, [false, false]),
    initial_lr: nullable(num(0, Infinity, [true, false])),
    lr_schedule: oneOf(["constant", "cosine"]),
    min_lr: num(0, Infinity, [false, false]),
    max_grad_norm: nullable(num(0, Infinity, [true, false])),
    grad_accum_steps: positiveInt,
    keep_best: bool,
    keep_last: nullable(positiveInt),
    early_stop_patience: nullable(positiveInt),
    skip_spikes: nullable(spikeGuard),
    multiple_choice: nullable(str),
  },
  sampling: {
    temperature: num(0, Infinity, [false, false]),
    top_k: nullable(positiveInt),
    max_new_tokens: nonNegInt,
    eos_id: nullable(nonNegInt),
  },
  backend: oneOf(BACKENDS),
  precision: oneOf(PRECISIONS),
  init: { from: oneOf(["random", "gpt2"]), weights: nullable(str) },
};

/** Levenshtein distance, for "did you mean" suggestions. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(
        d[i - 1][j] + 1,
        d[i][j - 1] + 1,
        d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
  }
  return d[a.length][b.length];
}

/** Every dotted key the config accepts. */
export function configKeys(): string[] {
  return Object.entries(SCHEMA).flatMap(([k, v]) =>
    typeof v === "function" ? [k] : Object.keys(v).map((s) => `${k}.${s}`)
  );
}

/**
 * The candidate nearest to `word` by edit distance, when near enough to be a likely typo (1 edit in a word of up to
 * 3 letters, else 2 or a third of the word); null otherwise. For "did you mean" hints.
 */
export function closest(word: string, candidates: readonly string[]): string | null {
  const best =
    candidates.map((k) => [k, distance(k, word)] as const).sort((a, b) => a[1] - b[1])[0];
  const allowed = word.length <= 3 ? 1 : Math.max(2, Math.floor(word.length / 3));
  return best && best[1] <= allowed ? best[0] : null;
}

function unknownKey(where: string, key: string): UserError {
  // a key in the wrong section (`emb_dim` at the top, `model.lr`) is named by its last part
  const last = key.split(".").pop()!;
  const near = configKeys().find((k) => k !== key && k.endsWith(`.${last}`)) ??
    closest(key, [...Object.keys(SCHEMA), ...configKeys()]);
  return new UserError(`${where}: ${key}: unknown key${near ? `; did you mean ${near}?` : ""}`);
}

function isMap(v: unknown): v is Record<string, Json> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Merges a parsed YAML document onto the defaults, rejecting unknown keys. */
function merge(where: string, doc: Record<string, Json>): Record<string, Json> {
  const out = structuredClone(DEFAULTS) as unknown as Record<string, Json>;
  for (const [k, v] of Object.entries(doc)) {
    if (k === "sweep") continue; // the grid of a sweep file: expanded by lib/runs/sweep.ts into --set overrides
    const schema = Object.hasOwn(SCHEMA, k) ? SCHEMA[k] : undefined;
    if (!schema) throw unknownKey(where, k);
    if (typeof schema === "function") {
      out[k] = v;
      continue;
    }
    if (v === null) continue; // an empty section keeps its defaults
    if (!isMap(v)) throw new UserError(`${where}: ${k}: expected a mapping of keys, got ${fmt(v)}`);
    const section = out[k] as Record<string, Json>;
    for (const [sk, sv] of Object.entries(v)) {
      if (!Object.hasOwn(schema, sk)) throw unknownKey(where, `${k}.${sk}`);
      section[sk] = sv;
    }
  }
  return out;
}

/** The check of a dotted key (null when the config has no such key). */
function checkOf(key: string): Check | null {
  const [section, sub, ...rest] = key.split(".");
  const schema = Object.hasOwn(SCHEMA, section) ? SCHEMA[section] : undefined;
  if (!schema || rest.length > 0) return null;
  if (typeof schema === "function") return sub === undefined ? schema : null;
  return sub !== undefined && Object.hasOwn(schema, sub) ? schema[sub] : null;
}

/** Overrides that a task made from a flag of its own → that flag as the user typed it (see {@link flagOverride}). */
const flagOverrides = new Map<string, string>();

/**
 * The override `key=value` that a task's own flag stands for (`--backend gpu` is `backend=gpu`), remembered so that
 * a problem with it names the flag the user typed (`--backend gpu: backend: …`), not a `--set` they never wrote.
 *
 * @example
 * overrides.push(flagOverride("backend", "backend", values.backend)); // "backend=gpu"
 */
export function flagOverride(flag: string, key: string, value: string): string {
  const o = `${key}=${value}`;
  flagOverrides.set(o, `--${flag} ${value}`);
  return o;
}

/**
 * Applies `section.key=value` overrides; values are YAML scalars (`1e-3`, `true`, `null`, text). Returns the
 * override that set each key (as typed: `--set key=value`, or the task's flag), so that a bad value is blamed on the
 * override rather than the file.
 */
function applyOverrides(cfg: Record<string, Json>, overrides: string[]): Map<string, string> {
  const source = new Map<string, string>();
  for (const o of overrides) {
    const typed = flagOverrides.get(o) ?? `--set ${o}`;
    const eq = o.indexOf("=");
    if (eq <= 0) throw new UserError(`--set ${o}: expected key=value, e.g. --set training.lr=1e-3`);
    const key = o.slice(0, eq).trim();
    const raw = o.slice(eq + 1);
    const check = checkOf(key);
    const whole = Object.hasOwn(SCHEMA, key) ? SCHEMA[key] : undefined;
    if (whole && typeof whole !== "function") {
      const first = Object.keys(whole)[0];
      throw new UserError(
        `${typed}: ${key}: a section, not a key; set one key, e.g. ${key}.${first}=…`,
      );
    }
    if (!check) throw unknownKey(typed, key);
    let value: Json;
    try {
      value = raw.trim() === "" ? "" : parseYaml(raw) ?? null;
    } catch {
      value = raw;
    }
    // `--set name=2024` or `--set training.start_context=42` mean the text, not the number
    if (check(value) && !check(raw)) value = raw;
    const [section, sub] = key.split(".");
    if (sub === undefined) cfg[key] = value;
    else (cfg[section] as Record<string, Json>)[sub] = value;
    source.set(key, typed);
  }
  return source;
}

/**
 * Type and range checks of every key, then the checks across keys. A problem is blamed on the override that set
 * one of its keys, else on the file.
 */
function validate(path: string, cfg: Record<string, Json>, source: Map<string, string>): Config {
  const where = (...keys: string[]) =>
    keys.map((k) => source.get(k)).findLast((s) => s !== undefined) ?? path;
  const fail = (keys: string[], cause: string) =>
    new UserError(`${where(...keys)}: ${keys[0]}: ${cause}`);
  const renamed = typeof cfg.backend === "string" ? currentBackendName(cfg.backend) : cfg.backend;
  if (renamed !== cfg.backend) {
    console.error(
      `note: ${
        where("backend")
      }: backend: ${cfg.backend} is now called ${renamed}; read as ${renamed}`,
    );
    cfg.backend = renamed;
  }
  for (const [k, schema] of Object.entries(SCHEMA)) {
    if (typeof schema === "function") {
      const why = schema(cfg[k]);
      if (why) throw fail([k], why);
      continue;
    }
    const section = cfg[k] as Record<string, Json>;
    for (const [sk, check] of Object.entries(schema)) {
      const why = check(section[sk]);
      if (why) throw fail([`${k}.${sk}`], why);
    }
  }
  const c = cfg as unknown as Config;
  if (c.model.emb_dim % c.model.n_heads !== 0) {
    throw fail(
      ["model.n_heads", "model.emb_dim"],
      `${c.model.n_heads} does not divide emb_dim ${c.model.emb_dim}`,
    );
  }
  if (c.data.max_length !== null && c.data.max_length > c.model.context_length) {
    throw fail(
      ["data.max_length", "model.context_length"],
      `${c.data.max_length} exceeds model.context_length ${c.model.context_length}`,
    );
  }
  if (c.data.shard_tokens <= (c.data.max_length ?? c.model.context_length)) {
    throw fail(
      ["data.shard_tokens", "model.context_length", "data.max_length"],
      `${c.data.shard_tokens} tokens per shard leave no window of ` +
        `${(c.data.max_length ?? c.model.context_length) + 1} tokens (windows never cross shards)`,
    );
  }
  if (c.init.from === "gpt2" && !c.init.weights) {
    throw fail(["init.weights", "init.from"], "init.from is gpt2 but no weights file is given");
  }
  const refused = precisionRefused(c.backend, c.precision);
  if (refused) {
    throw new UserError(
      `${source.get("precision") ?? source.get("backend") ?? path}: precision: ${refused}`,
    );
  }
  if (c.sampling.top_k !== null && c.sampling.top_k > c.model.vocab_size) {
    throw fail(
      ["sampling.top_k", "model.vocab_size"],
      `${c.sampling.top_k} exceeds vocab_size ${c.model.vocab_size}`,
    );
  }
  return c;
}

/**
 * Why `precision` cannot run on the configured `backend`, or null when it can. `bf16-mixed` runs on `cpu`; `auto`
 * passes here and is refused at run time when it picks another backend (lib/backends/backend.ts's `usePrecision`).
 * The GPU backends refuse it until it is measured on a GPU; TF.js's own cpu and wasm kernels have no bf16 products.
 */
export function precisionRefused(backend: BackendName, precision: PrecisionName): string | null {
  if (precision === "fp32" || backend === "cpu" || backend === "auto") return null;
  const why = backend === "webgpu" || backend === "tensorflow"
    ? "refuses it until it is measured on a GPU"
    : "has no bf16 products";
  return `${precision}: backend ${backend} ${why}; use backend cpu or auto, or precision fp32`;
}

/** Configs of {@link loadExperiment} whose `precision` no override set (it is their file's, or the default). */
const precisionNotOverridden = new WeakSet<Config>();

/**
 * Whether `cfg`'s precision was set by an override (`--set precision=…`, `--precision`) rather than taken from its
 * experiment file or the default; a config built in code counts as overridden. `--resume` keeps the run's own
 * precision unless the command line sets one.
 */
export function precisionOverridden(cfg: Config): boolean {
  return !precisionNotOverridden.has(cfg);
}

/**
 * Reads an experiment YAML, merges it onto {@link DEFAULTS}, applies `--set` overrides and validates. Every problem
 * is a UserError of one line naming the file (or override), the dotted key and the cause.
 */
export async function loadExperiment(path: string, overrides: string[] = []): Promise<Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new UserError(`${path}: file not found`);
    if (err instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${path}: is a directory, not a YAML file`);
    }
    throw new UserError(`${path}: cannot read (${err instanceof Error ? err.message : err})`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    if (err instanceof YAMLParseError) {
      throw new UserError(`${path}: malformed YAML: ${yamlProblem(err)}`);
    }
    throw new UserError(
      `${path}: malformed YAML: ${err instanceof Error ? err.message.split("\n")[0] : err}`,
    );
  }
  if (doc === null || doc === undefined) doc = {};
  if (!isMap(doc)) {
    throw new UserError(`${path}: expected a mapping of config sections at the top level`);
  }
  const merged = merge(path, doc);
  const named = merged.name !== "";
  if (!named) merged.name = path.split("/").pop()!.replace(/\.ya?ml$/i, "");
  const source = applyOverrides(merged, overrides);
  if (!named && !source.has("name") && SCHEMA.name instanceof Function) {
    const why = SCHEMA.name(merged.name);
    if (why) {
      throw new UserError(
        `${path}: name: ${why}; the run is named after the file, set name: to choose`,
      );
    }
  }
  const cfg = validate(path, merged, source);
  if (!source.has("precision")) precisionNotOverridden.add(cfg);
  return cfg;
}

/** One line from the YAML parser's error: position first, the parser's advice for programmers dropped. */
function yamlProblem(err: YAMLParseError): string {
  const pos = err.linePos?.[0];
  const at = pos ? `line ${pos.line}, column ${pos.col}: ` : "";
  const msg = err.code === "MULTIPLE_DOCS"
    ? "more than one document (---); an experiment is one mapping"
    : err.message.split("\n")[0].replace(/ at line.*$/, "");
  return at + msg;
}

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (isMap(v)) {
    return `{${
      Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")
    }}`;
  }
  return JSON.stringify(v);
}

/** sha256 of the canonical JSON (keys sorted at every level), first 16 hex digits. */
function shortHash(v: unknown): string {
  return createHash("sha256").update(canonical(v)).digest("hex").slice(0, 16);
}

/**
 * A short stable hash of what defines a run's results: the model, data, training and init sections (not sampling,
 * backend, precision or name; checkpoints hold fp32 weights in either precision), independent of key order. A
 * checkpoint records it so that resuming under another config is refused. The training keys added with the
 * checkpoints kept and the spike guard count only where they are set.
 *
 * @example
 * configHash(await loadExperiment("experiments/verdict.yaml")); // 16 hex digits
 */
export function configHash(cfg: Config): string {
  const training: Record<string, unknown> = { ...cfg.training };
  const data: Record<string, unknown> = { ...cfg.data };
  if (data.sources === null) delete data.sources; // added later: counts only where set
  // Keys added after the hash was first written count only where set, so that a run's hash stays what it was.
  const set = laterKeysSet(cfg);
  for (const k of LATER_TRAINING_KEYS) if (!set.includes(k)) delete training[k];
  return shortHash({ model: cfg.model, data, training, init: cfg.init });
}

/**
 * The training keys of the checkpoints kept, the spike guard and the multiple-choice score: their defaults leave a
 * run as it was before them (and the PyTorch hand-off applies none of them).
 */
const LATER_TRAINING_KEYS = [
  "keep_best",
  "keep_last",
  "early_stop_patience",
  "skip_spikes",
  "multiple_choice",
] as const;

/** Which of {@link LATER_TRAINING_KEYS} `cfg` sets to something other than its default. */
export function laterKeysSet(cfg: Config): (typeof LATER_TRAINING_KEYS)[number][] {
  return LATER_TRAINING_KEYS.filter((k) =>
    JSON.stringify(cfg.training[k]) !== JSON.stringify(DEFAULTS.training[k])
  );
}

/**
 * Training keys that may change when a run resumes: which checkpoints are kept and when to stop early change
 * nothing in the steps already done or the ones to come.
 */
export const RESUMABLE_TRAINING_KEYS = [
  "epochs",
  "keep_best",
  "keep_last",
  "early_stop_patience",
  "multiple_choice",
];

/** A short stable hash of the model section alone: equal hashes mean interchangeable weights. */
export function modelHash(cfg: Config): string {
  return shortHash(cfg.model);
}

/** Trainable parameters of the book's GPTModel for `m` (untied output head, as in section 4.6). */
export function paramCount(m: ModelConfig): number {
  const c = m.emb_dim;
  const block = 3 * (c * c + (m.qkv_bias ? c : 0)) + // W_query, W_key, W_value
    (c * c + c) + // out_proj
    (c * 4 * c + 4 * c) + (4 * c * c + c) + // feed-forward
    2 * 2 * c; // norm1, norm2
  return m.vocab_size * c + m.context_length * c + m.n_layers * block + 2 * c + c * m.vocab_size;
}

/**
 * A few lines that say what a run is about to do, for the start of its output.
 *
 * @example
 * for (const line of describeConfig(cfg)) console.log(line);
 */
export function describeConfig(cfg: Config): string[] {
  const { model: m, data: d, training: t } = cfg;
  const window = d.max_length ?? m.context_length;
  const lines = [
    `${cfg.name}: GPT of ${(paramCount(m) / 1e6).toFixed(1)}M parameters (${m.n_layers} layers, ` +
    `${m.n_heads} heads, emb_dim ${m.emb_dim}, context ${m.context_length}, drop_rate ${m.drop_rate}` +
    `${m.qkv_bias ? ", qkv_bias" : ""})`,
    `data: ${d.path}, ${+(d.train_ratio * 100).toFixed(2)}% train, batches of ${d.batch_size} × ` +
    `${window} tokens, stride ${d.stride ?? window}`,
    `training: ${t.epochs} epochs, AdamW lr ${t.lr} weight_decay ${t.weight_decay}, eval every ` +
    `${t.eval_freq} steps on ${t.eval_iter} batches, seed ${t.seed}`,
  ];
  const extras = [
    t.warmup > 0 &&
    `warmup ${t.warmup < 1 ? `${+(t.warmup * 100).toFixed(2)}% of steps` : `${t.warmup} steps`}` +
      (t.initial_lr !== null ? ` from lr ${t.initial_lr}` : ""),
    t.lr_schedule === "cosine" && `cosine decay to ${t.min_lr}`,
    t.max_grad_norm !== null && `clip gradient norm at ${t.max_grad_norm}`,
    t.grad_accum_steps > 1 && `${t.grad_accum_steps} micro-batches per step`,
  ].filter((x): x is string => typeof x === "string");
  if (extras.length) lines.push(`schedule: ${extras.join(", ")}`);
  const init = cfg.init.from === "gpt2"
    ? `GPT-2 weights ${cfg.init.weights}`
    : `random (seed ${t.seed})`;
  lines.push(`init: ${init}; backend ${cfg.backend}; config ${configHash(cfg)}`);
  return lines;
}
