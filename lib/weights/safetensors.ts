/**
 * safetensors files (Hugging Face's format for weights): an 8-byte little-endian header length N, N bytes of JSON
 * mapping each tensor name to its dtype, shape and byte range (`data_offsets`, relative to the end of the header)
 * plus an optional `__metadata__` map of strings, then the raw little-endian data.
 *
 * Reading validates the whole header against the file's size before any data is read, then reads each tensor's byte
 * range from the open file straight into its own Float32Array (F16/BF16/integers through a small scratch buffer), so
 * loading a 6 GB GPT-2 file needs about the float32 weights' size, never a second copy of the file. Writing is F32
 * (or F16/BF16 encoded on the fly, or I32/U32), tensor by tensor, to a temporary file that is synced and renamed.
 * Typed arrays are little-endian on every platform Deno runs on, as the format is.
 */
import { hostArray } from "../backends/backend.ts";
import { cannotWrite, UserError } from "../errors.ts";

/** Bytes per element of every dtype the format defines (needed to validate a header, even when not decoded). */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

/** The dtypes this module decodes to float32. */
export const READABLE_DTYPES = ["F32", "F16", "BF16", "I32", "U32", "I64"] as const;

/** The spec's limit on the JSON header, which also rejects foreign files whose first 8 bytes read as a huge length. */
const MAX_HEADER_BYTES = 100_000_000;

/** Scratch size for converting reads and writes (a multiple of 8 bytes). */
const CHUNK_BYTES = 1 << 22;

/** Where a tensor sits in the file, from the validated header. */
export interface TensorInfo {
  dtype: string; // as stored: F32, F16, BF16, I32, ...
  shape: number[];
  begin: number; // absolute byte offset of the first byte in the file
  end: number; // absolute byte offset one past the last byte
}

/** A validated header: metadata and tensors in file (offset) order. */
export interface SafetensorsHeader {
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
  fileSize: number;
}

/** A tensor read from a file, converted to float32. */
export interface SafeTensor {
  dtype: string; // dtype as stored
  shape: number[];
  data: Float32Array; // row-major; integers converted (exact up to 2^24)
  ints?: Int32Array | Uint32Array | BigInt64Array; // the exact values of an I32/U32/I64 tensor
}

/** A whole file: its `__metadata__` strings and its tensors in file order. */
export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, SafeTensor>;
}

/**
 * A tensor to write: float32 data is stored as F32 unless `dtype` asks for F16 or BF16; Int32/Uint32 as I32/U32.
 * `data` may be a function that makes the float32 values when the tensor's turn to be written comes, so a converted
 * copy of a large model never exists all at once.
 */
export interface TensorToWrite {
  name: string;
  shape: readonly number[];
  data: Float32Array | Int32Array | Uint32Array | (() => Float32Array);
  dtype?: "F32" | "F16" | "BF16";
}

// ---------------------------------------------------------------------------------------------------------------
// Half-precision conversions

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24; // zero and subnormals
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

let halfTable: Float32Array | null = null; // all 65,536 halves, built on first use (256 KiB)

/** Decodes IEEE binary16 bit patterns to float32 (exact: every half is a float32). */
export function float16ToFloat32(
  bits: Uint16Array,
  out: Float32Array<ArrayBufferLike> = new Float32Array(bits.length),
): Float32Array<ArrayBufferLike> {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloat(h);
  }
  for (let i = 0; i < bits.length; i++) out[i] = halfTable[bits[i]];
  return out;
}

/** Decodes bfloat16 bit patterns (the top 16 bits of a float32) to float32. */
export function bfloat16ToFloat32(
  bits: Uint16Array,
  out: Float32Array<ArrayBufferLike> = new Float32Array(bits.length),
): Float32Array<ArrayBufferLike> {
  const u32 = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < bits.length; i++) u32[i] = bits[i] << 16;
  return out;
}

/** Encodes float32 as IEEE binary16, rounding to nearest even as PyTorch's `.half()` does (overflow → ±inf). */
export function float32ToFloat16(v: Float32Array, out = new Uint16Array(v.length)): Uint16Array {
  const u32 = new Uint32Array(v.buffer, v.byteOffset, v.length);
  for (let i = 0; i < v.length; i++) {
    const x = u32[i], sign = (x >>> 16) & 0x8000, exp = (x >>> 23) & 0xff, man = x & 0x7fffff;
    let h: number;
    if (exp === 0xff) h = man ? 0x7e00 : 0x7c00; // NaN → PyTorch's canonical quiet NaN; ±inf
    else if (exp > 142) h = 0x7c00; // |x| >= 2^16: beyond the largest half after rounding
    else if (exp < 102) h = 0; // |x| < 2^-25: rounds to zero
    else if (exp < 113) { // a half subnormal: units of 2^-24
      const m = man | 0x800000, shift = 126 - exp;
      h = m >>> shift;
      const rem = m & ((1 << shift) - 1), halfway = 1 << (shift - 1);
      if (rem > halfway || (rem === halfway && (h & 1))) h++;
    } else {
      h = ((exp - 112) << 10) | (man >>> 13);
      const rem = man & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry may round up to the next exponent or inf
    }
    out[i] = sign | h;
  }
  return out;
}

/** Encodes float32 as bfloat16, rounding to nearest even as PyTorch's `.bfloat16()` does. */
export function float32ToBfloat16(v: Float32Array, out = new Uint16Array(v.length)): Uint16Array {
  const u32 = new Uint32Array(v.buffer, v.byteOffset, v.length);
  for (let i = 0; i < v.length; i++) {
    const x = u32[i];
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = 0x7fc0; // NaN → PyTorch's canonical quiet NaN
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

type RawHeader = Record<string, unknown>;

async function openForReading(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    throw new UserError(`${path}: cannot open (${err instanceof Error ? err.message : err})`);
  }
}

/** Reads until `buf` is full or the file ends; returns the bytes read. */
async function readFully(file: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let off = 0;
  while (off < buf.length) {
    const n = await file.read(buf.subarray(off));
    if (n === null) break;
    off += n;
  }
  return off;
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Parses and validates the header of an open file: every cause of failure is a one-line UserError. */
async function parseHeader(path: string, file: Deno.FsFile): Promise<SafetensorsHeader> {
  const stat = await file.stat(), fileSize = stat.size;
  if (!stat.isFile) throw new UserError(`${path}: not a file`);
  const foreign = (why: string) => new UserError(`${path}: not a safetensors file (${why})`);
  const corrupt = (why: string) => new UserError(`${path}: corrupt safetensors header: ${why}`);
  const lenBytes = new Uint8Array(8);
  if (await readFully(file, lenBytes) < 8) {
    throw foreign(`${fileSize} bytes, shorter than the 8-byte header length`);
  }
  const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (headerLen < 2n || headerLen > BigInt(MAX_HEADER_BYTES)) {
    throw foreign(`its first 8 bytes give a header length of ${headerLen}`);
  }
  const dataStart = 8 + Number(headerLen);
  if (dataStart > fileSize) {
    throw new UserError(
      `${path}: truncated: the header needs ${dataStart} bytes, the file has ${fileSize}`,
    );
  }
  const json = new Uint8Array(dataStart - 8);
  await readFully(file, json);
  let raw: unknown;
  try {
    if (json[0] !== 0x7b) throw new Error("no {");
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch {
    throw foreign("the header is not a JSON object");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw foreign("the header is not a JSON object");
  }
  const { __metadata__: meta = {}, ...entries } = raw as RawHeader;
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) {
    throw corrupt("__metadata__ is not a map of strings");
  }
  for (const [k, v] of Object.entries(meta)) {
    if (typeof v !== "string") throw corrupt(`__metadata__.${k} is not a string`);
  }

  const list: [string, TensorInfo][] = [];
  for (const [name, e] of Object.entries(entries)) {
    const { dtype, shape, data_offsets: offs } = (e ?? {}) as Record<string, unknown>;
    const bytes = DTYPE_BYTES[dtype as string];
    if (typeof dtype !== "string" || !bytes) {
      throw corrupt(`tensor ${name}: unknown dtype ${JSON.stringify(dtype)}`);
    }
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      throw corrupt(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of sizes`);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isCount) || offs[1] < offs[0]) {
      throw corrupt(`tensor ${name}: data_offsets ${JSON.stringify(offs)} is not [begin, end]`);
    }
    const n = shape.reduce((a: number, b: number) => a * b, 1);
    if (offs[1] - offs[0] !== n * bytes) {
      throw corrupt(
        `tensor ${name}: ${offs[1] - offs[0]} bytes for shape [${shape.join(", ")}] of ${dtype} ` +
          `(needs ${n * bytes})`,
      );
    }
    list.push([name, { dtype, shape, begin: dataStart + offs[0], end: dataStart + offs[1] }]);
  }
  list.sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let reach = dataStart, reacher = ""; // the furthest end so far, and whose
  for (const [name, t] of list) {
    if (t.end === t.begin) continue; // an empty tensor overlaps nothing
    if (t.begin < reach) {
      throw corrupt(
        `tensors ${reacher} and ${name} overlap (bytes ${t.begin}–${Math.min(reach, t.end)})`,
      );
    }
    [reach, reacher] = [t.end, name];
  }
  if (reach > fileSize) {
    throw new UserError(
      `${path}: truncated: tensor ${reacher} ends at byte ${reach}, the file has ${fileSize}`,
    );
  }
  return { metadata: meta as Record<string, string>, tensors: new Map(list), fileSize };
}

/** Reads one tensor's bytes from the open file into a new Float32Array (plus its exact integers). */
async function readTensor(
  path: string,
  file: Deno.FsFile,
  name: string,
  t: TensorInfo,
  scratch: Uint8Array,
): Promise<SafeTensor> {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (!(READABLE_DTYPES as readonly string[]).includes(t.dtype)) {
    throw new UserError(
      `${path}: tensor ${name}: dtype ${t.dtype} is not supported (${
        READABLE_DTYPES.join(", ")
      } are)`,
    );
  }
  const truncated = () =>
    new UserError(`${path}: truncated: tensor ${name} could not be read in full`);
  await file.seek(t.begin, Deno.SeekMode.Start);
  const data = hostArray(n); // shared memory when helper threads will update it (the backends' hostArray)
  if (t.dtype === "F32") {
    if (await readFully(file, new Uint8Array(data.buffer)) < 4 * n) throw truncated();
    return { dtype: t.dtype, shape: t.shape, data };
  }
  const size = DTYPE_BYTES[t.dtype];
  const ints = t.dtype === "I32"
    ? new Int32Array(n)
    : t.dtype === "U32"
    ? new Uint32Array(n)
    : t.dtype === "I64"
    ? new BigInt64Array(n)
    : undefined;
  const per = scratch.length / size; // elements per chunk
  for (let i = 0; i < n; i += per) {
    const m = Math.min(per, n - i);
    if (await readFully(file, scratch.subarray(0, m * size)) < m * size) throw truncated();
    const buf = scratch.buffer, dst = data.subarray(i, i + m);
    if (t.dtype === "F16") float16ToFloat32(new Uint16Array(buf, 0, m), dst);
    else if (t.dtype === "BF16") bfloat16ToFloat32(new Uint16Array(buf, 0, m), dst);
    else if (t.dtype === "I64") {
      const src = new BigInt64Array(buf, 0, m);
      (ints as BigInt64Array).set(src, i);
      for (let j = 0; j < m; j++) dst[j] = Number(src[j]);
    } else {
      const src = t.dtype === "I32" ? new Int32Array(buf, 0, m) : new Uint32Array(buf, 0, m);
      (ints as Int32Array | Uint32Array).set(src, i);
      dst.set(src);
    }
  }
  return { dtype: t.dtype, shape: t.shape, data, ints };
}

/**
 * Validates a file's header against its size without reading any tensor data: the cheap completeness check for a
 * download. A truncated, foreign or corrupt file is a UserError naming it and the cause.
 */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const file = await openForReading(path);
  try {
    return await parseHeader(path, file);
  } finally {
    file.close();
  }
}

/**
 * Reads a file tensor by tensor in file order, handing each to `onTensor` as soon as it is decoded, so a caller that
 * transforms and drops tensors holds at most one raw tensor at a time. `only` skips tensors before their data is
 * read (and before their dtype must be decodable). Returns the validated header.
 *
 * @example
 * await readSafetensorsStreaming("model.safetensors", (name, t) => { params.set(name, t.data); },
 *   { only: (name) => !name.endsWith(".attn.bias") });
 */
export async function readSafetensorsStreaming(
  path: string,
  onTensor: (name: string, tensor: SafeTensor) => void | Promise<void>,
  opts: { only?: (name: string, info: TensorInfo) => boolean } = {},
): Promise<SafetensorsHeader> {
  const file = await openForReading(path);
  try {
    const header = await parseHeader(path, file);
    const scratch = new Uint8Array(CHUNK_BYTES);
    for (const [name, info] of header.tensors) {
      if (opts.only && !opts.only(name, info)) continue;
      await onTensor(name, await readTensor(path, file, name, info, scratch));
    }
    return header;
  } finally {
    file.close();
  }
}

/**
 * Reads a whole safetensors file (F32, F16, BF16, I32, U32, I64) into float32 tensors in file order; a truncated,
 * foreign or corrupt file is a UserError naming it and the cause. Each tensor owns its own buffer.
 */
export async function readSafetensors(
  path: string,
  opts: { only?: (name: string, info: TensorInfo) => boolean } = {},
): Promise<SafetensorsFile> {
  const tensors = new Map<string, SafeTensor>();
  const { metadata } = await readSafetensorsStreaming(path, (name, t) => {
    tensors.set(name, t);
  }, opts);
  return { metadata, tensors };
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
}

function dtypeOf(t: TensorToWrite): "F32" | "F16" | "BF16" | "I32" | "U32" {
  if (t.data instanceof Float32Array || typeof t.data === "function") return t.dtype ?? "F32";
  if (t.dtype && t.dtype !== "F32") {
    throw new TypeError(`writeSafetensors: tensor ${t.name}: ${t.dtype} needs Float32Array data`);
  }
  return t.data instanceof Int32Array ? "I32" : "U32";
}

function checkLength(t: TensorToWrite, data: { length: number }): void {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (data.length !== n) {
    throw new TypeError(
      `writeSafetensors: tensor ${t.name}: ${data.length} values for [${t.shape.join(", ")}]`,
    );
  }
}

/**
 * Writes tensors and string metadata as safetensors, tensor by tensor (F16/BF16 encoded in small chunks), to
 * `path.tmp-<pid>`, syncs it and renames it over `path`: readers see the old file or the new one, never half of one.
 * The header is padded with spaces so the data starts 8-byte aligned. An unwritable path is a UserError; a tensor
 * whose data does not fit its shape is a TypeError (a caller's bug).
 *
 * @example
 * await writeSafetensors("w.safetensors", [{ name: "w", shape: [2, 2], data: new Float32Array(4) }], { k: "v" });
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = {},
): Promise<void> {
  const header: Record<string, unknown> = Object.create(null); // a tensor may be called "constructor"
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || Object.hasOwn(header, t.name)) {
      throw new TypeError(`writeSafetensors: tensor name ${t.name} is reserved or repeated`);
    }
    if (!t.shape.every(isCount)) {
      throw new TypeError(`writeSafetensors: tensor ${t.name}: shape ${JSON.stringify(t.shape)}`);
    }
    if (typeof t.data !== "function") checkLength(t, t.data);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtypeOf(t)];
    header[t.name] = { dtype: dtypeOf(t), shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const text = JSON.stringify(header), textBytes = new TextEncoder().encode(text).length;
  // Spaces pad the JSON to a multiple of 8 bytes: with the 8-byte length prefix, the data starts 8-byte aligned.
  const json = new TextEncoder().encode(text + " ".repeat((8 - textBytes % 8) % 8));
  const lenBytes = new Uint8Array(8);
  new DataView(lenBytes.buffer).setBigUint64(0, BigInt(json.length), true);

  const tmp = `${path}.tmp-${Deno.pid}`;
  let file: Deno.FsFile | null = null;
  try {
    file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    await writeAll(file, lenBytes);
    await writeAll(file, json);
    const half = new Uint16Array(CHUNK_BYTES / 2);
    for (const t of tensors) {
      const data = typeof t.data === "function" ? t.data() : t.data, dtype = dtypeOf(t);
      checkLength(t, data);
      if (dtype === "F16" || dtype === "BF16") {
        const encode = dtype === "F16" ? float32ToFloat16 : float32ToBfloat16;
        for (let i = 0; i < data.length; i += half.length) {
          const part = (data as Float32Array).subarray(i, i + half.length);
          encode(part, half);
          await writeAll(file, new Uint8Array(half.buffer, 0, 2 * part.length));
        }
      } else {
        await writeAll(file, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      }
    }
    await file.sync();
    file.close();
    file = null;
    await Deno.rename(tmp, path);
  } catch (err) {
    file?.close();
    await Deno.remove(tmp).catch(() => {});
    if (err instanceof TypeError) throw err; // the caller's bug, not the disk's
    throw cannotWrite(path, err);
  }
  await syncDir(path);
}

/** Makes the rename itself durable (best effort: not every platform can fsync a directory). */
async function syncDir(path: string): Promise<void> {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch {
    // a failed directory sync loses nothing that the rename has not already made visible
  }
}
