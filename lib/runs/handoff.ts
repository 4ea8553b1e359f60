/**
 * Hand-off of a run to PyTorch DDP (`scaleout/torch/train_ddp.py` under torchrun): a directory that is at once a run
 * directory of ours (its `checkpoint.safetensors` and `log.jsonl`, so `compare`, `eval`, `sample` and
 * `train --resume` read it) and everything the PyTorch side needs to continue exactly: `handoff.json` (the resolved
 * config, position, schedule, launch lines) and a reference to the data (lib/runs/handoff_data.ts): the prepared
 * shards by path and index hash, which train_ddp.py streams in our loader's order, or a text file's token ids.
 */
import type { Config } from "../config.ts";
import { configHash, laterKeysSet } from "../config.ts";
import { UserError } from "../errors.ts";
import { claimOutput, outputMark, type OutputState, replaceDir } from "../outputs.ts";
import { checkpointPath, configDifferences, loadCheckpoint } from "../train/checkpoint.ts";
import { checkResumable, lrSchedule } from "./restore.ts";
import {
  type HandoffData,
  handoffLoaders,
  refuseMixture,
  writeHandoffData,
} from "./handoff_data.ts";

/** Format tag of handoff.json (2: the data by reference; 1 carried the batches). */
export const HANDOFF_FORMAT = "gpt-ts-handoff/2";

/** handoff.json: what the PyTorch script reads besides the checkpoint and the data it names. */
export interface HandoffManifest {
  format: string;
  run: string;
  config: Config;
  config_hash: string;
  /** Where the checkpoint stands (our TrainState). */
  state: { epoch: number; batch: number; step: number; tokensSeen: number };
  steps_per_epoch: number;
  total_steps: number;
  schedule: ReturnType<typeof lrSchedule>;
  /** The data: shards by reference (or a text file's token ids) and the loaders' settings. */
  data: HandoffData;
  launch: Record<string, string>;
  /** {@link outputMark} of `handoff --out`: how a later hand-off recognizes this directory as its own. */
  written_by?: string;
  /** Bytes of log.jsonl as handed off: a log that grew since (trained on there) makes the directory not ours. */
  log_bytes?: number;
}

/** How a hand-off directory is recognized as `handoff`'s own: handoff.json carrying this mark. */
const OWN = { kind: "dir", manifest: "handoff.json", mark: outputMark("handoff --out") } as const;

const SCRIPT = "scaleout/torch/train_ddp.py";

/** The launch lines for a hand-off directory `dir` (single node, multi-node, Slurm, hand-started ranks). */
export function launchLines(dir: string): Record<string, string> {
  return {
    torchrun: `torchrun --standalone --nproc_per_node=2 ${SCRIPT} ${dir}`,
    multi_node: `torchrun --nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=8 ` +
      `--rdzv-backend=c10d --rdzv-endpoint=$HEAD_NODE:29500 ${SCRIPT} ${dir}`,
    slurm: `srun --nodes=2 --ntasks-per-node=8 --gpus-per-task=1 bash -c ` +
      `'MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) MASTER_PORT=29500 ` +
      `RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID python3 ${SCRIPT} ${dir}'`,
    by_hand:
      `for r in 0 1; do MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r ` +
      `python3 ${SCRIPT} ${dir} & done; wait`,
  };
}

/**
 * Packs run `cfg.name` (its latest checkpoint under `checkpointsDir`) into `out`. `out` must be absent, empty, or an
 * earlier hand-off of the same config that nothing has trained on since (it is then replaced); anything else is
 * refused before any work, so nothing there is overwritten. A run with nothing left to train is refused too.
 * `bringShards` copies a corpus's shards into `out/shards` (for nodes without a shared filesystem).
 */
export async function handoffRun(
  cfg: Config,
  out: string,
  opts: { checkpointsDir?: string; print?: (s: string) => void; bringShards?: boolean } = {},
): Promise<HandoffManifest> {
  const print = opts.print ?? console.log;
  const runDir = `${opts.checkpointsDir ?? "checkpoints"}/${cfg.name}`;
  refuseMixture(cfg);
  const outState = await claimHandoffDir(out, cfg);
  const src = checkpointPath(runDir);
  const ckpt = await loadCheckpoint(src).catch((err) => {
    if (err instanceof Deno.errors.NotFound) {
      throw new UserError(`${src}: no checkpoint to hand off (train the run first)`);
    }
    throw err;
  });
  const data = await handoffLoaders(cfg, ckpt, src, print);
  const k = cfg.training.grad_accum_steps;
  const stepsPerEpoch = Math.floor(data.trainLoader.length / k);
  const totalSteps = cfg.training.epochs * stepsPerEpoch;
  checkResumable(src, ckpt.meta.config, cfg, stepsPerEpoch, ckpt.meta.state.step);
  const state = ckpt.meta.state;
  if (state.step >= totalSteps) {
    throw new UserError(
      `${src}: nothing left to hand off: the run has done all ${totalSteps} steps of training.epochs ` +
        `${cfg.training.epochs}; raise it (--set training.epochs=${
          cfg.training.epochs + 1
        }) to train more`,
    );
  }
  const tmp = `${out}.tmp-${Deno.pid}`;
  await Deno.mkdir(tmp, { recursive: true });
  const manifest = await fillHandoffDir(
    tmp,
    {
      format: HANDOFF_FORMAT,
      written_by: OWN.mark, // first: claimOutput looks for it in the file's first KiB
      run: cfg.name,
      config: cfg,
      config_hash: configHash(cfg),
      state,
      steps_per_epoch: stepsPerEpoch,
      total_steps: totalSteps,
      schedule: lrSchedule(cfg, totalSteps),
      launch: launchLines(out),
    },
    () => writeHandoffData(cfg, data, tmp, opts.bringShards ?? false),
    runDir,
  );
  await replaceDir(tmp, out, outState);
  noteUnapplied(cfg, print);
  print(
    `handed off ${cfg.name} at step ${state.step} (epoch ${state.epoch + 1}) to ${out}: ` +
      `${totalSteps - state.step} steps to go over ${
        where(manifest.data)
      }; ${manifest.launch.torchrun}`,
  );
  return manifest;
}

/**
 * Writes the hand-off into `tmp`: the data part, the checkpoint, the log, handoff.json and launch.sh; on failure
 * (a disk that fills while shards are copied) `tmp` is removed and `out` stays as it was.
 */
async function fillHandoffDir(
  tmp: string,
  manifest: Omit<HandoffManifest, "data">,
  data: () => Promise<HandoffData>,
  runDir: string,
): Promise<HandoffManifest> {
  try {
    const full: HandoffManifest = { ...manifest, data: await data() };
    await Deno.copyFile(checkpointPath(runDir), `${tmp}/checkpoint.safetensors`);
    await Deno.copyFile(`${runDir}/log.jsonl`, `${tmp}/log.jsonl`).catch(() => {});
    full.log_bytes = await fileSize(`${tmp}/log.jsonl`);
    await Deno.writeTextFile(`${tmp}/handoff.json`, JSON.stringify(full, null, 1) + "\n");
    await Deno.writeTextFile(
      `${tmp}/launch.sh`,
      "# Continue this run under PyTorch DDP; pick one line (see README: When one machine is not enough)\n" +
        Object.entries(full.launch).map(([k, v]) => `# ${k}:\n${v}\n`).join(""),
    );
    return full;
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw err;
  }
}

/** One line where the run sets training keys that the PyTorch side does not apply. */
function noteUnapplied(cfg: Config, print: (s: string) => void): void {
  const unapplied = laterKeysSet(cfg);
  if (unapplied.length === 0) return;
  print(
    `note: scaleout/torch/train_ddp.py does not apply ${
      unapplied.map((k) => `training.${k}`).join(", ")
    }: it keeps the latest checkpoint, updates every step and scores no multiple-choice items; they apply ` +
      `again when the run comes back here`,
  );
}

/** Where the PyTorch side reads the data, for the closing line. */
function where(d: HandoffData): string {
  if (d.kind === "tokens") return "the text's token ids (tokens_*.bin)";
  return d.dir === "shards" ? "the shards brought along (shards/)" : `the shards at ${d.dir}`;
}

const fileSize = (path: string) => Deno.stat(path).then((s) => s.size, () => 0);

/** {@link claimOutput} for a hand-off, plus: an earlier hand-off must be of this config and untouched since. */
async function claimHandoffDir(out: string, cfg: Config): Promise<OutputState> {
  const state = await claimOutput(out, "handoff --out", OWN);
  if (state !== "own") return state;
  const was = JSON.parse(await Deno.readTextFile(`${out}/handoff.json`)) as HandoffManifest;
  const diff = configDifferences(was.config, cfg).filter((d) => !d.startsWith("training.epochs:"));
  if (was.run !== cfg.name) diff.unshift(`run: ${was.run} → ${cfg.name}`);
  if (diff.length > 0) {
    throw new UserError(
      `${out}/handoff.json: a hand-off of another config (${diff.slice(0, 3).join(", ")}); ` +
        `choose another --out`,
    );
  }
  if (was.log_bytes !== await fileSize(`${out}/log.jsonl`)) {
    throw new UserError(
      `handoff --out ${out}: its log.jsonl grew since the hand-off (trained on there?); ` +
        `it is left as it is: choose another --out`,
    );
  }
  return state;
}
