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

/** A GPT-2 encoder for bulk work: its name (which library) and an encode that allows `<|endoftext|>`. */
export interface BulkEncoder {
  name: "tiktoken" | "js-tiktoken";
  encode(text: string): Uint32Array | number[];
}

let bulk: Promise<BulkEncoder> | null = null;

/**
 * The fastest GPT-2 encoder that loads here: npm `tiktoken` (the Rust tokenizer built to WASM, ~6× js-tiktoken),
 * else js-tiktoken. Both give the same ids (tests/tokenizer_test.ts); `GPT_TOKENIZER=js-tiktoken` forces the
 * fallback.
 */
export function bulkEncoder(): Promise<BulkEncoder> {
  bulk ??= (async (): Promise<BulkEncoder> => {
    let forced: string | undefined;
    try {
      forced = Deno.env.get("GPT_TOKENIZER");
    } catch { /* no --allow-env: no override */ }
    if (forced !== "js-tiktoken") {
      try {
        const { get_encoding } = await import("tiktoken");
        const enc = get_encoding("gpt2");
        const special = ["<|endoftext|>"];
        return { name: "tiktoken", encode: (text) => enc.encode(text, special) };
      } catch { /* WASM cannot load (permissions, platform): fall back */ }
    }
    const enc = gpt2Tokenizer();
    return { name: "js-tiktoken", encode: (text) => enc.encode(text, ["<|endoftext|>"]) };
  })();
  return bulk;
}
