/**
 * What the bad-input tests (bad_input_test.ts, data_meets_model_test.ts) share: a tiny project directory, a run
 * trained in it, the files a case writes first, and a snapshot of what is on disk to compare after the case.
 */
import { loadExperiment } from "../lib/config.ts";
import { type RunResult, runTraining } from "../lib/runs/run.ts";
import { ensureVerdict, taskArgs, tempDir } from "./_helpers.ts";

/** An experiment file for a 1-layer, 32-wide GPT over 32 tokens, one epoch on The Verdict. */
export const TINY_YAML =
  "model: {context_length: 32, emb_dim: 32, n_heads: 2, n_layers: 1}\ntraining: {epochs: 1}\n";

/** A fresh temporary project directory: data/the-verdict.txt and `<name>.yaml` holding {@link TINY_YAML}. */
export async function tinyProject(name: string): Promise<string> {
  const dir = tempDir();
  await Deno.mkdir(`${dir}/data`);
  await Deno.copyFile(await ensureVerdict(), `${dir}/data/the-verdict.txt`);
  await Deno.writeTextFile(`${dir}/${name}.yaml`, TINY_YAML);
  return dir;
}

/** Trains the experiment file `yaml` in this process with `dir` as the working directory, quietly. */
export async function trainIn(dir: string, yaml: string): Promise<RunResult> {
  const cwd = Deno.cwd();
  Deno.chdir(dir);
  try {
    return await runTraining(await loadExperiment(yaml), { print: () => {}, progress: false });
  } finally {
    Deno.chdir(cwd);
  }
}

/** Writes a case's files under `dir`, making their folders: a string as text, bytes as they are. */
export async function writeFiles(dir: string, files: Record<string, string | Uint8Array>) {
  for (const [path, content] of Object.entries(files)) {
    await Deno.mkdir(`${dir}/${path}`.replace(/\/[^/]+$/, ""), { recursive: true });
    if (typeof content === "string") await Deno.writeTextFile(`${dir}/${path}`, content);
    else await Deno.writeFile(`${dir}/${path}`, content);
  }
}

/** Every file under `dir`, by its path below `dir`, with what `describe` says of it (its size, its hash…). */
export async function fileStates(
  dir: string,
  describe: (path: string) => Promise<string>,
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else out.set(p.slice(dir.length), await describe(p));
    }
  };
  await walk(dir);
  return out;
}

/**
 * Runs task `name` in `dir` as `deno task name` would (its own permission flags from deno.json); returns its exit
 * code, its non-blank stderr lines and its stdout. A task still running after 5 minutes is killed.
 */
export async function spawnTask(
  dir: string,
  name: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; err: string[]; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: taskArgs(name, args),
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
    env: { GPT_DEBUG: "", NO_COLOR: "1", ...env },
    signal: AbortSignal.timeout(5 * 60_000), // a hang guard only: a task that serves forever is a failure
  }).output();
  const text = new TextDecoder();
  const err = text.decode(out.stderr).split("\n").filter((l) => l.trim() !== "");
  return { code: out.code, err, stdout: text.decode(out.stdout) };
}

/** Every file under `dir` with its SHA-256: compare two of these to prove nothing there changed. */
export async function fileHashes(dir: string): Promise<Map<string, string>> {
  return await fileStates(dir, async (p) => {
    const d = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(p)));
    return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
  });
}
