/**
 * Every file the project writes for people or for other tools opens in a real parser of its format, not the
 * project's own reader: a tiny run trained, evaluated (report.md, report.json, loss.svg), compared to an SVG, exported
 * (Hugging Face files), handed off (launch.sh, handoff.json, the checkpoint), a sweep's Slurm script and Kubernetes
 * Job, a prepared corpus's index, and what the dashboard serves. SVG: Python's xml.etree and Chromium (where
 * installed; a page showing a parse error fails); JSON and JSON Lines: Python's json (no NaN) and JSON.parse; YAML:
 * npm yaml and PyYAML; shell scripts: `bash -n` (and Slurm's rule that #SBATCH lines come before any command);
 * safetensors: the header per the format's spec, in Python. A file of a kind with no parser here fails the test,
 * so a new writer must bring its check.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { spawnTask, TINY_YAML, tinyProject, trainIn } from "./_cases.ts";
import { Browser, findChromium } from "./_chromium.ts";
import { startDashboard } from "../lib/views/dashboard/server.ts";

const CHECKER = new URL("./_check_formats.py", import.meta.url).pathname;

/** The files the test expects to find, one or more per writer (paths below the project directory). */
const WRITTEN = [
  "checkpoints/tiny/log.jsonl",
  "checkpoints/tiny/checkpoint.safetensors",
  "checkpoints/tiny/report.md",
  "checkpoints/tiny/report.json",
  "checkpoints/tiny/loss.svg",
  "compare.svg",
  "sweep.sbatch",
  "sweep-job.yaml",
  "hf/model.safetensors",
  "hf/config.json",
  "hf/gpt-ts-export.json",
  "h/handoff.json",
  "h/launch.sh",
  "h/checkpoint.safetensors",
  "h/log.jsonl",
  "data/corpus.shards/index.json",
];

/** Runs a task in `dir` and fails with its stderr unless it exits 0. */
async function task(dir: string, name: string, ...args: string[]) {
  const r = await spawnTask(dir, name, args);
  assertEquals(r.code, 0, `${name} ${args.join(" ")}:\n${r.err.join("\n")}`);
}

/** A project in which every writer has written its files (see {@link WRITTEN}). */
async function writeEverything(): Promise<string> {
  const dir = await tinyProject("tiny");
  await trainIn(dir, "tiny.yaml");
  await Deno.writeTextFile(
    `${dir}/sweep.yaml`,
    TINY_YAML + "sweep:\n  training.lr: [0.001, 0.002]\n",
  );
  await Deno.mkdir(`${dir}/data/corpus`);
  const verdict = await Deno.readTextFile(`${dir}/data/the-verdict.txt`);
  for (const [i, part] of verdict.split("\n\n").slice(0, 12).entries()) {
    await Deno.writeTextFile(`${dir}/data/corpus/part-${i}.txt`, part);
  }
  await Deno.writeTextFile(
    `${dir}/corpus.yaml`,
    TINY_YAML + "data: {path: data/corpus, train_ratio: 0.7}\n",
  );
  await task(dir, "eval", "tiny.yaml", "--num-batches", "1");
  await task(dir, "compare", "tiny", "--out", "compare.svg");
  await task(
    dir,
    "train",
    "sweep.yaml",
    "--slurm-array",
    "sweep.sbatch",
    "--k8s-job",
    "sweep-job.yaml",
  );
  await task(dir, "export", "tiny.yaml", "--out", "hf");
  await task(dir, "handoff", "tiny.yaml", "--set", "training.epochs=2", "--out", "h");
  await task(dir, "prepare", "corpus.yaml");
  return dir;
}

/** Problems Python's parsers find in `files` of `kind` (one `<file>: <problem>` each; a skip is not one). */
async function python(kind: string, files: string[]): Promise<string[]> {
  if (!files.length) return [];
  const out = await new Deno.Command("python3", { args: [CHECKER, kind, ...files] }).output();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).split("\n")
    .filter((l) => l.trim() !== "" && !/: skipped \(/.test(l));
}

/** `bash -n` on a script, and for a Slurm script: every #SBATCH line before the first command. */
async function shellProblems(path: string): Promise<string[]> {
  const out = await new Deno.Command("bash", { args: ["-n", path], stderr: "piped" }).output();
  const problems = out.success ? [] : [`${path}: ${new TextDecoder().decode(out.stderr).trim()}`];
  const lines = (await Deno.readTextFile(path)).split("\n");
  const firstCommand = lines.findIndex((l) => l.trim() !== "" && !l.trimStart().startsWith("#"));
  const lastSbatch = lines.findLastIndex((l) => l.startsWith("#SBATCH"));
  if (firstCommand >= 0 && lastSbatch > firstCommand) {
    problems.push(`${path}: #SBATCH on line ${lastSbatch + 1} after a command (Slurm ignores it)`);
  }
  return problems;
}

/** JSON Lines: every line a JSON value (JSON.parse). */
async function jsonLinesProblems(path: string): Promise<string[]> {
  const lines = (await Deno.readTextFile(path)).split("\n").filter((l) => l !== "");
  return lines.flatMap((l, i) => {
    try {
      JSON.parse(l);
      return [];
    } catch (err) {
      return [`${path}:${i + 1}: ${(err as Error).message}`];
    }
  });
}

/** YAML (npm yaml, strict): no errors or warnings in any document. */
async function yamlProblems(path: string): Promise<string[]> {
  const docs = parseAllDocuments(await Deno.readTextFile(path), { strict: true });
  const list = Array.isArray(docs) ? docs : [];
  return list.flatMap((d) => [...d.errors, ...d.warnings]).map((e) => `${path}: ${e.message}`);
}

/** Markdown: every table's rows have as many cells as its header. */
async function markdownProblems(path: string): Promise<string[]> {
  const cells = (l: string) => l.trim().replace(/^\||\|$/g, "").split(/(?<!\\)\|/).length;
  const lines = (await Deno.readTextFile(path)).split("\n");
  const out: string[] = [];
  let width = 0;
  lines.forEach((l, i) => {
    if (!l.trimStart().startsWith("|")) return void (width = 0);
    if (width === 0) width = cells(l);
    else if (cells(l) !== width) out.push(`${path}:${i + 1}: ${cells(l)} cells, header ${width}`);
  });
  return out;
}

/** Every file under `dir`, relative to it. */
async function filesUnder(dir: string, sub = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${dir}/${sub}`)) {
    const rel = sub ? `${sub}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await filesUnder(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

/** The files of each kind of check; `inputs` are what the test wrote itself (YAML, text) or raw token ids. */
function byKind(files: string[]) {
  const ends = (...exts: string[]) => files.filter((f) => exts.some((x) => f.endsWith(x)));
  const kinds = {
    svg: ends(".svg"),
    json: ends(".json"),
    jsonl: ends(".jsonl"),
    yaml: ends(".yaml", ".yml"),
    shell: ends(".sh", ".sbatch"),
    safetensors: ends(".safetensors"),
    markdown: ends(".md"),
    inputs: ends(".txt", ".bin"),
  };
  const known = new Set(Object.values(kinds).flat());
  return { kinds, unknown: files.filter((f) => !known.has(f)) };
}

Deno.test("every file the project writes parses with a real parser of its format", async () => {
  const dir = await writeEverything();
  const files = await filesUnder(dir);
  for (const f of WRITTEN) ok(files.includes(f), `${f} was not written: ${files.join(", ")}`);
  const { kinds, unknown } = byKind(files);
  assertEquals(unknown, [], "files of a kind this test has no parser for");
  const at = (fs: string[]) => fs.map((f) => `${dir}/${f}`);
  const problems = [
    ...await python("xml", at(kinds.svg)),
    ...await python("json", at(kinds.json)),
    ...await python("yaml", at(kinds.yaml)),
    ...await python("safetensors", at(kinds.safetensors)),
    ...(await Promise.all(at(kinds.jsonl).map(jsonLinesProblems))).flat(),
    ...(await Promise.all(at(kinds.yaml).map(yamlProblems))).flat(),
    ...(await Promise.all(at(kinds.shell).map(shellProblems))).flat(),
    ...(await Promise.all(at(kinds.markdown).map(markdownProblems))).flat(),
    ...await chromiumProblems(dir, at(kinds.svg)),
  ];
  assertEquals(problems, []);
});

/**
 * In Chromium (when installed): each SVG file opens as an SVG document with no parse error, and the dashboard's
 * page over the project's runs loads with no parse error and no uncaught exception, its JSON answers parse.
 */
async function chromiumProblems(dir: string, svgs: string[]): Promise<string[]> {
  const bin = findChromium();
  if (!bin) return [];
  const browser = await Browser.launch(bin, 1000, 700);
  const dash = startDashboard(`${dir}/checkpoints`, { port: 0 });
  const problems: string[] = [];
  try {
    for (const svg of svgs) {
      await browser.goto(`file://${svg}`);
      const root = await browser.eval<string>(
        "document.querySelector('parsererror') ? 'parse error: ' + " +
          "document.querySelector('parsererror').textContent : document.documentElement.localName",
      );
      if (root !== "svg") problems.push(`${svg} in Chromium: ${root}`);
    }
    const thrown: string[] = [];
    browser.on("Runtime.exceptionThrown", (p) => thrown.push(JSON.stringify(p).slice(0, 300)));
    await browser.send("Runtime.enable");
    await browser.goto(dash.url);
    await browser.waitFor("document.querySelectorAll('#runs tbody tr').length > 0");
    if (await browser.eval("!!document.querySelector('parsererror')")) {
      problems.push("the dashboard page in Chromium: parse error");
    }
    problems.push(...thrown.map((t) => `the dashboard page threw: ${t}`));
    for (const api of ["api/runs", "api/run?run=tiny", "api/diff?run=tiny"]) {
      const text = await (await fetch(`${dash.url}${api}`)).text();
      try {
        JSON.parse(text);
      } catch (err) {
        problems.push(`dashboard /${api}: ${(err as Error).message}`);
      }
    }
  } finally {
    await dash.shutdown();
    await browser.close();
  }
  return problems;
}
