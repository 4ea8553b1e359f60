/// <reference lib="deno.worker" />
/**
 * Entry of the tokenizing Workers of lib/corpus.ts: reads one source file, checks it is non-empty UTF-8 text,
 * hashes it and (unless its hash is the one the main thread already has) encodes it to GPT-2 ids followed by one
 * `<|endoftext|>`, posted back as a transferred Uint16Array.
 */
import { tokenizeFile, type TokenizeJob } from "./corpus.ts";

self.onmessage = async (e: MessageEvent<TokenizeJob>) => {
  const r = await tokenizeFile(e.data);
  self.postMessage(r, r.ids ? [r.ids.buffer as ArrayBuffer] : []);
};
