import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { createDataloaderV1, createLoaders } from "../lib/data/data.ts";
import { UserError } from "../lib/errors.ts";
import { textToTokenIds, tokenIdsToText } from "../lib/data/tokenizer.ts";
import { ensureVerdict } from "./_helpers.ts";

const text = await Deno.readTextFile(await ensureVerdict());

Deno.test("The Verdict gives the book's figures: 20479 chars, 5145 tokens, 9 train and 1 val batch", () => {
  const d = createLoaders(text, {
    trainRatio: 0.9,
    batchSize: 2,
    contextLength: 256,
    stride: 256,
    seed: 123,
  });
  assertEquals(d.chars, 20479);
  assertEquals(d.tokens, 5145);
  assertEquals(d.trainLoader.length, 9);
  assertEquals(d.valLoader.length, 1);
  let trainTokens = 0, valTokens = 0;
  for (const b of d.trainLoader.batches(0)) trainTokens += b.inputs.length;
  for (const b of d.valLoader.batches(0)) valTokens += b.inputs.length;
  assertEquals(trainTokens, 4608);
  assertEquals(valTokens, 512);
});

Deno.test("windows: targets are inputs shifted by one; stride sets the start of each window", () => {
  const ids = Int32Array.from({ length: 20 }, (_, i) => 100 + i);
  const loader = createDataloaderV1(ids, {
    batchSize: 1,
    maxLength: 4,
    stride: 3,
    shuffle: false,
    dropLast: false,
  });
  const batches = [...loader.batches(0)];
  assertEquals(batches.length, 6); // starts 0, 3, 6, 9, 12, 15 (range(0, 20 - 4, 3))
  assertEquals(Array.from(batches[1].inputs), [103, 104, 105, 106]);
  assertEquals(Array.from(batches[1].targets), [104, 105, 106, 107]);
});

Deno.test("train shuffle is seeded per epoch; val keeps order and its last short batch", () => {
  const ids = Int32Array.from({ length: 101 }, (_, i) => i);
  const opts = { batchSize: 3, maxLength: 4, stride: 4, shuffle: true, dropLast: true };
  const a = createDataloaderV1(ids, opts, 7), b = createDataloaderV1(ids, opts, 7);
  assertEquals(a.order(0), b.order(0));
  assertEquals(a.order(1).length, 25);
  assertEquals(a.order(0).join() === a.order(1).join(), false);
  assertEquals(a.length, 8); // 25 windows, drop_last
  const val = createDataloaderV1(ids, { ...opts, shuffle: false, dropLast: false });
  const vb = [...val.batches(0)];
  assertEquals(vb.length, 9);
  assertEquals(vb[8].batchSize, 1);
  // resuming mid-epoch yields the same remaining batches
  const rest = [...a.batches(2, 5)].map((x) => Array.from(x.inputs).join());
  const all = [...a.batches(2)].map((x) => Array.from(x.inputs).join());
  assertEquals(rest, all.slice(5));
});

Deno.test("too few tokens for one window is the book's 'Not enough tokens' error, naming the key", () => {
  let err: unknown;
  try {
    createLoaders(text.slice(0, 2000), {
      trainRatio: 0.9,
      batchSize: 2,
      contextLength: 256,
      stride: 256,
      seed: 1,
      source: "x.txt",
    });
  } catch (e) {
    err = e;
  }
  assertEquals(err instanceof UserError, true);
  assertEquals(
    (err as Error).message.startsWith(
      "x.txt: data.train_ratio: not enough tokens for the val loader",
    ),
    true,
  );
});

Deno.test("tokenizer: GPT-2 ids of the book's examples, <|endoftext|> allowed", () => {
  assertEquals(textToTokenIds("Every effort moves you"), [6109, 3626, 6100, 345]);
  assertEquals(textToTokenIds("Hello, I am"), [15496, 11, 314, 716]);
  assertEquals(textToTokenIds("a<|endoftext|>b").includes(50256), true);
  assertEquals(tokenIdsToText([6109, 3626, 6100, 345]), "Every effort moves you");
});
