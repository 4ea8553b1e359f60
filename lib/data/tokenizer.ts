/**
 * GPT-2 byte-pair encoding (section 2.5) through js-tiktoken, with the book's helpers
 * `textToTokenIds` / `tokenIdsToText`.
 */
import { getEncoding, type Tiktoken } from "js-tiktoken";

let cached: Tiktoken | null = null;

/** The GPT-2 tokenizer, built once per process (its rank table takes ~0.3 s to parse). */
export function gpt2Tokenizer(): Tiktoken {
  cached ??= getEncoding("gpt2");
  return cached;
}

/** The id of `<|endoftext|>` in GPT-2's vocabulary. */
export const END_OF_TEXT_ID = 50256;

/** Encodes text to GPT-2 token ids; `<|endoftext|>` is allowed as a special token, as in the book. */
export function textToTokenIds(text: string): number[] {
  return gpt2Tokenizer().encode(text, ["<|endoftext|>"]);
}

/** Decodes GPT-2 token ids back to text. */
export function tokenIdsToText(ids: readonly number[]): string {
  return gpt2Tokenizer().decode(ids as number[]);
}
