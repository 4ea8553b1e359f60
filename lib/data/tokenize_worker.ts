/// <reference lib="deno.worker" />
/**
 * Entry of the tokenizing Workers of lib/data/tokenize.ts: encodes each piece of text the main thread posts to GPT-2 ids,
 * posted back as a transferred Uint16Array with the piece's word-cache counts.
 */
import { encodePiece } from "./tokenize.ts";

self.onmessage = (e: MessageEvent<string>) => {
  const r = encodePiece(e.data);
  self.postMessage(r, [r.ids.buffer as ArrayBuffer]);
};
