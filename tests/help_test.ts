/**
 * `deno task <name> --help` answers for every task in deno.json, as a user types it: exit 0, the usage on stdout,
 * nothing on stderr that reads as a failure (no `error`, no stack trace). Before, `bench --help` died on an unknown
 * option and `build-wasm --help` tried to start clang.
 */
import { ok } from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;
const TASKS: Record<string, string> = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks;

/** What a task's help must start with: ours print `usage: deno task <name>`; `test` is Deno's own `deno test`. */
function expectedUsage(name: string): RegExp {
  const ours = TASKS[name].split(/\s+/).some((w) => w.endsWith(".ts"));
  return ours ? new RegExp(`^usage: deno task ${name}\\b`) : /^Usage: deno test\b/m;
}

Deno.test(`--help answers for all ${Object.keys(TASKS).length} tasks in deno.json (exit 0, usage, no error)`, async () => {
  const failures: string[] = [];
  for (const name of Object.keys(TASKS)) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "--config", `${ROOT}deno.json`, name, "--help"],
      cwd: ROOT,
      env: { NO_COLOR: "1", GPT_DEBUG: "" },
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(120_000), // a hang guard: help must not start the work
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    const why = out.code !== 0
      ? `exit ${out.code}`
      : !expectedUsage(name).test(stdout)
      ? `stdout does not start with its usage: ${JSON.stringify(stdout.slice(0, 80))}`
      : /error|uncaught|^\s+at /im.test(stderr)
      ? "an error on stderr"
      : null;
    if (why) {
      failures.push(`${name} --help: ${why}\n    ${stderr.trim().split("\n").join("\n    ")}`);
    }
  }
  ok(failures.length === 0, failures.join("\n"));
});
