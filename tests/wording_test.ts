/**
 * What the tasks print reads as English and as true figures, on real runs: the report's epochs ("10 epochs", not
 * "epoches") and layers ("1 layer"), a prepared corpus's files and documents told apart, "1 shard", a small corpus's size and speed in KB
 * (not "0.0 MB, 0.0 MB/s"), and a matrix library on one thread as "1 thread".
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { spawnTask, TINY_YAML, tinyProject, trainIn } from "./_cases.ts";
import {
  loadDnnlBlas,
  loadNativeBlas,
  loadWasmBlas,
} from "../lib/backends/cpu/matrix/libraries.ts";

Deno.test("eval's report of a 1-layer, 2-epoch run says '1 layer' and '2 epochs'", async () => {
  const dir = await tinyProject("tiny");
  await Deno.writeTextFile(`${dir}/tiny.yaml`, TINY_YAML.replace("epochs: 1", "epochs: 2"));
  await trainIn(dir, "tiny.yaml");
  const r = await spawnTask(dir, "eval", ["tiny.yaml", "--num-batches", "1"]);
  assertEquals(r.code, 0, r.err.join("\n"));
  const report = await Deno.readTextFile(`${dir}/checkpoints/tiny/report.md`);
  const model = report.split("\n").find((l) => l.startsWith("Model:"));
  ok(
    model?.startsWith("Model: 1 layer × 2 heads,") && model.includes("Training: 2 epochs,"),
    model,
  );
});

Deno.test("prepare and train on a 30 KB corpus of 5 files: sizes in KB, files apart from documents, '1 shard'", async () => {
  const dir = await tinyProject("tiny");
  await Deno.mkdir(`${dir}/data/corpus`);
  const paras = (await Deno.readTextFile(`${dir}/data/the-verdict.txt`)).split("\n\n");
  const per = Math.ceil(paras.length / 5);
  for (let i = 0; i < 5; i++) {
    // each file a few documents (split on <|endoftext|>), so that documents outnumber files
    const docs = paras.slice(i * per, (i + 1) * per);
    await Deno.writeTextFile(`${dir}/data/corpus/part-${i}.txt`, docs.join("<|endoftext|>"));
  }
  const yaml = TINY_YAML + "data: {path: data/corpus, split_on_eot: true, train_ratio: 0.8}\n";
  await Deno.writeTextFile(`${dir}/corpus.yaml`, yaml);
  const prep = await spawnTask(dir, "prepare", ["corpus.yaml"]);
  assertEquals(prep.code, 0, prep.err.join("\n"));
  const out = prep.stdout + prep.err.join("\n");
  ok(!/\b0\.0 MB/.test(out), `a 30 KB corpus in MB:\n${out}`);
  ok(/5 files tokenized \(\d+\.\d KB, \d+\.\d (KB|MB)\/s/.test(prep.stdout), prep.stdout);
  ok(
    /^train: \d+ documents, \d+ tokens, 1 shard; val: \d+ documents, \d+ tokens, 1 shard$/m.test(
      prep.stdout,
    ),
    prep.stdout,
  );
  const again = await spawnTask(dir, "prepare", ["corpus.yaml"]);
  ok(again.stdout.includes("up to date (5 files unchanged)"), again.stdout);
  const train = await spawnTask(dir, "train", ["corpus.yaml"]);
  assertEquals(train.code, 0, train.err.join("\n"));
  const data = train.stdout.split("\n").find((l) => l.startsWith("data: "));
  ok(data, train.stdout);
  const m = data.match(
    /: (\d+) files?, [\d.]+ KB, \d+ tokens; train (\d+) documents, \d+ batch(es)?; val (\d+) documents/,
  );
  ok(m, data);
  assertEquals(Number(m[1]), 5, data);
  ok(Number(m[2]) + Number(m[4]) > 5, `documents counted as files: ${data}`);
});

Deno.test("a matrix library on one thread describes itself with '1 thread'", () => {
  for (const load of [loadNativeBlas, loadDnnlBlas, loadWasmBlas]) {
    const r = load();
    if (!r.ok) continue;
    const lib = r.lib, before = lib.getNumThreads?.();
    if (!lib.setNumThreads || before === undefined) continue;
    try {
      lib.setNumThreads(1);
      const text = lib.describe();
      ok(/\b1 thread\b/.test(text) && !/\b1 threads\b/.test(text), text);
    } finally {
      lib.setNumThreads(before);
    }
  }
});
