/**
 * `deno task train <experiment.yaml> [--resume | --fresh] [--set key=value …]`: the book's chapter-5 pretraining run.
 * Exit codes: 0 finished, 2 bad input, 130 interrupted (checkpoint written).
 */
import { parseArgs } from "node:util";
import { loadExperiment } from "../lib/config.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { runTraining } from "../lib/run.ts";

const USAGE = `usage: deno task train <experiment.yaml> [options]

Trains the experiment's model and writes checkpoints/<name>/{log.jsonl,checkpoint.safetensors}.

options:
  --set key=value   override any config key, e.g. --set training.lr=1e-3 (repeatable)
  --backend name    auto | cpu | wasm | webgpu | tensorflow (same as --set backend=name)
  --resume          continue from the run's last checkpoint
  --fresh           start over; an earlier run of the same name is moved aside, not deleted
  -h, --help        show this help`;

await runTask(async () => {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      allowPositionals: true,
      options: {
        set: { type: "string", multiple: true, default: [] },
        backend: { type: "string" },
        resume: { type: "boolean", default: false },
        fresh: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    throw new UserError(`train: ${(err as Error).message.split("\n")[0]} (see --help)`);
  }
  const { values, positionals } = parsed;
  if (values.help) return console.log(USAGE);
  if (positionals.length !== 1) {
    throw new UserError(
      `train: expected one experiment file, got ${positionals.length} (see --help)`,
    );
  }
  if (values.resume && values.fresh) {
    throw new UserError("train: --resume and --fresh exclude each other");
  }
  const overrides = [...(values.set ?? [])];
  if (values.backend) overrides.push(`backend=${values.backend}`);
  const cfg = await loadExperiment(positionals[0], overrides);
  const result = await runTraining(cfg, { resume: values.resume, fresh: values.fresh });
  if (result.status === "interrupted") Deno.exit(130);
});
