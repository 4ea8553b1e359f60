/**
 * Sweeps: an experiment YAML may carry `sweep:` mapping dotted config keys to lists of values. Every point of the
 * grid (the cartesian product) is its own run, named after the base name and the varied values, and is expressed as
 * `--set` overrides so that one self-contained command can run it anywhere.
 */
import { parse as parseYaml } from "yaml";
import { configKeys } from "../config.ts";
import { UserError } from "../errors.ts";
import { ALONG_THE_WAY } from "./runlog.ts";

/** One point of a sweep: its run name and the overrides that make it. */
export interface SweepPoint {
  name: string;
  overrides: string[]; // `key=value`, including `name=…`
  values: Record<string, unknown>;
}

function shortKey(key: string): string {
  return key.split(".").pop()!;
}

function valueText(v: unknown): string {
  return typeof v === "string" ? v : JSON.stringify(v);
}

/**
 * Reads the `sweep:` section of an experiment file (null when it has none) and expands the grid. Keys are checked
 * against the config's keys; each list must be non-empty.
 */
export async function readSweep(path: string, baseName?: string): Promise<SweepPoint[] | null> {
  let doc: unknown;
  try {
    doc = parseYaml(await Deno.readTextFile(path));
  } catch {
    return null; // loadExperiment reports unreadable or malformed files with the right message
  }
  if (!doc || typeof doc !== "object" || !("sweep" in doc)) return null;
  const sweep = (doc as Record<string, unknown>).sweep;
  if (!sweep || typeof sweep !== "object" || Array.isArray(sweep)) {
    throw new UserError(`${path}: sweep: expected a mapping of config keys to lists of values`);
  }
  const keys = configKeys();
  const axes: [string, unknown[]][] = [];
  for (const [key, values] of Object.entries(sweep as Record<string, unknown>)) {
    if (!keys.includes(key) || key === "name") {
      throw new UserError(
        `${path}: sweep.${key}: not a config key (use dotted keys such as training.lr)`,
      );
    }
    if (!Array.isArray(values) || values.length === 0) {
      throw new UserError(`${path}: sweep.${key}: expected a non-empty list of values`);
    }
    axes.push([key, values]);
  }
  const base = baseName ?? ((doc as Record<string, unknown>).name as string | undefined) ??
    path.split("/").pop()!.replace(/\.ya?ml$/i, "");
  let points: Record<string, unknown>[] = [{}];
  for (const [key, values] of axes) {
    points = points.flatMap((p) => values.map((v) => ({ ...p, [key]: v })));
  }
  return points.map((values) => {
    const suffix = Object.entries(values).map(([k, v]) => `${shortKey(k)}=${valueText(v)}`).join(
      ",",
    );
    const name = `${base}.${suffix}`.replace(/[^A-Za-z0-9._=,-]/g, "_");
    const overrides = Object.entries(values).map(([k, v]) => `${k}=${valueText(v)}`);
    return { name, overrides: [...overrides, `name=${name}`], values };
  });
}

/** Quotes an argument for a POSIX shell when it needs it. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9._=,/:@+-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** What happens to one point when the sweep runs. */
export type PointAction = "skip" | "resume" | "start";

/** Decides a point's action from its run directory: finished → skip, checkpoint → resume, otherwise start. */
export function pointAction(runDir: string): PointAction {
  try {
    const log = Deno.readTextFileSync(`${runDir}/log.jsonl`).trimEnd().split("\n");
    const lastTyped = log.reverse().map((l) => {
      try {
        return JSON.parse(l).type as string;
      } catch {
        return "";
      }
    }).find((t) => t !== "" && !ALONG_THE_WAY.includes(t));
    if (lastTyped === "summary") return "skip";
  } catch { /* no log yet */ }
  try {
    Deno.statSync(`${runDir}/checkpoint.safetensors`);
    return "resume";
  } catch {
    return "start";
  }
}

/** The command that runs one point on its own (for GNU parallel, Slurm, Kubernetes Jobs …). */
export function pointCommand(path: string, point: SweepPoint, extra: string[] = []): string {
  const sets = [...extra, ...point.overrides].flatMap((o) => ["--set", o]);
  return ["deno", "task", "train", path, "--no-sweep", "--auto-resume", ...sets].map(shellQuote)
    .join(" ");
}

/** A `case` over the sweep's points that sets CMD from an index variable (`SLURM_ARRAY_TASK_ID`, …). */
function pointCase(path: string, points: SweepPoint[], extra: string[], indexVar: string): string {
  const arms = points.map((p, i) => `  ${i}) CMD=${shellQuote(pointCommand(path, p, extra))} ;;`);
  return [
    `case "\${${indexVar}:?}" in`,
    ...arms,
    `  *) echo "no sweep point \${${indexVar}}" >&2; exit 2 ;;`,
    "esac",
    'echo "$CMD"',
    'exec bash -c "$CMD"',
  ].join("\n");
}

/**
 * A Slurm job-array script for the sweep: `sbatch <file>` runs one array task per point (at most `parallel` at a
 * time), each choosing its point by `SLURM_ARRAY_TASK_ID`; logs go to `sweep-<job>_<task>.out`.
 */
export function slurmArrayScript(
  path: string,
  points: SweepPoint[],
  extra: string[] = [],
  parallel = 4,
): string {
  return [
    "#!/bin/bash",
    `#SBATCH --job-name=${shellQuote(points[0]?.name.split(".")[0] ?? "sweep")}`,
    `#SBATCH --array=0-${points.length - 1}%${parallel}`,
    "#SBATCH --output=sweep-%A_%a.out",
    "#SBATCH --ntasks=1",
    "# Points of the sweep, one per array index; re-submitting skips finished ones (--auto-resume).",
    "set -euo pipefail",
    pointCase(path, points, extra, "SLURM_ARRAY_TASK_ID"),
    "",
  ].join("\n");
}

/**
 * A Kubernetes Indexed Job (batch/v1, `completionMode: Indexed`) for the sweep: one completion per point, the
 * point chosen by `JOB_COMPLETION_INDEX`; `image` must hold the project and Deno, `checkpoints/` should be a volume.
 */
export function kubernetesIndexedJob(
  path: string,
  points: SweepPoint[],
  o: { extra?: string[]; image?: string; parallel?: number; name?: string } = {},
): Record<string, unknown> {
  const name = (o.name ?? points[0]?.name.split(".")[0] ?? "sweep").toLowerCase()
    .replace(/[^a-z0-9-]/g, "-").slice(0, 50);
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: { name: `${name}-sweep` },
    spec: {
      completionMode: "Indexed",
      completions: points.length,
      parallelism: Math.min(o.parallel ?? 4, points.length),
      backoffLimit: points.length,
      template: {
        spec: {
          restartPolicy: "Never",
          containers: [{
            name: "train",
            image: o.image ?? "gpt-ts:latest",
            workingDir: "/gpt-ts",
            command: ["bash", "-c", pointCase(path, points, o.extra ?? [], "JOB_COMPLETION_INDEX")],
            volumeMounts: [{ name: "checkpoints", mountPath: "/gpt-ts/checkpoints" }],
          }],
          volumes: [{
            name: "checkpoints",
            persistentVolumeClaim: { claimName: "gpt-ts-checkpoints" },
          }],
        },
      },
    },
  };
}
