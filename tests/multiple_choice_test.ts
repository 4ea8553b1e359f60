/**
 * Multiple-choice scoring (HellaSwag's form, llm.c's method) on the shared tiny GPT-2 against a PyTorch replica of
 * the same scoring (tests/fixtures_gen/multiple_choice.py): the same per-ending losses to 1e-5, the same picks;
 * and a bad items file is one line naming the file, the line and the cause.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import type { ModelConfig } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { GPTModel } from "../lib/model/model.ts";
import { readChoiceItems, scoreChoices, scoreItem } from "../lib/train/multiple_choice.ts";
import { loadHFGPT2 } from "../lib/weights/gpt2.ts";
import { ensureVerdict, fixturesDir, tempDir } from "./_helpers.ts";
import { loadExperiment } from "../lib/config.ts";
import { compareSVG, formatTable, summarizeRun } from "../lib/views/compare.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { loadModel } from "../lib/train/load.ts";

/** verdict-small shortened: 13 steps, one evaluation at the last (step 13). */
const SHORT = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "data.batch_size=4",
  "data.train_ratio=0.35",
  "training.epochs=1",
  "training.eval_freq=13",
  "backend=cpu",
];

const FIXTURES = fixturesDir();
const cfg: ModelConfig =
  JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES))).config;
const weights = new URL("gpt2-tiny.safetensors", FIXTURES).pathname;
const ITEMS = new URL("./fixtures/multiple-choice.jsonl", import.meta.url).pathname;
const torchFx = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/multiple-choice-torch.json", import.meta.url)),
);

Deno.test("multiple choice on gpt2-tiny: PyTorch's per-ending losses to 1e-5, its picks, acc and acc_norm", async () => {
  await initBackend("cpu");
  const model = new GPTModel(cfg, await loadHFGPT2(weights, cfg, { tieHead: "omit" }));
  try {
    const items = await readChoiceItems(ITEMS);
    assertEquals(items.length, torchFx.items.length);
    ok(
      items.some((it) => it.ctx.length > 4 * cfg.context_length),
      "an item longer than the window",
    );
    for (const [i, item] of items.entries()) {
      const got = await scoreItem(model, item), want = torchFx.items[i];
      for (const k of ["sumLoss", "meanLoss"] as const) {
        const w = want[k === "sumLoss" ? "sum_loss" : "mean_loss"] as number[];
        got[k].forEach((v, e) =>
          ok(
            Math.abs(v - w[e]) <= 1e-5 * Math.max(1, Math.abs(w[e])),
            `item ${i} ending ${e} ${k}: ${v} vs ${w[e]}`,
          )
        );
      }
      assertEquals([got.pick, got.pickNorm], [want.pick, want.pick_norm], `item ${i}`);
    }
    assertEquals(await scoreChoices(model, items), {
      items: items.length,
      acc: torchFx.acc,
      acc_norm: torchFx.acc_norm,
    });
  } finally {
    model.dispose();
  }
});

Deno.test("a bad multiple-choice file is one line naming the file, the line and the cause", async () => {
  const dir = tempDir();
  const cases: [string, RegExp][] = [
    ['{"ctx": "a", "endings": ["b", "c"], "label": 0}\nnot json\n', /:2: not a JSON object/],
    ['{"endings": ["b", "c"], "label": 0}\n', /:1: ctx: expected a string/],
    ['{"ctx": "a", "endings": ["b"], "label": 0}\n', /:1: endings: expected two or more/],
    [
      '{"ctx": "a", "endings": ["b", "c"], "label": 2}\n',
      /:1: label: 2 is not an index of the 2 endings/,
    ],
    ["\n\n", /no multiple-choice items/],
  ];
  for (const [i, [text, why]] of cases.entries()) {
    const path = `${dir}/items${i}.jsonl`;
    await Deno.writeTextFile(path, text);
    await rejects(
      readChoiceItems(path),
      (e: Error) => e instanceof UserError && e.message.startsWith(path) && why.test(e.message),
    );
  }
  await rejects(
    readChoiceItems(`${dir}/missing.jsonl`),
    /missing\.jsonl: cannot read .*no such file/,
  );
});

Deno.test("training.multiple_choice scores every evaluation into the log; compare and eval show the scores", async () => {
  await ensureVerdict();
  const dir = tempDir();
  const cfg = await loadExperiment("experiments/verdict-small.yaml", [
    ...SHORT,
    `training.multiple_choice=${ITEMS}`,
    "name=scored",
  ]);
  const lines: string[] = [];
  await runTraining(cfg, { print: (l) => lines.push(l), progress: false, checkpointsDir: dir });
  const log = readRunLog(`${dir}/scored/log.jsonl`);
  const last = log.evals.at(-1)!;
  assertEquals([log.evals.length, last.step, last.mc_items], [1, 13, 6]);
  ok(lines.some((l) => l.startsWith("  multiple choice: acc ")), lines.join("\n"));
  // The evaluation at the last step scored the weights the epoch's checkpoint holds.
  const { model } = await loadModel(cfg, { checkpointsDir: dir });
  const want = await scoreChoices(model, await readChoiceItems(ITEMS));
  model.dispose();
  assertEquals([last.mc_acc, last.mc_acc_norm], [want.acc, want.acc_norm]);
  const row = summarizeRun(log);
  assertEquals([row.mc_acc, row.mc_acc_norm], [want.acc, want.acc_norm]);
  ok(formatTable([row]).split("\n")[0].includes("acc_norm"));
  // compare --out draws them below the losses: two charts stacked in one SVG
  const svg = compareSVG([log], [row]);
  assertEquals(svg.match(/<svg /g)?.length, 3);
  ok(
    svg.includes("Multiple choice: acc and acc_norm") &&
      svg.indexOf("loss") < svg.indexOf("Multiple choice"),
  );

  const bad = `${dir}/bad.jsonl`;
  await Deno.writeTextFile(bad, '{"ctx": "a", "endings": ["b", "c"], "label": 5}\n');
  const refused = await loadExperiment("experiments/verdict-small.yaml", [
    ...SHORT,
    `training.multiple_choice=${bad}`,
    "name=refused",
  ]);
  await rejects(
    runTraining(refused, { print: () => {}, progress: false, checkpointsDir: dir }),
    (e: Error) => e instanceof UserError && e.message.startsWith(`${bad}:1: label: 5`),
  );
  ok(!(await Deno.stat(`${dir}/refused`).then(() => true, () => false)), "nothing written");
});
