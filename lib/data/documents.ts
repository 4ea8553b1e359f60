/**
 * Documents inside a text stream: `<|endoftext|>` as a boundary (`data.split_on_eot`, TinyStories' one big file) and
 * Project Gutenberg's licence header and footer cut off by their `*** START OF … ***` / `*** END OF … ***` lines
 * (`data.strip_gutenberg`). Both work on a stream of text blocks with flat memory. And which split each document
 * goes to: a seeded draw from its name.
 */
import { splitmix32 } from "./data.ts";
import type { SplitName } from "./shards.ts";

/** Marks the end of a document in a stream of text blocks. */
export const DOC_END: unique symbol = Symbol("end of document");

/** The text `<|endoftext|>` that GPT-2's tokenizer reads as its special token. */
export const EOT_TEXT = "<|endoftext|>";

/** The text blocks of a stream with `<|endoftext|>` turned into {@link DOC_END} (a marker split by a block too). */
export async function* splitOnEot(
  blocks: AsyncIterable<string>,
): AsyncGenerator<string | typeof DOC_END> {
  let carry = "";
  for await (const b of blocks) {
    carry += b;
    for (let at = carry.indexOf(EOT_TEXT); at >= 0; at = carry.indexOf(EOT_TEXT)) {
      if (at > 0) yield carry.slice(0, at);
      yield DOC_END;
      carry = carry.slice(at + EOT_TEXT.length);
    }
    // Keep what could be the start of a marker split across blocks.
    const keep = Math.min(carry.length, EOT_TEXT.length - 1);
    if (carry.length > keep) {
      yield carry.slice(0, carry.length - keep);
      carry = carry.slice(carry.length - keep);
    }
  }
  if (carry) yield carry;
}

const GUTENBERG_START = /^\*{3} ?START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*\n/im;
const GUTENBERG_END = /^\*{3} ?END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK/im;
/** Characters searched for the start marker: Gutenberg's headers are a few kB; a file without one is kept whole. */
const GUTENBERG_HEAD_CHARS = 1 << 20;
/** Characters held back while looking for the end marker (longer than the marker's first line part). */
const HOLD_BACK = 256;

/**
 * The text blocks of a stream without Project Gutenberg's header (up to and with the START line) and footer (from
 * the END line on). Sets `found.marked` when either marker was there; a stream without them passes whole.
 */
export async function* stripGutenberg(
  blocks: AsyncIterable<string>,
  found: { marked: boolean },
): AsyncGenerator<string> {
  let head: string | null = "", carry = "";
  for await (const b of blocks) {
    if (head !== null) {
      head += b;
      const m = GUTENBERG_START.exec(head);
      if (!m && head.length < GUTENBERG_HEAD_CHARS) continue;
      if (m) found.marked = true;
      carry = m ? head.slice(m.index + m[0].length) : head;
      head = null;
    } else carry += b;
    const end = GUTENBERG_END.exec(carry);
    if (end) {
      found.marked = true;
      if (end.index > 0) yield carry.slice(0, end.index);
      return;
    }
    if (carry.length > HOLD_BACK) {
      yield carry.slice(0, carry.length - HOLD_BACK);
      carry = carry.slice(carry.length - HOLD_BACK);
    }
  }
  if (head !== null) {
    const end = GUTENBERG_END.exec(head);
    if (end) found.marked = true;
    carry = end ? head.slice(0, end.index) : head;
  }
  if (carry) yield carry;
}

/** FNV-1a of a string: a stable 32-bit hash of a document's name. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** A document's uniform draw in [0, 1) from the seed and its name: below the train ratio, it trains. */
export function documentDraw(name: string, seed: number): number {
  return splitmix32((Math.imul(seed, 0x9e3779b1) ^ fnv1a(name)) >>> 0)();
}

/**
 * Splits documents by name: a document trains when its draw u(seed, name) is below `trainRatio`. The draw depends
 * only on the seed and the document's path relative to the corpus, so adding a file moves no other one. With two
 * documents or more, each split gets at least one (the highest draw validates, the lowest trains).
 */
export function splitDocuments(
  names: readonly string[],
  seed: number,
  trainRatio: number,
): SplitName[] {
  const u = names.map((n) => documentDraw(n, seed));
  const split = u.map((x): SplitName => x < trainRatio ? "train" : "val");
  if (names.length >= 2) {
    const argBy = (better: (a: number, b: number) => boolean) =>
      u.reduce((best, x, i) => better(x, u[best]) ? i : best, 0);
    if (!split.includes("val")) split[argBy((a, b) => a > b)] = "val";
    if (!split.includes("train")) split[argBy((a, b) => a < b)] = "train";
  }
  return split;
}
