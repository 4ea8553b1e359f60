/**
 * Evaluating a checkpoint (section 5.1) and writing its report: train and val loss over the loaders, perplexity,
 * the run's curves from its JSONL log (the book's figure 5.12 as SVG) and samples with the experiment's decoding
 * settings, as checkpoints/<name>/report.md + report.json + loss.svg.
 */
import type { Config } from "../config.ts";
import type { VerdictData } from "../data/data.ts";
import { generateCached } from "../model/kvcache.ts";
import { UserError } from "../errors.ts";
import { calcLossLoader, perplexity } from "../train/loss.ts";
import type { GPTModel } from "../model/model.ts";
import { lineChartSVG } from "./plot.ts";
import { TorchGenerator } from "../model/rng.ts";
import { readRunLog, type RunLogData } from "../runs/runlog.ts";
import { diffConfigs, runConfig } from "./compare.ts";
import { countOf } from "../progress.ts";
import type { ChoiceScores } from "../train/multiple_choice.ts";
import { lossBySource } from "../train/train.ts";
import { textToTokenIds, tokenIdsToText } from "../data/tokenizer.ts";

/** The figures `deno task eval --json` prints. */
export interface EvalFigures {
  train_loss: number;
  val_loss: number;
  train_perplexity: number;
  val_perplexity: number;
  batches: { train: number; val: number };
  tokens: { train: number; val: number };
  source: string;
  precision?: string; // how eval's products ran ("fp32", "bf16-mixed (…)"); absent in reports written before
  /** Multiple-choice scores (--multiple-choice, training.multiple_choice): the items' file, acc, acc_norm. */
  multiple_choice?: ChoiceScores & { path: string };
  /** data.sources: each source's own val loss over the same number of batches. */
  val_loss_by_source?: Record<string, number>;
}

/** The report's line of multiple-choice scores. */
export function choiceLine(mc: ChoiceScores & { path: string }): string {
  return `Multiple choice (${mc.path}, ${countOf(mc.items, "item")}): acc ${mc.acc.toFixed(3)}, ` +
    `acc_norm ${
      mc.acc_norm.toFixed(3)
    } (the ending of lowest summed loss, and of lowest loss per token)`;
}

/** Mean loss over `numBatches` batches of each loader (all when omitted), and their perplexities. */
export async function evaluateLoaders(
  model: GPTModel,
  data: VerdictData,
  source: string,
  numBatches?: number,
): Promise<EvalFigures> {
  const nTrain = Math.min(numBatches ?? data.trainLoader.length, data.trainLoader.length);
  const nVal = Math.min(numBatches ?? data.valLoader.length, data.valLoader.length);
  const trainLoss = await calcLossLoader(model, data.trainLoader, nTrain);
  const valLoss = await calcLossLoader(model, data.valLoader, nVal);
  const tokensOf = (loader: typeof data.trainLoader, n: number) => {
    let t = 0;
    for (const b of loader.ordered(n)) t += b.inputs.length;
    return t;
  };
  const bySource = data.valBySource ? await lossBySource(model, data.valBySource, nVal) : null;
  return {
    ...(bySource && { val_loss_by_source: bySource }),
    train_loss: trainLoss,
    val_loss: valLoss,
    train_perplexity: perplexity(trainLoss),
    val_perplexity: perplexity(valLoss),
    batches: { train: nTrain, val: nVal },
    tokens: { train: tokensOf(data.trainLoader, nTrain), val: tokensOf(data.valLoader, nVal) },
    source,
  };
}

/** `count` samples of the experiment's start context with its sampling settings, seeded like the book. */
export async function sampleTexts(model: GPTModel, cfg: Config, count = 3): Promise<string[]> {
  const rng = new TorchGenerator(cfg.training.seed);
  const prompt = textToTokenIds(cfg.training.start_context);
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    out.push(tokenIdsToText(
      await generateCached(model, prompt, {
        maxNewTokens: cfg.sampling.max_new_tokens,
        temperature: cfg.sampling.temperature,
        topK: cfg.sampling.top_k,
        eosId: cfg.sampling.eos_id,
        rng,
      }),
    ));
  }
  return out;
}

/**
 * Where epochs end on the tokens-seen axis, from the log's `epoch` lines (every epoch sees the same tokens): ticks
 * 0, 1, 2, … up to the last eval; only 0 while the first epoch is still running.
 */
export function epochTicks(log: RunLogData): [number, string][] {
  const maxTokens = Math.max(...log.evals.map((e) => Number(e.tokens_seen)));
  const end = log.lines.find((l) => l.type === "epoch" && Number(l.epoch) > 0);
  const perEpoch = end ? Number(end.tokens_seen) / Number(end.epoch) : NaN;
  if (!(perEpoch > 0)) return [[0, "0"]];
  const ticks: [number, string][] = [];
  for (let k = 0; k * perEpoch <= maxTokens * (1 + 1e-9); k++) {
    ticks.push([k * perEpoch, String(k)]);
  }
  return ticks;
}

/** The book's figure 5.12: train and val loss against tokens seen, epochs on the top axis; null with no evals. */
export function lossCurveSVG(log: RunLogData, name: string): string | null {
  if (log.evals.length === 0) return null;
  const pts = (k: string) =>
    log.evals.map((e) => [Number(e.tokens_seen), Number(e[k])] as [number, number]);
  return lineChartSVG({
    title: `${name}: training and validation loss`,
    xLabel: "Tokens seen",
    yLabel: "Loss",
    series: [
      { label: "Training loss", points: pts("train_loss") },
      { label: "Validation loss", points: pts("val_loss"), dash: true },
    ],
    secondaryX: { label: "Epochs", ticks: epochTicks(log) },
  });
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

/** A sample as a fenced text block: tokens like `<|endoftext|>`, `*` or `|` stay literal in Markdown. */
function fenced(text: string): string {
  const longest = Math.max(2, ...(text.match(/`+/g) ?? []).map((r) => r.length));
  const fence = "`".repeat(longest + 1);
  return `${fence}text\n${text}\n${fence}\n`;
}

const f3 = (x: unknown) => typeof x === "number" && Number.isFinite(x) ? x.toFixed(3) : "–";

/** The run's log if there is one (none: evaluated without training, e.g. --init), with its warnings. */
function readLogOf(runDir: string): { log: RunLogData | null; warnings: string[] } {
  let log: RunLogData | null = null;
  const warnings: string[] = [];
  try {
    log = readRunLog(`${runDir}/log.jsonl`);
    warnings.push(...log.warnings);
  } catch (err) { // no log: evaluated without training (e.g. --init)
    if (!(err as Error).message.endsWith("no such run log")) warnings.push((err as Error).message);
  }
  return { log, warnings };
}

/** A config key's value in a nested record (`training.lr`). */
function valueAt(cfg: unknown, key: string): unknown {
  return key.split(".").reduce<unknown>((o, k) => (o as Record<string, unknown>)?.[k], cfg);
}

/**
 * The settings a report describes: the run's own, from its log's last header (what it trained with, whatever the
 * YAML says now), else the experiment's; and the keys where the experiment given to eval differs from the run's.
 */
export function reportSettings(cfg: Config, log: RunLogData | null): {
  config: Config;
  from: "run log header" | "experiment";
  differs: Record<string, { run: unknown; eval: unknown }>;
} {
  const own = log ? runConfig(log) : null;
  if (!own || !["model", "data", "training"].every((k) => own[k] && typeof own[k] === "object")) {
    return { config: cfg, from: "experiment", differs: {} };
  }
  const differs = Object.fromEntries(
    diffConfigs([own, cfg]).map((k) => [k, { run: valueAt(own, k), eval: valueAt(cfg, k) }]),
  );
  return { config: own as unknown as Config, from: "run log header", differs };
}

/** report.json's record: the run's settings, the evaluation's figures, the log's final and best losses, samples. */
function reportJson(
  cfg: Config,
  params: number,
  figures: EvalFigures,
  samples: string[],
  log: RunLogData | null,
) {
  const evals = log?.evals ?? [];
  const best = (k: string) => evals.length ? Math.min(...evals.map((e) => Number(e[k]))) : null;
  const settings = reportSettings(cfg, log);
  return {
    experiment: cfg.name,
    status: log?.status ?? "no run log",
    params,
    config: settings.config,
    config_from: settings.from,
    eval_config_differs: settings.differs,
    eval: figures,
    log: log
      ? {
        steps: Number(evals.at(-1)?.step ?? 0),
        tokens_seen: Number(evals.at(-1)?.tokens_seen ?? 0),
        final_train_loss: evals.at(-1)?.train_loss ?? null,
        final_val_loss: evals.at(-1)?.val_loss ?? null,
        best_train_loss: best("train_loss"),
        best_val_loss: best("val_loss"),
      }
      : null,
    samples,
    written_at: new Date().toISOString(),
  };
}

/** report.md: the model, data and training in a paragraph, the losses in a table, the curve, the samples. */
function reportMarkdown(
  cfg: Config,
  params: number,
  figures: EvalFigures,
  samples: string[],
  json: ReturnType<typeof reportJson>,
  curve: { svg: boolean; log: boolean },
): string {
  const run = json.config, m = run.model;
  const differs = Object.entries(json.eval_config_differs).map(([k, v]) =>
    `${k} ${JSON.stringify(v.eval)} (the run: ${JSON.stringify(v.run)})`
  );
  return [
    `# ${cfg.name}`,
    "",
    `Model: ${countOf(m.n_layers, "layer")} × ${countOf(m.n_heads, "head")}, emb ${m.emb_dim}, ` +
    `context ${m.context_length}, ` +
    `vocab ${m.vocab_size}, dropout ${m.drop_rate}, qkv bias ${m.qkv_bias}; ${
      params.toLocaleString("en-US")
    } ` +
    `parameters. Data: ${run.data.path}, train ratio ${run.data.train_ratio}, batch ${run.data.batch_size}. ` +
    `Training: ${
      countOf(run.training.epochs, "epoch")
    }, lr ${run.training.lr}, weight decay ${run.training.weight_decay}, ` +
    `seed ${run.training.seed}. Settings from the ${json.config_from}.`,
    ...(differs.length
      ? [
        "",
        `This evaluation ran with the experiment as given to eval, which differs: ${
          differs.join(", ")
        }.`,
      ]
      : []),
    "",
    `Weights: ${figures.source}. Run status: ${json.status}.`,
    "",
    "| | train | val |",
    "| --- | --- | --- |",
    `| loss (this evaluation) | ${f3(figures.train_loss)} | ${f3(figures.val_loss)} |`,
    `| perplexity | ${figures.train_perplexity.toFixed(1)} | ${
      figures.val_perplexity.toFixed(1)
    } |`,
    `| batches (tokens) | ${figures.batches.train} (${figures.tokens.train}) | ${figures.batches.val} ` +
    `(${figures.tokens.val}) |`,
    ...(figures.val_loss_by_source
      ? [
        "",
        `Val loss by source: ${
          Object.entries(figures.val_loss_by_source).map(([k, v]) => `${k} ${f3(v)}`).join(", ")
        }.`,
      ]
      : []),
    ...(figures.multiple_choice ? ["", choiceLine(figures.multiple_choice)] : []),
    ...(json.log
      ? [
        `| final loss in the log (step ${json.log.steps}) | ${f3(json.log.final_train_loss)} | ` +
        `${f3(json.log.final_val_loss)} |`,
        `| best loss in the log | ${f3(json.log.best_train_loss)} | ${
          f3(json.log.best_val_loss)
        } |`,
      ]
      : []),
    "",
    curve.svg
      ? "![Training and validation loss](loss.svg)"
      : `No loss curve: ${
        curve.log ? "the run log has no evaluations yet" : "this experiment has no run log"
      }.`,
    "",
    `## Samples (temperature ${cfg.sampling.temperature}, top-k ${cfg.sampling.top_k ?? "none"}, ` +
    `${cfg.sampling.max_new_tokens} new tokens, seed ${cfg.training.seed})`,
    "",
    ...samples.map(fenced),
  ].join("\n");
}

/**
 * Writes report.md, report.json and loss.svg into `runDir`. Reads the run's log as it is (a run still in progress
 * or a truncated last line is fine); without a log the report says there is no curve.
 */
export async function writeReport(
  runDir: string,
  cfg: Config,
  params: number,
  figures: EvalFigures,
  samples: string[],
): Promise<{ md: string; json: string; svg: string | null; warnings: string[] }> {
  try {
    await Deno.mkdir(runDir, { recursive: true });
  } catch (err) {
    throw new UserError(
      `${runDir}: cannot create the report's directory (${(err as Error).message})`,
    );
  }
  const { log, warnings } = readLogOf(runDir);
  const svg = log ? lossCurveSVG(log, cfg.name) : null;
  const svgPath = svg ? `${runDir}/loss.svg` : null;
  if (svg && svgPath) {
    try {
      await writeAtomic(svgPath, svg);
    } catch (err) {
      throw new UserError(`${svgPath}: cannot write the loss curve (${(err as Error).message})`);
    }
  }
  const json = reportJson(cfg, params, figures, samples, log);
  const md = reportMarkdown(cfg, params, figures, samples, json, {
    svg: Boolean(svg),
    log: log !== null,
  });
  try {
    await writeAtomic(`${runDir}/report.json`, JSON.stringify(json, null, 2) + "\n");
    await writeAtomic(`${runDir}/report.md`, md);
  } catch (err) {
    throw new UserError(`${runDir}: cannot write the report (${(err as Error).message})`);
  }
  return {
    md: `${runDir}/report.md`,
    json: `${runDir}/report.json`,
    svg: svgPath,
    warnings,
  };
}
