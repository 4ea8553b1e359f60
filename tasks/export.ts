/**
 * `deno task export <experiment.yaml> [--out dir] [--checkpoint best|last|path] [--init]`: writes the experiment's latest
 * checkpoint as a Hugging Face GPT-2 model (model.safetensors + config.json) that PyTorch/transformers can load.
 */
import { initBackend } from "../lib/backends/backend.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { loadExperiment } from "../lib/config.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { claimOutput, outputMark } from "../lib/outputs.ts";
import { exportHFGPT2 } from "../lib/weights/gpt2.ts";
import { loadModel } from "../lib/train/load.ts";

/** The file by which export recognizes its own earlier output in a directory a user named. */
const MANIFEST = "gpt-ts-export.json";
const MARK = outputMark("export --out");

const USAGE = `usage: deno task export <experiment.yaml> [options]

Writes <out>/model.safetensors and <out>/config.json in Hugging Face's GPT-2 layout, and <out>/${MANIFEST}
(what it was exported from; how a later export recognizes the directory as its own).

options:
  --out dir          output directory: absent, empty, or an earlier export (default checkpoints/<name>/hf)
  --checkpoint c     export this checkpoint: best (training.keep_best), last (the default), or a file
  --init             export the initial model (seeded init or the configured GPT-2 weights)
  --set key=value    override a config key (repeatable)
  -h, --help         show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("export", USAGE, {
    out: { type: "string" },
    checkpoint: { type: "string" },
    init: { type: "boolean", default: false },
    set: { type: "string", multiple: true, default: [] },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UserError("export: expected one experiment file (see --help)");
  }
  if (values.out !== undefined) {
    await claimOutput(values.out, "export --out", { kind: "dir", manifest: MANIFEST, mark: MARK });
  }
  const cfg = await loadExperiment(positionals[0], values.set);
  await initBackend("cpu"); // weights only pass through: no compute
  const { model, source } = await loadModel(cfg, {
    init: values.init,
    checkpoint: values.checkpoint,
  });
  const out = values.out ?? `checkpoints/${cfg.name}/hf`;
  await Deno.mkdir(out, { recursive: true });
  // The manifest first: an export cut short is still recognized as export's own, and redone.
  const manifest = { written_by: MARK, experiment: positionals[0], run: cfg.name, source };
  await Deno.writeTextFile(`${out}/${MANIFEST}`, JSON.stringify(manifest, null, 1) + "\n");
  const { warnings } = await exportHFGPT2(
    `${out}/model.safetensors`,
    await model.toNamedParams(),
    cfg.model,
  );
  for (const w of warnings) console.error(`warning: ${w}`);
  console.log(`wrote ${out}/model.safetensors and ${out}/config.json from ${source}`);
  model.dispose();
});
