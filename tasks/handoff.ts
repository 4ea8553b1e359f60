/**
 * `deno task handoff <experiment.yaml> --out <dir> [--bring-shards]`: packs the run's latest checkpoint, config,
 * position, a reference to its data (prepared shards by path and index hash; a text file's token ids) and launch
 * lines for PyTorch DDP (scaleout/torch/train_ddp.py under torchrun). Exit codes: 0 done, 2 bad input.
 */
import { loadExperiment } from "../lib/config.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { handoffRun } from "../lib/runs/handoff.ts";

const USAGE =
  `usage: deno task handoff <experiment.yaml> --out <dir> [--bring-shards] [--set key=value …]

Writes <dir>/{checkpoint.safetensors,log.jsonl,handoff.json,launch.sh} from checkpoints/<name>/; handoff.json
names the prepared shards (path and index hash) that train_ddp.py streams in this toolkit's order (a text file's
token ids go into <dir>/tokens_*.bin). Continue with:
  torchrun --standalone --nproc_per_node=N scaleout/torch/train_ddp.py <dir>

options:
  --out dir          the hand-off directory: absent, empty, or an earlier hand-off of this run (replaced);
                     under checkpoints/ it is a run of its own
  --bring-shards     copy the shards into <dir>/shards (nodes without a shared filesystem; costs the corpus's
                     size in bytes); otherwise every node reads them at their path, or at train_ddp.py --shards
  --set key=value    override a config key (e.g. training.epochs, to hand off more epochs than trained here)
  -h, --help         show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("handoff", USAGE, {
    set: { type: "string", multiple: true, default: [] },
    out: { type: "string" },
    "bring-shards": { type: "boolean", default: false },
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
  await handoffRun(cfg, values.out, { bringShards: values["bring-shards"] });
});
