/** Loading Hugging Face GPT-2 weights (F32, F16), shape errors, and export → reload (section 5.5). */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import type { ModelConfig } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { exportHFGPT2, float32ToFloat16, loadHFGPT2 } from "../lib/gpt2.ts";
import { readSafetensors } from "../lib/safetensors.ts";

const FIXTURES = new URL("../../shared/fixtures/", import.meta.url);
const weights = new URL("gpt2-tiny.safetensors", FIXTURES).pathname;
const cfg: ModelConfig =
  JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES))).config;
const C = cfg.emb_dim;

/** Writes the fixture's tensors as an F16 safetensors file. */
async function writeF16Copy(path: string) {
  const { tensors } = await readSafetensors(weights);
  const header: Record<string, unknown> = {};
  const chunks: Uint8Array[] = [];
  let off = 0;
  for (const [name, t] of tensors) {
    const half = float32ToFloat16(t.data);
    header[name] = { dtype: "F16", shape: t.shape, data_offsets: [off, off + half.byteLength] };
    chunks.push(new Uint8Array(half.buffer));
    off += half.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  await Deno.writeFile(path, new Uint8Array([...len, ...json, ...chunks.flatMap((c) => [...c])]));
}

Deno.test("F32: names, shapes, the Conv1D transpose and the c_attn split", async () => {
  const params = await loadHFGPT2(weights, cfg, { tieHead: "copy" });
  const by = new Map(params.map((p) => [p.name, p]));
  assertEquals(params.length, 2 + cfg.n_layers * 16 + 2 + 1);
  assertEquals(by.get("trf_blocks.1.ff.layers.0.weight")!.shape, [4 * C, C]);
  const raw = (await readSafetensors(weights)).tensors.get("h.0.attn.c_attn.weight")!.data; // [C, 3C]
  const wk = by.get("trf_blocks.0.att.W_key.weight")!.data; // [out, in]
  assertEquals(wk[0 * C + 1], raw[1 * 3 * C + C + 0]); // W_key[0][1] = c_attn[1][C + 0]
  assertEquals(by.get("out_head.weight")!.data, by.get("tok_emb.weight")!.data);
});

Deno.test("F16 copy loads within half precision of the F32 weights", async () => {
  const dir = await Deno.makeTempDir();
  await writeF16Copy(`${dir}/f16.safetensors`);
  const a = await loadHFGPT2(weights, cfg), b = await loadHFGPT2(`${dir}/f16.safetensors`, cfg);
  a.forEach((p, i) => {
    assertEquals(b[i].name, p.name);
    p.data.forEach((v, j) =>
      ok(Math.abs(b[i].data[j] - v) <= 1e-3 * Math.abs(v) + 1e-7, `${p.name}[${j}]`)
    );
  });
  assertEquals(
    Array.from(float32ToFloat16(Float32Array.from([1, -2, 0.5, 65504, 1e6, 2 ** -24, 0]))),
    [
      0x3c00,
      0xc000,
      0x3800,
      0x7bff,
      0x7c00,
      0x0001,
      0,
    ],
  );
});

Deno.test("a shape that does not match the config names the tensor", async () => {
  for (
    const [bad, tensor] of [[{ ...cfg, context_length: 64 }, "wpe.weight"], [{
      ...cfg,
      n_layers: 3,
    }, "h.2."]] as const
  ) {
    await loadHFGPT2(weights, bad).then(
      () => ok(false, "expected an error"),
      (e) => ok(e instanceof UserError && e.message.includes(tensor), e.message),
    );
  }
});

Deno.test("export → reload is identical, with config.json for transformers", async () => {
  const dir = await Deno.makeTempDir();
  const params = await loadHFGPT2(weights, cfg);
  const warnings = await exportHFGPT2(`${dir}/model.safetensors`, params, cfg);
  assertEquals(warnings, []);
  const again = await loadHFGPT2(`${dir}/model.safetensors`, cfg);
  assertEquals(again.map((p) => p.name), params.map((p) => p.name));
  again.forEach((p, i) => assertEquals(p.data, params[i].data));
  const hf = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  assertEquals([hf.n_embd, hf.n_layer, hf.n_head, hf.n_positions], [
    C,
    cfg.n_layers,
    cfg.n_heads,
    cfg.context_length,
  ]);
});
