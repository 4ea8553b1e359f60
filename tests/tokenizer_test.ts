import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { bulkEncoder, textToTokenIds } from "../lib/tokenizer.ts";
import { ensureVerdict } from "./_helpers.ts";

const SAMPLE =
  "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace. naïve 🙂";

Deno.test("bulk encoder (npm tiktoken, WASM) gives js-tiktoken's ids on The Verdict and odd text", async () => {
  const enc = await bulkEncoder();
  assertEquals(enc.name, "tiktoken");
  const verdict = await Deno.readTextFile(await ensureVerdict());
  const odd = "naïve café 東京 🙂\r\n\t  <|endoftext|>x  \u00a0end<|endoftext|>";
  for (
    const text of [verdict, odd, "", " ", "Hello, do you like tea? <|endoftext|> In the sunlit"]
  ) {
    assertEquals(Array.from(enc.encode(text)), textToTokenIds(text));
  }
});

Deno.test("bulk encoder falls back to js-tiktoken where the WASM cannot load (no --allow-read), same ids", async () => {
  const script = `import { bulkEncoder } from "./lib/tokenizer.ts";
const e = await bulkEncoder();
console.log(JSON.stringify([e.name, Array.from(e.encode(${JSON.stringify(SAMPLE)}))]));`;
  for (const [flags, want] of [[[], "js-tiktoken"], [["--allow-read"], "tiktoken"]] as const) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", ...flags, "-"],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(script));
    await w.close();
    const out = await child.output();
    const [name, ids] = JSON.parse(new TextDecoder().decode(out.stdout).trim());
    assertEquals(name, want);
    assertEquals(ids, textToTokenIds(SAMPLE));
  }
});
