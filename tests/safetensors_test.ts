/** safetensors: round trip, F16/BF16 against hand-computed bit patterns and PyTorch, corrupt files, atomic writes. */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { UserError } from "../lib/errors.ts";
import { ignoredBecause, NO_TORCH, tempDir, torchPython } from "./_helpers.ts";
import {
  bfloat16ToFloat32,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToFloat16,
  readSafetensors,
  readSafetensorsHeader,
  readSafetensorsStreaming,
  writeSafetensors,
} from "../lib/weights/safetensors.ts";

/** A file built byte by byte, independent of writeSafetensors: length prefix, JSON header, body. */
function rawFile(header: unknown, ...body: (Uint8Array | number[])[]): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const parts = [json, ...body], out = new Uint8Array(8 + parts.reduce((n, p) => n + p.length, 0));
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  let off = 8;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

const bytesOf = (a: Uint16Array | Float32Array | BigInt64Array) => new Uint8Array(a.buffer);

/** Rejects with a UserError whose one-line message names the file and contains every `parts`. */
async function rejectsNaming(p: Promise<unknown>, path: string, ...parts: string[]) {
  const err = await p.then(() => null, (e) => e);
  ok(err instanceof UserError, `expected a UserError, got ${err}`);
  ok(err.message.startsWith(`${path}: `), err.message);
  ok(!err.message.includes("\n"), `more than one line: ${err.message}`);
  for (const s of parts) ok(err.message.includes(s), `"${s}" not in: ${err.message}`);
}

Deno.test("round trip: F32, I32, U32, a scalar, an empty tensor and metadata; aligned; no temp file", async () => {
  const dir = tempDir(), path = `${dir}/w.safetensors`;
  const w = Float32Array.from({ length: 12 }, (_, i) => i * 0.25 - 1.5);
  await writeSafetensors(path, [
    { name: "blocks.0.w", shape: [3, 4], data: w },
    { name: "steps", shape: [3], data: Int32Array.from([-7, 0, 2 ** 31 - 1]) },
    { name: "seed", shape: [2], data: Uint32Array.from([123, 2 ** 32 - 1]) },
    { name: "scalar", shape: [], data: Float32Array.of(Math.PI) },
    { name: "empty", shape: [0, 5], data: new Float32Array(0) },
    { name: "constructor", shape: [1], data: Float32Array.of(-0) },
  ], { format: "pt", note: "ünïcode ✓" });
  const { metadata, tensors } = await readSafetensors(path);
  assertEquals(metadata, { format: "pt", note: "ünïcode ✓" });
  assertEquals([...tensors.keys()], [
    "blocks.0.w",
    "steps",
    "seed",
    "scalar",
    "empty",
    "constructor",
  ]);
  assertEquals(tensors.get("blocks.0.w"), { dtype: "F32", shape: [3, 4], data: w });
  assertEquals(tensors.get("steps")!.ints, Int32Array.from([-7, 0, 2 ** 31 - 1]));
  assertEquals(tensors.get("seed")!.ints, Uint32Array.from([123, 2 ** 32 - 1]));
  assertEquals(tensors.get("seed")!.data, Float32Array.from([123, 2 ** 32]));
  assertEquals(tensors.get("scalar")!.data, Float32Array.of(Math.PI));
  assertEquals(tensors.get("empty")!.shape, [0, 5]);
  ok(Object.is(tensors.get("constructor")!.data[0], -0));
  // Header: padded with spaces to a multiple of 8, offsets contiguous from 0.
  const bytes = await Deno.readFile(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals(n % 8, 0);
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  ok(/^\{.*\} *$/.test(text), text);
  const offsets = Object.values(JSON.parse(text)).flatMap((e) =>
    (e as { data_offsets?: number[] }).data_offsets ?? []
  );
  assertEquals(offsets, [0, 48, 48, 60, 60, 68, 68, 72, 72, 72, 72, 76]);
  assertEquals(bytes.length, 8 + n + 76);
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["w.safetensors"]);
});

Deno.test("F16 and BF16 bit patterns decode to the values they stand for", async () => {
  // [bits, value], computed by hand from sign · 2^(exp - bias) · 1.mantissa
  const f16: [number, number][] = [
    [0x3c00, 1],
    [0xc000, -2],
    [0x3800, 0.5],
    [0x3555, 0.333251953125], // 2^-2 · (1 + 341/1024)
    [0x7bff, 65504], // largest finite
    [0x0400, 2 ** -14], // smallest normal
    [0x03ff, 1023 * 2 ** -24], // largest subnormal
    [0x0001, 2 ** -24], // smallest subnormal
    [0x8001, -(2 ** -24)],
    [0x0000, 0],
    [0x8000, -0],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
    [0x7e00, NaN],
  ];
  const bf16: [number, number][] = [
    [0x3f80, 1],
    [0xc000, -2],
    [0x3f00, 0.5],
    [0x3eab, 0.333984375], // 2^-2 · (1 + 43/128)
    [0x7f7f, 255 * 2 ** 120], // largest finite: (2 - 2^-7) · 2^127
    [0x0080, 2 ** -126], // smallest normal
    [0x0001, 2 ** -133], // smallest subnormal
    [0x8000, -0],
    [0x7f80, Infinity],
    [0xff80, -Infinity],
    [0x7fc0, NaN],
  ];
  const dir = tempDir(), path = `${dir}/half.safetensors`;
  const a = Uint16Array.from(f16, ([b]) => b), b = Uint16Array.from(bf16, ([b]) => b);
  await Deno.writeFile(
    path,
    rawFile(
      {
        __metadata__: { format: "pt" },
        h: { dtype: "F16", shape: [2, 7], data_offsets: [0, 28] },
        b: { dtype: "BF16", shape: [11], data_offsets: [28, 50] },
      },
      bytesOf(a),
      bytesOf(b),
    ),
  );
  const { tensors } = await readSafetensors(path);
  assertEquals(tensors.get("h")!.shape, [2, 7]);
  assertEquals(Array.from(tensors.get("h")!.data), f16.map(([, v]) => v));
  assertEquals(Array.from(tensors.get("b")!.data), bf16.map(([, v]) => v));
  // deepStrictEqual tells -0 from 0 and matches NaN with NaN: check that it did.
  ok(Object.is(tensors.get("h")!.data[10], -0) && Number.isNaN(tensors.get("b")!.data[10]));
  assertEquals(Array.from(float16ToFloat32(a)), f16.map(([, v]) => v));
  assertEquals(Array.from(bfloat16ToFloat32(b)), bf16.map(([, v]) => v));
});

Deno.test("float32 → F16/BF16 rounds to nearest even, overflows to inf, keeps subnormals", async () => {
  const f16 = (xs: number[]) => Array.from(float32ToFloat16(Float32Array.from(xs)));
  const bf16 = (xs: number[]) => Array.from(float32ToBfloat16(Float32Array.from(xs)));
  assertEquals(f16([1, -2, 0.5, 65504, -0, Infinity, -Infinity, NaN]), [
    0x3c00,
    0xc000,
    0x3800,
    0x7bff,
    0x8000,
    0x7c00,
    0xfc00,
    0x7e00,
  ]);
  // Ties go to the even mantissa; just above a tie rounds up.
  assertEquals(f16([1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20]), [
    0x3c00,
    0x3c02,
    0x3c01,
  ]);
  // 65519.99 rounds down to 65504, 65520 (the tie above it) up to inf, as does 1e6.
  assertEquals(f16([65519.99, 65520, 1e6, -1e6]), [0x7bff, 0x7c00, 0x7c00, 0xfc00]);
  // Subnormals: 2^-24 is 1 unit; 2^-25 is a tie with 0 (even), just above it rounds to 1 unit; 1.5 units → 2.
  assertEquals(f16([2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 1.5 * 2 ** -24, 2 ** -14 - 2 ** -25]), [
    1,
    0,
    1,
    2,
    0x0400, // the largest subnormal + half a unit is a tie that rounds to the smallest normal (even)
  ]);
  assertEquals(bf16([1, -2, 0.5, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, NaN, -NaN]), [
    0x3f80,
    0xc000,
    0x3f00,
    0x3f80,
    0x3f82,
    0x7f80, // above the largest bf16 + half a unit: inf
    0x7fc0,
    0x7fc0,
  ]);
  // The writer's F16/BF16 files decode to the rounded values.
  const dir = tempDir(), path = `${dir}/h.safetensors`;
  const x = Float32Array.from({ length: 5000 }, (_, i) => Math.sin(i) * 2 ** ((i % 40) - 25));
  await writeSafetensors(path, [
    { name: "h", shape: [5000], data: x, dtype: "F16" },
    { name: "b", shape: [5000], data: x, dtype: "BF16" },
  ]);
  const { tensors } = await readSafetensors(path);
  assertEquals(tensors.get("h")!.dtype, "F16");
  assertEquals(tensors.get("h")!.data, float16ToFloat32(float32ToFloat16(x)));
  assertEquals(tensors.get("b")!.data, bfloat16ToFloat32(float32ToBfloat16(x)));
  assertEquals((await Deno.stat(path)).size % 4, 0); // 2 × 5000 × 2 bytes of data after an aligned header
});

const PY = await torchPython();

const TORCH_HALF = `
import sys, numpy as np, torch
d = sys.argv[1]
x = torch.from_numpy(np.fromfile(d + "/x.f32", dtype=np.float32))
x.half().view(torch.int16).numpy().tofile(d + "/x.f16")
x.bfloat16().view(torch.int16).numpy().tofile(d + "/x.bf16")
bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
bits.view(torch.float16).float().numpy().tofile(d + "/all.f16.f32")
bits.view(torch.bfloat16).float().numpy().tofile(d + "/all.bf16.f32")
`;

Deno.test({
  name: `F16/BF16 encoding and decoding agree with PyTorch bit for bit${
    ignoredBecause(PY ? null : NO_TORCH)
  }`,
  ignore: PY === null,
  fn: async () => {
    const dir = tempDir();
    // Random bit patterns (every exponent, NaNs included), values in the half range, and exact rounding ties.
    let s = 12345;
    const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0);
    const bits = new Uint32Array(60000);
    for (let i = 0; i < 20000; i++) bits[i] = rnd();
    const f = new Float32Array(bits.buffer);
    for (let i = 20000; i < 40000; i++) f[i] = (rnd() / 2 ** 32 - 0.5) * 2 ** ((rnd() % 48) - 30);
    for (let i = 40000; i < 50000; i++) bits[i] = (rnd() & 0xffffe000) | 0x1000; // F16 ties
    for (let i = 50000; i < 60000; i++) bits[i] = (rnd() & 0xffff0000) | 0x8000; // BF16 ties
    await Deno.writeFile(`${dir}/x.f32`, bytesOf(f));
    const r = await new Deno.Command(PY!, { args: ["-c", TORCH_HALF, dir] }).output();
    ok(r.success, new TextDecoder().decode(r.stderr));
    const torch16 = (p: string) => {
      const b = Deno.readFileSync(p);
      return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
    };
    const torch32 = (p: string) => {
      const b = Deno.readFileSync(p);
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    };
    const ours16 = float32ToFloat16(f), oursB = float32ToBfloat16(f);
    const t16 = torch16(`${dir}/x.f16`), tB = torch16(`${dir}/x.bf16`);
    let nans = 0;
    for (let i = 0; i < f.length; i++) {
      if (Number.isNaN(f[i])) { // NaN payloads may differ by CPU path: both must be NaN
        nans++;
        ok((t16[i] & 0x7c00) === 0x7c00 && (t16[i] & 0x3ff) && (ours16[i] & 0x3ff), `${i}`);
        ok((tB[i] & 0x7f80) === 0x7f80 && (tB[i] & 0x7f) && (oursB[i] & 0x7f), `${i}`);
        continue;
      }
      if (ours16[i] !== t16[i]) assertEquals([i, f[i], ours16[i]], [i, f[i], t16[i]]);
      if (oursB[i] !== tB[i]) assertEquals([i, f[i], oursB[i]], [i, f[i], tB[i]]);
    }
    ok(nans > 0, "the sample held no NaN");
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    // Every one of the 65,536 patterns; NaN payloads may differ (Object.is: NaN is NaN, -0 is not 0).
    for (
      const [ours, theirs] of [[float16ToFloat32(all), torch32(`${dir}/all.f16.f32`)], [
        bfloat16ToFloat32(all),
        torch32(`${dir}/all.bf16.f32`),
      ]]
    ) {
      assertEquals(theirs.length, 65536);
      const bad = all.filter((b) => !Object.is(ours[b], theirs[b]));
      assertEquals(
        bad.length,
        0,
        `bits ${bad[0]?.toString(16)}: ${ours[bad[0]]} vs ${theirs[bad[0]]}`,
      );
    }
  },
});

Deno.test("I64 tensors read exactly; their float32 data is rounded", async () => {
  const dir = tempDir(), path = `${dir}/i.safetensors`;
  const big = BigInt64Array.from([-1n, 2n ** 53n + 1n, 123n]);
  await Deno.writeFile(
    path,
    rawFile({ ids: { dtype: "I64", shape: [3], data_offsets: [0, 24] } }, bytesOf(big)),
  );
  const t = (await readSafetensors(path)).tensors.get("ids")!;
  assertEquals(t.ints, big);
  assertEquals(t.data, Float32Array.from([-1, 2 ** 53, 123]));
});

Deno.test("streaming: file order, tensors skipped before decoding, each tensor owns its buffer", async () => {
  const dir = tempDir(), path = `${dir}/s.safetensors`;
  const a = Float32Array.from({ length: 1_500_000 }, (_, i) => i); // more than one 4 MiB chunk as F16
  const half = float32ToFloat16(a);
  // JSON order differs from data order; a BOOL buffer (not decodable) sits between them.
  await Deno.writeFile(
    path,
    rawFile(
      {
        b: { dtype: "F16", shape: [1500, 1000], data_offsets: [12, 12 + half.byteLength] },
        mask: { dtype: "BOOL", shape: [4], data_offsets: [8, 12] },
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      },
      bytesOf(Float32Array.of(1, 2)),
      [1, 0, 0, 1],
      bytesOf(half),
    ),
  );
  const seen: string[] = [];
  const header = await readSafetensorsStreaming(path, (name, t) => {
    seen.push(name);
    assertEquals(t.data.buffer.byteLength, t.data.byteLength);
    if (name === "b") assertEquals(t.data, float16ToFloat32(half));
  }, { only: (name) => name !== "mask" });
  assertEquals(seen, ["a", "b"]);
  assertEquals([...header.tensors.keys()], ["a", "mask", "b"]);
  assertEquals(header.tensors.get("mask")!.dtype, "BOOL");
  await rejectsNaming(readSafetensors(path), path, "tensor mask", "BOOL", "not supported");
});

Deno.test("a truncated, foreign or corrupt file is a one-line UserError naming the file and the cause", async () => {
  const dir = tempDir();
  const good = { w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] } };
  const body = new Uint8Array(16);
  const cases: [string, Uint8Array, string[]][] = [
    ["empty", new Uint8Array(0), ["not a safetensors file", "0 bytes"]],
    ["three bytes", new Uint8Array([9, 0, 0]), ["not a safetensors file"]],
    ["a PNG", new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0]), [
      "not a safetensors file",
      "header length",
    ]],
    ["header cut short", rawFile(good, body).subarray(0, 30), ["truncated", "header needs"]],
    ["header not JSON", rawFile("{'w': 1}  ", body), ["not a safetensors file", "JSON"]],
    ["header a JSON array", rawFile("[1, 2]", body), ["not a safetensors file", "JSON object"]],
    ["data cut short", rawFile(good, body.subarray(0, 10)), [
      "truncated",
      "tensor w",
      "ends at byte",
    ]],
    ["unknown dtype", rawFile({ w: { ...good.w, dtype: "Q4" } }, body), [
      "tensor w",
      "dtype",
      "Q4",
    ]],
    ["bad shape", rawFile({ w: { ...good.w, shape: [2, -2] } }, body), ["tensor w", "shape"]],
    ["size mismatch", rawFile({ w: { ...good.w, shape: [2, 3] } }, body), [
      "tensor w",
      "16 bytes for shape [2, 3] of F32",
    ]],
    ["bad offsets", rawFile({ w: { ...good.w, data_offsets: [16, 0] } }, body), [
      "tensor w",
      "data_offsets",
    ]],
    [
      "overlap",
      rawFile({ ...good, v: { dtype: "F32", shape: [2], data_offsets: [8, 16] } }, body),
      [
        "tensors w and v overlap",
      ],
    ],
    ["metadata not strings", rawFile({ __metadata__: { step: 3 }, ...good }, body), [
      "__metadata__.step",
    ]],
  ];
  for (const [name, bytes, parts] of cases) {
    const path = `${dir}/${name.replaceAll(" ", "-")}.safetensors`;
    await Deno.writeFile(path, bytes);
    await rejectsNaming(readSafetensors(path), path, ...parts);
    await rejectsNaming(readSafetensorsHeader(path), path, ...parts); // found without reading data
  }
  await rejectsNaming(readSafetensors(dir), dir, "not a file");
  await rejectsNaming(
    readSafetensors(`${dir}/missing.safetensors`),
    `${dir}/missing.safetensors`,
    "no such file",
  );
  // The same header with all its bytes reads fine (the cases above fail for their cause only).
  await Deno.writeFile(`${dir}/good.safetensors`, rawFile(good, body));
  assertEquals(
    (await readSafetensors(`${dir}/good.safetensors`)).tensors.get("w")!.data,
    new Float32Array(4),
  );
});

Deno.test("writes are atomic: a failure keeps the old file and leaves no temp file", async () => {
  const dir = tempDir(), path = `${dir}/ckpt.safetensors`;
  await writeSafetensors(path, [{ name: "w", shape: [2], data: Float32Array.of(1, 2) }]);
  const before = await Deno.readFile(path);
  await rejectsNaming(
    writeSafetensors(path, [
      { name: "w", shape: [2], data: Float32Array.of(3, 4) },
      {
        name: "v",
        shape: [1],
        data: () => {
          throw new Error("disk on fire");
        },
      },
    ]),
    path,
    "cannot write",
    "disk on fire",
  );
  assertEquals(await Deno.readFile(path), before);
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["ckpt.safetensors"]);
  await rejectsNaming(
    writeSafetensors(`${dir}/no/such/dir/x.safetensors`, []),
    `${dir}/no/such/dir/x.safetensors`,
    "cannot write",
  );
  // A caller's bug is not the disk's: a TypeError, and still nothing left behind.
  const bug = await writeSafetensors(path, [{
    name: "w",
    shape: [3],
    data: () => new Float32Array(2),
  }])
    .then(() => null, (e) => e);
  ok(bug instanceof TypeError, String(bug));
  assertEquals(await Deno.readFile(path), before);
});
