/** Shared test helpers. */
import { type Config, loadExperiment } from "../lib/config.ts";

/** Copies The Verdict from ../shared/data into data/ when missing; returns its path. */
export async function ensureVerdict(): Promise<string> {
  const dest = "data/the-verdict.txt";
  try {
    await Deno.stat(dest);
    return dest;
  } catch {
    const src = new URL("../../shared/data/the-verdict.txt", import.meta.url);
    await Deno.mkdir("data", { recursive: true });
    await Deno.copyFile(src, dest);
    return dest;
  }
}

/** Words of the generated documents of {@link buildCorpus}. */
const WORDS =
  ("the a painter studio canvas light morning sketch picture wife money fame house garden " +
    "brush colour quiet laugh said looked never always again great small old new").split(" ");

/**
 * A deterministic pseudo-English document of `words` words (sentences of 6–15 words), for corpus tests and the
 * generated part of experiments/corpus-small.yaml's corpus.
 */
export function generatedText(seed: number, words: number): string {
  let s = seed >>> 0;
  const rand = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
  const out: string[] = [];
  let sentence: string[] = [];
  for (let i = 0; i < words; i++) {
    sentence.push(WORDS[Math.floor(rand() * WORDS.length)]);
    if (sentence.length >= 6 + Math.floor(rand() * 10) || i === words - 1) {
      const t = sentence.join(" ");
      out.push(t[0].toUpperCase() + t.slice(1) + ".");
      sentence = [];
    }
  }
  return out.join(" ") + "\n";
}

/**
 * Builds the multi-file corpus of experiments/corpus-small.yaml in `dir` (default data/corpus-small): The Verdict
 * cut at paragraph breaks into 8 documents, plus 4 generated documents. Returns the file paths, sorted.
 */
export async function buildCorpus(dir = "data/corpus-small"): Promise<string[]> {
  const text = await Deno.readTextFile(await ensureVerdict());
  await Deno.mkdir(dir, { recursive: true });
  const paras = text.split("\n\n");
  const n = 8, k = Math.floor(paras.length / n);
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const doc = paras.slice(i * k, i === n - 1 ? undefined : (i + 1) * k).join("\n\n");
    files.push(`${dir}/verdict-${i}.txt`);
    await writeIfChanged(files.at(-1)!, doc);
  }
  for (let i = 0; i < 4; i++) {
    files.push(`${dir}/generated-${i}.txt`);
    await writeIfChanged(files.at(-1)!, generatedText(i + 1, 800));
  }
  return files.sort();
}

async function writeIfChanged(path: string, text: string) {
  try {
    if (await Deno.readTextFile(path) === text) return; // keeps mtimes, so prepare stays a no-op
  } catch { /* missing */ }
  await Deno.writeTextFile(path, text);
}

/**
 * A test-name suffix saying why a test is ignored (`reason` non-null), so that `deno test` prints the reason on
 * the test's one "ignored" line; empty when it runs.
 */
export function ignoredBecause(reason: string | null): string {
  return reason === null ? "" : ` (ignored: ${reason})`;
}

/** The reason line of a test ignored because OpenBLAS (libopenblas.so.0) cannot be loaded here. */
export const NO_OPENBLAS = "OpenBLAS (libopenblas.so.0) not loadable here";

/** The reason line of a test ignored because no python3 here imports torch. */
export const NO_TORCH = "no python3 with torch here (apt-get install python3-torch)";

/** A python3 that imports torch, or null. */
export async function torchPython(): Promise<string | null> {
  for (const py of ["python3", "/usr/bin/python3"]) {
    try {
      const r = await new Deno.Command(py, { args: ["-c", "import torch.nn"], stderr: "null" })
        .output();
      if (r.success) return py;
    } catch {
      // not installed
    }
  }
  return null;
}

const tempDirs: string[] = [];
/**
 * A temporary directory, removed when the test process ends (a test may remove it first). Every test makes its
 * directories here: a suite run once left 2,000 of them, 54 GB, until the disk was full.
 */
export function tempDir(): string {
  tempDirs.push(Deno.makeTempDirSync({ prefix: "gpt-ts-test-" }));
  return tempDirs.at(-1)!;
}
globalThis.addEventListener("unload", () => {
  for (const d of tempDirs) {
    try {
      Deno.removeSync(d, { recursive: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
});

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * `deno run` arguments that run task `name` as `deno task name` does: its permission (and `--unstable-*`) flags
 * and its script from
 * deno.json, the project's config, then `args` (for tests that spawn a task from another working directory).
 */
export function taskArgs(name: string, args: string[]): string[] {
  const words: string[] = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks[name]
    .split(/\s+/);
  const script = words.find((w) => w.endsWith(".ts"))!;
  const flags = words.filter((w) => w.startsWith("--allow") || w.startsWith("--unstable"));
  return ["run", ...flags, "--config", `${ROOT}deno.json`, `${ROOT}${script}`, ...args];
}

/** `--set` overrides that shrink verdict-small.yaml to a 2-layer, 32-wide GPT over 16 tokens with qkv bias. */
export const TINY_GPT = [
  "model.context_length=16",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=2",
  "model.qkv_bias=true",
];

/**
 * `--set` overrides that shrink verdict-small.yaml to a 1-layer, 32-wide GPT over 32 tokens in batches of 16: a
 * whole run in seconds. Tests add their epochs and evaluation settings.
 */
export const TINY_RUN = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "data.batch_size=16",
];

/** verdict-small.yaml under `name` with `overrides` (`--set` values), The Verdict in place first. */
export async function verdictSmall(name: string, overrides: string[]): Promise<Config> {
  await ensureVerdict();
  return await loadExperiment("experiments/verdict-small.yaml", [...overrides, `name=${name}`]);
}

/**
 * The folder of the shared PyTorch fixtures: `GPT_FIXTURES_DIR` when set (bench/gpu-run.sh carries them to a
 * machine without ../shared), else ../shared/fixtures beside the checkout.
 */
export function fixturesDir(): URL {
  const dir = Deno.env.get("GPT_FIXTURES_DIR");
  return dir
    ? new URL(dir.replace(/\/?$/, "/"), `file://${Deno.cwd()}/`) // relative to the working directory
    : new URL("../../shared/fixtures/", import.meta.url);
}

/**
 * Reads from the FIFO at `path`, where `child` is writing a file that would otherwise be a temporary file (a test
 * makes the FIFO there before the child starts), until `bytes` or more have come: the child is then in the middle
 * of that write, blocked on the rest, so a signal sent now finds it there however fast the machine. Throws
 * `failure()` if the child exits first. The caller closes the returned file once the child is gone.
 */
export async function readFromFifo(
  path: string,
  child: Deno.ChildProcess,
  bytes: number,
  failure: () => string,
): Promise<Deno.FsFile> {
  // Read and write: the open never blocks, the writer's open goes through, and no read ever sees an end of file.
  const pipe = await Deno.open(path, { read: true, write: true });
  const exited = child.status.then(() => null);
  const buf = new Uint8Array(1 << 16);
  for (let got = 0; got < bytes;) {
    const n = await Promise.race([pipe.read(buf), exited]);
    if (n === null) {
      // A byte from another handle ends the read still pending (ops on one file wait for each other).
      const end = await Deno.open(path, { write: true });
      await end.write(new Uint8Array(1));
      end.close();
      pipe.close();
      throw new Error(`exited before writing ${bytes} bytes (${got} came): ${failure()}`);
    }
    got += n;
  }
  return pipe;
}
