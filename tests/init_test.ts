import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { DEFAULTS, type ModelConfig } from "../lib/config.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { sizeOf } from "../lib/model/params.ts";
import { TorchGenerator } from "../lib/model/rng.ts";

interface ParamSummary {
  name: string;
  shape: number[];
  first: number[];
  last: number[];
  sum: number;
  sum_abs: number;
}

const fixture = JSON.parse(
  Deno.readTextFileSync(new URL("../../shared/fixtures/torch-seed123.json", import.meta.url)),
);

/** |got - want| within `rel` of |want| (exact when want is 0). */
function assertRelClose(got: number, want: number, rel: number, what: string): void {
  assert(Math.abs(got - want) <= rel * Math.abs(want), `${what}: got ${got}, want ${want}`);
}

Deno.test("GPT_CONFIG_124M (ctx 256) after seed 123 matches PyTorch's GPTModel parameter by parameter", () => {
  const want: ParamSummary[] = fixture.model.params;
  assertEquals(fixture.model.config, DEFAULTS.model);
  const t0 = performance.now();
  const params = initGPTParams(DEFAULTS.model, new TorchGenerator(123));
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    `init of ${params.reduce((n, p) => n + p.data.length, 0)} parameters: ${seconds.toFixed(2)} s`,
  );
  assertEquals(params.map((p) => [p.name, p.shape]), want.map((w) => [w.name, w.shape]));
  params.forEach((p, i) => {
    const w = want[i];
    assertEquals(p.data.length, sizeOf(w.shape));
    const ends = [...p.data.subarray(0, 4), ...p.data.subarray(-4)];
    [...w.first, ...w.last].forEach((v, k) => {
      assert(Math.abs(ends[k] - v) <= 1e-6, `${p.name} end value ${k}: got ${ends[k]}, want ${v}`);
    });
    let sum = 0;
    let sumAbs = 0;
    for (const x of p.data) {
      sum += x;
      sumAbs += Math.abs(x);
    }
    assertRelClose(sum, w.sum, 1e-5, `${p.name} sum`);
    assertRelClose(sumAbs, w.sum_abs, 1e-5, `${p.name} sum_abs`);
  });
});

Deno.test("qkv_bias adds the three biases; a tied head is left out but its draws are still skipped", () => {
  const cfg: ModelConfig = {
    ...DEFAULTS.model,
    vocab_size: 97,
    context_length: 8,
    emb_dim: 16,
    n_layers: 2,
  };
  const withBias = { ...cfg, qkv_bias: true };
  const untiedRng = new TorchGenerator(7);
  const untied = initGPTParams(withBias, untiedRng);
  const tiedRng = new TorchGenerator(7);
  const tied = initGPTParams(withBias, tiedRng, { tieHead: true });
  assertEquals(untied.length, 2 + 2 * 16 + 2 + 1);
  assert(untied.some((p) => p.name === "trf_blocks.1.att.W_value.bias" && p.shape[0] === 16));
  assertEquals(untied.at(-1)?.name, "out_head.weight");
  assertEquals(tied, untied.slice(0, -1));
  assertEquals(tiedRng.getState(), untiedRng.getState());
  const bound = 1 / Math.sqrt(16); // every Linear here has fan_in 16: U(-1/4, 1/4)
  const qkvBias = untied.find((p) => p.name === "trf_blocks.0.att.W_query.bias")!;
  assert(qkvBias.data.every((x) => Math.abs(x) < bound) && qkvBias.data.some((x) => x !== 0));
  assertEquals(initGPTParams(cfg, new TorchGenerator(7)).length, 2 + 2 * 13 + 2 + 1);
});

Deno.test("every parameter of small GPTModels after manual_seed is PyTorch's, bit for bit", () => {
  // tests/fixtures_gen/torch_init.py: configs reaching normal_'s 16-value blocks with a tail and its small path.
  const small = JSON.parse(
    Deno.readTextFileSync(new URL("./fixtures/torch-init-small.json", import.meta.url)),
  );
  for (const { seed, config, params: want } of small.models) {
    const got = initGPTParams(config, new TorchGenerator(seed));
    assertEquals(
      got.map((p) => [p.name, p.shape]),
      want.map((w: { name: string; shape: number[] }) => [w.name, w.shape]),
    );
    got.forEach((p, i) => {
      const bytes = Uint8Array.from(atob(want[i].f32le), (c) => c.charCodeAt(0));
      const bits = new Uint32Array(bytes.buffer),
        ours = new Uint32Array(p.data.buffer, p.data.byteOffset, p.data.length);
      assertEquals(ours.length, bits.length, p.name);
      const first = ours.findIndex((b, k) => b !== bits[k]);
      assert(
        first === -1,
        `seed ${seed} ${p.name}[${first}]: ${p.data[first]} vs PyTorch's ${
          new Float32Array(bytes.buffer)[first]
        }`,
      );
    });
  }
});
