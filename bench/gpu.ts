/**
 * `deno run -A bench/gpu.ts [--steps n] [--no-torch]`: on a machine with a GPU (no network needed), checks the
 * webgpu backend against the golden fixture (tests/golden_test.ts on webgpu) and times the chapter-5 training step
 * of experiments/verdict.yaml (124M, context 256) at batch 2 and 8 on webgpu, then the same step in PyTorch on
 * CUDA when python3 with torch and a CUDA device is there. Prints one JSON line per result: `check` lines for the
 * golden test, `train_step` lines with median seconds and tokens/s (`impl` ours or pytorch), and a `summary` line
 * with tokens/s side by side. Exits 1 when the golden test fails.
 */
import { parseArgs } from "node:util";
import { probeWebGPU } from "../lib/backends/webgpu.ts";
import { loadExperiment } from "../lib/config.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "3" },
    "no-torch": { type: "boolean", default: false },
    experiment: { type: "string", default: "experiments/verdict.yaml" },
  },
});
const here = (p: string) => new URL(p, import.meta.url).pathname;
const deno = Deno.execPath();
const BATCHES = [2, 8];

/** Runs a command; its last stdout line parsed as JSON, or null with its stderr's first error line. */
async function sub(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ json: Record<string, unknown> | null; err: string }> {
  try {
    const out = await new Deno.Command(cmd, {
      args,
      env: { NO_COLOR: "1", ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const line = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
    const lines = new TextDecoder().decode(out.stderr).trim().split("\n");
    const err = lines.find((l) => /^(error|\w*Error)\b/.test(l)) ?? lines.slice(-2).join(" | ");
    try {
      return { json: out.success && line ? JSON.parse(line) : null, err };
    } catch {
      return { json: null, err: line || err };
    }
  } catch (e) {
    return { json: null, err: String(e instanceof Error ? e.message : e) };
  }
}

// 0. The adapter. The timed steps refuse a software one (they run without GPT_WEBGPU_ALLOW_FALLBACK); the golden
// test accepts it, as in CI.
const found = await probeWebGPU();
console.log(JSON.stringify(
  typeof found === "string"
    ? { adapter: null, detail: found }
    : { adapter: found.description, fallback: found.fallback },
));

// 1. The golden test on webgpu (its CPU cases are filtered out).
const golden = await new Deno.Command(deno, {
  args: [
    "test",
    "--unstable-webgpu",
    "-A",
    "--filter",
    "on webgpu",
    here("../tests/golden_test.ts"),
  ],
  stdout: "piped",
  stderr: "piped",
}).output();
const goldenOut = new TextDecoder().decode(golden.stdout);
const ignored = /\b0 passed\b/.test(goldenOut) || /\b[1-9]\d* ignored/.test(goldenOut);
console.log(JSON.stringify({
  check: "golden gpt2-tiny on webgpu",
  ok: golden.success && !ignored,
  detail: golden.success
    ? (ignored ? "ignored: no WebGPU adapter" : "passed")
    : goldenOut.split("\n").filter((l) => /error|FAILED|tolerance/.test(l)).slice(0, 3).join(" | "),
}));

// 2. The training step on webgpu, one process per batch size (bench/bench.ts --case).
const ours: Record<number, Record<string, unknown>> = {};
for (const batch of BATCHES) {
  const r = await sub(deno, [
    "run",
    "--unstable-webgpu",
    "--allow-all",
    here("./bench.ts"),
    "--experiment",
    values.experiment!,
    "--backend",
    "webgpu",
    "--steps",
    values.steps!,
    "--case",
    "train_step",
    "--batch",
    String(batch),
  ]);
  if (r.json) ours[batch] = r.json;
  console.log(JSON.stringify(r.json ?? { case: "train_step", impl: "ours", batch, error: r.err }));
}

// 3. The same step in PyTorch on CUDA.
const torch: Record<number, Record<string, unknown>> = {};
if (!values["no-torch"]) {
  const cfgPath = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(cfgPath, JSON.stringify(await loadExperiment(values.experiment!)));
  for (const batch of BATCHES) {
    const r = await sub("python3", [
      here("./torch_step.py"),
      cfgPath,
      String(batch),
      values.steps!,
      "4",
      "cuda",
    ]);
    if (r.json) torch[batch] = r.json;
    console.log(
      JSON.stringify(r.json ?? { case: "train_step", impl: "pytorch", batch, error: r.err }),
    );
  }
  await Deno.remove(cfgPath);
}

console.log(JSON.stringify({
  summary: "train_step tokens/s, webgpu vs PyTorch CUDA",
  rows: BATCHES.map((batch) => ({
    batch,
    webgpu_tokens_per_s: ours[batch]?.tokens_per_s ?? null,
    pytorch_cuda_tokens_per_s: torch[batch]?.tokens_per_s ?? null,
    ratio: ours[batch] && torch[batch]
      ? Number(ours[batch].tokens_per_s) / Number(torch[batch].tokens_per_s)
      : null,
  })),
}));
if (!golden.success || ignored) Deno.exit(1);
