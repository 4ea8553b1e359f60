/**
 * No command loses a file a user named for its output (lib/outputs.ts): every task that takes an output path, run
 * as `deno task` runs it, refuses an existing file with content and a non-empty directory that it did not write
 * (exit 2, one line naming the path, both byte-for-byte unchanged, nothing else in the project written), and
 * writes again over its own earlier output. Also: `handoff` of a finished run says that nothing is left to train.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { fileHashes, spawnTask, TINY_YAML, tinyProject, trainIn } from "./_cases.ts";
import { outputMark } from "../lib/outputs.ts";

/** [task, its arguments with OUT where the output path goes, what the output is]. */
type Case = [string, string[], "file" | "dir"];
const CASES: Case[] = [
  ["handoff", ["tiny.yaml", "--set", "training.epochs=2", "--out", "OUT"], "dir"],
  ["export", ["tiny.yaml", "--out", "OUT"], "dir"],
  ["compare", ["tiny", "--out", "OUT"], "file"],
  ["train", ["sweep.yaml", "--slurm-array", "OUT"], "file"],
  ["train", ["sweep.yaml", "--k8s-job", "OUT"], "file"],
];

let shared: Promise<string> | null = null;
/** A project with run `tiny` trained for one epoch and a sweep file over it (one for every test: none changes it). */
function project(): Promise<string> {
  return shared ??= makeProject();
}

async function makeProject(): Promise<string> {
  const dir = await tinyProject("tiny");
  await trainIn(dir, "tiny.yaml");
  await Deno.writeTextFile(
    `${dir}/sweep.yaml`,
    TINY_YAML + "sweep:\n  training.lr: [0.001, 0.002]\n",
  );
  return dir;
}

const args = (c: Case, out: string) => c[1].map((a) => a === "OUT" ? out : a);
const label = (c: Case) => `${c[0]} ${c[1].find((a) => a.startsWith("--") && a !== "--set")}`;

/** A user's file where the output would go: a file with text, or a directory holding one. */
async function usersThing(dir: string, path: string, as: "file" | "dir") {
  const notes = "my notes: do not lose these\n".repeat(20);
  if (as === "file") return await Deno.writeTextFile(`${dir}/${path}`, notes);
  await Deno.mkdir(`${dir}/${path}`);
  await Deno.writeTextFile(`${dir}/${path}/notes.txt`, notes);
}

Deno.test("every output path: a user's file or non-empty directory there is refused (exit 2, one line), unchanged", async () => {
  const dir = await project();
  const failures: string[] = [];
  for (const c of CASES) {
    for (const as of ["file", "dir"] as const) {
      const path = `mine-${as}`;
      await usersThing(dir, path, as);
      const before = await fileHashes(dir);
      const r = await spawnTask(dir, c[0], args(c, path));
      const line = r.err.at(-1) ?? "";
      const why = r.code !== 2
        ? `exit ${r.code}`
        : r.err.length !== 1
        ? `${r.err.length} lines`
        : !line.startsWith("error: ") || !line.includes(path)
        ? "the line does not name the path"
        : !/name a new/.test(line)
        ? "the line does not say what to do"
        : null;
      if (why) failures.push(`${label(c)} over a ${as}: ${why}\n    ${r.err.join("\n    ")}`);
      assertEquals(await fileHashes(dir), before, `${label(c)} over a ${as}: files changed`);
      await Deno.remove(`${dir}/${path}`, { recursive: true });
    }
  }
  ok(failures.length === 0, failures.join("\n"));
});

Deno.test("every output path: a second run writes over the command's own earlier output", async () => {
  const dir = await project();
  for (const [i, c] of CASES.entries()) {
    const out = `out-${i}`;
    for (const time of ["first", "second"]) {
      const r = await spawnTask(dir, c[0], args(c, out));
      assertEquals(r.code, 0, `${label(c)}, ${time} time:\n${r.err.join("\n")}`);
      const info = await Deno.stat(`${dir}/${out}`);
      assertEquals(info.isDirectory, c[2] === "dir", label(c));
    }
  }
});

/** [task, its arguments with OUT, the file the old mark is in (OUT itself, or a manifest in OUT), its text then]. */
const OLD_MARKS: [string, string[], string, string][] = [
  [
    "compare",
    ["tiny", "--out", "OUT"],
    "",
    '<!-- written by gpt-ts: deno task compare --out -->\n<svg xmlns="http://www.w3.org/2000/svg"/>\n',
  ],
  [
    "train",
    ["sweep.yaml", "--slurm-array", "OUT"],
    "",
    "#!/bin/bash\n# written by gpt-ts: deno task train --slurm-array\necho old\n",
  ],
  [
    "train",
    ["sweep.yaml", "--k8s-job", "OUT"],
    "",
    "# written by gpt-ts: deno task train --k8s-job\nkind: Job\n",
  ],
  [
    "export",
    ["tiny.yaml", "--out", "OUT"],
    "/gpt-ts-export.json",
    '{"written_by": "written by gpt-ts: deno task export --out"}\n',
  ],
];

Deno.test("every output path: an output written with the old mark (`deno task compare --out`, whose -- no XML comment may hold) is replaced, and the new one carries the new mark", async () => {
  const dir = await project();
  for (const [i, [name, argv, inside, text]] of OLD_MARKS.entries()) {
    const out = `old-${i}`;
    if (inside) await Deno.mkdir(`${dir}/${out}`);
    await Deno.writeTextFile(`${dir}/${out}${inside}`, text);
    const r = await spawnTask(dir, name, argv.map((a) => a === "OUT" ? out : a));
    const what = `${name} ${argv.find((a) => a.startsWith("--") && a !== "--set")}`;
    assertEquals(r.code, 0, `${what} over its old output:\n${r.err.join("\n")}`);
    const now = await Deno.readTextFile(`${dir}/${out}${inside}`);
    ok(now.includes(outputMark(what)), `${what}: no new mark in\n${now.slice(0, 300)}`);
    ok(!now.includes(`deno task ${what}`), `${what}: the old mark in\n${now.slice(0, 300)}`);
  }
});

Deno.test("handoff: a hand-off that was trained on since is not replaced", async () => {
  const dir = await project();
  const handoff = (out: string) =>
    spawnTask(dir, "handoff", ["tiny.yaml", "--set", "training.epochs=2", "--out", out]);
  assertEquals((await handoff("h")).code, 0);
  await Deno.writeTextFile(`${dir}/h/log.jsonl`, '{"type":"header","engine":"torch-ddp"}\n', {
    append: true,
  });
  const before = await fileHashes(dir);
  const r = await handoff("h");
  assertEquals([r.code, r.err.length], [2, 1], r.err.join("\n"));
  ok(/handoff --out h: its log.jsonl grew since the hand-off/.test(r.err[0]), r.err[0]);
  assertEquals(await fileHashes(dir), before);
});

Deno.test("handoff of a finished run: nothing left to train, exit 2, one line naming training.epochs", async () => {
  const dir = await project();
  const before = await fileHashes(dir);
  const r = await spawnTask(dir, "handoff", ["tiny.yaml", "--out", "h-done"]);
  assertEquals([r.code, r.err.length], [2, 1], r.err.join("\n"));
  ok(/nothing left to hand off.*training\.epochs/.test(r.err[0]), r.err[0]);
  assertEquals(await fileHashes(dir), before);
});
