/**
 * The suite leaves nothing in the temporary directory: every test makes its directories with `tempDir()`
 * (tests/_helpers.ts), removed when its process ends. Tests that called `Deno.makeTempDir` themselves left their
 * runs behind: 2,000 directories and 54 GB after a day of suite runs, until a checkpoint write failed for lack of
 * disk.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { tempDir } from "./_helpers.ts";

const HERE = new URL("./", import.meta.url).pathname;
/** The helpers that own a temporary directory and remove it themselves. */
const OWNERS = new Set(["_helpers.ts", "_chromium.ts"]);

Deno.test("no test file makes a temporary directory or file except through tempDir()", () => {
  const offenders: string[] = [];
  for (const e of Deno.readDirSync(HERE)) {
    if (!e.name.endsWith(".ts") || OWNERS.has(e.name)) continue;
    const text = Deno.readTextFileSync(`${HERE}${e.name}`);
    text.split("\n").forEach((line, i) => {
      if (/Deno\.makeTemp(Dir|File)(Sync)?\(/.test(line)) offenders.push(`${e.name}:${i + 1}`);
    });
  }
  assertEquals(offenders, []);
});

Deno.test("a test file run with its own TMPDIR leaves that directory empty (runlog_test.ts: six directories)", () => {
  const tmp = tempDir();
  const out = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", `${HERE}runlog_test.ts`],
    env: { TMPDIR: tmp },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  assertEquals([...Deno.readDirSync(tmp)].map((e) => e.name), []);
});
