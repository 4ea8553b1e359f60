/**
 * `deno task train <experiment.yaml> [--resume | --fresh] [--set key=value …]`: the book's chapter-5 pretraining run.
 * A YAML with a `sweep:` section runs every point of its grid (or prints one command per point).
 * Exit codes: 0 finished, 2 bad input, 130 interrupted (checkpoint written).
 */
import { compareRuns, formatTable } from "../lib/views/compare.ts";
import { flagOverride, loadExperiment } from "../lib/config.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { claimOutput, outputMark, writeOutputFile } from "../lib/outputs.ts";
import { runTraining } from "../lib/runs/run.ts";
import {
  kubernetesIndexedJob,
  pointAction,
  pointCommand,
  readSweep,
  slurmArrayScript,
} from "../lib/runs/sweep.ts";
import { stringify as stringifyYaml } from "yaml";

/** `--slurm-array f`, `--k8s-job f`: files a user names, each written with its mark (lib/outputs.ts). */
const JOB_FILES = { "slurm-array": "#!/bin/bash\n# ", "k8s-job": "# " } as const;

/** Claims every job file named before writing any, so that a refused one leaves the others unwritten too. */
async function claimJobFiles(values: Partial<Record<keyof typeof JOB_FILES, string>>) {
  for (const flag of Object.keys(JOB_FILES) as (keyof typeof JOB_FILES)[]) {
    const path = values[flag];
    const what = `train --${flag}`;
    if (path !== undefined) await claimOutput(path, what, { kind: "file", mark: outputMark(what) });
  }
}

/** Writes a job file with its mark as a comment line (after the shebang of a script). */
async function writeJobFile(flag: keyof typeof JOB_FILES, path: string, text: string) {
  const what = `train --${flag}`;
  const lead = JOB_FILES[flag];
  const body = lead.startsWith("#!") ? text.replace(/^#!.*\n/, "") : text;
  await writeOutputFile(path, what, `${lead}${outputMark(what)}\n${body}`);
}

const USAGE = `usage: deno task train <experiment.yaml> [options]

Trains the experiment's model and writes checkpoints/<name>/{log.jsonl,checkpoint.safetensors}.

options:
  --set key=value    override any config key, e.g. --set training.lr=1e-3 (repeatable)
  --backend name     auto | cpu | tfjs-cpu | wasm | webgpu | tensorflow (same as --set backend=name)
  --precision name   fp32 | bf16-mixed (same as --set precision=name); --resume keeps the run's unless given
  --resume           continue from the run's last checkpoint
  --fresh            start over; an earlier run of the same name is moved aside, not deleted
  --auto-resume      skip the run if it finished, resume it if it has a checkpoint, else start it
  --print-commands   for a sweep file: print one self-contained command per point instead of running
  --slurm-array f    for a sweep file: write a Slurm job-array script (sbatch f; SLURM_ARRAY_TASK_ID picks the point)
  --k8s-job f        for a sweep file: write a Kubernetes Indexed Job manifest (kubectl apply -f f)
  --no-sweep         ignore the file's sweep: section (run the single config)
  -h, --help         show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("train", USAGE, {
    set: { type: "string", multiple: true, default: [] },
    backend: { type: "string" },
    precision: { type: "string" },
    resume: { type: "boolean", default: false },
    fresh: { type: "boolean", default: false },
    "auto-resume": { type: "boolean", default: false },
    "print-commands": { type: "boolean", default: false },
    "slurm-array": { type: "string" },
    "k8s-job": { type: "string" },
    "no-sweep": { type: "boolean", default: false },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UserError(
      `train: expected one experiment file, got ${positionals.length} (see --help)`,
    );
  }
  const modes = [values.resume, values.fresh, values["auto-resume"]].filter(Boolean).length;
  if (modes > 1) {
    throw new UserError("train: --resume, --fresh and --auto-resume exclude each other");
  }
  const path = positionals[0];
  const overrides = [...(values.set ?? [])];
  if (values.backend) overrides.push(flagOverride("backend", "backend", values.backend));
  if (values.precision) overrides.push(flagOverride("precision", "precision", values.precision));

  const points = values["no-sweep"] ? null : await readSweep(path);
  if (!points) {
    for (const flag of ["print-commands", "slurm-array", "k8s-job"] as const) {
      if (values[flag] || values[flag] === "") {
        throw new UserError(`${path}: --${flag} needs a sweep: section`);
      }
    }
    const cfg = await loadExperiment(path, overrides);
    const action = values["auto-resume"] ? pointAction(`checkpoints/${cfg.name}`) : null;
    if (action === "skip") return console.log(`${cfg.name}: already finished; nothing to do`);
    const result = await runTraining(cfg, {
      resume: values.resume || action === "resume",
      fresh: values.fresh || action === "start",
    });
    if (result.status === "interrupted") Deno.exit(130);
    return;
  }

  if (values["print-commands"]) {
    for (const p of points) console.log(pointCommand(path, p, overrides));
    return;
  }
  if (values["slurm-array"] !== undefined || values["k8s-job"] !== undefined) {
    await claimJobFiles(values);
    if (values["slurm-array"] !== undefined) {
      await writeJobFile(
        "slurm-array",
        values["slurm-array"],
        slurmArrayScript(path, points, overrides),
      );
      console.log(
        `wrote ${values["slurm-array"]}: sbatch ${values["slurm-array"]} (${points.length} points)`,
      );
    }
    if (values["k8s-job"] !== undefined) {
      const job = kubernetesIndexedJob(path, points, { extra: overrides });
      await writeJobFile("k8s-job", values["k8s-job"], stringifyYaml(job));
      console.log(
        `wrote ${values["k8s-job"]}: kubectl apply -f ${
          values["k8s-job"]
        } (${points.length} points)`,
      );
    }
    return;
  }
  // Validate every point before running any, so a typo fails at once rather than after hours.
  const configs = await Promise.all(
    points.map((p) => loadExperiment(path, [...overrides, ...p.overrides])),
  );
  for (const [i, cfg] of configs.entries()) {
    const action = pointAction(`checkpoints/${cfg.name}`);
    console.log(`\n== sweep point ${i + 1}/${configs.length}: ${cfg.name} (${action})`);
    if (action === "skip") continue;
    const result = await runTraining(cfg, {
      resume: action === "resume",
      fresh: action === "start",
    });
    if (result.status === "interrupted") Deno.exit(130);
  }
  const { rows, warnings } = compareRuns(configs.map((c) => `checkpoints/${c.name}/log.jsonl`));
  for (const w of warnings) console.error(`warning: ${w}`);
  console.log("\n" + formatTable(rows));
});
