/**
 * `deno task bench` on the experiment it is given: its matrix products (`matmul_s`, bench/matmul.ts) are those of
 * that experiment's model, not GPT-124M's, and a person gets a table of the figures on stderr while stdout keeps
 * one JSON line per case for scripts. No timing is asserted beyond what holds by construction: a step's products
 * alone never take longer than the step.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadNativeBlas } from "../lib/backends/cpu/cpu_backend.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const SMALL = "experiments/verdict-small.yaml"; // 2 layers, 64 wide, context 64

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1", GLIBC_TUNABLES: "glibc.malloc.hugetlb=1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("bench/matmul.ts --experiment: the products of that model's step (verdict-small: 128×64 activations)", async () => {
  const r = await run([
    "run",
    "--allow-all",
    "bench/matmul.ts",
    "--experiment",
    SMALL,
    "--lib",
    "wasm",
    "--threads",
    "1",
    "--reps",
    "1",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const fwd = lines.find((l) => String(l.case).startsWith("qkv/out_proj") && !l.transposeA);
  // batch 2 × context 64 tokens, emb 64: [128, 64] · [64, 64]ᵀ (GPT-124M's would be [512, 768] · [768, 768]ᵀ)
  assertEquals([fwd?.a, fwd?.b], [[128, 64], [64, 64]], JSON.stringify(fwd));
  const head = lines.filter((l) => String(l.case).startsWith("head") && l.threads === 1).slice(
    0,
    3,
  );
  assertEquals(head.map((l) => l.case), [
    "head 64→50257 fwd",
    "head 64→50257 dx",
    "head 64→50257 dW",
  ]);
});

Deno.test("deno task bench --quick --experiment verdict-small: its own matmul_s, JSON lines on stdout, a table on stderr", async () => {
  const words = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks.bench.split(/\s+/);
  const flags = words.filter((w: string) => w.startsWith("--allow") || w.startsWith("--unstable"));
  const r = await run([
    "run",
    ...flags,
    "bench/bench.ts",
    "--quick",
    "--no-torch",
    "--no-data",
    "--repeats",
    "1",
    "--experiment",
    SMALL,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l)); // every stdout line is JSON
  const cases = lines.map((l) => l.case);
  assertEquals(cases.filter((c) => c === "train_step").length >= 1, true, cases.join(", "));
  if (loadNativeBlas().ok) {
    const timed = lines.filter((l) => l.case === "train_step" && l.matmul_s !== undefined);
    ok(timed.length > 0, `no train_step line with matmul_s:\n${r.stdout}`);
    // The step runs these very products and more: its median can only be longer. GPT-124M's products (the old
    // matmul_s, about 2 s) made this ratio about 0.01 for verdict-small.
    for (const l of timed) {
      ok(l.ratio_vs_matmul >= 1, `${l.matrix_library}: ratio_vs_matmul ${l.ratio_vs_matmul}`);
    }
  }
  const table = r.stderr.trim().split("\n").filter((l) => /^\w/.test(l));
  ok(/^case\s+library\s+batch\s+median s\s+tokens\/s/.test(table[0]), r.stderr);
  assertEquals(table.length - 1, lines.length, `one table row per JSON line:\n${r.stderr}`);
  for (const [i, l] of lines.entries()) {
    ok(table[i + 1].startsWith(l.case), `${table[i + 1]} for ${l.case}`);
    if (typeof l.median_s !== "number") continue; // e.g. auto_choice: which library auto picks
    ok(table[i + 1].includes(l.median_s.toFixed(3)), `${table[i + 1]}: ${l.median_s}`);
  }
});
