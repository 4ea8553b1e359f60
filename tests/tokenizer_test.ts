import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { bulkEncoder, textToTokenIds } from "../lib/tokenizer.ts";
import { ensureVerdict } from "./_helpers.ts";

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
