/**
 * `deno task bench [--quick] [--no-torch] [--steps n] [--experiment path]`: speed of the chapter-5 workload, one
 * JSON line per case: train step (batch 2 and 8), eval forward, greedy sampling of 25 tokens — median seconds,
 * tokens/s, peak RSS of the case's own process, backend and matrix library: each case runs on the native BLAS (where
 * one loads) and on the WebAssembly GEMM, whose lines get `ratio_vs_native` (its tokens/s ÷ the native's). With Python + torch installed, the same train step in
 * PyTorch (bench/torch_step.py) at both thread settings; the faster one is PyTorch's figure and our train-step lines
 * get `ratio_vs_pytorch` (ours tokens/s ÷ PyTorch's). PyTorch gets one process per setting (up to four at batch 2);
 * our train step gets `--repeats` processes (default 2) and, like PyTorch, keeps the fastest (`runs_median_s` lists
 * them all): on a noisy VM one process can be 20 % slower than the next. Two data lines: `tokenize` (MB/s of
 * `prepare` on every core over a generated corpus of --corpus-mb MB, default 200) and `loader` (train windows/s
 * streamed from its shards), each with peak RSS, then one `prepare` line per corpus form (--formats, default all of
 * Parquet, JSONL, .jsonl.gz/.zst, .txt.gz/.zst and nanoGPT's .bin) holding the same text, with its MB/s of text and
 * `ratio_vs_txt` (over the `.txt` MB/s timed before and after the forms); --data-only runs just those, --no-data skips them.
 * The native train-step lines get `matmul_s`, the same step's matrix products alone at 2 threads for the experiment's
 * own model (bench/matmul.ts --experiment --batch, its own process in the same run), and `ratio_vs_matmul` (the
 * step's median ÷ matmul_s). After the JSON lines (stdout, for scripts), a short table of them goes to stderr.
 * `--stream-gtokens n` adds a `stream` line: every window of n billion tokens of shards streamed once, with RSS
 * sampled along the way (it writes 2n GB to bench/out/ the first time). Timings live here, never in tests.
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { benchTable } from "./table.ts";
import { AdamW } from "../lib/train/adamw.ts";
import {
  initBackend,
  measuredPeak,
  type Precision,
  usePrecision,
} from "../lib/backends/backend.ts";
import { flopsPerToken } from "../lib/train/mfu.ts";
import { matrixLibrary } from "../lib/backends/cpu/cpu_backend.ts";
import { LIBRARIES } from "../lib/backends/cpu/matrix/libraries.ts";
import { loadExperiment } from "../lib/config.ts";
import { generateCached } from "../lib/model/kvcache.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { GPTModel } from "../lib/model/model.ts";
import { DropoutRng } from "../lib/model/ops.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { textToTokenIds } from "../lib/data/tokenizer.ts";
import { trainStep } from "../lib/train/train.ts";
import { prepareCorpus } from "../lib/data/corpus.ts";
import { DEFAULT_SHARD_TOKENS } from "../lib/data/shard_writer.ts";
import { splitmix32 } from "../lib/data/data.ts";
import {
  GPT2_VOCAB_SIZE,
  INDEX_FILE,
  INDEX_VERSION,
  isShardDir,
  readIndex,
  ShardIndex,
  type ShardInfo,
  ShardLoader,
  TOKENIZER,
} from "../lib/data/shards.ts";

const USAGE = `usage: deno task bench [options]

Speed of the experiment's training step, eval forward and sampling on every matrix library (one JSON line per
case on stdout), PyTorch's same step when torch is installed, then prepare and loader speed over a generated
corpus; a short table of the figures follows on stderr.

options:
  --experiment path   the experiment whose model is timed (default experiments/verdict.yaml)
  --quick             one timed step per case, batch 2 only, PyTorch at batch 2 only
  --steps n           timed steps per case (default 3, 1 with --quick)
  --repeats n         processes per train-step case, the fastest counts (default 2)
  --no-torch          skip PyTorch
  --no-data           skip the data cases (tokenize, loader, prepare per corpus form)
  --data-only         run only the data cases
  --corpus-mb n       size of the generated corpus for the data cases (default 200)
  --formats list      corpus forms timed beside .txt (default parquet,jsonl,jsonl.gz,jsonl.zst,txt.gz,txt.zst,bin)
  --stream-gtokens n  add a stream case over n billion tokens of shards (writes 2n GB to bench/out/)
  --backend name      override the experiment's backend (bench/gpu.ts passes webgpu)
  --case name         run one case in this process and print its line (what the bench runs per subprocess)
  --batch n           the batch of --case (default 2)
  --precision p       the precision of --case: fp32 (default) or bf16-mixed
  --budget-min n      time budget of the speed cases in minutes (default 20): each case gets an equal share of
                      what is left and is skipped, with a line saying so, past it
  -h, --help          show this help`;

let parsedArgs: ReturnType<typeof parseBenchArgs> | null = null;
await runTask(() => {
  parsedArgs = parseBenchArgs();
});
if (!parsedArgs) Deno.exit(0);
const { values } = parsedArgs as NonNullable<ReturnType<typeof parseBenchArgs>>;

function parseBenchArgs() {
  const parsed = parseTaskArgs("bench", USAGE, {
    quick: { type: "boolean", default: false },
    "no-torch": { type: "boolean", default: false },
    steps: { type: "string" },
    experiment: { type: "string", default: "experiments/verdict.yaml" },
    case: { type: "string" },
    batch: { type: "string", default: "2" },
    "corpus-mb": { type: "string", default: "200" },
    "data-only": { type: "boolean", default: false },
    formats: { type: "string", default: "parquet,jsonl,jsonl.gz,jsonl.zst,txt.gz,txt.zst,bin" },
    "no-data": { type: "boolean", default: false },
    "stream-gtokens": { type: "string", default: "0" },
    repeats: { type: "string", default: "2" }, // processes per train-step case; the fastest counts
    backend: { type: "string" }, // overrides the experiment's backend (bench/gpu.ts passes webgpu)
    precision: { type: "string", default: "fp32" }, // of --case
    "budget-min": { type: "string", default: "20" },
  });
  if (parsed && parsed.positionals.length > 0) {
    throw new UserError(`bench: unexpected argument ${parsed.positionals[0]} (see --help)`);
  }
  return parsed;
}

/** Every line printed for the table at the end (the `--case` subprocesses print theirs alone). */
const printed: Record<string, unknown>[] = [];
/** Prints one result line on stdout, as JSON, and keeps it for {@link benchTable}. */
function emit(r: Record<string, unknown>) {
  printed.push(r);
  console.log(JSON.stringify(r));
}
const steps = Number(values.steps ?? (values.quick ? 1 : 3));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const peakRssMb = () => {
  try {
    const m = Deno.readTextFileSync(`/proc/${Deno.pid}/status`).match(/VmHWM:\s+(\d+) kB/);
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return Deno.memoryUsage().rss / 2 ** 20; // not Linux (or no /proc access): the current RSS, a lower bound
  }
};

/** One case, in this process (called through a subprocess so that RSS is the case's own). */
async function runCase(name: string, batch: number): Promise<Record<string, unknown>> {
  const cfg = await loadExperiment(
    values.experiment!,
    values.backend ? [`backend=${values.backend}`] : [],
  );
  const backend = await initBackend(cfg.backend);
  const model = new GPTModel(
    cfg.model,
    initGPTParams(cfg.model, new TorchGenerator(cfg.training.seed)),
  );
  const precision = values.precision as Precision;
  usePrecision(precision, backend.name, [...model.params.values()]);
  const T = cfg.data.max_length ?? cfg.model.context_length;
  const rng = new TorchGenerator(1);
  const ids = () =>
    Int32Array.from(rng.rand(batch * T), (u) => Math.floor(u * cfg.model.vocab_size));
  const b = { inputs: ids(), targets: ids(), batchSize: batch, maxLength: T };
  const times: number[] = [];
  const losses: number[] = []; // train_step: the loss of every step, warm-up included (same seed on every backend)
  let tokens = batch * T;
  let sampled: number[] = []; // sample_25_tokens: the greedy ids (the same on every matrix library)
  if (name === "train_step") {
    const opt = new AdamW(model.params, {
      lr: cfg.training.lr,
      weightDecay: cfg.training.weight_decay,
    });
    const drop = new DropoutRng(1);
    const last = [...model.params.values()].at(-1)!;
    for (let i = 0; i <= steps; i++) {
      const t0 = performance.now();
      const { loss } = await trainStep(model, opt, b, drop);
      // GPU backends queue AdamW's updates: a read of an updated value waits until the queue has run them.
      const settled = tf.tidy(() => tf.sum(tf.slice(tf.reshape(last, [-1]), 0, 1)));
      await settled.data();
      settled.dispose();
      const seconds = (performance.now() - t0) / 1000;
      if (i > 0) times.push(seconds);
      losses.push(loss);
      // One line per step, before the result line: what bench/gpu.ts keeps of a case it had to stop.
      console.log(JSON.stringify({ case: "train_step_progress", step: i, seconds, loss }));
    }
  } else if (name === "eval_forward") {
    for (let i = 0; i <= steps; i++) {
      const t0 = performance.now();
      const loss = tf.tidy(() =>
        model.loss(
          tf.tensor2d(b.inputs, [batch, T], "int32"),
          tf.tensor2d(b.targets, [batch, T], "int32"),
        )
      );
      await loss.data(); // async: GPU backends have no synchronous readback
      loss.dispose();
      if (i > 0) times.push((performance.now() - t0) / 1000);
    }
  } else {
    tokens = 25;
    const prompt = textToTokenIds(cfg.training.start_context);
    for (let i = 0; i <= steps; i++) {
      const t0 = performance.now();
      sampled = await generateCached(model, prompt, { maxNewTokens: 25, temperature: 0 });
      if (i > 0) times.push((performance.now() - t0) / 1000);
    }
    sampled = sampled.slice(prompt.length);
  }
  const s = median(times);
  // MFU as a run reports it: the step's FLOPs over the products' peak measured (or cached) on this backend.
  const mfu = name === "train_step"
    ? await (async () => {
      const peak = await measuredPeak(backend.name, precision);
      const flops = flopsPerToken(cfg.model, T) * tokens / s;
      return { mfu: flops / peak.flops, peak_flops: peak.flops, model_flops_per_s: flops };
    })()
    : {};
  return {
    case: name,
    impl: "ours",
    backend: backend.name,
    matrix_library: backend.name === "cpu" ? matrixLibrary()?.describe() ?? null : null,
    matrix_lib_kind: backend.name === "cpu" ? matrixLibrary()?.kind ?? null : null,
    precision,
    batch,
    tokens,
    median_s: s,
    tokens_per_s: tokens / s,
    peak_rss_mb: peakRssMb(),
    steps,
    ...mfu,
    ...(losses.length ? { losses } : {}),
    ...(sampled.length ? { sampled_ids: sampled } : {}),
  };
}

/**
 * Generated corpus of about `mb` MB: files of ~4 MB of The Verdict's paragraphs in a seeded random order, with one
 * word in six replaced by a word of a made-up vocabulary of a million drawn with Zipf's law (frequency ∝ 1/rank), so
 * that the corpus has as many distinct words as real text of its size and a tokenizer's word cache misses as often.
 */
async function benchCorpus(mb: number): Promise<string> {
  const dir = `bench/out/corpus-v2-${mb}MB`;
  const target = mb * 1e6, perFile = Math.min(4e6, target);
  const files = Math.ceil(target / perFile);
  const have = await Array.fromAsync(Deno.readDir(dir)).catch(() => []);
  if (have.length === files) return dir;
  await Deno.mkdir(dir, { recursive: true });
  const paras = (await Deno.readTextFile("data/the-verdict.txt")).split("\n\n");
  const rand = splitmix32(42);
  const letters = "etaoinshrdlcumwfgypbvkjxqz";
  const word = (rank: number) => { // the same letters for the same rank
    const r = splitmix32(rank);
    let w = "";
    for (let n = 2 + Math.floor(r() * 9); n > 0; n--) w += letters[Math.floor(r() ** 2 * 26)];
    return r() < 0.1 ? w[0].toUpperCase() + w.slice(1) : w;
  };
  const zipfWord = () => word(Math.floor(Math.exp(rand() * Math.log(1e6)))); // log-uniform rank ≈ Zipf
  for (let f = 0; f < files; f++) {
    const parts: string[] = [];
    let n = 0;
    while (n < perFile) {
      const p = paras[Math.floor(rand() * paras.length)]
        .replace(/\p{L}+/gu, (w) => rand() < 1 / 6 ? zipfWord() : w);
      parts.push(p);
      n += p.length + 2;
    }
    await Deno.writeTextFile(`${dir}/part-${String(f).padStart(4, "0")}.txt`, parts.join("\n\n"));
  }
  return dir;
}

/**
 * Shards of `gtokens` billion random token ids in prepare's layout (default shard size), written once: the corpus
 * of the `stream` case, bigger than this machine's RAM when asked for. The ids are random; the loader reads them
 * the same as text.
 */
async function streamCorpus(gtokens: number): Promise<string> {
  const dir = `bench/out/stream-${gtokens}G`;
  if (isShardDir(dir)) return dir;
  await Deno.mkdir(dir, { recursive: true });
  const S = DEFAULT_SHARD_TOKENS, total = Math.round(gtokens * 1e9);
  const rand = splitmix32(7);
  const ids = Uint16Array.from({ length: S }, () => Math.floor(rand() * GPT2_VOCAB_SIZE));
  const shards: ShardInfo[] = [];
  for (let done = 0; done < total; done += S) {
    const file = `train-g1-${String(shards.length).padStart(5, "0")}.bin`;
    const n = Math.min(S, total - done);
    ids.copyWithin(0, 1, 2); // vary the shards a little
    await Deno.writeFile(`${dir}/${file}`, new Uint8Array(ids.buffer, 0, n * 2));
    shards.push({ file, tokens: n });
  }
  const index: ShardIndex = {
    version: INDEX_VERSION,
    tokenizer: TOKENIZER,
    vocab_size: GPT2_VOCAB_SIZE,
    dtype: "uint16",
    generation: 1,
    seed: 123,
    train_ratio: 1,
    shard_tokens: S,
    sources: [],
    splits: {
      train: { documents: shards.length, tokens: total, shards },
      val: { documents: 0, tokens: 0, shards: [] },
    },
    created_at: new Date().toISOString(),
  };
  await Deno.writeTextFile(`${dir}/${INDEX_FILE}`, JSON.stringify(index));
  return dir;
}

/** The data cases' train loader over a shard directory: shuffled windows of 256 tokens, batch 8. */
function benchLoader(dir: string): { loader: ShardLoader; B: number; T: number } {
  const T = 256, B = 8;
  const loader = new ShardLoader(dir, readIndex(dir), "train", {
    batchSize: B,
    maxLength: T,
    stride: T,
    shuffle: true,
    dropLast: true,
  }, 123);
  return { loader, B, T };
}

/** Streams every train window of a shard directory once (shuffled, batch 8 × 256), sampling RSS as it goes. */
function streamCase(dir: string): Record<string, unknown> {
  const { loader, B, T } = benchLoader(dir);
  const rssMb = () => Deno.memoryUsage().rss / 2 ** 20;
  const samples: number[] = [];
  let batches = 0, tokens = 0;
  const t0 = performance.now();
  for (const b of loader.batches(0)) {
    tokens += b.batchSize * b.maxLength;
    if (++batches % Math.ceil(loader.length / 20) === 0) samples.push(Math.round(rssMb()));
  }
  const seconds = (performance.now() - t0) / 1000;
  return {
    case: "stream",
    batch: B,
    context: T,
    shards: loader.shards.length,
    tokens,
    seconds,
    tokens_per_s: tokens / seconds,
    rss_mb_every_5pct: samples,
    peak_rss_mb: peakRssMb(),
  };
}

/** The data cases: tokenizing a corpus on every core, and streaming train windows from its shards. */
async function runDataCase(name: string, corpus: string): Promise<Record<string, unknown>> {
  const shardDir = `${corpus}.shards`;
  if (name === "tokenize") {
    const r = await prepareCorpus(corpus, {
      shardDir,
      seed: 123,
      trainRatio: 0.9,
      force: true,
      progress: false,
      print: () => {},
    });
    return {
      case: "tokenize",
      cache_hit_rate: r.cacheHitRate,
      workers: navigator.hardwareConcurrency,
      mb: r.bytes / 1e6,
      tokens: r.index.splits.train.tokens + r.index.splits.val.tokens,
      seconds: r.seconds,
      mb_per_s: r.bytes / 1e6 / r.seconds,
      peak_rss_mb: peakRssMb(),
    };
  }
  const { loader, B, T } = benchLoader(shardDir);
  let windows = 0;
  const t0 = performance.now();
  for (const b of loader.batches(0)) {
    windows += b.batchSize;
    if (performance.now() - t0 > 10_000) break; // enough for a rate
  }
  const s = (performance.now() - t0) / 1000;
  return {
    case: "loader",
    batch: B,
    context: T,
    windows,
    seconds: s,
    windows_per_s: windows / s,
    tokens_per_s: (windows * T) / s,
    shard_mb: loader.shards[0].tokens * 2 / 1e6,
    peak_rss_mb: peakRssMb(),
  };
}

/** The corpus forms beside `.txt` that the `prepare` lines time (--formats), each holding the same text. */
const FORMATS = values.formats!.split(",").filter((f) => f);

async function run(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, stderr: "inherit" }).output();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed`);
}

/**
 * The text corpus `dir` in each of {@link FORMATS}, written once under `<dir>-formats/<format>`: JSON Lines with
 * each paragraph a document, Parquet of those (DuckDB, zstd), gzip and zstd (their CLIs) of both, and nanoGPT's
 * train.bin / val.bin from the text's shards (the `tokenize` case's output).
 */
async function formatCorpora(dir: string): Promise<string> {
  const out = `${dir}-formats`;
  // JSON Lines is also the source of the compressed JSONL and of Parquet.
  const wanted = (f: string) =>
    FORMATS.includes(f) ||
    f === "jsonl" && FORMATS.some((x) => x.startsWith("jsonl.") || x === "parquet");
  const done = async (f: string) =>
    !wanted(f) || await Deno.stat(`${out}/${f}/.done`).then(() => true, () => false);
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".txt"))
    .sort();
  const each = async (f: string, make: (name: string) => Promise<void>) => {
    if (await done(f)) return;
    await Deno.mkdir(`${out}/${f}`, { recursive: true });
    for (const name of files) await make(name.replace(/\.txt$/, ""));
    await Deno.writeTextFile(`${out}/${f}/.done`, "");
  };
  await each("jsonl", async (n) => {
    const paras = (await Deno.readTextFile(`${dir}/${n}.txt`)).split("\n\n");
    await Deno.writeTextFile(
      `${out}/jsonl/${n}.jsonl`,
      paras.map((text) => JSON.stringify({ text })).join("\n") + "\n",
    );
  });
  for (const [f, src, ext] of [["jsonl.gz", `${out}/jsonl`, "jsonl"], ["txt.gz", dir, "txt"]]) {
    await each(
      f,
      (n) => run("sh", "-c", `gzip -c ${src}/${n}.${ext} > ${out}/${f}/${n}.${ext}.gz`),
    );
  }
  for (const [f, src, ext] of [["jsonl.zst", `${out}/jsonl`, "jsonl"], ["txt.zst", dir, "txt"]]) {
    await each(
      f,
      (n) => run("zstd", "-q", "-f", `${src}/${n}.${ext}`, "-o", `${out}/${f}/${n}.${ext}.zst`),
    );
  }
  if (!await done("parquet")) {
    const { DuckDBInstance } = await import("@duckdb/node-api");
    const c = await (await DuckDBInstance.create(":memory:")).connect();
    await Deno.mkdir(`${out}/parquet`, { recursive: true });
    for (const n of files.map((f) => f.replace(/\.txt$/, ""))) {
      await c.run(
        `COPY (SELECT text FROM read_json('${out}/jsonl/${n}.jsonl', format = 'newline_delimited')) ` +
          `TO '${out}/parquet/${n}.parquet' (FORMAT parquet, COMPRESSION zstd)`,
      );
    }
    await Deno.writeTextFile(`${out}/parquet/.done`, "");
  }
  const shards = `${dir}.shards`, index = readIndex(shards);
  if (!FORMATS.includes("bin")) return out;
  await Deno.mkdir(`${out}/bin`, { recursive: true });
  for (const split of ["train", "val"] as const) {
    using f = await Deno.open(`${out}/bin/${split}.bin`, {
      write: true,
      create: true,
      truncate: true,
    });
    for (const s of index.splits[split].shards) {
      await f.write(await Deno.readFile(`${shards}/${s.file}`));
    }
  }
  return out;
}

/**
 * `ratio_vs_txt` on each form's line: its MB/s over the `.txt` figure, the mean of the `tokenize` case timed before
 * the forms and again after them (`mb_per_s_after` on its line). The host's speed drifts over a run of minutes;
 * bracketing keeps that drift out of the ratios.
 */
async function addRatiosVsTxt(
  corpus: string,
  txt: Record<string, unknown>,
  forms: Record<string, unknown>[],
) {
  if (typeof txt.mb_per_s !== "number" || forms.length === 0) return;
  const after = await sub(Deno.execPath(), [...self, "--experiment", corpus, "--case", "tokenize"]);
  const mbPerS = typeof after?.mb_per_s === "number"
    ? (txt.mb_per_s + after.mb_per_s) / 2
    : txt.mb_per_s;
  if (after) txt.mb_per_s_after = after.mb_per_s;
  for (const r of forms) {
    if (typeof r.mb_per_s === "number") r.ratio_vs_txt = r.mb_per_s / mbPerS;
  }
}

/** One `prepare` line: MB/s of the corpus's text (the same in every form) through prepare, and peak RSS. */
async function prepareCase(dir: string, textMb: number): Promise<Record<string, unknown>> {
  const r = await prepareCorpus(dir, {
    shardDir: `${dir}.shards`,
    seed: 123,
    trainRatio: 0.9,
    force: true,
    progress: false,
    print: () => {},
  });
  return {
    case: "prepare",
    format: dir.split("/").at(-1),
    text_mb: textMb,
    file_mb: r.bytes / 1e6,
    tokens: r.index.splits.train.tokens + r.index.splits.val.tokens,
    seconds: r.seconds,
    mb_per_s: textMb / r.seconds,
    peak_rss_mb: peakRssMb(),
  };
}

if (values.case) {
  const r = values.case === "stream"
    ? streamCase(values.experiment!)
    : values.case === "prepare"
    ? await prepareCase(values.experiment!, Number(values["corpus-mb"]))
    : values.case === "tokenize" || values.case === "loader"
    ? await runDataCase(values.case, values.experiment!)
    : await runCase(values.case, Number(values.batch));
  console.log(JSON.stringify(r));
  Deno.exit(0);
}

/** A case process's last stdout line as JSON, or null where it failed (no time limit). */
async function sub(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Record<string, unknown> | null> {
  const r = await subTimed(cmd, args, env, Infinity);
  return r === TIMED_OUT ? null : r;
}

/** What {@link subTimed} returns for a process stopped at its time limit. */
const TIMED_OUT = "timed out";

/**
 * Runs a case process and returns its last stdout line as JSON (with `wall_s`, the process's wall time), null
 * where it failed, or {@link TIMED_OUT} where it ran past `seconds` and was killed.
 */
async function subTimed(
  cmd: string,
  args: string[],
  env: Record<string, string>,
  seconds: number,
): Promise<Record<string, unknown> | null | typeof TIMED_OUT> {
  if (!(seconds > 0)) return TIMED_OUT;
  const t0 = performance.now();
  try {
    const child = new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "null" }).spawn();
    const timer = Number.isFinite(seconds)
      ? setTimeout(() => child.kill("SIGKILL"), seconds * 1000)
      : undefined;
    const out = await child.output();
    clearTimeout(timer);
    if (out.signal === "SIGKILL") return TIMED_OUT;
    const line = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1);
    return out.success && line
      ? { ...JSON.parse(line), wall_s: (performance.now() - t0) / 1000 }
      : null;
  } catch {
    return null;
  }
}

/** glibc allocator settings: its defaults, and huge pages for large blocks (deno.json's tasks set this one). */
const MALLOC_DEFAULT = "", MALLOC_HUGE = "glibc.malloc.hugetlb=1";
// The case processes read their peak RSS from /proc/<pid>/status, which Deno grants only with --allow-all.
const self = ["run", "--allow-all", new URL(import.meta.url).pathname];
const ours: Record<string, unknown>[] = [];
const dataLines: Record<string, unknown>[] = [];
if (!values["no-data"]) {
  const mb = Number(values["corpus-mb"]);
  if (!(mb > 0)) {
    console.error(`error: bench: --corpus-mb ${values["corpus-mb"]}: expected a positive number`);
    Deno.exit(2);
  }
  const corpus = await benchCorpus(mb);
  for (const name of ["tokenize", "loader"]) {
    const r = await sub(Deno.execPath(), [...self, "--experiment", corpus, "--case", name]);
    dataLines.push(r ?? { case: name, error: "case failed" });
  }
  const txt = dataLines[0];
  const forms = await formatCorpora(corpus);
  for (const f of FORMATS) {
    const args = [
      "--experiment",
      `${forms}/${f}`,
      "--case",
      "prepare",
      "--corpus-mb",
      String(txt.mb),
    ];
    dataLines.push(
      await sub(Deno.execPath(), [...self, ...args]) ??
        { case: "prepare", format: f, error: "case failed" },
    );
  }
  await addRatiosVsTxt(corpus, txt, dataLines.filter((r) => r.case === "prepare"));
  const gtokens = Number(values["stream-gtokens"]);
  if (gtokens > 0) {
    const dir = await streamCorpus(gtokens);
    const r = await sub(Deno.execPath(), [...self, "--experiment", dir, "--case", "stream"]);
    dataLines.push(r ?? { case: "stream", error: "case failed" });
  }
  if (values["data-only"]) {
    for (const r of dataLines) emit(r);
    console.error("\n" + benchTable(printed));
    Deno.exit(0);
  }
}
// The libraries that load here (GPT_BLAS names each for its case processes) × both precisions.
const LIBS = ([["native", "openblas"], ["dnnl", "onednn"], ["wasm", "wasm"]] as const)
  .filter(([kind]) => LIBRARIES[kind]().ok);
const PRECISIONS = ["fp32", "bf16-mixed"] as const;
/**
 * `matmul_s`: the matrix products of one train step of the experiment's model at `batch` on library `kind` in
 * `precision`, 2 threads (bench/matmul.ts, its own process, right after the step's), and `ratio_vs_matmul`: the
 * step's median over that.
 */
async function addMatmul(
  r: Record<string, unknown>,
  batch: number,
  kind: string,
  precision: string,
) {
  const script = new URL("./matmul.ts", import.meta.url).pathname;
  const args = ["--lib", kind, "--threads", "2", "--batch", String(batch), "--reps", "3"];
  args.push("--experiment", values.experiment!, "--precision", precision);
  const m = await sub(Deno.execPath(), ["run", "--allow-all", script, ...args, "--summary"], {
    GLIBC_TUNABLES: MALLOC_HUGE,
  });
  const s = Number(
    (m?.matmulSecondsPerStep as Record<string, Record<string, number>>)?.[kind]?.[2],
  );
  if (!(s > 0)) return;
  r.matmul_s = s;
  r.ratio_vs_matmul = Number(r.median_s) / s;
}

/** The fastest of the case's processes (several for the train step), or why it was skipped. */
async function bestOf(
  name: string,
  batch: number,
  precision: string,
  env: Record<string, string>,
  seconds: number,
): Promise<Record<string, unknown> | string> {
  const runs: Record<string, unknown>[] = [];
  const repeats = name === "train_step" ? Math.max(1, Number(values.repeats) || 1) : 1;
  const deadline = performance.now() + seconds * 1000;
  for (let i = 0; i < repeats; i++) {
    const left = (deadline - performance.now()) / 1000;
    if (i > 0 && left < Number(runs[0].wall_s ?? Infinity)) break; // no time for another process
    const r = await subTimed(
      Deno.execPath(),
      [
        ...self,
        ...["--experiment", values.experiment!, "--steps", String(steps), "--precision", precision],
        ...["--case", name, "--batch", String(batch)],
      ],
      { GLIBC_TUNABLES: MALLOC_HUGE, ...env },
      left,
    );
    if (r === TIMED_OUT) break;
    if (r) runs.push(r);
  }
  const best = runs.toSorted((x, y) => Number(x.median_s) - Number(y.median_s))[0];
  if (!best) return runs.length === 0 && repeats > 0 ? budget.skipLine(seconds) : "case failed";
  const all = repeats > 1 ? { runs_median_s: runs.map((r) => r.median_s) } : {};
  return { ...best, ...all, glibc_tunables: MALLOC_HUGE };
}

/** For each precision: the library `auto` takes here and the fastest train step measured above. */
async function autoChoice(): Promise<Record<string, unknown>[]> {
  const code = `import { loadBlas } from "${new URL(
    "../lib/backends/cpu/matrix/choice.ts",
    import.meta.url,
  )}";
    for (const p of ["fp32", "bf16-mixed"]) { const r = loadBlas(p); console.log(r.ok ? r.name : "none"); }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { GPT_BLAS: "" },
  })
    .output();
  const picked = new TextDecoder().decode(out.stdout).trim().split("\n");
  return PRECISIONS.map((precision, i) => {
    const steps2 = ours.filter((r) =>
      r.case === "train_step" && r.batch === 2 && r.precision === precision
    );
    const fastest = steps2.toSorted((a, b) => Number(a.median_s) - Number(b.median_s))[0];
    return {
      case: "auto_choice",
      precision,
      picked: picked[i],
      fastest_step: fastest?.matrix_lib_kind ?? null,
      auto_is_fastest: picked[i] === fastest?.matrix_lib_kind,
    };
  });
}

function isWasm(r: Record<string, unknown>): boolean {
  return String(r.matrix_library ?? "").startsWith("WebAssembly");
}

/**
 * The bench's time budget. Cases run in order of what matters most; each may take what is left less a reserve
 * for every case after it (so the last ones still run), and is stopped past that.
 */
class Budget {
  private deadline: number;
  private remaining = 1;
  constructor(private seconds: number) {
    this.deadline = performance.now() + seconds * 1000;
  }
  /** How many cases will draw on the budget. */
  expect(cases: number) {
    this.remaining = Math.max(1, cases);
  }
  /** The next case's share, in seconds. */
  share(): number {
    const left = (this.deadline - performance.now()) / 1000;
    return Math.max(0, left - RESERVE_S * (Math.max(1, this.remaining--) - 1));
  }
  skipLine(share: number): string {
    return `would run past its share of the ${this.seconds / 60}-minute budget (${
      share.toFixed(0)
    } s)`;
  }
}

/** Seconds the budget keeps for each case still to come: enough for an eval or sampling case. */
const RESERVE_S = 15;

const torchBest: Record<string, Record<string, unknown>> = {};
const torchCfg = values["no-torch"] ? "" : await torchConfig();

async function torchConfig(): Promise<string> {
  const cfg = await loadExperiment(values.experiment!);
  const cfgPath = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(cfgPath, JSON.stringify(cfg));
  return cfgPath;
}

// PyTorch's fp32 thread settings (see the module comment) × glibc's allocator with and without huge pages (which
// our tasks use): every combination at batch 2, the faster setting again at batch 8. bf16 autocast with
// set_num_threads(2), its fastest setting.
const FP32_SETTINGS: { threads: string; env: Record<string, string>; name: string }[] = [
  {
    threads: "1",
    env: { OPENBLAS_NUM_THREADS: "2" },
    name: "set_num_threads(1), OPENBLAS_NUM_THREADS=2",
  },
  { threads: "2", env: {}, name: "set_num_threads(2)" },
];
let python = "", torchMallocs = [MALLOC_DEFAULT, MALLOC_HUGE];

/** PyTorch's train step at each batch: fp32 at its fastest setting, and under bf16 autocast. */
async function torchCases(batches: number[]) {
  for (const batch of batches) {
    const share = budget.share();
    const fp32 = await torchSettings(batch, share / 2);
    if (fp32) torchBest[`${batch} fp32`] = fp32, torchMallocs = [fp32.glibc_tunables as string];
    const t = { threads: "2", env: {}, name: "set_num_threads(2), autocast bf16" };
    const bf16 = await torchRun(batch, t, torchMallocs[0], "bf16-mixed", share / 2);
    if (bf16) torchBest[`${batch} bf16-mixed`] = bf16;
  }
}

/** The fastest fp32 setting at `batch` within `seconds`. */
async function torchSettings(batch: number, seconds: number) {
  const deadline = performance.now() + seconds * 1000, runs: Record<string, unknown>[] = [];
  for (const malloc of torchMallocs) {
    for (const t of FP32_SETTINGS) {
      const r = await torchRun(batch, t, malloc, "fp32", (deadline - performance.now()) / 1000);
      if (r) runs.push(r);
    }
  }
  return runs.sort((x, y) => Number(y.tokens_per_s) - Number(x.tokens_per_s))[0];
}

async function torchRun(
  batch: number,
  t: { threads: string; env: Record<string, string>; name: string },
  malloc: string,
  precision: string,
  seconds: number,
): Promise<Record<string, unknown> | undefined> {
  const script = new URL("./torch_step.py", import.meta.url).pathname;
  for (const py of python ? [python] : ["python3", "/usr/bin/python3"]) {
    if (seconds <= 0) return undefined;
    const args = [script, torchCfg, String(batch), String(steps), t.threads, "cpu", precision];
    const r = await subTimed(py, args, { ...t.env, GLIBC_TUNABLES: malloc }, seconds);
    if (r === TIMED_OUT) {
      emit({
        case: "train_step",
        impl: "pytorch",
        batch,
        precision,
        setting: t.name,
        skipped: budget.skipLine(seconds),
      });
      return undefined;
    }
    if (!r) continue;
    python = py;
    return { ...r, setting: t.name, glibc_tunables: malloc };
  }
}

const budget = new Budget(Number(values["budget-min"]) * 60);
/** Our cases in order of what matters most: the b2 step everywhere first, sampling last. */
const CASES = [["train_step", 2], ["train_step", 8], ["eval_forward", 2], ["sample_25_tokens", 1]]
  .filter(([, batch]) => !(values.quick && batch === 8)) as [string, number][];
const plan = CASES.flatMap(([name, batch]) =>
  LIBS.flatMap(([kind, env]) =>
    PRECISIONS.map((precision) => ({ name, batch, kind, env, precision }))
  )
);
const torchBatches = values["no-torch"] ? [] : values.quick ? [2] : [2, 8];
budget.expect(plan.length + torchBatches.length);
for (const [i, c] of plan.entries()) {
  const tag = { case: c.name, batch: c.batch, matrix_lib: c.kind, precision: c.precision };
  const best = await bestOf(c.name, c.batch, c.precision, { GPT_BLAS: c.env }, budget.share());
  if (typeof best === "string") emit({ ...tag, skipped: best });
  else {
    if (c.name === "train_step") await addMatmul(best, c.batch, c.kind, c.precision);
    ours.push(best);
  }
  // PyTorch's step right after ours at the same batch, while the budget still has room for it.
  const next = plan[i + 1];
  const b = c.batch;
  if (
    c.name === "train_step" && torchBatches.includes(b) &&
    !(next?.name === c.name && next.batch === b)
  ) {
    await torchCases([b]);
  }
}
ours.push(...await autoChoice());

for (const r of ours) {
  if (r.case === "auto_choice") {
    emit(r);
    continue;
  }
  const t = r.case === "train_step" ? torchBest[`${r.batch} ${r.precision}`] : undefined;
  if (t) r.ratio_vs_pytorch = Number(r.tokens_per_s) / Number(t.tokens_per_s);
  const nativeLine = ours.find((o) =>
    o.case === r.case && o.batch === r.batch && o.precision === r.precision && o !== r &&
    !isWasm(o) &&
    isWasm(r) && o.matrix_lib_kind === "native"
  );
  if (nativeLine) r.ratio_vs_native = Number(r.tokens_per_s) / Number(nativeLine.tokens_per_s);
  const fp32Line = ours.find((o) =>
    o.case === r.case && o.batch === r.batch && o.matrix_lib_kind === r.matrix_lib_kind &&
    o.precision === "fp32"
  );
  if (r.precision === "bf16-mixed" && fp32Line) {
    r.ratio_vs_fp32 = Number(r.tokens_per_s) / Number(fp32Line.tokens_per_s);
  }
  emit(r);
}
for (const t of Object.values(torchBest)) emit(t);
for (const r of dataLines) emit(r);
if (!values["no-torch"] && Object.keys(torchBest).length === 0) {
  emit({ case: "train_step", impl: "pytorch", skipped: "python3 with torch not found" });
}
console.error("\n" + benchTable(printed));
