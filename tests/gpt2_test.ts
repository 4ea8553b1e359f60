/** Hugging Face GPT-2 weights ↔ the book's parameters (section 5.5): mapping, F16/BF16, errors, export. */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import type { ModelConfig } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { exportHFGPT2, loadHFGPT2, readHFGPT2Config } from "../lib/weights/gpt2.ts";
import { GPTModel } from "../lib/model/model.ts";
import type { NamedParam } from "../lib/model/params.ts";
import { ignoredBecause, NO_TORCH, tempDir, torchPython } from "./_helpers.ts";
import {
  bfloat16ToFloat32,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToFloat16,
  readSafetensors,
  type TensorToWrite,
  writeSafetensors,
} from "../lib/weights/safetensors.ts";

const FIXTURES = new URL("../../shared/fixtures/", import.meta.url);
const weights = new URL("gpt2-tiny.safetensors", FIXTURES).pathname;
const golden = JSON.parse(await Deno.readTextFile(new URL("gpt2-tiny.json", FIXTURES)));
const cfg: ModelConfig = golden.config;
const C = cfg.emb_dim;
const raw = (await readSafetensors(weights)).tensors; // the file as stored: HF names, Conv1D [in, out]
const hf = (name: string) => raw.get(name)!.data;

/** Writes the fixture's tensors, changed by `edit` (rename, drop, reshape, add), to a new file. */
async function variant(
  path: string,
  edit: (ts: (TensorToWrite & { data: Float32Array })[]) => TensorToWrite[],
  dtype: "F32" | "F16" | "BF16" = "F32",
): Promise<string> {
  const ts = [...raw].map(([name, t]) => ({ name, shape: t.shape, data: t.data, dtype }));
  await writeSafetensors(path, edit(ts), { format: "pt" });
  return path;
}

/** Rejects with a one-line UserError naming the file and containing every `parts`. */
async function rejectsNaming(p: Promise<unknown>, path: string, ...parts: string[]) {
  const err = await p.then(() => null, (e) => e);
  ok(err instanceof UserError, `expected a UserError, got ${err}`);
  ok(err.message.startsWith(`${path}: `) && !err.message.includes("\n"), err.message);
  for (const s of parts) ok(err.message.includes(s), `"${s}" not in: ${err.message}`);
}

Deno.test("the fixture loads as the book's parameters: names in order, shapes, every value placed", async () => {
  const params = await loadHFGPT2(weights, cfg, { tieHead: "copy" });
  assertEquals(params.map((p) => p.name), GPTModel.expectedNames(cfg, false));
  const by = new Map(params.map((p) => [p.name, p]));
  const at = (name: string, r: number, c: number) =>
    by.get(name)!.data[r * by.get(name)!.shape[1] + c];
  assertEquals(by.get("tok_emb.weight")!.data, hf("wte.weight"));
  assertEquals(by.get("pos_emb.weight")!.data, hf("wpe.weight"));
  for (let i = 0; i < cfg.n_layers; i++) {
    const b = `trf_blocks.${i}`, h = `h.${i}`;
    const qkv = hf(`${h}.attn.c_attn.weight`), bias = hf(`${h}.attn.c_attn.bias`); // [C, 3C], [3C]
    ["W_query", "W_key", "W_value"].forEach((w, k) => {
      assertEquals(by.get(`${b}.att.${w}.weight`)!.shape, [C, C]);
      for (let o = 0; o < C; o++) {
        for (let j = 0; j < C; j++) {
          assertEquals(at(`${b}.att.${w}.weight`, o, j), qkv[j * 3 * C + k * C + o]);
        }
      }
      assertEquals(by.get(`${b}.att.${w}.bias`)!.data, bias.slice(k * C, (k + 1) * C));
    });
    for (
      const [ours, theirs, nIn, nOut] of [
        ["att.out_proj", "attn.c_proj", C, C],
        ["ff.layers.0", "mlp.c_fc", C, 4 * C],
        ["ff.layers.2", "mlp.c_proj", 4 * C, C],
      ] as const
    ) {
      const w = hf(`${h}.${theirs}.weight`); // [in, out]
      assertEquals(by.get(`${b}.${ours}.weight`)!.shape, [nOut, nIn]);
      for (let o = 0; o < nOut; o++) {
        for (let j = 0; j < nIn; j++) {
          assertEquals(at(`${b}.${ours}.weight`, o, j), w[j * nOut + o]);
        }
      }
      assertEquals(by.get(`${b}.${ours}.bias`)!.data, hf(`${h}.${theirs}.bias`));
    }
    assertEquals(by.get(`${b}.norm1.scale`)!.data, hf(`${h}.ln_1.weight`));
    assertEquals(by.get(`${b}.norm2.shift`)!.data, hf(`${h}.ln_2.bias`));
  }
  assertEquals(by.get("final_norm.shift")!.data, hf("ln_f.bias"));
  // The brief's spot check, W_query[0][1] == c_attn.weight[1][0], is one case of the loops above.
  assertEquals(
    at("trf_blocks.0.att.W_query.weight", 0, 1),
    hf("h.0.attn.c_attn.weight")[1 * 3 * C],
  );
  // copy: an out_head with tok_emb's values in its own array; omit: no out_head.
  const head = by.get("out_head.weight")!, tok = by.get("tok_emb.weight")!;
  assertEquals(head.data, tok.data);
  ok(head.data.buffer !== tok.data.buffer);
  const tied = await loadHFGPT2(weights, cfg);
  assertEquals(tied.map((p) => p.name), GPTModel.expectedNames(cfg, true));
});

Deno.test("transformer.-prefixed names, mask buffers and a saved lm_head load the same", async () => {
  const dir = tempDir();
  const path = await variant(`${dir}/prefixed.safetensors`, (ts) => [
    ...ts.map((t) => ({ ...t, name: `transformer.${t.name}` })),
    { name: "transformer.h.0.attn.bias", shape: [1, 1, 32, 32], data: new Float32Array(1024) },
    { name: "transformer.h.1.attn.masked_bias", shape: [], data: Float32Array.of(-1e4) },
    { name: "lm_head.weight", shape: raw.get("wte.weight")!.shape, data: hf("wte.weight") },
  ]);
  assertEquals(await loadHFGPT2(path, cfg), await loadHFGPT2(weights, cfg));
});

Deno.test("F16 and BF16 copies load within their precision", async () => {
  const dir = tempDir();
  const a = await loadHFGPT2(weights, cfg);
  for (
    const [dtype, rel, roundTrip] of [
      ["F16", 2 ** -11, (x: Float32Array) => float16ToFloat32(float32ToFloat16(x))],
      ["BF16", 2 ** -8, (x: Float32Array) => bfloat16ToFloat32(float32ToBfloat16(x))],
    ] as const
  ) {
    const path = await variant(`${dir}/${dtype}.safetensors`, (ts) => ts, dtype);
    assertEquals((await readSafetensors(path)).tensors.get("wte.weight")!.dtype, dtype);
    const b = await loadHFGPT2(path, cfg);
    assertEquals(b.map((p) => p.name), a.map((p) => p.name));
    let changed = 0;
    a.forEach((p, i) => {
      assertEquals(b[i].data, roundTrip(p.data)); // exactly the rounded weights, placed as the F32 ones
      p.data.forEach((v, j) => {
        const err = Math.abs(b[i].data[j] - v);
        if (err > rel * Math.abs(v) + 2 ** -25) {
          assertEquals([p.name, j, b[i].data[j]], [p.name, j, v]);
        }
        if (err > 0) changed++;
      });
    });
    ok(changed > 1000, `${dtype}: only ${changed} weights changed`);
  }
});

Deno.test("a config that differs from the file names every differing key", async () => {
  await rejectsNaming(
    loadHFGPT2(weights, { ...cfg, context_length: 1024, n_layers: 12, qkv_bias: false }),
    weights,
    "GPT-2 weights (vocab 50257, context 32, emb 32, 2 layers) do not fit the config",
    "model.context_length is 1024, the file has 32",
    "model.n_layers is 12, the file has 2",
    "model.qkv_bias is false",
  );
  await rejectsNaming(loadHFGPT2(weights, { ...cfg, emb_dim: 64 }), weights, "model.emb_dim is 64");
  await rejectsNaming(
    loadHFGPT2(weights, { ...cfg, vocab_size: 50304 }),
    weights,
    "model.vocab_size is 50304",
  );
  const { drop_rate: _, ...dims } = cfg; // a weight file holds no dropout rate
  assertEquals(await readHFGPT2Config(weights), { ...dims, n_heads: null }); // no config.json beside it
});

Deno.test("a tensor of the wrong shape, or a missing one, is named with expected and found shapes", async () => {
  const dir = tempDir();
  const narrow = await variant(
    `${dir}/narrow.safetensors`,
    (ts) =>
      ts.map((t) =>
        t.name === "h.1.mlp.c_fc.weight"
          ? { ...t, shape: [32, 64], data: t.data.slice(0, 32 * 64) }
          : t
      ),
  );
  await rejectsNaming(
    loadHFGPT2(narrow, cfg),
    narrow,
    "tensor h.1.mlp.c_fc.weight has shape [32, 64], the config needs [32, 128]",
  );
  const missing = await variant(
    `${dir}/missing.safetensors`,
    (ts) => ts.filter((t) => t.name !== "h.1.ln_2.bias"),
  );
  await rejectsNaming(loadHFGPT2(missing, cfg), missing, "tensor h.1.ln_2.bias missing", "[32]");
  const foreign = `${dir}/foreign.safetensors`;
  await writeSafetensors(foreign, [{
    name: "model.tok_emb.weight",
    shape: [4, 2],
    data: new Float32Array(8),
  }]);
  await rejectsNaming(
    loadHFGPT2(foreign, cfg),
    foreign,
    "not a GPT-2 checkpoint",
    "model.tok_emb.weight",
  );
});

Deno.test("export → reload is identical, tensor for tensor the fixture, with config.json", async () => {
  const dir = tempDir(), path = `${dir}/model.safetensors`;
  const params = await loadHFGPT2(weights, cfg, { tieHead: "copy" });
  assertEquals(await exportHFGPT2(path, params, cfg), { warnings: [] });
  const out = await readSafetensors(path);
  assertEquals(out.metadata, { format: "pt" });
  assertEquals([...out.tensors.keys()].sort(), [...raw.keys()].sort());
  for (const [name, t] of raw) assertEquals(out.tensors.get(name), t, name);
  const again = await loadHFGPT2(path, cfg, { tieHead: "copy" });
  assertEquals(again, params);
  const hfCfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  assertEquals(
    [hfCfg.n_embd, hfCfg.n_layer, hfCfg.n_head, hfCfg.n_positions, hfCfg.vocab_size],
    [C, cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.vocab_size],
  );
  assertEquals([
    hfCfg.model_type,
    hfCfg.architectures,
    hfCfg.activation_function,
    hfCfg.layer_norm_epsilon,
  ], [
    "gpt2",
    ["GPT2LMHeadModel"],
    "gelu_new",
    1e-5,
  ]);
  // With config.json beside the weights, n_heads is checked too.
  assertEquals((await readHFGPT2Config(path)).n_heads, cfg.n_heads);
  await rejectsNaming(
    loadHFGPT2(path, { ...cfg, n_heads: 4 }),
    path,
    "model.n_heads is 4, the file has 2",
  );
});

Deno.test("export: an untied head and a model without qkv bias are written with warnings", async () => {
  const dir = tempDir(), path = `${dir}/model.safetensors`;
  const params = await loadHFGPT2(weights, cfg, { tieHead: "copy" });
  const head = params.find((p) => p.name === "out_head.weight")!;
  head.data[5] += 1;
  const untied = await exportHFGPT2(path, params, cfg);
  assertEquals(untied.warnings.length, 1);
  ok(untied.warnings[0].includes("untied head is not representable"), untied.warnings[0]);
  assertEquals((await readSafetensors(path)).tensors.get("wte.weight")!.data, hf("wte.weight"));

  const noBias: ModelConfig = { ...cfg, qkv_bias: false };
  const stripped = params.filter((p: NamedParam) =>
    !/W_(query|key|value)\.bias$/.test(p.name) && p !== head
  );
  const { warnings } = await exportHFGPT2(path, stripped, noBias);
  assertEquals(warnings.length, 1);
  ok(warnings[0].includes("qkv bias"), warnings[0]);
  assertEquals(
    (await readSafetensors(path)).tensors.get("h.1.attn.c_attn.bias")!.data,
    new Float32Array(3 * C),
  );
  const back = new Map((await loadHFGPT2(path, cfg)).map((p) => [p.name, p.data]));
  assertEquals(back.get("trf_blocks.0.att.W_key.bias"), new Float32Array(C));
  assertEquals(
    back.get("trf_blocks.0.att.W_key.weight"),
    stripped.find((p) => p.name.endsWith("0.att.W_key.weight"))!.data,
  );

  const short = params.filter((p) => p.name !== "trf_blocks.1.norm2.shift");
  await rejectsNaming(
    exportHFGPT2(path, short, cfg),
    path,
    "parameter trf_blocks.1.norm2.shift missing",
  );
});

const PY = await torchPython();

/** Parses a safetensors file by hand and runs Hugging Face's GPT-2 forward pass on it (Conv1D: x @ W + b). */
const HF_FORWARD = `
import json, math, struct, sys, torch
path, cfg_path, golden_path = sys.argv[1:4]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
assert (8 + n) % 8 == 0, "data not 8-byte aligned"
sd = {}
for name, t in header.items():
    if name == "__metadata__": continue
    assert t["dtype"] == "F32"
    b, e = t["data_offsets"]
    sd[name] = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=torch.float32).reshape(t["shape"])
cfg = json.load(open(cfg_path))
g = json.load(open(golden_path))
C, nh, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
assert cfg["activation_function"] == "gelu_new"
ln = lambda x, p: torch.nn.functional.layer_norm(x, (C,), sd[p + ".weight"], sd[p + ".bias"], eps)
conv1d = lambda x, p: x @ sd[p + ".weight"] + sd[p + ".bias"]
ids, targets = torch.tensor(g["input_ids"]), torch.tensor(g["target_ids"])
B, T = ids.shape
x = sd["wte.weight"][ids] + sd["wpe.weight"][torch.arange(T)]
mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
for i in range(cfg["n_layer"]):
    q, k, v = conv1d(ln(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-2, -1) / math.sqrt(C // nh)).masked_fill(mask, float("-inf")).softmax(-1)
    x = x + conv1d((att @ v).transpose(1, 2).reshape(B, T, C), f"h.{i}.attn.c_proj")
    h = conv1d(ln(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    x = x + conv1d(h, f"h.{i}.mlp.c_proj")
logits = ln(x, "ln_f") @ sd["wte.weight"].T  # GPT2LMHeadModel: lm_head tied to wte
loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
print(json.dumps({"loss": loss.item(), "first10": logits[0, 0, :10].tolist()}))
`;

Deno.test({
  name:
    `python: the export parses by hand into torch and, run as HF GPT-2, gives the fixture's loss${
      ignoredBecause(PY ? null : NO_TORCH)
    }`,
  ignore: PY === null,
  fn: async () => {
    const dir = tempDir(), path = `${dir}/model.safetensors`;
    await exportHFGPT2(path, await loadHFGPT2(weights, cfg), cfg);
    const r = await new Deno.Command(PY!, {
      args: [
        "-c",
        HF_FORWARD,
        path,
        `${dir}/config.json`,
        new URL("gpt2-tiny.json", FIXTURES).pathname,
      ],
    }).output();
    ok(r.success, new TextDecoder().decode(r.stderr));
    const got = JSON.parse(new TextDecoder().decode(r.stdout));
    ok(Math.abs(got.loss - golden.loss) < 1e-4, `loss ${got.loss} vs ${golden.loss}`);
    got.first10.forEach((v: number, i: number) =>
      ok(Math.abs(v - golden.logits_first_row_first10[i]) < 1e-4, `logit ${i}: ${v}`)
    );
  },
});
