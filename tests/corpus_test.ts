/**
 * Corpora on real text (The Verdict cut into documents plus generated ones): shards decode to the joined documents,
 * the split by document is deterministic, re-prepare skips unchanged files, the streaming loader resumes at the same
 * window, and every bad input is one UserError line.
 */
import { deepStrictEqual as assertEquals, ok, rejects, throws } from "node:assert/strict";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { loadExperiment } from "../lib/config.ts";
import { prepareCorpus } from "../lib/data/corpus.ts";
import { dataSourceKind } from "../lib/data/source.ts";
import { globToRegExp, listSources } from "../lib/data/corpus_files.ts";
import { encodePiece, safeCut } from "../lib/data/tokenize.ts";
import { splitDocuments } from "../lib/data/documents.ts";
import { UserError } from "../lib/errors.ts";
import { prepareData, runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { createShardLoaders, readIndex, readStream, ShardLoader } from "../lib/data/shards.ts";
import { textToTokenIds, tokenIdsToText } from "../lib/data/tokenizer.ts";
import {
  buildCorpus,
  ensureVerdict,
  generatedText,
  readFromFifo,
  taskArgs,
  tempDir,
} from "./_helpers.ts";

const quiet = { print: () => {}, progress: false };
const split = { trainRatio: 0.8, batchSize: 2, contextLength: 32, stride: 32, seed: 123 };

/** A fresh copy of the test corpus in a temp dir, prepared into `<tmp>/shards`. */
async function prepared(shardTokens = 700) {
  const tmp = tempDir();
  const files = await buildCorpus(`${tmp}/corpus`);
  const r = await prepareCorpus(`${tmp}/corpus`, {
    shardDir: `${tmp}/shards`,
    seed: 123,
    trainRatio: 0.8,
    shardTokens,
    ...quiet,
  });
  return { tmp, files, dir: `${tmp}/shards`, r };
}

const userError = (re: RegExp) => (e: unknown) => {
  ok(e instanceof UserError, String(e));
  ok(re.test(e.message), e.message);
  ok(!e.message.includes("\n"), "one line");
  return true;
};

Deno.test("shard round trip: decoding each split's shards gives its documents joined with <|endoftext|>", async () => {
  const { files, dir, r } = await prepared();
  const index = r.index;
  assertEquals(index.sources.map((s) => s.path), files);
  for (const name of ["train", "val"] as const) {
    const docs = index.sources.filter((s) => s.split === name);
    ok(docs.length > 0);
    const joined = (await Promise.all(docs.map((s) => Deno.readTextFile(s.path))))
      .map((t) => t + "<|endoftext|>").join("");
    const ids = readStream(dir, index, name, 0, index.splits[name].tokens);
    assertEquals(tokenIdsToText(Array.from(ids)), joined);
    ok(index.splits[name].shards.length > 1, "several shards");
    ok(index.splits[name].shards.slice(0, -1).every((s) => s.tokens === 700));
  }
  for (const s of index.sources) ok(/^[0-9a-f]{64}$/.test(s.sha256) && s.bytes > 0);
});

Deno.test("pieces cut at safeCut encode to the ids of the whole text (The Verdict, odd text, every 300 chars)", async () => {
  const verdict = await Deno.readTextFile(await ensureVerdict());
  const odd = "Il a dit: « café »,  42 fois!\n\n\t  日本語 テキスト 🙂 x<|endoftext|>y   \n  end.\n"
    .repeat(40);
  for (const text of [verdict, odd, generatedText(9, 3000)]) {
    const ids: number[] = [];
    let pos = 0, cuts = 0;
    while (pos < text.length) {
      const window = text.slice(pos, pos + 600);
      const cut = window.length < 600 ? -1 : safeCut(window, 300);
      const piece = cut < 0 ? text.slice(pos) : window.slice(0, cut);
      ids.push(...encodePiece(piece).ids);
      pos += piece.length, cuts += cut < 0 ? 0 : 1;
    }
    ok(cuts >= 3, `cuts ${cuts}`);
    assertEquals(ids, textToTokenIds(text));
  }
});

Deno.test("split by document: deterministic from the seed, recorded in the index, both splits non-empty", async () => {
  const names = Array.from({ length: 20 }, (_, i) => `doc-${i}.txt`);
  assertEquals(splitDocuments(names, 7, 0.8), splitDocuments(names, 7, 0.8));
  ok(
    [1, 2, 3, 4].some((s) =>
      splitDocuments(names, s, 0.8).join() !== splitDocuments(names, 7, 0.8).join()
    ),
  );
  // Adding a document moves no other one.
  assertEquals(
    splitDocuments([...names, "new.txt"], 7, 0.8).slice(0, 20),
    splitDocuments(names, 7, 0.8),
  );
  const two = splitDocuments(["a", "b"], 1, 0.99);
  assertEquals([...two].sort(), ["train", "val"]);
  const a = await prepared(), b = await prepared();
  assertEquals(a.r.index.sources.map((s) => s.split), b.r.index.sources.map((s) => s.split));
  assertEquals(a.r.index.splits.val.tokens, b.r.index.splits.val.tokens);
  assertEquals([a.r.index.seed, a.r.index.train_ratio], [123, 0.8]);
});

Deno.test("re-prepare: unchanged files are skipped, a changed one alone is tokenized again", async () => {
  const { tmp, dir, r } = await prepared();
  assertEquals([r.tokenized, r.reused, r.upToDate], [12, 0, false]);
  const opts = { shardDir: dir, seed: 123, trainRatio: 0.8, shardTokens: 700, ...quiet };
  const again = await prepareCorpus(`${tmp}/corpus`, opts);
  assertEquals([again.upToDate, again.tokenized], [true, 0]);
  await Deno.writeTextFile(`${tmp}/corpus/generated-1.txt`, "A new second document.\n");
  const changed = await prepareCorpus(`${tmp}/corpus`, opts);
  assertEquals([changed.upToDate, changed.tokenized, changed.reused], [false, 1, 11]);
  const fresh = await prepareCorpus(`${tmp}/corpus`, { ...opts, shardDir: `${tmp}/fresh` });
  for (const name of ["train", "val"] as const) {
    assertEquals(
      readStream(dir, changed.index, name, 0, changed.index.splits[name].tokens),
      readStream(`${tmp}/fresh`, fresh.index, name, 0, fresh.index.splits[name].tokens),
    );
  }
  // Only the new generation's shards remain.
  const bins = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".bin"));
  ok(bins.every((n) => n.includes(`-g${changed.index.generation}-`)), bins.join());
});

Deno.test("streaming loader: batch k of an epoch is the same whether read from 0 or resumed at k", async () => {
  const { dir } = await prepared();
  const data = createShardLoaders(dir, readIndex(dir), split);
  const train = data.trainLoader as ShardLoader;
  const all = [...train.batches(1)];
  assertEquals(all.length, train.length);
  assertEquals(all.length, Math.floor(train.windows / 2));
  for (const k of [0, 1, 5, all.length - 1]) assertEquals([...train.batches(1, k)], all.slice(k));
  ok(JSON.stringify([...train.batches(2)]) !== JSON.stringify(all), "epochs shuffle differently");
  // Every window once per epoch; targets are inputs shifted by one.
  const firsts = new Set(all.flatMap((b) => [b.inputs[0], b.inputs[32]]));
  ok(firsts.size > 10);
  for (const b of all) assertEquals(b.inputs.subarray(1, 32), b.targets.subarray(0, 31));
  // Every window exactly once per epoch, whatever the shuffle buffer.
  const index = readIndex(dir);
  const windowsOf = (shuffle: boolean, k: number) => {
    const opts = { batchSize: 1, maxLength: 32, stride: 32, shuffle, dropLast: true };
    const l = new ShardLoader(dir, index, "train", opts, 123, k);
    return [...l.batches(3)].map((b) => b.inputs.join(","));
  };
  const plain = windowsOf(false, 1);
  for (const k of [1, 3, 100]) {
    const mixed = windowsOf(true, k);
    ok(mixed.join() !== plain.join());
    assertEquals([...mixed].sort(), [...plain].sort());
  }
  // A few evaluation batches sample the whole split evenly, the same every time.
  const few = [...train.ordered(3)];
  assertEquals(few.length, 3);
  assertEquals(few, [...train.ordered(3)]);
  const plainFirst = windowsOf(false, 1);
  const at = (b: (typeof few)[number], r: number) =>
    b.inputs.subarray(r * 32, r * 32 + 32).join(",");
  const picked = few.flatMap((b) => [at(b, 0), at(b, 1)]);
  const where = picked.map((w) => plainFirst.indexOf(w));
  assertEquals(where[0], 0);
  ok(where.every((i, j) => j === 0 || i > where[j - 1]), `in order: ${where}`);
  ok(
    where.at(-1)! > plainFirst.length * 0.7,
    `spread to the end: ${where} of ${plainFirst.length}`,
  );
  // The val loader keeps order and its last short batch.
  const val = data.valLoader as ShardLoader;
  assertEquals([...val.ordered()].reduce((n, b) => n + b.batchSize, 0), val.windows);
});

Deno.test("corpus run: stop mid-epoch + --resume continues at the same window (same losses as straight)", async () => {
  const tmp = tempDir();
  await buildCorpus(`${tmp}/corpus`);
  const cfgOf = (name: string) =>
    loadExperiment("experiments/corpus-small.yaml", [
      "model.context_length=32",
      "model.emb_dim=32",
      "model.n_heads=2",
      "model.n_layers=1",
      "data.batch_size=16",
      `data.path=${tmp}/corpus/*.txt`,
      `data.shards=${tmp}/shards`,
      "training.epochs=1",
      "training.eval_freq=4",
      "training.eval_iter=2",
      `name=${name}`,
    ]);
  const opts = { ...quiet, checkpointsDir: `${tmp}/ck` };
  const straight = await runTraining(await cfgOf("a"), opts);
  const cfg = await cfgOf("b");
  const stopped = await runTraining(cfg, { ...opts, stopAfterSteps: 4 });
  assertEquals(stopped.status, "interrupted");
  assertEquals(stopped.state.batch, 4);
  const meta = (await loadCheckpoint(`${tmp}/ck/b/checkpoint.safetensors`)).meta;
  assertEquals([meta.data?.epoch, meta.data?.batch, meta.data?.source], [0, 4, `${tmp}/shards`]);
  ok(/^[0-9a-f]{16}$/.test(meta.data?.fingerprint ?? ""));
  const resumed = await runTraining(cfg, { ...opts, resume: true });
  const evals = (run: string) =>
    readRunLog(`${tmp}/ck/${run}/log.jsonl`).evals.map((e) => [e.step, e.train_loss, e.val_loss]);
  assertEquals(evals("b"), evals("a"));
  assertEquals(resumed.state, straight.state);
  // Other data under the same position is refused.
  await Deno.writeTextFile(`${tmp}/corpus/generated-0.txt`, "Other words entirely.\n");
  await rejects(runTraining(cfg, { ...opts, resume: true }), userError(/the data changed since/));
});

Deno.test("experiments/corpus-small.yaml: builds data/corpus-small, prepares it and has train and val batches", async () => {
  await buildCorpus();
  const cfg = await loadExperiment("experiments/corpus-small.yaml");
  const data = await prepareData(cfg, quiet);
  ok(data.summary?.startsWith("data: data/corpus-small.shards: 12 files"), data.summary);
  ok(data.trainLoader.length > 5 && data.valLoader.length > 0);
  assertEquals(readIndex("data/corpus-small.shards").splits.train.documents, 9); // seed 123 draws 3 of 12 documents for val
});

Deno.test("data.path kinds: one file, a directory, a glob, a shard directory", async () => {
  const { tmp, dir, files } = await prepared();
  assertEquals(dataSourceKind(files[0]), "text");
  assertEquals(dataSourceKind(`${tmp}/corpus`), "corpus");
  assertEquals(dataSourceKind(`${tmp}/corpus/gen*.txt`), "corpus");
  assertEquals(dataSourceKind(dir), "shards");
  assertEquals(listSources(`${tmp}/corpus/generated-*.txt`).length, 4);
  ok(globToRegExp("a/**/*.txt").test("a/b/c/d.txt") && globToRegExp("a/**/*.txt").test("a/d.txt"));
  ok(!globToRegExp("a/*.txt").test("a/b/d.txt"));
  const cfg = await loadExperiment("experiments/corpus-small.yaml", [
    `data.path=${dir}`,
    "model.context_length=32",
  ]);
  const data = await prepareData(cfg);
  ok(
    data.summary?.includes("12 files") && data.summary.includes("train 9 documents"),
    data.summary,
  );
});

Deno.test("linked files and directories (a Hugging Face cache snapshot) are read; a link loop is not followed", async () => {
  const tmp = tempDir();
  const files = await buildCorpus(`${tmp}/blobs`);
  // The same tree twice: real files in copy/, links in snap/ (files to blobs/, gen/ to a real directory, a loop).
  for (const root of ["copy", "snap"]) Deno.mkdirSync(`${tmp}/${root}/gen`, { recursive: true });
  Deno.removeSync(`${tmp}/snap/gen`);
  Deno.mkdirSync(`${tmp}/gen-real`);
  for (const f of files) {
    const name = f.split("/").at(-1)!, sub = name.startsWith("generated") ? "gen/" : "";
    Deno.copyFileSync(f, `${tmp}/copy/${sub}${name}`);
    if (sub) Deno.copyFileSync(f, `${tmp}/gen-real/${name}`);
    else Deno.symlinkSync(`../blobs/${name}`, `${tmp}/snap/${name}`);
  }
  Deno.symlinkSync("../gen-real", `${tmp}/snap/gen`);
  Deno.symlinkSync("..", `${tmp}/gen-real/up`);
  Deno.symlinkSync("missing.txt", `${tmp}/snap/dangling.txt`);
  const rel = (root: string) => listSources(`${tmp}/${root}`).map((f) => f.slice(tmp.length + 6));
  assertEquals(rel("snap"), rel("copy"));
  assertEquals(rel("snap").length, 12);
  const ids = async (root: string) => {
    const o = { shardDir: `${tmp}/${root}.shards`, seed: 123, trainRatio: 0.8, ...quiet };
    const { index } = await prepareCorpus(`${tmp}/${root}`, o);
    return (["train", "val"] as const).map((s) =>
      Array.from(readStream(o.shardDir, index, s, 0, index.splits[s].tokens))
    );
  };
  assertEquals(await ids("snap"), await ids("copy"));
});

Deno.test("bad corpus files: empty and non-UTF-8 are skipped with a warning; none usable is an error", async () => {
  const tmp = tempDir();
  await buildCorpus(`${tmp}/c`);
  await Deno.writeTextFile(`${tmp}/c/empty.txt`, "");
  await Deno.writeFile(`${tmp}/c/latin1.txt`, new Uint8Array([0x63, 0x61, 0x66, 0xe9, 0x0a]));
  const warnings: string[] = [];
  const r = await prepareCorpus(`${tmp}/c`, {
    shardDir: `${tmp}/s`,
    seed: 1,
    trainRatio: 0.8,
    print: (s) => warnings.push(s),
    progress: false,
  });
  assertEquals(r.skipped.length, 2);
  assertEquals(r.index.sources.length, 12);
  ok(warnings.some((w) => w.includes("empty.txt: skipped: empty file")), warnings.join("\n"));
  ok(warnings.some((w) => w.includes("latin1.txt: skipped: not valid UTF-8")), warnings.join("\n"));
  await Deno.mkdir(`${tmp}/bad`);
  await Deno.writeTextFile(`${tmp}/bad/empty.txt`, "");
  await rejects(
    prepareCorpus(`${tmp}/bad`, { shardDir: `${tmp}/s2`, seed: 1, trainRatio: 0.8, ...quiet }),
    userError(/no usable text/),
  );
  await rejects(
    prepareCorpus(`${tmp}/c/*.md`, { shardDir: `${tmp}/s3`, seed: 1, trainRatio: 0.8, ...quiet }),
    userError(/no file matches/),
  );
});

Deno.test("bad shards: other tokenizer, other vocab size, missing or truncated shard, too small for a window", async () => {
  const { dir } = await prepared();
  const index = readIndex(dir);
  throws(() => readIndex(dir, 50304), userError(/vocab_size: shards have a vocabulary of 50257/));
  const text = await Deno.readTextFile(`${dir}/index.json`);
  await Deno.writeTextFile(
    `${dir}/index.json`,
    text.replace(`"tokenizer": "gpt2"`, `"tokenizer": "cl100k"`),
  );
  throws(() => readIndex(dir), userError(/tokenizer: shards were made with "cl100k"/));
  await Deno.writeTextFile(`${dir}/index.json`, text);
  throws(
    () => createShardLoaders(dir, index, { ...split, contextLength: 4096 }),
    userError(/corpus too small: the train split has no window of 4097 tokens/),
  );
  const shard = `${dir}/${index.splits.train.shards[1].file}`;
  const bytes = await Deno.readFile(shard);
  await Deno.writeFile(shard, bytes.subarray(0, 100));
  throws(() => createShardLoaders(dir, index, split), userError(/truncated shard \(100 bytes/));
  await Deno.remove(shard);
  throws(() => createShardLoaders(dir, index, split), userError(/missing shard/));
});

Deno.test("config: data.shard_tokens is checked in one line naming the key", async () => {
  await rejects(
    loadExperiment("experiments/corpus-small.yaml", ["data.shard_tokens=64"]),
    userError(
      /^--set data\.shard_tokens=64: data\.shard_tokens: 64 tokens per shard leave no window of 65/,
    ),
  );
  await rejects(
    loadExperiment("experiments/corpus-small.yaml", ["data.shard_tokens=0"]),
    userError(/data\.shard_tokens: 0 is not a positive integer/),
  );
});

Deno.test("an interrupted prepare (killed mid-way) leaves no index and no shard a later run would read", async () => {
  const tmp = tempDir();
  await Deno.mkdir(`${tmp}/c`);
  for (let i = 0; i < 4; i++) {
    await Deno.writeTextFile(`${tmp}/c/big-${i}.txt`, generatedText(i, 60_000));
  }
  // 1,000 small files make the index a few hundred KB, more than a pipe holds (64 KB) plus what the test's one read
  // takes (64 KB): a prepare whose index write goes into the FIFO stays blocked in it until killed.
  await Deno.mkdir(`${tmp}/c/small`);
  for (let i = 0; i < 1000; i++) {
    await Deno.writeTextFile(`${tmp}/c/small/s-${i}.txt`, generatedText(100 + i, 20));
  }
  // The kill comes at a moment of the prepare's own progress, drawn in advance: once its k-th shard is in place
  // (k = 1 to 3 of about 15), or in the middle of writing the index. A FIFO at the index's temporary path, made by
  // the shell before it execs the prepare (same pid), holds the index write until the test reads it: the prepare
  // cannot finish before it is killed, however fast the machine.
  const fifo = `${tmp}/s/index.json.tmp-`;
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      'mkdir -p "${1%/*}" && mkfifo "$1$$" && echo ready && shift && exec "$@"',
      "sh",
      fifo,
      Deno.execPath(),
      ...taskArgs("prepare", [
        "experiments/corpus-small.yaml",
        "--set",
        `data.path=${tmp}/c`,
        "--set",
        `data.shards=${tmp}/s`,
        "--set",
        "data.shard_tokens=20000",
      ]),
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assertEquals((await stdout.read()).value?.trim(), "ready");
  const drained = (async () => {
    while (!(await stdout.read()).done) { /* the prepare's own prints */ }
  })();
  const shards = 1 + Math.floor(Math.random() * 4); // 4: the index
  let pipe: Deno.FsFile | null = null, exited = false;
  child.status.then(() => exited = true);
  if (shards === 4) {
    pipe = await readFromFifo(`${fifo}${child.pid}`, child, 1, () => "prepare ended");
  } else {
    for (let waited = 0;; waited += 20) {
      const names = await Array.fromAsync(Deno.readDir(`${tmp}/s`));
      if (names.filter((e) => e.name.endsWith(".bin")).length >= shards) break;
      ok(!exited, `prepare ended before its shard ${shards}`);
      ok(waited < 300_000, `no ${shards} shards after 5 minutes`); // a hang guard, not a speed test
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  child.kill("SIGKILL");
  assertEquals((await child.status).signal, "SIGKILL");
  await drained;
  pipe?.close();
  await Deno.remove(`${fifo}${child.pid}`); // the test's FIFO (a prepare removes only files it could have left)
  throws(() => readIndex(`${tmp}/s`), userError(/no shard index; run deno task prepare first/));
  // A later prepare finishes and removes what the killed one left.
  const r = await prepareCorpus(`${tmp}/c`, {
    shardDir: `${tmp}/s`,
    seed: 1,
    trainRatio: 0.5,
    shardTokens: 50000,
    ...quiet,
  });
  const names = [...Deno.readDirSync(`${tmp}/s`)].map((e) => e.name).sort();
  const named = [
    "index.json",
    ...r.index.splits.train.shards.map((x) => x.file),
    ...r.index.splits.val.shards.map((x) => x.file),
  ];
  assertEquals(names, named.sort());
  createShardLoaders(`${tmp}/s`, r.index, split);
  const indexBytes = (await Deno.stat(`${tmp}/s/index.json`)).size;
  ok(indexBytes > 3 * 65536, `the index (${indexBytes} bytes) must not fit in a pipe and one read`);
});

Deno.test("deno task prepare: bad input is one line and exit 2; a good corpus prepares", async () => {
  const tmp = tempDir();
  await buildCorpus(`${tmp}/c`);
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: taskArgs("prepare", args),
    }).output();
    const dec = (b: Uint8Array) => new TextDecoder().decode(b);
    return { code: out.code, stdout: dec(out.stdout), stderr: dec(out.stderr) };
  };
  const bad = await run("experiments/corpus-small.yaml", "--set", `data.path=${tmp}/c/*.md`);
  assertEquals(bad.code, 2);
  assertEquals(bad.stderr.trim().split("\n").length, 1, bad.stderr);
  ok(bad.stderr.includes("no file matches"), bad.stderr);
  const good = await run(
    "experiments/corpus-small.yaml",
    "--set",
    `data.path=${tmp}/c`,
    "--set",
    `data.shards=${tmp}/s`,
  );
  assertEquals(good.code, 0, good.stderr);
  ok(good.stdout.includes("12 files tokenized"), good.stdout);
  const again = await run(
    "experiments/corpus-small.yaml",
    "--set",
    `data.path=${tmp}/c`,
    "--set",
    `data.shards=${tmp}/s`,
  );
  ok(again.stdout.includes("up to date"), again.stdout);
});
