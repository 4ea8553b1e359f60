/** Evaluation and reports (section 5.1) on a short real run, and the sample/eval CLI error lines. */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { initBackend } from "../lib/backend.ts";
import { loadExperiment } from "../lib/config.ts";
import { loadModel } from "../lib/load.ts";
import { perplexity } from "../lib/loss.ts";
import { evaluateLoaders, sampleTexts, writeReport } from "../lib/report.ts";
import { prepareData, runTraining } from "../lib/run.ts";
import { ensureVerdict } from "./_helpers.ts";

const TINY = ["model.context_length=32", "model.emb_dim=32", "model.n_heads=2", "model.n_layers=1"];

Deno.test("perplexity is exp(loss)", () => {
  assertEquals(perplexity(0), 1);
  ok(Math.abs(perplexity(Math.log(50257)) - 50257) < 1e-6);
});

Deno.test("eval of a trained run: losses over the whole loaders and a report with both curves", async () => {
  await ensureVerdict();
  const dir = await Deno.makeTempDir();
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
  const fig = evaluateLoaders(model, data, source);
  assertEquals(fig.batches, { train: data.trainLoader.length, val: data.valLoader.length });
  ok(fig.train_loss < 10.5 && Math.abs(fig.val_perplexity - Math.exp(fig.val_loss)) < 1e-9);
  const out = await writeReport(
    `${dir}/ev`,
    cfg,
    model.numParams(),
    fig,
    sampleTexts(model, cfg, 2),
  );
  const svg = await Deno.readTextFile(out.svg!);
  assertEquals((svg.match(/<path /g) ?? []).length, 2);
  ok(svg.includes("Validation loss") && svg.includes("Epochs"));
  const md = await Deno.readTextFile(out.md);
  ok(md.includes("![Training and validation loss](loss.svg)") && md.includes("## Samples"));
  const json = JSON.parse(await Deno.readTextFile(out.json));
  assertEquals(json.status, "finished");
  assertEquals(json.samples.length, 2);
  model.dispose();
});

function cli(task: string, ...args: string[]) {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `tasks/${task}.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  return { code: out.code, err: new TextDecoder().decode(out.stderr).trim().split("\n") };
}

Deno.test("sample/eval without a checkpoint: one error line, exit 2", () => {
  for (const task of ["sample", "eval"]) {
    const r = cli(task, "experiments/verdict-small.yaml", "--set", "name=no-such-run-xyz");
    assertEquals(r.code, 2, r.err.join("\n"));
    assertEquals(r.err.length, 1, r.err.join("\n"));
    ok(r.err[0].includes("no checkpoint yet") && r.err[0].includes("--init"), r.err[0]);
  }
  const bad = cli("sample", "experiments/verdict-small.yaml", "--top-k", "x");
  assertEquals(bad.code, 2);
});

Deno.test("an experiment initialised from GPT-2 weights evaluates without a checkpoint (the fixture's full-loader losses)", async () => {
  await ensureVerdict();
  const fixtures = new URL("../../shared/fixtures/", import.meta.url);
  const fx = JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", fixtures)));
  const dir = await Deno.makeTempDir();
  const yaml = `${dir}/tiny-gpt2.yaml`;
  const m = fx.config;
  await Deno.writeTextFile(
    yaml,
    `init: {from: gpt2, weights: ${new URL("gpt2-tiny.safetensors", fixtures).pathname}}\n` +
      `model: {vocab_size: ${m.vocab_size}, context_length: ${m.context_length}, emb_dim: ${m.emb_dim}, ` +
      `n_heads: ${m.n_heads}, n_layers: ${m.n_layers}, drop_rate: 0, qkv_bias: true}\n` +
      `data: {batch_size: 2}\n`,
  );
  const cfg = await loadExperiment(yaml);
  await initBackend(cfg.backend);
  const { model, source } = await loadModel(cfg, { checkpointsDir: dir });
  ok(source.startsWith("GPT-2 weights"), source);
  ok(model.tiedHead);
  const fig = evaluateLoaders(model, await prepareData(cfg), source);
  assertEquals(fig.batches, { train: 72, val: 8 });
  ok(Math.abs(fig.train_loss - 10.910931) < 1e-4, String(fig.train_loss));
  ok(Math.abs(fig.val_loss - 10.843242) < 1e-4, String(fig.val_loss));
  model.dispose();
});
