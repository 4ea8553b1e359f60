/**
 * `deno task eval <experiment.yaml> [--num-batches n] [--json] [--init] [--checkpoint best|last|path] [--no-report]`:
 * train/val loss and perplexity of the experiment's checkpoint (or, with --init, of the seeded untrained model),
 * and, for a checkpoint, checkpoints/<name>/report.md + report.json + loss.svg.
 */
import { initBackend, usePrecision } from "../lib/backends/backend.ts";
import { resolveSources } from "../lib/data/source.ts";
import { flagOverride, loadExperiment } from "../lib/config.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { countOf } from "../lib/progress.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { loadModel } from "../lib/train/load.ts";
import { checkMemoryFits, checkTokenizerFits } from "../lib/train/preflight.ts";
import { choiceLine, evaluateLoaders, sampleTexts, writeReport } from "../lib/views/report.ts";
import { readChoiceItems, scoreChoices } from "../lib/train/multiple_choice.ts";
import { prepareData } from "../lib/runs/run.ts";

/** Batches of each split that eval reads from a corpus by default: a fixed, comparable sample. */
const CORPUS_EVAL_BATCHES = 50;

const USAGE = `usage: deno task eval <experiment.yaml> [options]

Evaluates the experiment's latest checkpoint on its train and val loaders and writes checkpoints/<name>/report.md,
report.json (with three samples) and loss.svg.

options:
  --num-batches n    n batches of each split: the first n of one text file (the book's calc_loss_loader),
                     n spread evenly over a corpus's split (default: all for one text file,
                     ${CORPUS_EVAL_BATCHES} for a corpus)
  --json             print the figures as one JSON line
  --init             evaluate the seeded untrained model (training.seed) instead of a checkpoint;
                     writes no report (there is no run to report on)
  --checkpoint c     evaluate this checkpoint: best (training.keep_best), last (the default), or a file
  --multiple-choice f  also score a JSONL of HellaSwag-form items (ctx, endings, label): acc and acc_norm
                     (default: training.multiple_choice)
  --no-report        do not write report.md / report.json / loss.svg
  --set key=value    override a config key (repeatable); --backend name as --set backend=name,
                     --precision fp32|bf16-mixed as --set precision=…
  -h, --help         show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("eval", USAGE, {
    "num-batches": { type: "string" },
    json: { type: "boolean", default: false },
    init: { type: "boolean", default: false },
    checkpoint: { type: "string" },
    "no-report": { type: "boolean", default: false },
    "multiple-choice": { type: "string" },
    set: { type: "string", multiple: true, default: [] },
    backend: { type: "string" },
    precision: { type: "string" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UserError(`eval: expected one experiment file (see --help)`);
  }
  let numBatches: number | undefined;
  if (values["num-batches"] !== undefined) {
    numBatches = Number(values["num-batches"]);
    if (!Number.isInteger(numBatches) || numBatches < 1) {
      throw new UserError(
        `eval: --num-batches ${values["num-batches"]}: expected a positive integer`,
      );
    }
  }
  if (values.init && values.checkpoint) {
    throw new UserError("eval: --init and --checkpoint exclude each other");
  }
  const overrides = [...(values.set ?? [])];
  if (values.backend) overrides.push(flagOverride("backend", "backend", values.backend));
  if (values.precision) overrides.push(flagOverride("precision", "precision", values.precision));
  const cfg = await loadExperiment(positionals[0], overrides);
  const sources = resolveSources(cfg);
  checkTokenizerFits(cfg, sources); // prompts and data are GPT-2 token ids
  checkMemoryFits(cfg, "eval");
  const backend = await initBackend(cfg.backend);
  const { model, source } = await loadModel(cfg, {
    init: values.init,
    checkpoint: values.checkpoint,
  });
  const precision = usePrecision(cfg.precision, backend.name, [...model.params.values()]);
  const data = await prepareData(cfg, {}, sources);
  if (numBatches === undefined && !cfg.data.sources && sources[0].kind !== "text") {
    numBatches = CORPUS_EVAL_BATCHES;
  }
  const mcPath = values["multiple-choice"] ?? cfg.training.multiple_choice;
  const items = mcPath ? await readChoiceItems(mcPath) : null;
  const figures = {
    ...await evaluateLoaders(model, data, source, numBatches),
    precision,
    ...(items && { multiple_choice: { path: mcPath!, ...await scoreChoices(model, items) } }),
  };
  if (values.json) console.log(JSON.stringify(figures));
  else {
    console.log(`${cfg.name}: ${source} on ${backend.name}`);
    console.log(`precision: ${precision}`);
    console.log(
      `Training loss: ${figures.train_loss.toFixed(5)} (perplexity ${
        figures.train_perplexity.toFixed(1)
      }; ${countOf(figures.batches.train, "batch")}, ${figures.tokens.train} tokens)`,
    );
    console.log(
      `Validation loss: ${figures.val_loss.toFixed(5)} (perplexity ${
        figures.val_perplexity.toFixed(1)
      }; ${countOf(figures.batches.val, "batch")}, ${figures.tokens.val} tokens)`,
    );
    if (figures.multiple_choice) console.log(choiceLine(figures.multiple_choice));
  }
  // The untrained model has no run to report on: --init only prints (and leaves checkpoints/<name>/ alone).
  if (!values["no-report"] && !values.init) {
    const written = await writeReport(
      `checkpoints/${cfg.name}`,
      cfg,
      model.numParams(),
      figures,
      await sampleTexts(model, cfg),
    );
    for (const w of written.warnings) console.error(`warning: ${w}`);
    const files = [written.md, written.json, ...(written.svg ? [written.svg] : [])];
    if (!values.json) console.log(`wrote ${files.join(", ")}`);
  }
  model.dispose();
});
