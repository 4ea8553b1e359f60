import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { CachedBpe } from "../lib/data/bpe.ts";
import { textToTokenIds } from "../lib/data/tokenizer.ts";
import { ensureVerdict, generatedText } from "./_helpers.ts";

/** Seeded text from every character class GPT-2's pre-tokenizer distinguishes, in random runs. */
function oddText(seed: number, runs: number): string {
  let s = seed >>> 0;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
  const classes = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
    "0123456789",
    ".,;:!?-()\"'«»…",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "\u00a0",
    "\u3000",
    "éàüñçøß",
    "東京日本語テキスト",
    "🙂🚀👍🏽",
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'S",
    "<|endoftext|>",
    "١٢٣",
    "Ωπλ",
  ];
  let out = "";
  for (let i = 0; i < runs; i++) {
    const c = [...classes[Math.floor(rand() * classes.length)]];
    const n = 1 + Math.floor(rand() * 4);
    for (let k = 0; k < n; k++) out += c.length > 3 ? c[Math.floor(rand() * c.length)] : c.join("");
  }
  return out;
}

Deno.test("cached BPE gives js-tiktoken's ids: The Verdict, generated prose, every character class", async () => {
  const enc = new CachedBpe();
  const verdict = await Deno.readTextFile(await ensureVerdict());
  const texts = [
    verdict,
    generatedText(3, 5000),
    "",
    " ",
    "x",
    "<|endoftext|>",
    "a<|endoftext|><|endoftext|>b",
  ];
  texts.push("lone \ud83d surrogates\udc00 here 🙂 \ud800", "\u0800\uffff\u07ff\u0080 end");
  for (let seed = 1; seed <= 20; seed++) texts.push(oddText(seed, 400));
  for (const text of texts) {
    assertEquals(Array.from(enc.encode(text)), textToTokenIds(text), text.slice(0, 80));
  }
  // The second pass over The Verdict comes from the cache, with the same ids.
  const misses = enc.misses;
  assertEquals(Array.from(enc.encode(verdict)), textToTokenIds(verdict));
  assertEquals(enc.misses, misses);
  ok(enc.hits > 5000, `hits ${enc.hits}`);
});

Deno.test("cached BPE with a tiny cache turns its generations over when full and still gives the same ids", async () => {
  const enc = new CachedBpe(16);
  const verdict = await Deno.readTextFile(await ensureVerdict());
  const text = verdict.slice(0, 5000) + oddText(99, 300);
  assertEquals(Array.from(enc.encode(text)), textToTokenIds(text));
  assertEquals(Array.from(enc.encode(text)), textToTokenIds(text));
  ok(enc.misses > 500, `misses ${enc.misses}: the cache dropped words and merged them again`);
});

Deno.test("cached BPE keeps frequent words through the cache's turnover (two generations)", () => {
  // 2,000 distinct words pass through a cache of 64, with " the" between every two: " the" is merged once only,
  // where a cache that starts over when full would merge it again after every turnover.
  const enc = new CachedBpe(64);
  const letters = (i: number) =>
    [...i.toString(26)].map((c) => String.fromCharCode(97 + parseInt(c, 26))).join("");
  const words = Array.from({ length: 2000 }, (_, i) => " w" + letters(i));
  const text = words.map((w) => w + " the").join("");
  assertEquals(Array.from(enc.encode(text)), textToTokenIds(text));
  assertEquals(enc.misses, words.length + 1);
});
