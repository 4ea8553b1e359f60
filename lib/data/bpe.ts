/**
 * GPT-2's byte-pair encoding for bulk work (`deno task prepare`): the same pre-tokenizer pattern and merge ranks as
 * js-tiktoken (read from its rank file), with the ids of every pre-token remembered. Natural text repeats its words,
 * so after the first megabytes almost every pre-token is a cache hit and encoding is one regex match and one map
 * lookup per word. Ids equal js-tiktoken's (tests/tokenizer_test.ts).
 */
import gpt2 from "js-tiktoken/ranks/gpt2";

/**
 * Pre-tokens a worker remembers: a bound on its memory, reached within the first tens of MB of a corpus, after
 * which prepare's memory stays flat however large the corpus. Natural text's frequent words fit many times over.
 */
const CACHE_LIMIT = 1 << 18;
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

/**
 * A GPT-2 encoder with a per-pre-token cache; one per thread (it is not shared). The cache has two generations of
 * at most half the limit each: when the newer is full it becomes the older and the oldest is dropped, and a hit in
 * the older moves the word to the newer, so frequent words survive the turnover.
 */
export class CachedBpe {
  private readonly merges = loadMerges();
  /** @param cacheLimit pre-tokens kept in both generations (default 2¹⁸, about 30 MB). */
  constructor(private readonly cacheLimit = CACHE_LIMIT) {}

  private cache = new Map<string, number | number[]>();
  private older = new Map<string, number | number[]>();
  /** Pre-tokens found in the cache / encoded by merging, since construction. */
  hits = 0;
  misses = 0;

  /** Ids of `text`, `<|endoftext|>` read as the special token (as the book's `allowed_special`). */
  encode(text: string): Uint16Array {
    this.length = 0;
    let start = 0;
    for (;;) {
      const at = text.indexOf(END_OF_TEXT, start);
      this.encodeOrdinary(at < 0 ? text.slice(start) : text.slice(start, at));
      if (at < 0) break;
      this.push(gpt2.special_tokens[END_OF_TEXT]);
      start = at + END_OF_TEXT.length;
    }
    return this.ids.slice(0, this.length); // GPT-2's 50,257 ids fit in 16 bits, as in the shards
  }

  /**
   * The ids of the text being encoded, in a buffer kept from text to text: a fresh array per text would leave
   * megabytes of garbage per piece in the heap's large-object space, which the collector lets grow for long.
   */
  private ids = new Uint16Array(1 << 16);
  private length = 0;

  private push(id: number) {
    if (this.length === this.ids.length) {
      const grown = new Uint16Array(this.ids.length * 2);
      grown.set(this.ids);
      this.ids = grown;
    }
    this.ids[this.length++] = id;
  }

  private encodeOrdinary(text: string) {
    const pat = PRE_TOKENS;
    pat.lastIndex = 0;
    for (let m = pat.exec(text); m !== null; m = pat.exec(text)) {
      const piece = m[0];
      let hit = this.cache.get(piece) ?? this.recall(piece);
      if (hit !== undefined) this.hits++;
      else {
        this.misses++;
        const ids = this.bytePairEncode(piece);
        hit = ids.length === 1 ? ids[0] : ids;
        if (piece.length <= CACHE_MAX_CHARS) this.remember(piece, hit);
      }
      if (typeof hit === "number") this.push(hit);
      else for (const id of hit) this.push(id);
    }
  }

  /** A word of the older generation, moved to the newer; undefined when the cache does not have it. */
  private recall(piece: string): number | number[] | undefined {
    const ids = this.older.get(piece);
    if (ids !== undefined) this.remember(piece, ids);
    return ids;
  }

  private remember(piece: string, ids: number | number[]) {
    if (this.cache.size >= this.cacheLimit >> 1) this.older = this.cache, this.cache = new Map();
    this.cache.set(piece, ids);
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
