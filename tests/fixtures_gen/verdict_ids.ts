/**
 * Prints the GPT-2 token ids of The Verdict's train and val parts (the book's character split at `train_ratio`
 * 0.9) as JSON, encoded by js-tiktoken directly (OpenAI's tiktoken ported, not this project's code), for
 * tests/fixtures_gen/gpt2_tiny.py, whose Python has no GPT-2 tokenizer.
 * Usage: deno run --allow-read tests/fixtures_gen/verdict_ids.ts <the-verdict.txt>
 */
import { getEncoding } from "js-tiktoken";

const text = await Deno.readTextFile(Deno.args[0]);
const split = Math.floor(0.9 * text.length);
const enc = getEncoding("gpt2");
console.log(JSON.stringify({
  split,
  train: enc.encode(text.slice(0, split), ["<|endoftext|>"]),
  val: enc.encode(text.slice(split), ["<|endoftext|>"]),
}));
