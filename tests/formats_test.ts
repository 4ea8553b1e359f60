/**
 * Corpus formats written by independent tools, not by this project: Parquet by DuckDB (zstd and snappy, several row
 * groups), `.gz` by gzip, `.zst` by the zstd CLI, nanoGPT's `.bin` by NumPy. Each prepares to the token ids that
 * js-tiktoken gives for the same texts (and that the same texts give as a `.txt` file), trains, and bad input is one
 * line, exit 2, nothing written.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { prepareCorpus, type PrepareOptions } from "../lib/data/corpus.ts";
import { dataSourceKind, defaultShardDir } from "../lib/data/source.ts";
import { documentDraw } from "../lib/data/documents.ts";
import { UserError } from "../lib/errors.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { readStream, type ShardIndex } from "../lib/data/shards.ts";
import { textToTokenIds } from "../lib/data/tokenizer.ts";
import { generatedText, ignoredBecause, taskArgs, tempDir, TINY_RUN } from "./_helpers.ts";
import { duckParquet } from "./_duckdb.ts";

const EOT = "<|endoftext|>";
const quiet = { print: () => {}, progress: false };

/** 5000 short documents (DuckDB's row groups hold at least 2048 rows): prose, JSON's escapes, Unicode, blank lines. */
const DOCS = Array.from(
  { length: 5000 },
  (_, i) =>
    i % 97 === 5
      ? `Quote "${i}" and back\\slash\ttab, café 日本語 🙂\n\nnext paragraph.`
      : generatedText(i + 1, 8 + (i % 23)).trimEnd(),
);

async function sh(cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

async function has(cmd: string, ...args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}
// `from numpy import …`: an empty numpy directory (a namespace package) passes a bare `import numpy`.
const NUMPY = await has("/usr/bin/python3", "-c", "from numpy import frombuffer");
/** gzip and the zstd CLI (Debian's zstd package): the tests that compress with them are ignored without. */
const CLIS = await has("gzip", "--version") && await has("zstd", "--version");
const needsNumpy = ignoredBecause(
  NUMPY ? null : "no /usr/bin/python3 with NumPy here (apt-get install python3-numpy)",
);
const needsClis = ignoredBecause(
  CLIS ? null : "no gzip and zstd CLIs here (apt-get install gzip zstd)",
);

/** The corpus files: `docs.jsonl` (JSON.stringify per line) and `docs.txt` (documents joined by <|endoftext|>). */
async function writeSources(dir: string) {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    `${dir}/docs.jsonl`,
    DOCS.map((d, i) => JSON.stringify({ id: i, text: d })).join("\n") + "\n",
  );
  await Deno.writeTextFile(`${dir}/docs.txt`, DOCS.map((d) => d + EOT).join(""));
}

/** What each split should hold: the documents drawn into it, each tokenized by js-tiktoken, with <|endoftext|>. */
function expectedStreams(stem: string, seed: number, ratio: number) {
  const out = { train: [] as number[], val: [] as number[] };
  DOCS.forEach((d, n) => {
    const split = documentDraw(`${stem}#${n}`, seed) < ratio ? "train" : "val";
    for (const id of textToTokenIds(d + EOT)) out[split].push(id);
  });
  return out;
}

const streams = (dir: string, index: ShardIndex) => ({
  train: Array.from(readStream(dir, index, "train", 0, index.splits.train.tokens)),
  val: Array.from(readStream(dir, index, "val", 0, index.splits.val.tokens)),
});

const opts = (shardDir: string, more: Partial<PrepareOptions> = {}): PrepareOptions => ({
  shardDir,
  seed: 123,
  trainRatio: 0.8,
  shardTokens: 20_000,
  ...quiet,
  ...more,
});

const userError = (re: RegExp) => (e: unknown) => {
  ok(e instanceof UserError, String(e));
  ok(re.test(e.message), e.message);
  ok(!e.message.includes("\n"), "one line");
  return true;
};

Deno.test({
  name:
    "Parquet (DuckDB, zstd and snappy, several row groups), .jsonl.gz (gzip), .jsonl.zst and .txt.zst (zstd): " +
    `the ids js-tiktoken gives the same texts, and those of the same texts in a .txt${needsClis}`,
  ignore: !CLIS,
}, async () => {
  const tmp = tempDir();
  await writeSources(`${tmp}/src`);
  const expected = expectedStreams("docs", 123, 0.8);
  ok(expected.val.length > 0 && expected.train.length > 4 * expected.val.length / 2);
  const fromTxt = await prepareCorpus(`${tmp}/src/*.txt`, {
    ...opts(`${tmp}/txt.shards`),
    splitOnEot: true,
  });
  const txt = streams(`${tmp}/txt.shards`, fromTxt.index);
  assertEquals(txt, expected);
  for (const [codec, name] of [["zstd", "zstd.parquet"], ["snappy", "snappy.parquet"]] as const) {
    await Deno.mkdir(`${tmp}/${codec}`);
    const groups = await duckParquet(
      `${tmp}/src/docs.jsonl`,
      `${tmp}/${codec}/docs.parquet`,
      codec,
    );
    ok(groups >= 2, `${name}: ${groups} row groups`);
    const r = await prepareCorpus(`${tmp}/${codec}`, opts(`${tmp}/${codec}.shards`));
    assertEquals(streams(`${tmp}/${codec}.shards`, r.index), expected, name);
    assertEquals(r.index.sources.filter((s) => s.split === "train").length, groups);
  }
  await Deno.mkdir(`${tmp}/gz`), await Deno.mkdir(`${tmp}/zst`);
  await sh("sh", "-c", `gzip -c ${tmp}/src/docs.jsonl > ${tmp}/gz/docs.jsonl.gz`);
  await sh("zstd", "-q", `${tmp}/src/docs.jsonl`, "-o", `${tmp}/zst/docs.jsonl.zst`);
  await sh("zstd", "-q", "-19", `${tmp}/src/docs.txt`, "-o", `${tmp}/zst/other.txt.zst`);
  for (const f of ["gz", "zst"]) {
    const r = await prepareCorpus(`${tmp}/${f}/*.jsonl.*`, opts(`${tmp}/${f}.shards`));
    assertEquals(streams(`${tmp}/${f}.shards`, r.index), expected, f);
  }
  // One compressed file is a corpus of its own, its shards beside it.
  assertEquals(dataSourceKind(`${tmp}/gz/docs.jsonl.gz`), "corpus");
  assertEquals(defaultShardDir(`${tmp}/gz/docs.jsonl.gz`), `${tmp}/gz/docs.shards`);
  const one = await prepareCorpus(`${tmp}/gz/docs.jsonl.gz`, opts(`${tmp}/gz/docs.shards`));
  assertEquals(streams(`${tmp}/gz/docs.shards`, one.index), expected);
  const zst = await prepareCorpus(`${tmp}/zst/*.txt.zst`, {
    ...opts(`${tmp}/txtzst.shards`),
    splitOnEot: true,
  });
  assertEquals(streams(`${tmp}/txtzst.shards`, zst.index), expectedStreams("other", 123, 0.8));
});

Deno.test("Parquet re-prepare: unchanged row groups are copied, not tokenized again", async () => {
  const tmp = tempDir();
  await writeSources(`${tmp}/src`);
  await Deno.mkdir(`${tmp}/p`);
  ok(await duckParquet(`${tmp}/src/docs.jsonl`, `${tmp}/p/docs.parquet`, "zstd", 4096) === 2);
  const first = await prepareCorpus(`${tmp}/p`, opts(`${tmp}/s`));
  assertEquals([first.tokenized, first.reusedParts], [1, 0]);
  assertEquals((await prepareCorpus(`${tmp}/p`, opts(`${tmp}/s`))).upToDate, true);
  // The same rows and one more row group: the first two are byte-identical column chunks.
  ok(await duckParquet(`${tmp}/src/docs.jsonl`, `${tmp}/p/docs.parquet`, "zstd") === 3);
  const again = await prepareCorpus(`${tmp}/p`, opts(`${tmp}/s`));
  assertEquals([again.upToDate, again.tokenized], [false, 1]);
  assertEquals(again.reusedParts, 2); // row groups copied from the previous shards
  assertEquals(streams(`${tmp}/s`, again.index), expectedStreams("docs", 123, 0.8));
});

Deno.test({
  name:
    `nanoGPT train.bin + val.bin written by NumPy: read as they are, their own split${needsNumpy}`,
  ignore: !NUMPY,
}, async () => {
  const tmp = tempDir();
  const train = DOCS.slice(0, 300).flatMap((d) => textToTokenIds(d + EOT));
  const val = DOCS.slice(300, 400).flatMap((d) => textToTokenIds(d + EOT));
  await Deno.writeTextFile(`${tmp}/ids.json`, JSON.stringify({ train, val }));
  await Deno.mkdir(`${tmp}/owt`);
  await sh(
    "/usr/bin/python3",
    "-c",
    "import json, numpy as np, sys; d = json.load(open(sys.argv[1]))\n" +
      "for k in ('train', 'val'): np.array(d[k], dtype=np.uint16).tofile(f'{sys.argv[2]}/{k}.bin')",
    `${tmp}/ids.json`,
    `${tmp}/owt`,
  );
  const r = await prepareCorpus(`${tmp}/owt`, opts(`${tmp}/s`));
  assertEquals(streams(`${tmp}/s`, r.index), { train, val });
  assertEquals([r.index.splits.train.documents, r.index.splits.val.documents], [1, 1]);
  const cfg = await loadExperiment("experiments/corpus-small.yaml", [
    ...TINY_RUN,
    `data.path=${tmp}/owt`,
    `data.shards=${tmp}/s`,
    "training.epochs=1",
    "training.eval_freq=2",
    "training.eval_iter=1",
    "name=owt",
  ]);
  const run = await runTraining(cfg, { ...quiet, checkpointsDir: `${tmp}/ck`, stopAfterSteps: 4 });
  assertEquals(run.state.step, 4);
  ok(readRunLog(`${tmp}/ck/owt/log.jsonl`).evals.every((e) => Number.isFinite(e.val_loss)));
});

Deno.test("split_on_eot and strip_gutenberg: TinyStories' separators and Project Gutenberg's licence", async () => {
  const tmp = tempDir();
  await Deno.mkdir(`${tmp}/g`);
  const book = "It is a truth universally acknowledged, that a single man.\n\nChapter 2\n";
  const header =
    "The Project Gutenberg eBook of Pride and Prejudice\n\nThis ebook is for the use of anyone.\n" +
    "*** START OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***\n";
  const footer =
    "*** END OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***\n\nUpdated editions will " +
    "replace the previous one.\n";
  await Deno.writeTextFile(`${tmp}/g/austen.txt`, header + book + footer);
  await Deno.writeTextFile(`${tmp}/g/plain.txt`, "No markers here, kept whole.\n");
  const r = await prepareCorpus(`${tmp}/g`, { ...opts(`${tmp}/s`), stripGutenberg: true });
  assertEquals(r.gutenberg, 1);
  const byPath = Object.fromEntries(r.index.sources.map((s) => [s.path, s]));
  const austen = byPath[`${tmp}/g/austen.txt`];
  assertEquals(
    Array.from(readStream(`${tmp}/s`, r.index, austen.split, austen.offset, austen.tokens)),
    textToTokenIds(book + EOT),
  );
  const plain = byPath[`${tmp}/g/plain.txt`];
  assertEquals(plain.tokens, textToTokenIds("No markers here, kept whole.\n" + EOT).length);
  // Without split_on_eot a TinyStories file is one document, all in one split; with it, stories are drawn.
  await Deno.mkdir(`${tmp}/t`);
  await Deno.writeTextFile(`${tmp}/t/stories.txt`, DOCS.slice(0, 50).join(`${EOT}\n`));
  const whole = prepareCorpus(`${tmp}/t`, opts(`${tmp}/t1`));
  await rejects(whole, userError(/no val documents among 1 usable/));
  const split = await prepareCorpus(`${tmp}/t`, { ...opts(`${tmp}/t2`), splitOnEot: true });
  assertEquals(split.index.splits.train.documents + split.index.splits.val.documents, 50);
});

Deno.test(
  `a mixed corpus (Parquet, .jsonl.gz, .txt.zst) trains streaming from its shards${needsClis}`,
  {
    ignore: !CLIS,
  },
  async () => {
    const tmp = tempDir();
    await writeSources(`${tmp}/src`);
    await Deno.mkdir(`${tmp}/mix`);
    await duckParquet(`${tmp}/src/docs.jsonl`, `${tmp}/mix/a.parquet`, "snappy", 2500);
    await sh("sh", "-c", `head -n 700 ${tmp}/src/docs.jsonl | gzip > ${tmp}/mix/b.jsonl.gz`);
    await sh("zstd", "-q", `${tmp}/src/docs.txt`, "-o", `${tmp}/mix/c.txt.zst`);
    const cfg = await loadExperiment("experiments/corpus-small.yaml", [
      ...TINY_RUN,
      `data.path=${tmp}/mix`,
      `data.shards=${tmp}/mix.shards`,
      "data.split_on_eot=true",
      "training.epochs=1",
      "training.eval_freq=4",
      "training.eval_iter=2",
      "name=mix",
    ]);
    const r = await runTraining(cfg, { ...quiet, checkpointsDir: `${tmp}/ck`, stopAfterSteps: 8 });
    assertEquals(r.state.step, 8);
    const evals = readRunLog(`${tmp}/ck/mix/log.jsonl`).evals;
    ok(evals.length >= 2 && evals.every((e) => Number.isFinite(e.val_loss)), JSON.stringify(evals));
    const losses = evals.map((e) => Number(e.train_loss));
    ok(losses.at(-1)! < losses[0], `it learns: ${losses}`);
    const meta = readRunLog(`${tmp}/ck/mix/log.jsonl`);
    ok(JSON.stringify(meta).includes(`${tmp}/mix.shards`), "streamed from the shards");
  },
);

/** Runs `deno task prepare` on the corpus-small experiment with `data.path` (and more `--set`s). */
async function prepareTask(path: string, shards: string, ...sets: string[]) {
  const args = [
    "experiments/corpus-small.yaml",
    "--set",
    `data.path=${path}`,
    "--set",
    `data.shards=${shards}`,
  ];
  for (const s of sets) args.push("--set", s);
  const out = await new Deno.Command(Deno.execPath(), { args: taskArgs("prepare", args) }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  return { code: out.code, stderr };
}

Deno.test({
  name: `bad input: one line naming file (and line or column), exit 2, nothing written${needsClis}`,
  ignore: !CLIS,
}, async () => {
  const tmp = tempDir();
  await writeSources(`${tmp}/src`);
  const bad: [string, string, RegExp][] = [];
  const put = async (name: string, text: string | Uint8Array, re: RegExp) => {
    await Deno.mkdir(`${tmp}/${name}`);
    const file = `${tmp}/${name}/${name.replace(/^\w+-/, "")}`;
    if (typeof text === "string") await Deno.writeTextFile(file, text);
    else await Deno.writeFile(file, text);
    bad.push([name, `${tmp}/${name}`, re]);
  };
  await put("array-x.jsonl", `{"text": "fine"}\n\n[1, 2]\n`, /x\.jsonl:3: not a JSON object/);
  await put(
    "field-y.jsonl",
    `{"text": "fine"}\n{"body": "no text"}\n`,
    /y\.jsonl:2: data\.text_field: no field "text" \(fields: body\)/,
  );
  const gz = await new Deno.Command("gzip", {
    args: ["-c", `${tmp}/src/docs.jsonl`],
    stdout: "piped",
  }).output();
  await put(
    "gz-z.jsonl.gz",
    gz.stdout.subarray(0, gz.stdout.length >> 1),
    /z\.jsonl\.gz: truncated or corrupt gz/,
  );
  const zst = await new Deno.Command("zstd", {
    args: ["-c", `${tmp}/src/docs.txt`],
    stdout: "piped",
  }).output();
  await put(
    "zst-w.txt.zst",
    zst.stdout.subarray(0, zst.stdout.length - 100),
    /w\.txt\.zst: truncated or corrupt zst/,
  );
  await Deno.mkdir(`${tmp}/pq`);
  await duckParquet(`${tmp}/src/docs.jsonl`, `${tmp}/pq/docs.parquet`, "zstd", 10);
  bad.push([
    "parquet column",
    `${tmp}/pq`,
    /docs\.parquet: data\.text_field: no column "body" \(columns: id, text\)/,
  ]);
  for (const [name, path, re] of bad) {
    const sets = name === "parquet column" ? ["data.text_field=body"] : [];
    const r = await prepareTask(path, `${tmp}/out-${name}`, ...sets);
    assertEquals(r.code, 2, `${name}: ${r.stderr}`);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    ok(re.test(r.stderr), `${name}: ${r.stderr}`);
    ok(!(await Deno.stat(`${tmp}/out-${name}`).catch(() => null)), `${name}: nothing written`);
  }
  // A bad file added to a prepared corpus leaves its index and shards as they were.
  await Deno.mkdir(`${tmp}/ok`);
  await Deno.copyFile(`${tmp}/src/docs.jsonl`, `${tmp}/ok/docs.jsonl`);
  await prepareCorpus(`${tmp}/ok`, opts(`${tmp}/ok.shards`));
  const before = [...Deno.readDirSync(`${tmp}/ok.shards`)].map((e) => e.name).sort();
  const index = await Deno.readTextFile(`${tmp}/ok.shards/index.json`);
  await Deno.writeTextFile(`${tmp}/ok/zz.jsonl`, `{"text": "fine"}\n"just a string"\n`);
  await rejects(
    prepareCorpus(`${tmp}/ok`, opts(`${tmp}/ok.shards`)),
    userError(/zz\.jsonl:2: not a JSON object/),
  );
  assertEquals([...Deno.readDirSync(`${tmp}/ok.shards`)].map((e) => e.name).sort(), before);
  assertEquals(await Deno.readTextFile(`${tmp}/ok.shards/index.json`), index);
});

Deno.test({
  name: `bad nanoGPT .bin (NumPy): an odd size, an id outside GPT-2's vocabulary${needsNumpy}`,
  ignore: !NUMPY,
}, async () => {
  const tmp = tempDir();
  const py = (code: string) => sh("/usr/bin/python3", "-c", `import numpy as np\n${code}`);
  await Deno.mkdir(`${tmp}/odd`), await Deno.mkdir(`${tmp}/big`);
  await py(
    `np.arange(1000, dtype=np.uint16).tofile('${tmp}/odd/train.bin')\n` +
      `open('${tmp}/odd/val.bin', 'wb').write(np.arange(10, dtype=np.uint16).tobytes() + b'\\0')`,
  );
  await py(
    `np.arange(1000, dtype=np.uint16).tofile('${tmp}/big/val.bin')\n` +
      `np.array([5, 6, 50257, 7], dtype=np.uint16).tofile('${tmp}/big/train.bin')`,
  );
  for (
    const [dir, re] of [["odd", /val\.bin: 21 bytes, an odd size/], [
      "big",
      /train\.bin: token 2 is id 50257, outside the vocabulary of 50257/,
    ]] as const
  ) {
    const r = await prepareTask(`${tmp}/${dir}`, `${tmp}/out-${dir}`);
    assertEquals(r.code, 2, r.stderr);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    ok(re.test(r.stderr), r.stderr);
    ok(!(await Deno.stat(`${tmp}/out-${dir}`).catch(() => null)), `${dir}: nothing written`);
  }
});
