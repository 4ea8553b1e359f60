/**
 * Messages that tell a user what to type: a bad `--backend` or `--precision` is named as the flag that was typed
 * (not as a `--set` nobody wrote), and a `--resume` under another config lists the `--set` flags that resume it with
 * its own settings, which then work as given.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { spawnTask, tinyProject, trainIn } from "./_cases.ts";

Deno.test("a bad --backend or --precision is named as typed, in train, eval and sample", async () => {
  const dir = await tinyProject("tiny");
  for (const task of ["train", "eval", "sample"]) {
    for (const [flag, value] of [["--backend", "gpu"], ["--precision", "bf16"]]) {
      const r = await spawnTask(dir, task, ["tiny.yaml", flag, value]);
      assertEquals([r.code, r.err.length], [2, 1], r.err.join("\n"));
      ok(r.err[0].startsWith(`error: ${flag} ${value}: `), `${task}: ${r.err[0]}`);
    }
  }
});

/** The words of a POSIX shell line that uses single quotes only (what resumeSettings writes). */
function shellWords(line: string): string[] {
  return [...line.matchAll(/'((?:[^']|'\\'')*)'|(\S+)/g)].map((m) =>
    m[2] ?? m[1].replaceAll("'\\''", "'")
  );
}

Deno.test("--resume under another config: the message lists the --set flags to type, and they resume the run", async () => {
  const dir = await tinyProject("tiny");
  await trainIn(dir, "tiny.yaml");
  const changed = ["--set", "training.lr=0.002", "--set", "training.start_context=It's here"];
  const r = await spawnTask(dir, "train", ["tiny.yaml", "--resume", ...changed]);
  assertEquals([r.code, r.err.length], [2, 1], r.err.join("\n"));
  const m = r.err[0].match(/resume with its settings \((--set .*?)\), or /);
  ok(m, r.err[0]);
  const settings = shellWords(m[1]);
  assertEquals(settings, [
    "--set",
    "training.lr=0.0004",
    "--set",
    "training.start_context=Every effort moves you",
  ]);
  const more = ["--set", "training.epochs=2"];
  const again = await spawnTask(dir, "train", [
    "tiny.yaml",
    "--resume",
    ...changed,
    ...settings,
    ...more,
  ]);
  assertEquals(again.code, 0, again.err.join("\n"));
  const log = await Deno.readTextFile(`${dir}/checkpoints/tiny/log.jsonl`);
  assertEquals(log.split("\n").filter((l) => l.includes('"type":"header"')).length, 2);
});
