/** Evaluation and reports (section 5.1) on a short real run, and the sample/eval command lines. */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { generate } from "../lib/model/generate.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { loadModel } from "../lib/train/load.ts";
import { perplexity } from "../lib/train/loss.ts";
import { GPTModel } from "../lib/model/model.ts";
import { epochTicks, evaluateLoaders, sampleTexts, writeReport } from "../lib/views/report.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { prepareData, runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { textToTokenIds, tokenIdsToText } from "../lib/data/tokenizer.ts";
import { ensureVerdict, taskArgs, tempDir } from "./_helpers.ts";
import { calcLossLoader } from "../lib/train/loss.ts";
import { createLoaders } from "../lib/data/data.ts";
import { loadHFGPT2 } from "../lib/weights/gpt2.ts";

const TINY = ["model.context_length=32", "model.emb_dim=32", "model.n_heads=2", "model.n_layers=1"];
const TINY_YAML = "model: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\n" +
  "sampling: {max_new_tokens: 6}\nbackend: tfjs-cpu\n";

/** Checks that `xml` is well-formed enough: every tag closed in order, attributes quoted, no bare `&` or `<`. */
function assertWellFormed(xml: string): void {
  const stack: string[] = [];
  const text = xml.replace(/<\?xml[^>]*\?>/, "");
  for (const m of text.matchAll(/<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g)) {
    if (m[1]) assertEquals(stack.pop(), m[2], `</${m[2]}> closes another element`);
    else if (!m[4]) stack.push(m[2]);
  }
  assertEquals(stack, [], "unclosed elements");
  const stripped = text.replace(/<\/?[A-Za-z][\w:-]*(?:\s+[\w:-]+="[^"<]*")*\s*\/?>/g, "");
  ok(!/[<>]/.test(stripped), "a stray < or > outside tags");
  ok(!/&(?!(?:amp|lt|gt|quot|apos|#\d+);)/.test(stripped), "a bare &");
  ok(text.trimStart().startsWith("<svg") && text.trimEnd().endsWith("</svg>"));
}

Deno.test("perplexity is exp(loss)", () => {
  assertEquals(perplexity(0), 1);
  ok(Math.abs(perplexity(Math.log(50257)) - 50257) < 1e-6);
});

const FIXTURES = new URL("../../shared/fixtures/", import.meta.url);
/** PyTorch's whole-loader losses of gpt2-tiny (tests/fixtures_gen/gpt2_tiny.py). */
const torchFx = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/gpt2-tiny-torch.json", import.meta.url)),
);

Deno.test("whole-loader losses of gpt2-tiny equal PyTorch's calc_loss_loader to 1e-5 (batch 3: a short last val batch)", async () => {
  await initBackend("cpu"); // pinned: OpenBLAS, or the WebAssembly GEMM where it is missing
  const cfg = torchFx.config;
  const model = new GPTModel(
    cfg,
    await loadHFGPT2(new URL("gpt2-tiny.safetensors", FIXTURES).pathname, cfg, { tieHead: "omit" }),
  );
  const text = await Deno.readTextFile(await ensureVerdict());
  for (const [bs, want] of Object.entries(torchFx.loader_losses)) {
    const data = createLoaders(text, {
      trainRatio: 0.9,
      batchSize: Number(bs),
      contextLength: 32,
      stride: 32,
      seed: 123,
    });
    // Batch 3 has the same train windows as batch 2 (48 batches of 3, 72 of 2): its val loader only.
    for (const part of bs === "2" ? ["train", "val"] as const : ["val"] as const) {
      // deno-lint-ignore no-explicit-any
      const w = (want as any)[part];
      const loader = part === "train" ? data.trainLoader : data.valLoader;
      assertEquals(loader.length, w.batches, `batch ${bs} ${part} batches`);
      const loss = await calcLossLoader(model, loader);
      ok(
        Math.abs(loss - w.loss) <= 1e-5,
        `batch ${bs} ${part} loss: ${loss} vs PyTorch's ${w.loss}`,
      );
    }
  }
  model.dispose();
});

Deno.test("eval of a trained run: whole-loader losses, a report with both curves, a truncated log, another config", async () => {
  await ensureVerdict();
  const dir = tempDir();
  const cfg = await loadExperiment("experiments/verdict-small.yaml", [
    ...TINY,
    "data.batch_size=16",
    "training.epochs=2",
    "training.eval_freq=2",
    "name=ev",
  ]);
  await runTraining(cfg, { checkpointsDir: dir, print: () => {}, progress: false });
  await initBackend(cfg.backend);
  const data = await prepareData(cfg);
  const { model, source } = await loadModel(cfg, { checkpointsDir: dir });
  ok(source.includes("(step "), source);
  const fig = await evaluateLoaders(model, data, source);
  assertEquals(fig.batches, { train: data.trainLoader.length, val: data.valLoader.length });
  ok(fig.train_loss < 10.5, String(fig.train_loss)); // trained below ln(50257) = 10.8
  ok(Math.abs(fig.val_perplexity - Math.exp(fig.val_loss)) < 1e-9);
  const two = await evaluateLoaders(model, data, source, 2);
  assertEquals(two.batches, { train: 2, val: Math.min(2, data.valLoader.length) });
  assertEquals(two.tokens.train, 2 * 16 * 32);

  const samples = await sampleTexts(model, cfg, 2);
  assertEquals(await sampleTexts(model, cfg, 2), samples); // seeded: same texts again
  ok(samples.every((s) => s.startsWith(cfg.training.start_context)));
  const out = await writeReport(`${dir}/ev`, cfg, model.numParams(), fig, samples);
  assertEquals(out.warnings, []);
  const svg = await Deno.readTextFile(out.svg!);
  assertWellFormed(svg);
  assertEquals((svg.match(/<path /g) ?? []).length, 2); // train and val
  ok(svg.includes("Training loss") && svg.includes("Validation loss") && svg.includes("Epochs"));
  const log = readRunLog(`${dir}/ev/log.jsonl`);
  const perEpoch = data.trainLoader.length * 16 * 32;
  assertEquals(epochTicks(log), [[0, "0"], [perEpoch, "1"], [2 * perEpoch, "2"]]);
  const md = await Deno.readTextFile(out.md);
  ok(md.includes("![Training and validation loss](loss.svg)") && md.includes("## Samples"));
  ok(md.includes(model.numParams().toLocaleString("en-US")) && md.includes("best loss in the log"));
  const json = JSON.parse(await Deno.readTextFile(out.json));
  assertEquals(json.status, "finished");
  assertEquals(json.samples, samples);
  assertEquals(json.eval, fig);
  assertEquals(json.log.best_val_loss, Math.min(...log.evals.map((e) => Number(e.val_loss))));

  // A run being written (a truncated last line): the report reads what is there, with one warning.
  await Deno.writeTextFile(`${dir}/ev/log.jsonl`, '{"type":"eval","epoch":3,"st', { append: true });
  const again = await writeReport(`${dir}/ev`, cfg, model.numParams(), fig, samples);
  assertEquals(again.warnings.length, 1);
  assertEquals(JSON.parse(await Deno.readTextFile(again.json)).log, json.log);
  model.dispose();

  const other = await loadExperiment("experiments/verdict-small.yaml", [
    ...TINY,
    "model.emb_dim=64",
    "name=ev",
  ]);
  await rejects(
    loadModel(other, { checkpointsDir: dir }),
    (e: Error) => e instanceof UserError && /another model config \(model\.emb_dim/.test(e.message),
  );
});

/** Runs a task the way `deno task` does (its permission flags), from `cwd`. */
async function task(name: string, cwd: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: taskArgs(name, args),
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const stderr = dec.decode(out.stderr).trim();
  return { code: out.code, stdout: dec.decode(out.stdout), err: stderr ? stderr.split("\n") : [] };
}

Deno.test("deno task sample/eval: no checkpoint is one line; --init evaluates, streams, crops, seeds", async () => {
  const dir = tempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/x.yaml`, TINY_YAML);

  for (const name of ["sample", "eval"]) {
    const r = await task(name, dir, "x.yaml");
    assertEquals(r.code, 2, r.err.join("\n"));
    assertEquals(r.err, [
      "error: checkpoints/x/checkpoint.safetensors: no checkpoint yet; train first " +
      "(deno task train <experiment>) or pass --init for the initial model",
    ]);
  }
  const bad = await task("sample", dir, "x.yaml", "--top-k", "x");
  assertEquals([bad.code, bad.err.length], [2, 1], bad.err.join("\n"));
  ok(bad.err[0].startsWith("error: sample: --top-k x"), bad.err[0]);
  await rejects(Deno.stat(`${dir}/checkpoints`)); // nothing written

  // eval --init --json: one JSON line, and nothing written (no run to report on).
  const ev = await task("eval", dir, "x.yaml", "--init", "--json", "--num-batches", "1");
  assertEquals(ev.code, 0, ev.err.join("\n"));
  const lines = ev.stdout.trim().split("\n");
  assertEquals(lines.length, 1);
  const fig = JSON.parse(lines[0]);
  assertEquals(Object.keys(fig), [
    "train_loss",
    "val_loss",
    "train_perplexity",
    "val_perplexity",
    "batches",
    "tokens",
    "source",
    "precision",
  ]);
  const perBatch = 2 * 32; // the default batch_size × the YAML's context_length
  assertEquals([fig.batches, fig.tokens], [{ train: 1, val: 1 }, {
    train: perBatch,
    val: perBatch,
  }]);
  ok(Math.abs(fig.train_loss - Math.log(50257)) < 0.5, String(fig.train_loss)); // untrained ≈ ln V
  ok(Math.abs(fig.train_perplexity - Math.exp(fig.train_loss)) < 1e-6 * fig.train_perplexity);
  assertEquals(fig.source, "untrained, seed 123");
  assertEquals(fig.precision, "fp32");
  await rejects(Deno.stat(`${dir}/checkpoints`));

  // sample --init: the streamed text is the decoded output of the book's generate for that seed.
  const cfg = await loadExperiment(`${dir}/x.yaml`);
  await initBackend("tfjs-cpu");
  const model = new GPTModel(cfg.model, initGPTParams(cfg.model, new TorchGenerator(123)));
  const prompt = textToTokenIds("Every effort moves you");
  const o = { maxNewTokens: 6, temperature: 1.4, topK: 25 };
  const rng = new TorchGenerator(7);
  let want = "";
  for (const i of [0, 1]) {
    want += `--- sample ${i + 1}\n${
      tokenIdsToText(await generate(model, prompt, { ...o, rng }))
    }\n`;
  }
  const s7 = await task("sample", dir, "x.yaml", "--init", "--seed", "7", "--num-samples", "2");
  assertEquals(s7.code, 0, s7.err.join("\n"));
  assertEquals(s7.stdout, want);
  const s8 = await task("sample", dir, "x.yaml", "--init", "--seed", "8", "--num-samples", "2");
  ok(s8.stdout !== s7.stdout);

  // A prompt longer than the context is cropped to its last context_length tokens, with a note.
  const long = "I had always thought Jack Gisburn rather a cheap genius. ".repeat(5);
  const ids = textToTokenIds(long).slice(-32);
  const greedy = tokenIdsToText(await generate(model, ids, { maxNewTokens: 4, temperature: 0 }));
  const cr = await task(
    "sample",
    dir,
    "x.yaml",
    "--init",
    "--prompt",
    long,
    "--temperature",
    "0",
    "--max-new-tokens",
    "4",
  );
  assertEquals(cr.code, 0, cr.err.join("\n"));
  ok(cr.err.some((l) => l.includes("keeping its last 32")), cr.err.join("\n"));
  assertEquals(cr.stdout, greedy + "\n");
  model.dispose();
});

Deno.test("issue 28.1: eval, sample and export without training leave checkpoints/<name>/ that train starts in", async () => {
  const dir = tempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/x.yaml`, TINY_YAML);
  const ev = await task("eval", dir, "x.yaml", "--init", "--num-batches", "1");
  assertEquals(ev.code, 0, ev.err.join("\n"));
  ok(ev.stdout.includes("(perplexity") && ev.stdout.includes("; 1 batch,"), ev.stdout);
  const sa = await task("sample", dir, "x.yaml", "--init", "--max-new-tokens", "2");
  assertEquals(sa.code, 0, sa.err.join("\n"));
  const ex = await task("export", dir, "x.yaml", "--init");
  assertEquals(ex.code, 0, ex.err.join("\n"));
  await Deno.stat(`${dir}/checkpoints/x/hf/model.safetensors`);
  // The user's own file in the directory (a report, notes) is not a run either, and stays where it is.
  await Deno.writeTextFile(`${dir}/checkpoints/x/report.md`, "mine\n");

  const cfg = await loadExperiment(`${dir}/x.yaml`, [
    "data.batch_size=16",
    "training.epochs=1",
    "backend=auto", // the YAML's tfjs-cpu backend is slow to train
  ]);
  const lines: string[] = [];
  const r = await runTraining(cfg, {
    checkpointsDir: `${dir}/checkpoints`,
    print: (l) => lines.push(l),
    progress: false,
  });
  ok(r, "trained");
  assertEquals(
    [...Deno.readDirSync(`${dir}/checkpoints`)].map((e) => e.name).filter((n) => n !== "x.lock"),
    ["x"],
    "nothing moved aside",
  );
  ok(lines.some((l) => l.includes("holds no earlier run")), lines.join("\n"));
  assertEquals(await Deno.readTextFile(`${dir}/checkpoints/x/report.md`), "mine\n");
  assertEquals(readRunLog(`${dir}/checkpoints/x/log.jsonl`).status, "finished");
});

Deno.test("issue 28.3: the report shows the run's own settings from its log header and names what eval overrode", async () => {
  await ensureVerdict();
  const dir = tempDir();
  const trained = await loadExperiment("experiments/verdict-small.yaml", [
    ...TINY,
    "data.batch_size=16",
    "training.epochs=1",
    "training.lr=0.005",
    "name=lr",
  ]);
  await runTraining(trained, { checkpointsDir: dir, print: () => {}, progress: false });
  // eval names the run but not its override: the experiment's lr is the YAML's 0.002
  const cfg = await loadExperiment("experiments/verdict-small.yaml", [
    ...TINY,
    "data.batch_size=16",
    "name=lr",
  ]);
  await initBackend(cfg.backend);
  const { model, source } = await loadModel(cfg, { checkpointsDir: dir });
  const fig = await evaluateLoaders(model, await prepareData(cfg), source, 1);
  const out = await writeReport(`${dir}/lr`, cfg, model.numParams(), fig, []);
  model.dispose();
  const md = await Deno.readTextFile(out.md);
  ok(md.includes("Training: 1 epoch, lr 0.005, weight decay 0.1"), md);
  ok(md.includes("training.lr 0.002 (the run: 0.005)"), md);
  const json = JSON.parse(await Deno.readTextFile(out.json));
  assertEquals(json.config.training.lr, 0.005);
  assertEquals(json.config_from, "run log header");
  assertEquals(json.eval_config_differs["training.lr"], { run: 0.005, eval: 0.002 });
});

Deno.test('issue 28.2 and 28.6: sample --prompt "" and a missing --checkpoint are one line each, exit 2', async () => {
  const dir = tempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/x.yaml`, TINY_YAML);
  const empty = await task("sample", dir, "x.yaml", "--init", "--prompt", "");
  assertEquals([empty.code, empty.err.length], [2, 1], empty.err.join("\n"));
  ok(empty.err[0].startsWith('error: sample: --prompt "": empty'), empty.err[0]);
  for (const name of ["sample", "eval", "export"]) {
    const r = await task(name, dir, "x.yaml", "--checkpoint", "checkpoints/nothere.safetensors");
    assertEquals(r.code, 2, r.err.join("\n"));
    assertEquals(r.err, ["error: checkpoints/nothere.safetensors: --checkpoint: no such file"]);
  }
  await rejects(Deno.stat(`${dir}/checkpoints`)); // nothing written
  // Greedy decoding: the header names no top-k or seed, which would change nothing.
  const greedy = await task("sample", dir, "x.yaml", "--init", "--temperature", "0");
  assertEquals(greedy.code, 0, greedy.err.join("\n"));
  assertEquals(greedy.err, ["x: untrained, seed 123; temperature 0 (greedy); precision fp32"]);
});

Deno.test("issue 28.5: eval --help's --num-batches line says which batches each kind of data gives", async () => {
  const r = await task("eval", ".", "--help");
  assertEquals(r.code, 0);
  const help = r.stdout.slice(r.stdout.indexOf("--num-batches"), r.stdout.indexOf("--json"));
  ok(!help.includes("evaluate the first n batches of each loader"), help);
  // one text file: the first n batches in text order (the book's calc_loss_loader)
  ok(/first n of one text file/.test(help), help);
  // a corpus: spread evenly over the split (lib/data/shards.ts ShardLoader.ordered)
  ok(/spread evenly over a corpus/.test(help), help);
});

Deno.test("issue 28.6's sibling: prepare on a data.path that does not exist names it as missing", async () => {
  const dir = tempDir();
  await Deno.writeTextFile(`${dir}/c.yaml`, "data: {path: data/corpus-small}\n");
  const r = await task("prepare", dir, "c.yaml");
  assertEquals(r.code, 2);
  assertEquals(r.err, [
    "error: c.yaml: data.path: data/corpus-small: no such file or directory (prepare takes a directory " +
    "or glob of .txt files)",
  ]);
});

Deno.test("deno task eval --init on the book's seed-123 GPT-124M: the book's 10.98758 / 10.98110", async () => {
  const book = JSON.parse(
    await Deno.readTextFile(new URL("torch-seed123.json", FIXTURES)),
  ).book_losses.book_prints;
  const dir = tempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.copyFile("experiments/verdict.yaml", `${dir}/verdict.yaml`);
  // Pinned to blas (OpenBLAS, or the WebAssembly GEMM where it is missing): the cheapest exact CPU path.
  const ev = await task(
    "eval",
    dir,
    "verdict.yaml",
    "--init",
    "--json",
    "--no-report",
    "--set",
    "backend=cpu",
  );
  assertEquals(ev.code, 0, ev.err.join("\n"));
  const fig = JSON.parse(ev.stdout);
  assertEquals(fig.batches, { train: 9, val: 1 });
  for (const key of ["train_loss", "val_loss"]) {
    assertEquals(
      fig[key].toFixed(5),
      book[key].toFixed(5),
      `${key}: ${fig[key]} vs the book's ${book[key]}`,
    );
  }
  await Deno.remove(dir, { recursive: true });
});
