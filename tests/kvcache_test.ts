import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs";
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects as assertRejects,
} from "node:assert/strict";
import { CPU_BACKEND, registerCpuBackend } from "../lib/backends/cpu/cpu_backend.ts";
import type { ModelConfig } from "../lib/config.ts";
import { generate, generateTextSimple, lastLogits } from "../lib/model/generate.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { generateCached, KVCache } from "../lib/model/kvcache.ts";
import { GPTModel } from "../lib/model/model.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { textToTokenIds } from "../lib/data/tokenizer.ts";

tf.env().set("IS_NODE", false);

const blas = registerCpuBackend();
if (!blas.ok) console.warn(`kvcache_test: blas backend skipped: ${blas.reason}`);
const BACKENDS = blas.ok ? ["cpu", CPU_BACKEND] : ["cpu"];

const CTX = 32;
const PROMPT = textToTokenIds("Every effort moves you"); // 4 tokens

function tinyConfig(qkvBias: boolean): ModelConfig {
  return {
    vocab_size: 50257,
    context_length: CTX,
    emb_dim: 32,
    n_heads: 2,
    n_layers: 2,
    drop_rate: 0.1, // unused: generation runs without dropout
    qkv_bias: qkvBias,
  };
}

/** Runs `fn` on each backend and both qkv_bias settings with a model seeded by 123. */
function eachModel(name: string, fn: (model: GPTModel) => Promise<void>): void {
  for (const backend of BACKENDS) {
    for (const qkvBias of [false, true]) {
      Deno.test(`${name} (${backend}, qkv_bias ${qkvBias})`, async () => {
        await tf.setBackend(backend);
        const cfg = tinyConfig(qkvBias);
        const model = new GPTModel(cfg, initGPTParams(cfg, new TorchGenerator(123)));
        try {
          await fn(model);
        } finally {
          model.dispose();
        }
      });
    }
  }
}

/** `fn()`, checking that it leaves exactly `kept` more tensors behind (lastLogits in lib/model/generate.ts leaks one
 * per call, so the reference paths stay outside). */
async function noLeak<T>(fn: () => T | Promise<T>, kept = 0): Promise<T> {
  const before = tf.memory().numTensors;
  const out = await fn();
  assertEquals(tf.memory().numTensors - before, kept, "tensors leaked");
  return out;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assertEquals(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

eachModel(
  "prefill and every cached step give the full forward's last-row logits",
  async (model) => {
    const ids = PROMPT.slice();
    const cache = new KVCache(model);
    try {
      const layers = 2 * model.cfg.n_layers; // a key and a value tensor per layer
      let got = await noLeak(() => cache.append(ids), layers);
      let worst = 0;
      while (true) {
        worst = Math.max(worst, maxAbsDiff(got, await lastLogits(model, ids)));
        if (ids.length === CTX) break;
        ids.push((ids.length * 7919) % 50257); // arbitrary tokens, spread over the vocabulary
        got = await noLeak(() => cache.append([ids[ids.length - 1]]));
      }
      assertEquals(cache.length, CTX);
      assert(worst <= 1e-4, `max |Δlogit| ${worst} > 1e-4`);
      // Several tokens at once after a prefix (a causal block against the cache) agree too.
      cache.reset();
      await cache.append(ids.slice(0, 10));
      const block = await cache.append(ids.slice(10, 20));
      const d = maxAbsDiff(block, await lastLogits(model, ids.slice(0, 20)));
      assert(d <= 1e-4, `block append: max |Δlogit| ${d} > 1e-4`);
      await assertRejects(() => cache.append(ids.slice(0, CTX - 19)), /exceed context_length/);
      await noLeak(() => cache.dispose(), -layers);
    } finally {
      cache.dispose();
    }
  },
);

eachModel("greedy generateCached equals generateTextSimple, past context_length", async (model) => {
  const n = 2 * CTX; // crops from step 29 on
  const want = await generateTextSimple(model, PROMPT, n);
  const streamed: number[] = [];
  const got = await noLeak(() =>
    generateCached(model, PROMPT, { maxNewTokens: n, onToken: (id) => streamed.push(id) })
  );
  assertEquals(got, want);
  assertEquals(streamed, want.slice(PROMPT.length));
  assertEquals(new Set(want.slice(PROMPT.length)).size > 1, true, "degenerate output");
  // A prompt longer than the context is cropped first, as in generate.
  const long = Array.from({ length: CTX + 5 }, (_, i) => (i * 104729) % 50257);
  assertEquals(
    await generateCached(model, long, { maxNewTokens: 6 }),
    await generateTextSimple(model, long, 6),
  );
});

eachModel("sampling with top-k and temperature draws what generate draws", async (model) => {
  for (const [temperature, topK] of [[1.4, 25], [1.0, null], [0.7, 3]] as const) {
    const opts = { maxNewTokens: 40, temperature, topK };
    const want = await generate(model, PROMPT, { ...opts, rng: new TorchGenerator(123) });
    const got = await noLeak(() =>
      generateCached(model, PROMPT, { ...opts, rng: new TorchGenerator(123) })
    );
    assertEquals(got, want, `temperature ${temperature}, top-k ${topK}`);
  }
  // Greedy with a top-k mask is still the argmax.
  assertEquals(
    await generateCached(model, PROMPT, { maxNewTokens: 10, topK: 5 }),
    await generate(model, PROMPT, { maxNewTokens: 10, topK: 5 }),
  );
});

eachModel("stops before the eos token and handles zero new tokens", async (model) => {
  const greedy = await generateTextSimple(model, PROMPT, 8);
  const eosId = greedy[PROMPT.length + 3]; // the 4th new token
  const want = await generate(model, PROMPT, { maxNewTokens: 8, eosId });
  assertEquals(await generateCached(model, PROMPT, { maxNewTokens: 8, eosId }), want);
  assert(want.length <= PROMPT.length + 3);
  assertEquals(await generateCached(model, PROMPT, { maxNewTokens: 0 }), PROMPT);
  await assertRejects(
    () => generateCached(model, PROMPT, { maxNewTokens: 3, temperature: 1 }),
    /needs a random generator/,
  );
});
