/**
 * `deno task handoff <experiment.yaml> --out <dir>`: packs the run's latest checkpoint, config, batches to come and
 * launch lines for PyTorch DDP (scaleout/torch/train_ddp.py under torchrun). Exit codes: 0 done, 2 bad input.
 */
import { loadExperiment } from "../lib/config.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { handoffRun } from "../lib/runs/handoff.ts";

const USAGE = `usage: deno task handoff <experiment.yaml> --out <dir> [--set key=value …]

Writes <dir>/{checkpoint.safetensors,log.jsonl,handoff.json,train.bin,eval_*.bin,launch.sh} from
checkpoints/<name>/. Continue with: torchrun --standalone --nproc_per_node=N scaleout/torch/train_ddp.py <dir>

options:
  --out dir          the hand-off directory: absent, empty, or an earlier hand-off of this run (replaced);
                     under checkpoints/ it is a run of its own
  --set key=value    override a config key (e.g. training.epochs, to hand off more epochs than trained here)
  -h, --help         show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("handoff", USAGE, {
    set: { type: "string", multiple: true, default: [] },
    out: { type: "string" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UserError(
      `handoff: expected one experiment file, got ${positionals.length} (see --help)`,
    );
  }
  if (!values.out) throw new UserError("handoff: --out <dir> is required");
  const cfg = await loadExperiment(positionals[0], [...(values.set ?? [])]);
  await handoffRun(cfg, values.out);
});
