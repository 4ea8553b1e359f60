/**
 * `deno run -A bench/gpu.ts [--steps n] [--no-torch] [--budget-s s] [--experiment path]`: on a machine with a GPU
 * (no network needed), one JSON line per result, each with a `part`:
 * - `adapter`: the WebGPU adapter's description, whether it is a software fallback, its limits and features;
 * - `golden`: tests/golden_test.ts on webgpu (fixtures from ../shared/fixtures or `GPT_FIXTURES_DIR`);
 * - `tensorflow`: whether tfjs-node-gpu loads (it is no dependency: usually the reason it does not);
 * - `webgpu bN`, `cpu bN`, `pytorch bN` (N = 2, 8): the chapter-5 training step of experiments/verdict.yaml (124M,
 *   context 256) on webgpu, on the cpu backend with every core, and in PyTorch eager fp32 on CUDA — median
 *   seconds, tokens/s and, for ours, the loss of every step (same seed, inputs and dropout masks on both backends);
 * - `summary`: tokens/s side by side and the webgpu − cpu loss differences.
 * Each part runs in its own process under its own timeout, all inside `--budget-s` (default 450): a part that
 * hangs or runs out of time gets an `error` line with the steps it finished, and the parts after it still run.
 * The timed webgpu steps refuse a software adapter unless GPT_WEBGPU_ALLOW_FALLBACK=1. Exits 1 when the golden test
 * fails or cannot run.
 */
import { parseArgs } from "node:util";
import { probeWebGPU } from "../lib/backends/webgpu/adapter.ts";
import { loadTensorflow } from "../lib/backends/tensorflow/load.ts";
import { loadExperiment } from "../lib/config.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "3" },
    "no-torch": { type: "boolean", default: false },
    experiment: { type: "string", default: "experiments/verdict.yaml" },
    "budget-s": { type: "string", default: "450" },
    part: { type: "string" }, // internal: adapter | tensorflow, in a child process
  },
});
type Json = Record<string, unknown>;
const here = (p: string) => new URL(p, import.meta.url).pathname;
const deno = Deno.execPath();
const BATCHES = [2, 8];
const print = (line: Json) => console.log(JSON.stringify(line));

if (values.part === "adapter") {
  const found = await probeWebGPU();
  if (typeof found === "string") print({ adapter: null, detail: found });
  else {
    const limits: Record<string, number> = {};
    for (const k in found.adapter.limits) {
      const v = (found.adapter.limits as unknown as Record<string, unknown>)[k];
      if (typeof v === "number") limits[k] = v;
    }
    print({
      adapter: found.description,
      fallback: found.fallback,
      limits,
      features: [...found.adapter.features].sort(),
    });
  }
  Deno.exit(0);
}
if (values.part === "tensorflow") {
  const r = await loadTensorflow(true);
  print(r.ok ? { loaded: r.detail } : { loaded: null, reason: r.reason });
  Deno.exit(0);
}

const deadline = performance.now() / 1000 + Number(values["budget-s"]);

/** A child process's JSON lines (stdout lines that parse as objects) and how it ended. */
interface Ran {
  lines: Json[];
  ok: boolean;
  /** Why it failed: the timeout, or the first error line of its stderr. */
  err: string;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd` for at most `capS` seconds and what is left of the budget (SIGTERM, SIGKILL 5 s later); keeps
 * whatever it printed before it ended.
 */
async function sub(cmd: string, args: string[], capS: number, env: Record<string, string> = {}) {
  const limitS = Math.min(capS, deadline - performance.now() / 1000 - 5);
  if (limitS < 10) {
    return { lines: [], ok: false, err: "skipped: time budget spent", stdout: "", stderr: "" };
  }
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      env: { NO_COLOR: "1", ...env },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    const err = String(e instanceof Error ? e.message : e);
    return { lines: [], ok: false, err, stdout: "", stderr: "" };
  }
  const kill = (sig: Deno.Signal) => {
    try {
      child.kill(sig);
    } catch { /* already gone */ }
  };
  let timedOut = false;
  let hard: ReturnType<typeof setTimeout> | undefined;
  const soft = setTimeout(() => {
    timedOut = true;
    kill("SIGTERM");
    hard = setTimeout(() => kill("SIGKILL"), 5000);
  }, limitS * 1000);
  const out = await child.output();
  clearTimeout(soft);
  clearTimeout(hard);
  const stdout = new TextDecoder().decode(out.stdout);
  const lines = stdout.split("\n").flatMap((l) => {
    try {
      const v = JSON.parse(l);
      return v && typeof v === "object" && !Array.isArray(v) ? [v as Json] : [];
    } catch {
      return [];
    }
  });
  const stderr = new TextDecoder().decode(out.stderr).trim();
  const errLines = stderr.split("\n");
  const err = timedOut
    ? `timed out after ${Math.round(limitS)} s`
    : errLines.find((l) => /^(error|\w*Error)\b/.test(l)) ?? errLines.slice(-2).join(" | ");
  return { lines, ok: out.success && !timedOut, err, stdout, stderr } satisfies Ran;
}

/** The end of a part's error output, to stderr (bench/gpu-run.sh keeps it in $OUT/gpu-run.log). */
function logStderr(part: string, r: Ran) {
  const tail = r.stderr.split("\n").filter((l) => l.trim()).slice(-20);
  if (tail.length) console.error(tail.map((l) => `[${part}] ${l}`).join("\n"));
}

/** Prints the part's result: its last JSON line, or an error with the steps it finished. */
function report(part: string, r: Ran): Json | null {
  logStderr(part, r);
  const last = r.lines.at(-1);
  if (r.ok && last) {
    print({ part, ...last });
    return last;
  }
  const progress = r.lines.filter((l) => l.case === "train_step_progress")
    .map(({ step, seconds, loss }) => ({ step, seconds, loss }));
  print({ part, error: r.err || "no result", ...(progress.length ? { progress } : {}) });
  return null;
}

/** bench/bench.ts's train_step case on `backend`, in its own process. */
function benchStep(backend: string, batch: number, capS: number, env: Record<string, string> = {}) {
  return sub(
    deno,
    [
      "run",
      "--cached-only",
      "--unstable-webgpu",
      "--allow-all",
      here("./bench.ts"),
      ...["--experiment", values.experiment!, "--backend", backend, "--steps", values.steps!],
      ...["--case", "train_step", "--batch", String(batch)],
    ],
    capS,
    env,
  );
}

// 1. The adapter, in a child process: a driver that hangs must not take the rest with it.
report(
  "adapter",
  await sub(deno, ["run", "--cached-only", "-A", here("./gpu.ts"), "--part", "adapter"], 60),
);

// 2. The golden test on webgpu (its CPU cases are filtered out).
const golden = await sub(deno, [
  ...["test", "--no-check", "--cached-only", "--unstable-webgpu", "-A"],
  ...["--filter", "on webgpu", here("../tests/golden_test.ts")],
], 150);
logStderr("golden", golden);
const tally = golden.stdout.match(/\d+ passed \| \d+ failed/)?.[0] ?? "no test result";
const ignored = /\b0 passed\b/.test(golden.stdout) || /\b[1-9]\d* ignored/.test(golden.stdout);
print({
  part: "golden",
  check: "golden gpt2-tiny on webgpu",
  ok: golden.ok && !ignored,
  detail: golden.ok ? (ignored ? "ignored: no WebGPU adapter" : "passed") : [
    tally,
    golden.err,
    ...golden.stdout.split("\n").filter((l) => /error|FAILED|tolerance/.test(l)).slice(0, 3),
  ].join(" | "),
});

// 3. The tensorflow backend: only where tfjs-node-gpu was installed and carried.
report(
  "tensorflow",
  await sub(deno, ["run", "--cached-only", "-A", here("./gpu.ts"), "--part", "tensorflow"], 60),
);

// 4. The training step: webgpu, the cpu backend on every core, PyTorch on CUDA; batch 2 first for each.
const cores = String(navigator.hardwareConcurrency);
const cfgPath = await Deno.makeTempFile({ suffix: ".json" });
await Deno.writeTextFile(cfgPath, JSON.stringify(await loadExperiment(values.experiment!)));
/** The first python3 that imports torch (the GPU machine's PATH has one; Debian's python3-torch is /usr/bin's). */
async function torchPython(): Promise<string> {
  for (const py of ["python3", "/usr/bin/python3"]) {
    const r = await new Deno.Command(py, { args: ["-c", "import torch"], stderr: "null" }).output()
      .catch(() => null);
    if (r?.success) return py;
  }
  return "python3"; // its part reports the import error
}
const python = values["no-torch"] ? "" : await torchPython();
const torch = (batch: number) =>
  sub(python, [here("./torch_step.py"), cfgPath, String(batch), values.steps!, cores, "cuda"], 120);
const results: Record<string, Json | null> = {};
for (const batch of BATCHES) {
  results[`webgpu b${batch}`] = report(`webgpu b${batch}`, await benchStep("webgpu", batch, 120));
  if (!values["no-torch"]) {
    results[`pytorch b${batch}`] = report(`pytorch b${batch}`, await torch(batch));
  }
  results[`cpu b${batch}`] = report(
    `cpu b${batch}`,
    await benchStep("cpu", batch, batch === 2 ? 90 : 150, {
      OPENBLAS_NUM_THREADS: cores,
      GPT_JS_THREADS: cores,
    }),
  );
}
await Deno.remove(cfgPath);

// 5. Side by side.
const num = (r: Json | null | undefined, k: string) =>
  typeof r?.[k] === "number" ? r[k] as number : null;
const losses = (r: Json | null | undefined) => Array.isArray(r?.losses) ? r.losses as number[] : [];
print({
  part: "summary",
  rows: BATCHES.map((batch) => {
    const [w, p, c] = ["webgpu", "pytorch", "cpu"].map((k) => results[`${k} b${batch}`]);
    const [lw, lc] = [losses(w), losses(c)];
    const tps = (r: Json | null | undefined) => num(r, "tokens_per_s");
    return {
      batch,
      webgpu_tokens_per_s: tps(w),
      pytorch_cuda_tokens_per_s: tps(p),
      cpu_tokens_per_s: tps(c),
      webgpu_vs_pytorch: tps(w) && tps(p) ? tps(w)! / tps(p)! : null,
      webgpu_vs_cpu: tps(w) && tps(c) ? tps(w)! / tps(c)! : null,
      loss_first_webgpu: lw[0] ?? null,
      loss_first_cpu: lc[0] ?? null,
      loss_abs_diff_per_step: lw.length && lc.length
        ? lw.slice(0, lc.length).map((l, i) => Math.abs(l - lc[i]))
        : null,
    };
  }),
});
if (!golden.ok || ignored) Deno.exit(1);
