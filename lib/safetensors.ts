/**
 * safetensors files (Hugging Face's format for weights): an 8-byte little-endian header length, a JSON header
 * mapping tensor names to dtype, shape and byte offsets, then the raw data. Reads F32, F16 and BF16 into
 * Float32Arrays tensor by tensor (no second copy of a large file); writes F32 atomically (temp file + rename).
 */
import { UserError } from "./errors.ts";

/** A tensor read from a file, converted to float32. */
export interface SafeTensor {
  dtype: string; // dtype as stored: F32, F16 or BF16
  shape: number[];
  data: Float32Array;
}

/** A whole file: its `__metadata__` strings and its tensors in file order. */
export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, SafeTensor>;
}

const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function decode(dtype: string, bytes: Uint8Array, n: number): Float32Array {
  if (dtype === "F32") {
    return new Float32Array(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 4 * n) as ArrayBuffer,
    );
  }
  const u16 = new Uint16Array(
    bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 2 * n) as ArrayBuffer,
  );
  const out = new Float32Array(n);
  if (dtype === "BF16") {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = u16[i] << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16ToF32(u16[i]);
  }
  return out;
}

async function readExactly(file: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let off = 0;
  while (off < buf.length) {
    const n = await file.read(buf.subarray(off));
    if (n === null) break;
    off += n;
  }
  return off;
}

/** Reads a safetensors file; a truncated, foreign or corrupt file is a UserError naming it and the cause. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    throw new UserError(`${path}: cannot open (${err instanceof Error ? err.message : err})`);
  }
  try {
    const size = (await file.stat()).size;
    const head = new Uint8Array(8);
    if (await readExactly(file, head) < 8) {
      throw new UserError(`${path}: not a safetensors file (shorter than 8 bytes)`);
    }
    const headerLen = Number(new DataView(head.buffer).getBigUint64(0, true));
    if (headerLen <= 0 || headerLen > 100_000_000 || 8 + headerLen > size) {
      throw new UserError(
        `${path}: not a safetensors file (header length ${headerLen} of a ${size}-byte file)`,
      );
    }
    const hbuf = new Uint8Array(headerLen);
    await readExactly(file, hbuf);
    let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    try {
      header = JSON.parse(new TextDecoder().decode(hbuf));
    } catch {
      throw new UserError(`${path}: not a safetensors file (header is not JSON)`);
    }
    const { __metadata__: meta, ...entries } = header as Record<string, unknown>;
    const dataStart = 8 + headerLen;
    const list = Object.entries(entries as typeof header).sort((a, b) =>
      a[1].data_offsets[0] - b[1].data_offsets[0]
    );
    const tensors = new Map<string, SafeTensor>();
    for (const [name, t] of list) {
      const bytes = BYTES[t.dtype];
      if (!bytes) {
        throw new UserError(
          `${path}: tensor ${name}: unsupported dtype ${t.dtype} (F32, F16, BF16 are)`,
        );
      }
      const n = t.shape.reduce((a, b) => a * b, 1);
      const [begin, end] = t.data_offsets;
      if (end - begin !== n * bytes) {
        throw new UserError(
          `${path}: tensor ${name}: ${end - begin} bytes for shape [${t.shape}] of ${t.dtype}`,
        );
      }
      if (dataStart + end > size) {
        throw new UserError(
          `${path}: truncated: tensor ${name} ends at byte ${dataStart + end} of ${size}`,
        );
      }
      const buf = new Uint8Array(end - begin);
      await file.seek(dataStart + begin, Deno.SeekMode.Start);
      await readExactly(file, buf);
      tensors.set(name, { dtype: t.dtype, shape: t.shape, data: decode(t.dtype, buf, n) });
    }
    return { metadata: (meta ?? {}) as Record<string, string>, tensors };
  } finally {
    file.close();
  }
}

/**
 * Writes float32 tensors and string metadata as safetensors, tensor by tensor, to a temporary file that is synced
 * and then renamed over `path`: readers see the old file or the new one, never half of one.
 */
export async function writeSafetensors(
  path: string,
  tensors: { name: string; shape: number[]; data: Float32Array }[],
  metadata: Record<string, string> = {},
): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = {
      dtype: "F32",
      shape: t.shape,
      data_offsets: [offset, offset + 4 * t.data.length],
    };
    offset += 4 * t.data.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8); // align data to 8 bytes
  const hbytes = new TextEncoder().encode(json);
  const tmp = `${path}.tmp-${Deno.pid}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(hbytes.length), true);
    await writeAll(file, len);
    await writeAll(file, hbytes);
    for (const t of tensors) {
      await writeAll(file, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    await file.sync();
  } catch (err) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  file.close();
  await Deno.rename(tmp, path);
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
}
