/** Decoding (section 5.3): top-k, temperature, greedy, eos, seeds, and the book's generate draws on gpt2-tiny. */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import type { ModelConfig } from "../lib/config.ts";
import { argmax, generate, samplingProbs } from "../lib/model/generate.ts";
import { loadHFGPT2 } from "../lib/weights/gpt2.ts";
import { generateCached } from "../lib/model/kvcache.ts";
import { GPTModel } from "../lib/model/model.ts";
import { TorchGenerator } from "../lib/model/rng.ts";

const FIXTURES = new URL("../../shared/fixtures/", import.meta.url);
const fx = JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES)));
const torchFx = JSON.parse(await Deno.readTextFile(new URL("torch-seed123.json", FIXTURES)));
const cfg: ModelConfig = fx.config;

async function tinyModel(): Promise<GPTModel> {
  await initBackend("tfjs-cpu");
  return new GPTModel(
    cfg,
    await loadHFGPT2(new URL("gpt2-tiny.safetensors", FIXTURES).pathname, cfg),
  );
}

Deno.test("top-k keeps the k largest logits (ties at the k-th kept) and gives the rest probability 0", () => {
  const logits = Float32Array.from([1, 5, 3, 5, 2, 4]);
  const p = samplingProbs(logits, 3, 1);
  assertEquals(Array.from(p).map((x) => x > 0), [false, true, false, true, false, true]);
  const tie = samplingProbs(Float32Array.from([1, 3, 3, 2]), 1, 1); // k-th value 3 is shared: both stay
  assertEquals(Array.from(tie).map((x) => x > 0), [false, true, true, false]);
  ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-6);
});

Deno.test("temperature scales logits before the softmax; higher T flattens the distribution", () => {
  const logits = Float32Array.from([2, 1, 0]);
  for (const T of [0.5, 1, 2]) {
    const e = [2, 1, 0].map((z) => Math.exp(z / T)), s = e.reduce((a, b) => a + b);
    samplingProbs(logits, null, T).forEach((q, i) => ok(Math.abs(q - e[i] / s) < 1e-6, `T=${T}`));
  }
  ok(samplingProbs(logits, null, 2)[0] < samplingProbs(logits, null, 0.5)[0]);
});

Deno.test("the book's 5.3.1 draws: 1,000 multinomial samples of softmax(logits) after seed 123", () => {
  const b = torchFx.book_multinomial_5_3_1;
  const rng = new TorchGenerator(b.seed);
  const probs = samplingProbs(Float32Array.from(b.logits), null, 1);
  const counts = new Array(b.logits.length).fill(0);
  for (let i = 0; i < b.draws; i++) counts[rng.multinomial(probs)[0]]++;
  assertEquals(counts, b.counts);
});

Deno.test("gpt2-tiny: the book's generate draws (top-k, temperature, torch.manual_seed) come out exactly", async () => {
  const model = await tinyModel();
  for (const d of torchFx.generate_gpt2_tiny.draws) {
    const o = { maxNewTokens: d.max_new_tokens, temperature: d.temperature, topK: d.top_k };
    assertEquals(
      await generate(model, d.prompt_ids, { ...o, rng: new TorchGenerator(d.seed) }),
      d.ids,
      `seed ${d.seed}`,
    );
    assertEquals(
      await generateCached(model, d.prompt_ids, { ...o, rng: new TorchGenerator(d.seed) }),
      d.ids,
    );
  }
  model.dispose();
});

Deno.test("greedy equals temperature 0; eos stops; same seed same ids, another seed other ids", async () => {
  const model = await tinyModel();
  const prompt = fx.greedy_prompt_ids as number[];
  assertEquals(await generate(model, prompt, { maxNewTokens: 10, temperature: 0 }), fx.greedy_ids);
  assertEquals(
    await generate(model, prompt, { maxNewTokens: 10, temperature: 0, topK: 5 }),
    fx.greedy_ids,
  );
  const eos = fx.greedy_ids[prompt.length]; // the first greedy token: generation stops before it
  assertEquals(
    await generate(model, prompt, { maxNewTokens: 10, temperature: 0, eosId: eos }),
    prompt,
  );
  const draw = (seed: number) =>
    generate(model, prompt, {
      maxNewTokens: 15,
      temperature: 1.4,
      topK: 25,
      rng: new TorchGenerator(seed),
    });
  assertEquals(await draw(7), await draw(7));
  ok((await draw(7)).join() !== (await draw(8)).join());
  ok(argmax([1, 3, 3]) === 1);
  model.dispose();
});
