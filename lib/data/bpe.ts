/**
 * GPT-2's byte-pair encoding for bulk work (`deno task prepare`): the same pre-tokenizer pattern and merge ranks as
 * js-tiktoken (read from its rank file), with the ids of every pre-token remembered. Natural text repeats its words,
 * so after the first megabytes almost every pre-token is a cache hit and encoding is one regex match and one map
 * lookup per word. Ids equal js-tiktoken's (tests/tokenizer_test.ts).
 */
import gpt2 from "js-tiktoken/ranks/gpt2";

/** Pre-tokens cached before the cache starts over: bounds a worker's memory on a corpus of millions of words. */
const CACHE_LIMIT = 1 << 20;
/** Longer pre-tokens are rare and not worth remembering (runs of spaces, long numbers, URLs). */
const CACHE_MAX_CHARS = 32;

const END_OF_TEXT = "<|endoftext|>";
/** GPT-2's pre-tokenizer (sticky use: `lastIndex` is reset for each text). */
const PRE_TOKENS = new RegExp(gpt2.pat_str, "gu");

/** GPT-2's merge table from js-tiktoken's compressed ranks (a token's rank is its id). */
interface Merges {
  /** Id of each single byte. */
  byteIds: Int32Array;
  /** (left id, right id) → id of the token whose bytes are the two joined, for every such pair. */
  pairs: PairTable;
}

/** An open-addressing hash table from two 16-bit ids to an id (a Map keyed by numbers above 2³¹ is 10× slower). */
class PairTable {
  private readonly keys: Uint32Array;
  private readonly values: Int32Array;
  private readonly shift: number;

  constructor(capacityLog2: number) {
    this.keys = new Uint32Array(1 << capacityLog2).fill(0xffffffff); // no GPT-2 id is 0xffff
    this.values = new Int32Array(1 << capacityLog2);
    this.shift = 32 - capacityLog2;
  }

  set(left: number, right: number, id: number) {
    const key = ((left << 16) | right) >>> 0, mask = this.keys.length - 1;
    let i = Math.imul(key, 0x9e3779b1) >>> this.shift;
    while (this.keys[i] !== 0xffffffff && this.keys[i] !== key) i = (i + 1) & mask;
    this.keys[i] = key;
    this.values[i] = id;
  }

  /** The joined token's id, or Infinity when the two do not join. */
  get(left: number, right: number): number {
    const key = ((left << 16) | right) >>> 0, mask = this.keys.length - 1;
    for (let i = Math.imul(key, 0x9e3779b1) >>> this.shift;; i = (i + 1) & mask) {
      const k = this.keys[i];
      if (k === key) return this.values[i];
      if (k === 0xffffffff) return Infinity;
    }
  }
}

function loadMerges(): Merges {
  const ranks = new Map<string, number>(); // token bytes, one char per byte → id
  for (const line of gpt2.bpe_ranks.split("\n")) {
    if (!line) continue;
    const [, offset, ...tokens] = line.split(" ");
    const first = Number.parseInt(offset, 10);
    for (let i = 0; i < tokens.length; i++) ranks.set(atob(tokens[i]), first + i);
  }
  const byteIds = Int32Array.from({ length: 256 }, (_, b) => ranks.get(String.fromCharCode(b))!);
  const pairs = new PairTable(18); // GPT-2 has 108,299 such pairs: the table is 41 % full
  for (const [bytes, id] of ranks) {
    for (let k = 1; k < bytes.length; k++) {
      const left = ranks.get(bytes.slice(0, k)), right = ranks.get(bytes.slice(k));
      if (left !== undefined && right !== undefined) pairs.set(left, right, id);
    }
  }
  return { byteIds, pairs };
}

/** A GPT-2 encoder with a per-pre-token cache; one per thread (it is not shared). */
export class CachedBpe {
  private readonly merges = loadMerges();
  /** @param cacheLimit pre-tokens kept before the cache starts over (default 2²⁰, about 100 MB). */
  constructor(private readonly cacheLimit = CACHE_LIMIT) {}

  private readonly cache = new Map<string, number | number[]>();
  /** Pre-tokens found in the cache / encoded by merging, since construction. */
  hits = 0;
  misses = 0;

  /** Ids of `text`, `<|endoftext|>` read as the special token (as the book's `allowed_special`). */
  encode(text: string): Uint16Array {
    const out: number[] = [];
    let start = 0;
    for (;;) {
      const at = text.indexOf(END_OF_TEXT, start);
      this.encodeOrdinary(at < 0 ? text.slice(start) : text.slice(start, at), out);
      if (at < 0) break;
      out.push(gpt2.special_tokens[END_OF_TEXT]);
      start = at + END_OF_TEXT.length;
    }
    return Uint16Array.from(out); // GPT-2's 50,257 ids fit in 16 bits, as in the shards
  }

  private encodeOrdinary(text: string, out: number[]) {
    const pat = PRE_TOKENS;
    pat.lastIndex = 0;
    for (let m = pat.exec(text); m !== null; m = pat.exec(text)) {
      const piece = m[0];
      const hit = this.cache.get(piece);
      if (hit !== undefined) {
        this.hits++;
        if (typeof hit === "number") out.push(hit);
        else out.push(...hit);
        continue;
      }
      this.misses++;
      const ids = this.bytePairEncode(piece);
      if (piece.length <= CACHE_MAX_CHARS) {
        if (this.cache.size >= this.cacheLimit) this.cache.clear();
        this.cache.set(ownCopy(piece), ids.length === 1 ? ids[0] : ids);
      }
      out.push(...ids);
    }
  }

  /**
   * GPT-2's merges on one pre-token, as tiktoken does them: start from its bytes, repeatedly join the adjacent pair
   * whose joined bytes are the token of lowest rank (leftmost on a tie) until no pair joins into a token.
   */
  private bytePairEncode(piece: string): number[] {
    const { byteIds, pairs } = this.merges;
    const parts = utf8Bytes(piece).map((b) => byteIds[b]);
    const joined: number[] = []; // joined[i]: parts i and i+1 as one token, or Infinity
    for (let i = 0; i + 1 < parts.length; i++) joined.push(pairs.get(parts[i], parts[i + 1]));
    for (;;) {
      let best = Infinity, at = -1;
      for (let i = 0; i < joined.length; i++) if (joined[i] < best) best = joined[i], at = i;
      if (at < 0) return parts;
      parts.splice(at, 2, best);
      joined.splice(at, 1);
      if (at < joined.length) joined[at] = pairs.get(best, parts[at + 1]);
      if (at > 0) joined[at - 1] = pairs.get(parts[at - 1], best);
    }
  }
}

/**
 * `s` as a string of its own. A regex match of 13 or more characters is a slice that keeps the whole text it was
 * matched in alive: as a cache key it would hold every 1 MB piece that added a long word, and prepare's memory would
 * grow with the corpus.
 */
function ownCopy(s: string): string {
  return s.length < 13 ? s : Array.from(s).join("");
}

/** The UTF-8 bytes of a string, as TextEncoder gives them (a lone surrogate becomes U+FFFD). */
function utf8Bytes(s: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else {
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = s.charCodeAt(i + 1);
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00), i++;
          out.push(
            0xf0 | (c >> 18),
            0x80 | ((c >> 12) & 63),
            0x80 | ((c >> 6) & 63),
            0x80 | (c & 63),
          );
          continue;
        }
        c = 0xfffd;
      }
      out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
  }
  return out;
}
