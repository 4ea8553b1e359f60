/**
 * Wall time of greedy decoding on GPT-124M (random seeded init, qkv_bias false) on the `cpu` backend: the book's
 * `generate`, which recomputes the whole context per token, against `generateCached` (lib/model/kvcache.ts), for 25 and
 * 200 new tokens from "Every effort moves you". Each case runs twice per path and keeps the faster run (other
 * processes only add time). Prints one JSON line per case.
 *
 *   deno run -A bench/kvcache.ts [--ctx 256] [--tokens 25,200]
 */
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import { initBackend } from "../lib/backends/backend.ts";
import { DEFAULTS, type ModelConfig } from "../lib/config.ts";
import { generate, type GenerateOptions } from "../lib/model/generate.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { generateCached } from "../lib/model/kvcache.ts";
import { GPTModel } from "../lib/model/model.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { textToTokenIds } from "../lib/data/tokenizer.ts";

tf.env().set("IS_NODE", false);

function flag(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const RUNS = 2;
const cfg: ModelConfig = { ...DEFAULTS.model, context_length: Number(flag("ctx", "256")) };
const counts = flag("tokens", "25,200").split(",").map(Number);

await initBackend("cpu");
const model = new GPTModel(cfg, initGPTParams(cfg, new TorchGenerator(123)));
const prompt = textToTokenIds("Every effort moves you");

type Gen = (m: GPTModel, ids: number[], o: GenerateOptions) => Promise<number[]>;

/** Fastest of {@link RUNS} runs, in seconds, and the ids of the last one. */
async function time(gen: Gen, maxNewTokens: number): Promise<{ s: number; ids: number[] }> {
  let best = Infinity, ids: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    ids = await gen(model, prompt, { maxNewTokens });
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return { s: best, ids };
}

for (const n of counts) {
  const recompute = await time(generate, n);
  const cached = await time(generateCached, n);
  console.log(JSON.stringify({
    bench: "kvcache",
    backend: "cpu",
    context_length: cfg.context_length,
    prompt_tokens: prompt.length,
    new_tokens: n,
    recompute_s: +recompute.s.toFixed(3),
    cached_s: +cached.s.toFixed(3),
    speedup: +(recompute.s / cached.s).toFixed(2),
    cached_ms_per_token: +(1000 * cached.s / n).toFixed(1),
    same_ids: JSON.stringify(recompute.ids) === JSON.stringify(cached.ids),
  }));
}
model.dispose();
