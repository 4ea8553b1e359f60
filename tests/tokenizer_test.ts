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

Deno.test("cached BPE with a tiny cache starts over when full and still gives the same ids", async () => {
  const enc = new CachedBpe(16);
  const verdict = await Deno.readTextFile(await ensureVerdict());
  const text = verdict.slice(0, 5000) + oddText(99, 300);
  assertEquals(Array.from(enc.encode(text)), textToTokenIds(text));
  assertEquals(Array.from(enc.encode(text)), textToTokenIds(text));
  ok(enc.misses > 500, `misses ${enc.misses}: the cache was cleared and refilled`);
});

Deno.test("cached BPE's word cache does not keep the texts its words came from alive", async () => {
  // Each 1 MB text adds one new 20-letter word to the cache. Were the cache key the regex's match (a slice of the
  // text), every text would stay in memory: 40 MB here, and prepare's memory would grow with the corpus.
  const script = `
    import { CachedBpe } from "${new URL("../lib/data/bpe.ts", import.meta.url).href}";
    const enc = new CachedBpe();
    const heap = () => (globalThis.gc(), Deno.memoryUsage().heapUsed);
    const letters = (i) => [...i.toString(26).padStart(16, "0")].map((c) => String.fromCharCode(97 + parseInt(c, 26)));
    const text = (i) => " word" + letters(i).join("") + " the".repeat(250_000);
    enc.encode(text(0));
    const before = heap();
    for (let i = 1; i <= 40; i++) enc.encode(text(i));
    console.log(JSON.stringify({ grown: heap() - before, misses: enc.misses }));
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--v8-flags=--expose-gc", "--ext=js", script],
    stderr: "inherit",
  }).output();
  ok(out.success, "the child process failed");
  const { grown, misses } = JSON.parse(new TextDecoder().decode(out.stdout));
  assertEquals(misses, 2 + 40); // " the" and each text's word
  ok(grown < 8e6, `the heap grew by ${(grown / 1e6).toFixed(1)} MB over 40 texts of 1 MB`);
});
