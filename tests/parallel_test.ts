/**
 * The JS kernels split across helper Workers (lib/backends/cpu/pool.ts, on by default with one thread per core)
 * give bit for bit the numbers of one thread: a GPT training step (loss, gradients through every fused kernel,
 * AdamW) from the same parameters ends at identical parameters either way.
 */
import { deepStrictEqual as assertEquals, ok, throws } from "node:assert/strict";
import { AdamW } from "../lib/train/adamw.ts";
import { initBackend } from "../lib/backends/backend.ts";
import { loadExperiment } from "../lib/config.ts";
import { TINY_GPT } from "./_helpers.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { GPTModel } from "../lib/model/model.ts";
import { DropoutRng } from "../lib/model/ops.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { trainStep } from "../lib/train/train.ts";
import { loadBlas } from "../lib/backends/cpu/cpu_backend.ts";
import {
  DEFAULT_MIN_WORK,
  parallelFor,
  readyHelpers,
  setParallelism,
  sharedF32,
  splitCalls,
} from "../lib/backends/cpu/pool.ts";

Deno.test({
  name: "a training step on 2 threads equals one on 1 thread, bit for bit (cpu)",
  ignore: !loadBlas().ok,
  fn: async () => {
    const cfg = await loadExperiment("experiments/verdict-small.yaml", TINY_GPT);
    await initBackend("cpu");
    const rng = new TorchGenerator(5);
    const ids = () => Int32Array.from(rng.rand(4 * 16), (u) => Math.floor(u * 50257));
    const batch = { inputs: ids(), targets: ids(), batchSize: 4, maxLength: 16 };
    const step = async (threads: number) => {
      setParallelism(threads, 1); // split even these small arrays
      const model = new GPTModel(cfg.model, initGPTParams(cfg.model, new TorchGenerator(123)));
      const opt = new AdamW(model.params, { lr: 4e-4, weightDecay: 0.1 });
      if (threads > 1) ok(await readyHelpers() === threads - 1, "the helper Workers start");
      const splitsBefore = splitCalls();
      const { loss } = await trainStep(model, opt, batch, new DropoutRng(9));
      const split = splitCalls() - splitsBefore;
      const params = (await model.toNamedParams()).map((p) => Array.from(p.data));
      opt.dispose();
      model.dispose();
      return { loss, params, split };
    };
    const threadsBefore = setParallelism();
    try {
      const one = await step(1), two = await step(2);
      ok(one.split === 0, "one thread never splits");
      ok(two.split > 50, `helpers took part in ${two.split} kernel calls`);
      ok(Number.isFinite(one.loss));
      assertEquals(two.loss, one.loss);
      assertEquals(two.params, one.params);
    } finally {
      setParallelism(threadsBefore, DEFAULT_MIN_WORK);
    }
  },
});

Deno.test("dropout masks drawn on 2 threads are one thread's masks, and the generator ends in the same state", async () => {
  const threadsBefore = setParallelism();
  try {
    const draw = async (threads: number, n: number) => {
      setParallelism(threads, 1);
      if (threads > 1) ok(await readyHelpers() === threads - 1, "the helper Workers start");
      const rng = new DropoutRng(7), masks: number[][] = [];
      const splitsBefore = splitCalls();
      for (const p of [0.1, 0.5]) masks.push(Array.from(rng.mask(n, p, sharedF32(n))));
      return { masks, state: rng.state, split: splitCalls() - splitsBefore };
    };
    for (const n of [1, 1001, 100_003]) {
      const one = await draw(1, n), two = await draw(2, n);
      ok(n === 1 || two.split === 2, `n ${n}: both masks split (${two.split})`);
      assertEquals(two.masks, one.masks);
      assertEquals(two.state, one.state);
      const zeros = one.masks[0].filter((m) => m === 0).length / n;
      ok(n < 1000 || Math.abs(zeros - 0.1) < 0.02, `p 0.1 drops ${zeros} of the elements`);
    }
  } finally {
    setParallelism(threadsBefore, DEFAULT_MIN_WORK);
  }
});

Deno.test("dropout masks keep xoshiro128**'s outputs at or above p·2³² (a reference from the algorithm)", () => {
  const n = 5000, rng = new DropoutRng(7);
  const s = Uint32Array.from(rng.state);
  for (const p of [0.1, 0.5, 0.9]) { // thresholds below, at and above 2³¹
    const got = rng.mask(n, p);
    const threshold = Math.floor(p * 4294967296), keep = Math.fround(1 / (1 - p));
    for (let i = 0; i < n; i++) {
      const x = Math.imul(s[1], 5) >>> 0, out = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
      const t = s[1] << 9;
      s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t;
      s[3] = (s[3] << 11) | (s[3] >>> 21);
      if (got[i] !== (out >= threshold ? keep : 0)) {
        throw new Error(`p ${p}: element ${i} is ${got[i]}`);
      }
    }
  }
  assertEquals(rng.state, Array.from(s));
});

Deno.test("the pool knows no kernel: it imports nothing and names an unregistered kernel in its error", () => {
  const src = Deno.readTextFileSync(new URL("../lib/backends/cpu/pool.ts", import.meta.url));
  assertEquals(src.match(/^import .*$/gm), null);
  throws(() => parallelFor("noSuchKernel", [], [], 1), /no kernel named "noSuchKernel"/);
});
