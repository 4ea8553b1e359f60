/**
 * Hand-off of a corpus run by reference: a corpus of text, JSON Lines and Parquet files prepared into shards, trained
 * here into epoch 1, handed off (handoff.json names the shards by path and index hash; no batches are written), and
 * continued on 2 gloo ranks by train_ddp.py, whose window log (a SHA-256 per rank and micro-batch, and per
 * evaluation batch) must equal our loaders' batches at the same positions; the run then comes back and resumes
 * here. Then `--bring-shards`, and train_ddp.py's refusals of shards that are not the hand-off's (another index, a
 * missing shard, a truncated one): one line, exit 2, nothing trained, nothing deleted.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { type Config, loadExperiment } from "../lib/config.ts";
import type { Batch, BatchLoader } from "../lib/data/data.ts";
import { handoffRun } from "../lib/runs/handoff.ts";
import { prepareData, runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import {
  buildCorpus,
  ensureVerdict,
  generatedText,
  ignoredBecause,
  NO_TORCH,
  taskArgs,
  tempDir,
} from "./_helpers.ts";
import { assertRanksOk, ddp, HAS_TORCH_DDP } from "./_ddp.ts";
import { duckParquet } from "./_duckdb.ts";
import { UserError } from "../lib/errors.ts";

const WHY = ignoredBecause(HAS_TORCH_DDP ? null : NO_TORCH);
const quiet = { print: () => {}, progress: false };
const WORLD = 2, B = 16, K = 2;

/** Text files (The Verdict in parts, generated prose), a JSON Lines file and a Parquet file (by DuckDB). */
async function mixedFormats(dir: string): Promise<void> {
  await buildCorpus(dir);
  const docs = Array.from({ length: 40 }, (_, i) => generatedText(100 + i, 30 + i));
  await Deno.writeTextFile(
    `${dir}/notes.jsonl`,
    docs.slice(0, 20).map((text, id) => JSON.stringify({ id, text })).join("\n") + "\n",
  );
  const src = `${dir}.parquet-src.jsonl`;
  await Deno.writeTextFile(
    src,
    docs.slice(20).map((text, id) => JSON.stringify({ id, text })).join("\n") + "\n",
  );
  await duckParquet(src, `${dir}/pages.parquet`, "zstd", 20);
  await Deno.remove(src);
}

async function config(root: string, name: string, epochs: number): Promise<Config> {
  return await loadExperiment("experiments/corpus-small.yaml", [
    `data.path=${root}/corpus`,
    "data.shards=null",
    "data.shard_tokens=1500",
    "data.shuffle_shards=2",
    `data.batch_size=${B}`,
    "model.context_length=32",
    "model.emb_dim=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.drop_rate=0",
    `training.grad_accum_steps=${K}`,
    "training.eval_freq=2",
    "training.eval_iter=2",
    `name=${name}`,
    `training.epochs=${epochs}`,
  ]);
}

/** SHA-256 of rows [from, to) of a batch: inputs then targets as little-endian uint16 (gpt_loader.py's checksum). */
function checksum(b: Batch, from: number, to: number): string {
  const T = b.maxLength;
  const h = createHash("sha256");
  for (const ids of [b.inputs, b.targets]) {
    h.update(new Uint8Array(Uint16Array.from(ids.subarray(from * T, to * T)).buffer));
  }
  return h.digest("hex");
}

type WindowLine = { epoch?: number; batch?: number; eval?: string; index?: number; sha256: string };
const readLog = (path: string): WindowLine[] =>
  Deno.readTextFileSync(path).trim().split("\n").map((l) => JSON.parse(l));

/**
 * Every micro-batch each rank trained on, from the hand-off's position to the end of `epochs`, and every
 * evaluation batch of rank 0: the same windows as our loaders' at that position (each rank its rows).
 */
function checkWindows(
  logs: WindowLine[][],
  train: BatchLoader,
  evals: { train: Batch[]; val: Batch[] },
  from: { epoch: number; batch: number },
  epochs: number,
) {
  const used = Math.floor(train.length / K) * K, per = B / WORLD;
  let compared = 0;
  for (const [r, log] of logs.entries()) {
    const got = log.filter((l) => l.eval === undefined);
    const want: WindowLine[] = [];
    for (let e = from.epoch; e < epochs; e++) {
      let i = e === from.epoch ? from.batch : 0;
      for (const b of train.batches(e, i)) {
        if (i >= used) break;
        want.push({ epoch: e, batch: i++, sha256: checksum(b, r * per, (r + 1) * per) });
      }
    }
    assertEquals(got, want, `rank ${r}: windows differ from our loader's`);
    compared += got.length;
  }
  const evalLines = logs[0].filter((l) => l.eval !== undefined);
  const wantEval = (["train", "val"] as const).flatMap((name) =>
    evals[name].map((b, index) => ({ eval: name, index, sha256: checksum(b, 0, b.batchSize) }))
  );
  assertEquals(evalLines, wantEval, "evaluation batches differ from our loaders'");
  return compared;
}

Deno.test({
  name:
    `handoff of a corpus (text, JSON Lines, Parquet) by reference: 2 gloo ranks train exactly our loader's windows ` +
    `from the checkpoint's position, evaluate on our evaluation batches, and the run resumes here${WHY}`,
  ignore: !HAS_TORCH_DDP,
  async fn() {
    const root = tempDir(), dir = `${root}/checkpoints`;
    await mixedFormats(`${root}/corpus`);
    // 3 steps into epoch 1 here; the rest of epoch 1 and epoch 2 on the ranks.
    const here = await runTraining(await config(root, "c", 1), {
      ...quiet,
      checkpointsDir: dir,
      stopAfterSteps: 3,
    });
    assertEquals(here.state.batch, 3 * K);
    const out = `${dir}/c.ddp`;
    const manifest = await handoffRun(await config(root, "c", 2), out, {
      ...quiet,
      checkpointsDir: dir,
    });
    assertEquals(manifest.data.kind, "shards");
    assertEquals(manifest.data.dir, await Deno.realPath(`${root}/corpus.shards`));
    const files = (await Array.fromAsync(Deno.readDir(out))).map((e) => e.name).sort();
    assertEquals(files, ["checkpoint.safetensors", "handoff.json", "launch.sh", "log.jsonl"]);

    const ranks = await ddp(out, WORLD, ["--window-log", `${root}/windows`]);
    assertRanksOk(ranks);
    const data = await prepareData(await config(root, "c", 2), quiet);
    const evals = {
      train: [...data.trainLoader.ordered(2)],
      val: [...data.valLoader.ordered(2)],
    };
    ok(
      evals.train.length === 2 && data.trainLoader.length > 2,
      "eval batches spread over the split",
    );
    const logs = [0, 1].map((r) => readLog(`${root}/windows.${r}`));
    const n = checkWindows(logs, data.trainLoader, evals, here.state, 2);
    ok(n > 2 * data.trainLoader.length, `${n} micro-batch slices compared`);
    const moved = readRunLog(`${out}/log.jsonl`).evals.filter((e) => Number(e.step) > 3);
    ok(moved.length > 0);
    for (const e of moved) {
      const rec = e as unknown as Record<string, number[]>;
      assertEquals(rec.rank_tokens_per_s.length, WORLD);
      ok(rec.peak_mem_bytes.every((b) => b > 10e6), JSON.stringify(rec.peak_mem_bytes));
    }

    const back = await runTraining(await config(root, "c.ddp", 3), {
      ...quiet,
      checkpointsDir: dir,
      resume: true,
    });
    assertEquals([back.status, back.state.epoch], ["finished", 3]);
    assertEquals(back.state.step, 3 * Math.floor(data.trainLoader.length / K));
    const ckpt = await loadCheckpoint(`${out}/checkpoint.safetensors`);
    assertEquals(ckpt.meta.data?.fingerprint, data.fingerprint);
  },
});

/** Every file under `dir` (recursively) with its size and SHA-256. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) Object.assign(out, await snapshot(path));
    else {
      const bytes = await Deno.readFile(path);
      out[path] = `${bytes.length} ${createHash("sha256").update(bytes).digest("hex")}`;
    }
  }
  return out;
}

Deno.test({
  name:
    `handoff --bring-shards copies the shards into the hand-off (a later hand-off replaces it); train_ddp.py ` +
    `trains from the copy alone, and refuses another index, a missing shard or a truncated one: one line, exit 2, ` +
    `nothing trained, nothing deleted${WHY}`,
  ignore: !HAS_TORCH_DDP,
  async fn() {
    const root = tempDir(), dir = `${root}/checkpoints`, out = `${root}/moved`;
    await mixedFormats(`${root}/corpus`);
    await runTraining(await config(root, "c", 1), {
      ...quiet,
      checkpointsDir: dir,
      stopAfterSteps: 1,
    });
    const opts = { ...quiet, checkpointsDir: dir, bringShards: true };
    await handoffRun(await config(root, "c", 2), out, opts);
    const manifest = await handoffRun(await config(root, "c", 2), out, opts); // replaces the first
    assertEquals(manifest.data.dir, "shards");
    const shards = `${root}/corpus.shards`;
    const names = (d: string) => Array.from(Deno.readDirSync(d)).map((e) => e.name).sort();
    assertEquals(names(`${out}/shards`), names(shards));
    assertEquals(
      Deno.readFileSync(`${out}/shards/index.json`),
      Deno.readFileSync(`${shards}/index.json`),
    );
    await Deno.rename(shards, `${root}/elsewhere`); // the copy alone must do

    const index = JSON.parse(Deno.readTextFileSync(`${out}/shards/index.json`));
    const [train, val] = [index.splits.train.shards[1].file, index.splits.val.shards[0].file]
      .map((f: string) => `${out}/shards/${f}`);
    const before = await snapshot(out);
    const cases: [string, RegExp, () => Promise<void>, () => Promise<void>][] = [
      ["another index", /index\.json: index hash \w+… is not the hand-off's/, async () => {
        await Deno.writeTextFile(`${out}/shards/index.json`, "\n", { append: true });
      }, async () => {
        const text = Deno.readTextFileSync(`${out}/shards/index.json`);
        await Deno.writeTextFile(`${out}/shards/index.json`, text.slice(0, -1));
      }],
      ["a missing shard", /: missing shard \(named in the hand-off's index\)/, async () => {
        await Deno.rename(val, `${root}/aside.bin`);
      }, async () => {
        await Deno.rename(`${root}/aside.bin`, val);
      }],
      ["a truncated shard", /: shard shorter than its index says/, async () => {
        await Deno.copyFile(train, `${root}/whole.bin`);
        await Deno.truncate(train, Deno.statSync(train).size - 2);
      }, async () => {
        await Deno.rename(`${root}/whole.bin`, train);
      }],
    ];
    for (const [what, message, breakIt, restore] of cases) {
      await breakIt();
      const [r] = await ddp(out, 1);
      assertEquals([r.code, r.stderr.trim().split("\n").length], [2, 1], `${what}: ${r.stderr}`);
      ok(message.test(r.stderr), `${what}: ${r.stderr}`);
      await restore();
      assertEquals(await snapshot(out), before, `${what}: the hand-off changed`);
    }
    const [ok1] = await ddp(out, 1, ["--max-steps", "1"]);
    assertEquals(ok1.code, 0, ok1.stderr);
    const log = readRunLog(`${out}/log.jsonl`);
    assertEquals(log.headers.at(-1)!.engine, "torch-ddp");
  },
});

Deno.test("handoff of a data.sources mixture: one line naming the key, exit 2, nothing written", async () => {
  const root = tempDir();
  await Deno.writeTextFile(`${root}/z.txt`, "zebra quagga ".repeat(400));
  await ensureVerdict();
  const cfg = await loadExperiment("experiments/verdict-small.yaml", [
    `data.sources=[{path: data/the-verdict.txt, weight: 0.7}, {path: ${root}/z.txt, weight: 0.3}]`,
    "name=mix",
  ]);
  const o = new Deno.Command(Deno.execPath(), {
    args: taskArgs("handoff", [
      "experiments/verdict-small.yaml",
      "--set",
      `data.sources=[{path: data/the-verdict.txt, weight: 0.7}, {path: ${root}/z.txt, weight: 0.3}]`,
      "--set",
      "name=mix",
      "--out",
      `${root}/out`,
    ]),
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  const err = new TextDecoder().decode(o.stderr).trim();
  assertEquals([o.code, err.split("\n").length], [2, 1], err);
  ok(/data\.sources: a weighted mixture cannot be handed off/.test(err), err);
  ok(!(await Deno.stat(`${root}/out`).then(() => true, () => false)), "nothing written");
  await rejects(handoffRun(cfg, `${root}/out2`, quiet), UserError);
});
