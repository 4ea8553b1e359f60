/**
 * Weighted sources (data.sources): The Verdict mixed with a text of two made-up words, each window told apart by
 * its tokens. Over 10,000 windows the share of each source matches its weight within sampling error; the same seed
 * gives the same stream, another seed another; a resumed position gives the rest of the stream; a run logs each
 * source's val loss and resumes bit for bit.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { textToTokenIds } from "../lib/data/tokenizer.ts";
import type { Batch } from "../lib/data/data.ts";
import { prepareData, runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, tempDir } from "./_helpers.ts";

const dir = tempDir();
const zebra = `${dir}/zebra.txt`;
{
  let s = 7;
  const words = Array.from({ length: 6000 }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s & 0x10000 ? "zebra" : "quartz";
  });
  await Deno.writeTextFile(zebra, words.join(" ") + "\n");
}
const MARK = new Set([...textToTokenIds(" zebra"), ...textToTokenIds(" quartz")]);

async function config(name: string, extra: string[] = []) {
  await ensureVerdict();
  return await loadExperiment("experiments/verdict-small.yaml", [
    "model.context_length=32",
    "model.emb_dim=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "data.batch_size=4",
    `data.sources=[{path: data/the-verdict.txt, weight: 0.7}, {path: ${zebra}, weight: 0.3}]`,
    "training.epochs=1",
    "backend=cpu",
    ...extra,
    `name=${name}`,
  ]);
}

/** 1 for each window of the made-up words, 0 for each of The Verdict's, over `n` windows from epoch 0 on. */
function sourcesOf(batches: (epoch: number) => Generator<Batch>, n: number): number[] {
  const out: number[] = [];
  for (let e = 0; out.length < n; e++) {
    for (const b of batches(e)) {
      for (let r = 0; r < b.batchSize && out.length < n; r++) {
        const w = b.inputs.subarray(r * b.maxLength, (r + 1) * b.maxLength);
        out.push(w.some((t) => MARK.has(t)) ? 1 : 0);
      }
    }
  }
  return out;
}

Deno.test("10,000 windows follow the weights within sampling error; the stream is the seed's", async () => {
  const quiet = { print: () => {}, progress: false };
  const data = await prepareData(await config("mix"), quiet);
  const seq = sourcesOf((e) => data.trainLoader.batches(e), 10_000);
  const share = seq.reduce((a, b) => a + b, 0) / seq.length;
  const sigma = Math.sqrt(0.3 * 0.7 / seq.length);
  ok(
    Math.abs(share - 0.3) < 4 * sigma,
    `made-up words ${share}, weight 0.3 (σ ${sigma.toFixed(4)})`,
  );
  const again = await prepareData(await config("mix"), quiet);
  assertEquals(sourcesOf((e) => again.trainLoader.batches(e), 10_000), seq);
  const other = await prepareData(await config("mix", ["training.seed=7"]), quiet);
  ok(sourcesOf((e) => other.trainLoader.batches(e), 10_000).join("") !== seq.join(""));
  // From a position: the rest of the epoch's stream, window for window.
  const all = [...data.trainLoader.batches(2)], from = 17;
  assertEquals([...data.trainLoader.batches(2, from)], all.slice(from));
  ok(data.valBySource?.length === 2 && data.summary!.includes("2 sources by weight"));
});

Deno.test("a mixed run logs each source's val loss, and a stop + --resume gives the straight run's losses", async () => {
  const opts = { print: () => {}, progress: false, checkpointsDir: dir };
  const short = ["data.train_ratio=0.35"]; // about 30 steps an epoch
  await runTraining(await config("straight", short), opts);
  const cfg = await config("resumed", short);
  assertEquals((await runTraining(cfg, { ...opts, stopAfterSteps: 7 })).status, "interrupted");
  assertEquals((await runTraining(cfg, { ...opts, resume: true })).status, "finished");
  const evals = (r: string) =>
    readRunLog(`${dir}/${r}/log.jsonl`).evals.map((e) => [
      e.step,
      e.train_loss,
      e.val_loss,
      e.val_loss_by_source,
    ]);
  const straight = evals("straight");
  ok(straight.length > 1);
  assertEquals(evals("resumed"), straight);
  const by = straight[0][3] as Record<string, number>;
  assertEquals(Object.keys(by), ["data/the-verdict.txt", zebra]);
  ok(by[zebra] !== by["data/the-verdict.txt"]);
});

Deno.test("data.sources: a bad list is one line naming the key", async () => {
  for (
    const [v, why] of [
      ["[]", /is not a list/],
      ["[{path: a.txt}]", /source 1: .*is not a number/],
      ["[{path: a.txt, weight: 0}]", /source 1: 0 is outside/],
      ["[{path: a.txt, weight: 1}, {path: a.txt, weight: 2}]", /source 2: a.txt is listed twice/],
      ["[{path: a.txt, weight: 1, mix: 2}]", /unknown key mix/],
    ] as const
  ) {
    try {
      await loadExperiment("experiments/verdict-small.yaml", [`data.sources=${v}`]);
      ok(false, `${v} was accepted`);
    } catch (e) {
      ok(
        e instanceof UserError && /data\.sources: /.test(e.message) && why.test(e.message),
        String(e),
      );
    }
  }
});
