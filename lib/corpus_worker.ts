/// <reference lib="deno.worker" />
/**
 * Entry of the tokenizing Workers of lib/corpus.ts: encodes each piece of text the main thread posts to GPT-2 ids,
 * posted back as a transferred Uint16Array.
 */
import { encodePiece } from "./corpus.ts";

self.onmessage = async (e: MessageEvent<string>) => {
  const ids = await encodePiece(e.data);
  self.postMessage(ids, [ids.buffer as ArrayBuffer]);
};
