/**
 * `deno run -A bench/memory.ts <experiment.yaml> [--steps n] [--set key=value …]`: the preflight's memory estimate
 * (lib/train/preflight.ts) against the real thing: trains the experiment for `--steps` optimizer steps (default 2,
 * then a checkpoint is written, as on Ctrl-C) in a temporary checkpoints directory, and prints one JSON line with the
 * estimate by part and this process's peak RSS (VmHWM), in MiB. One process per configuration: the peak is the
 * process's.
 */
import { parseArgs } from "node:util";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { memoryEstimate } from "../lib/train/preflight.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    steps: { type: "string", default: "2" },
    set: { type: "string", multiple: true, default: [] },
  },
});
const cfg = await loadExperiment(positionals[0], values.set);
const dir = await Deno.makeTempDir({ prefix: "gpt-ts-memory-" });
try {
  const t0 = performance.now();
  await runTraining(cfg, {
    checkpointsDir: dir,
    stopAfterSteps: Number(values.steps),
    print: () => {},
    progress: false,
  });
  const status = await Deno.readTextFile("/proc/self/status");
  const kb = (key: string) => Number(status.match(new RegExp(`${key}:\\s+(\\d+) kB`))?.[1]);
  const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
  const est = memoryEstimate(cfg, "train");
  console.log(JSON.stringify({
    experiment: positionals[0],
    overrides: values.set,
    steps: Number(values.steps),
    estimate_mib: Object.fromEntries(Object.entries(est).map(([k, v]) => [k, mib(v)])),
    peak_rss_mib: Math.round(kb("VmHWM") / 1024),
    seconds: Math.round((performance.now() - t0) / 100) / 10,
  }));
} finally {
  await Deno.remove(dir, { recursive: true });
}
