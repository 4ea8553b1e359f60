/**
 * Model FLOPs utilisation: the FLOPs a token counted from a real model's parameters, the peak measured on the
 * active backend and cached per machine and library, MFU in the run header, the eval lines and `compare`.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { initGPTParams } from "../lib/model/init.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { formatTable, summarizeRun } from "../lib/views/compare.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { flopsPerToken } from "../lib/train/mfu.ts";
import { tempDir, verdictSmall } from "./_helpers.ts";

const SHORT = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=2",
  "data.batch_size=4",
  "data.train_ratio=0.35",
  "training.epochs=1",
  "backend=cpu",
];

const config = (name: string, extra: string[] = []) => verdictSmall(name, [...SHORT, ...extra]);

const dir = tempDir();
const opts = { print: () => {}, progress: false, checkpointsDir: dir };

Deno.test("FLOPs a token: 6 × the initialised model's parameters but its two embeddings, + 12·L·C·T", async () => {
  const cfg = await config("count");
  const params = initGPTParams(cfg.model, new TorchGenerator(1));
  const looked = ["pos_emb.weight", "tok_emb.weight"]; // read by lookups; the untied out_head is a product
  const n = params.filter((p) => !looked.includes(p.name)).reduce((s, p) => s + p.data.length, 0);
  ok(
    looked.every((k) => params.some((p) => p.name === k)) &&
      params.some((p) => p.name === "out_head.weight"),
  );
  const { n_layers: L, emb_dim: C } = cfg.model;
  assertEquals(flopsPerToken(cfg.model, 32), 6 * n + 12 * L * C * 32);
  assertEquals(flopsPerToken(cfg.model, 16), 6 * n + 12 * L * C * 16);
});

Deno.test("a run measures its peak once per machine and library (a cache from before the rename to cpu included), logs MFU, and compare shows it", async () => {
  const cache = `${dir}/peak-flops.json`;
  const saved = Deno.env.get("GPT_PEAK_CACHE");
  Deno.env.set("GPT_PEAK_CACHE", cache);
  try {
    const lines: string[] = [];
    await runTraining(await config("first"), { ...opts, print: (l) => lines.push(l) });
    const log = readRunLog(`${dir}/first/log.jsonl`);
    const h = log.header!;
    const peak = Number(h.peak_flops);
    ok(peak > 0, `peak ${h.peak_flops}`);
    assertEquals(h.flops_per_token, flopsPerToken((await config("first")).model));
    ok(lines.some((l) => l.startsWith("MFU: ") && l.includes("measured now")), lines.join("\n"));
    ok(log.evals.length > 0);
    for (const e of log.evals) {
      const want = Number(e.tokens_per_s) * Number(h.flops_per_token) / peak;
      ok(Math.abs(Number(e.mfu) / want - 1) < 1e-12, `${e.mfu} vs ${want}`);
      ok(Number(e.mfu) > 0 && Number(e.mfu) < 1, `MFU ${e.mfu}`);
    }
    // The cache keeps the best of three runs' measurements, then stands: a figure planted there is the peak.
    const entries = JSON.parse(Deno.readTextFileSync(cache));
    const key = Object.keys(entries).find((k) => k.startsWith(String(h.peak_device)))!;
    assertEquals(entries[key].samples, 1);
    entries[key] = { flops: 1e15, samples: 3 };
    Deno.writeTextFileSync(cache, JSON.stringify(entries));
    lines.length = 0;
    await runTraining(await config("cached"), { ...opts, print: (l) => lines.push(l) });
    const c = readRunLog(`${dir}/cached/log.jsonl`);
    assertEquals(c.header!.peak_flops, 1e15);
    ok(
      lines.some((l) =>
        l.startsWith("MFU: ") && l.includes("over 1000 TFLOP/s") && l.includes("(cached)")
      ),
      lines.join("\n"),
    );

    // A cache written before the cpu backend's rename holds the peak under "(blas)": it still counts.
    if (key.includes(" (cpu) on ")) {
      Deno.writeTextFileSync(
        cache,
        JSON.stringify({ [key.replace(" (cpu) on ", " (blas) on ")]: { flops: 2e15, samples: 3 } }),
      );
      await runTraining(await config("renamed"), { ...opts, print: () => {} });
      assertEquals(readRunLog(`${dir}/renamed/log.jsonl`).header!.peak_flops, 2e15);
    }

    const rows = [summarizeRun(log), summarizeRun(c)];
    assertEquals(rows[0].mfu, Number(log.evals.at(-1)!.mfu));
    const table = formatTable(rows);
    ok(table.split("\n")[0].includes("MFU"), table);
    ok(table.includes(`${(rows[0].mfu! * 100).toFixed(1)}%`), table);
  } finally {
    if (saved === undefined) Deno.env.delete("GPT_PEAK_CACHE");
    else Deno.env.set("GPT_PEAK_CACHE", saved);
  }
});
