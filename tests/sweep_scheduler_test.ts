/**
 * Sweeps for schedulers: the Slurm job-array script and the Kubernetes Indexed Job manifest that `deno task train
 * <sweep.yaml> --slurm-array f --k8s-job f` writes. The manifest must parse and carry the fields Kubernetes requires;
 * both must pick the point of their index variable.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import { taskArgs, tempDir } from "./_helpers.ts";
import { pointCommand, readSweep } from "../lib/runs/sweep.ts";

const SWEEP = "experiments/verdict-lr-sweep.yaml";

function train(...args: string[]) {
  const o = new Deno.Command(Deno.execPath(), {
    args: taskArgs("train", args),
    stdout: "piped",
    stderr: "piped",
  })
    .outputSync();
  return { code: o.code, stderr: new TextDecoder().decode(o.stderr) };
}

/** Runs `script` with `env`, a `deno` on PATH that only echoes its arguments; returns its stdout lines. */
function runWithEchoDeno(script: string, env: Record<string, string>): string[] {
  const bin = tempDir();
  Deno.writeTextFileSync(`${bin}/deno`, '#!/bin/sh\necho "deno $*"\n', { mode: 0o755 });
  const o = new Deno.Command("bash", {
    args: ["-c", script],
    env: { ...env, PATH: `${bin}:${Deno.env.get("PATH")}` },
    stdout: "piped",
  }).outputSync();
  return new TextDecoder().decode(o.stdout).trim().split("\n");
}

Deno.test("sweep: Slurm array script and Kubernetes Indexed Job pick the point of their index", async () => {
  const dir = tempDir();
  const r = train(SWEEP, "--slurm-array", `${dir}/sweep.sbatch`, "--k8s-job", `${dir}/job.yaml`);
  assertEquals(r.code, 0, r.stderr);
  const points = (await readSweep(SWEEP))!;
  const want = pointCommand(SWEEP, points[1]);

  const sbatch = await Deno.readTextFile(`${dir}/sweep.sbatch`);
  ok(sbatch.startsWith("#!/bin/bash\n"));
  ok(sbatch.includes(`#SBATCH --array=0-${points.length - 1}%4`), sbatch);
  assertEquals(runWithEchoDeno(sbatch, { SLURM_ARRAY_TASK_ID: "1" })[0], want);

  const job = parseYaml(await Deno.readTextFile(`${dir}/job.yaml`));
  assertEquals([job.apiVersion, job.kind], ["batch/v1", "Job"]);
  ok(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(job.metadata.name), job.metadata.name);
  assertEquals(job.spec.completionMode, "Indexed");
  assertEquals(job.spec.completions, points.length);
  ok(job.spec.parallelism >= 1 && job.spec.parallelism <= points.length);
  const pod = job.spec.template.spec;
  ok(["Never", "OnFailure"].includes(pod.restartPolicy)); // a Job's pods may not restart Always
  assertEquals(pod.containers.length, 1);
  const c = pod.containers[0];
  ok(c.name && c.image && Array.isArray(c.command));
  for (const m of c.volumeMounts) {
    ok(pod.volumes.some((v: { name: string }) => v.name === m.name), m.name);
  }
  assertEquals(
    runWithEchoDeno(c.command[2], { JOB_COMPLETION_INDEX: "2" })[0],
    pointCommand(SWEEP, points[2]),
  );
});

Deno.test("sweep: --slurm-array on a file without a sweep is one line, exit 2", () => {
  const r = train("experiments/verdict-small.yaml", "--slurm-array", `${tempDir()}/x.sbatch`);
  assertEquals(r.code, 2);
  assertEquals(
    r.stderr.trim(),
    "error: experiments/verdict-small.yaml: --slurm-array needs a sweep: section",
  );
});
