/**
 * Experiment configs (lib/config.ts) and task flags (lib/cli.ts): every bad input is a UserError (exit 2) of one
 * line naming the file or override, the dotted key and the cause; good input loads with the defaults filled in.
 */
import { deepStrictEqual as assertEquals, match, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { parse as parseYaml } from "yaml";
import { formatHelp, parseTaskArgs, type TaskSpec } from "../lib/cli.ts";
import {
  closest,
  type Config,
  configHash,
  configKeys,
  DEFAULTS,
  describeConfig,
  loadExperiment,
  modelHash,
  paramCount,
} from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { initGPTParams } from "../lib/model/init.ts";
import { sizeOf } from "../lib/model/params.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { tempDir } from "./_helpers.ts";

const DIR = tempDir();
const F = `${DIR}/x.yaml`;

/** Writes `text` to x.yaml (or nothing when null) and returns the error line of loading it with `overrides`. */
async function loadError(text: string | null, overrides: string[] = []): Promise<UserError> {
  await Deno.remove(F).catch(() => {});
  if (text !== null) await Deno.writeTextFile(F, text);
  try {
    await loadExperiment(F, overrides);
  } catch (err) {
    ok(err instanceof UserError, `not a UserError: ${err}`);
    return err;
  }
  throw new Error(`loaded without error: ${JSON.stringify(text)} ${overrides.join(" ")}`);
}

async function load(text: string, overrides: string[] = [], name = "x.yaml"): Promise<Config> {
  await Deno.writeTextFile(`${DIR}/${name}`, text);
  return await loadExperiment(`${DIR}/${name}`, overrides);
}

/** [case, YAML text (null: no file), overrides, the whole error line ($F: the file's path) or its pattern]. */
type Bad = [string, string | null, string[], string | RegExp];
const YAML_ERROR = (line: number, col: number) =>
  new RegExp(`^${F}: malformed YAML: line ${line}, column ${col}: \\S[^\\n]*$`);
const BAD: Bad[] = [
  ["missing file", null, [], `${F}: file not found`],
  ["unclosed flow sequence", "model: [1, 2\n", [], YAML_ERROR(2, 1)],
  ["tab indentation", "model:\n\temb_dim: 4\n", [], YAML_ERROR(2, 1)],
  ["duplicate section", "model: {emb_dim: 64}\nmodel: {n_heads: 2}\n", [], YAML_ERROR(2, 1)],
  [
    "two documents",
    "model: {}\n---\ndata: {}\n",
    [],
    `${F}: malformed YAML: line 2, column 1: more than one document (---); an experiment is one mapping`,
  ],
  [
    "top level a list",
    "- a\n- b\n",
    [],
    `${F}: expected a mapping of config sections at the top level`,
  ],
  [
    "top level a scalar",
    "42\n",
    [],
    `${F}: expected a mapping of config sections at the top level`,
  ],
  ["misspelled section", "modle: {}\n", [], `${F}: modle: unknown key; did you mean model?`],
  [
    "misspelled key",
    "model: {emb_dm: 64}\n",
    [],
    `${F}: model.emb_dm: unknown key; did you mean model.emb_dim?`,
  ],
  [
    "key outside its section",
    "emb_dim: 64\n",
    [],
    `${F}: emb_dim: unknown key; did you mean model.emb_dim?`,
  ],
  [
    "key in the wrong section",
    "model: {lr: 1}\n",
    [],
    `${F}: model.lr: unknown key; did you mean training.lr?`,
  ],
  ["unknown key, nothing near", "data: {banana: 1}\n", [], `${F}: data.banana: unknown key`],
  ["an Object method as a section", "constructor: 1\n", [], `${F}: constructor: unknown key`],
  ["an Object method as a key", "model: {toString: 1}\n", [], `${F}: model.toString: unknown key`],
  ["section not a mapping", "model: 5\n", [], `${F}: model: expected a mapping of keys, got 5`],
  [
    "string for an integer",
    "model: {emb_dim: abc}\n",
    [],
    `${F}: model.emb_dim: "abc" is not a positive integer`,
  ],
  [
    "quoted number",
    'model: {drop_rate: "0.1"}\n',
    [],
    `${F}: model.drop_rate: "0.1" is not a number`,
  ],
  [
    "yes is not a boolean",
    "model: {qkv_bias: yes}\n",
    [],
    `${F}: model.qkv_bias: "yes" is not true or false`,
  ],
  ["number for a string", "data: {path: 5}\n", [], `${F}: data.path: 5 is not a non-empty string`],
  [
    "null where not allowed",
    "training: {start_context: null}\n",
    [],
    `${F}: training.start_context: null is not a non-empty string`,
  ],
  [
    "boolean for a nullable integer",
    "data: {stride: true}\n",
    [],
    `${F}: data.stride: true is not a positive integer`,
  ],
  ["list for a number", "training: {lr: [1]}\n", [], `${F}: training.lr: [1] is not a number`],
  ["infinite lr", "training: {lr: .inf}\n", [], `${F}: training.lr: Infinity is not a number`],
  [
    "fractional layers",
    "model: {n_layers: 1.5}\n",
    [],
    `${F}: model.n_layers: 1.5 is not a positive integer`,
  ],
  ["negative seed", "training: {seed: -1}\n", [], `${F}: training.seed: -1 is not an integer >= 0`],
  [
    "zero batch size",
    "data: {batch_size: 0}\n",
    [],
    `${F}: data.batch_size: 0 is not a positive integer`,
  ],
  [
    "negative emb_dim",
    "model: {emb_dim: -64}\n",
    [],
    `${F}: model.emb_dim: -64 is not a positive integer`,
  ],
  [
    "zero context",
    "model: {context_length: 0}\n",
    [],
    `${F}: model.context_length: 0 is not a positive integer`,
  ],
  [
    "zero epochs",
    "training: {epochs: 0}\n",
    [],
    `${F}: training.epochs: 0 is not a positive integer`,
  ],
  ["drop_rate 1", "model: {drop_rate: 1}\n", [], `${F}: model.drop_rate: 1 is outside [0, 1)`],
  [
    "negative drop_rate",
    "model: {drop_rate: -0.1}\n",
    [],
    `${F}: model.drop_rate: -0.1 is outside [0, 1)`,
  ],
  ["train_ratio 0", "data: {train_ratio: 0}\n", [], `${F}: data.train_ratio: 0 is outside (0, 1)`],
  ["train_ratio 1", "data: {train_ratio: 1}\n", [], `${F}: data.train_ratio: 1 is outside (0, 1)`],
  [
    "heads not dividing",
    "model: {emb_dim: 768, n_heads: 5}\n",
    [],
    `${F}: model.n_heads: 5 does not divide emb_dim 768`,
  ],
  ["stride 0", "data: {stride: 0}\n", [], `${F}: data.stride: 0 is not a positive integer`],
  [
    "negative stride",
    "data: {stride: -2}\n",
    [],
    `${F}: data.stride: -2 is not a positive integer`,
  ],
  ["lr 0", "training: {lr: 0}\n", [], `${F}: training.lr: 0 is outside (0, ∞)`],
  ["negative lr", "training: {lr: -1e-3}\n", [], `${F}: training.lr: -0.001 is outside (0, ∞)`],
  [
    "negative weight decay",
    "training: {weight_decay: -0.1}\n",
    [],
    `${F}: training.weight_decay: -0.1 is outside [0, ∞)`,
  ],
  [
    "negative temperature",
    "sampling: {temperature: -1}\n",
    [],
    `${F}: sampling.temperature: -1 is outside [0, ∞)`,
  ],
  ["top_k 0", "sampling: {top_k: 0}\n", [], `${F}: sampling.top_k: 0 is not a positive integer`],
  [
    "top_k above the vocabulary",
    "sampling: {top_k: 60000}\n",
    [],
    `${F}: sampling.top_k: 60000 exceeds vocab_size 50257`,
  ],
  [
    "window above the context",
    "data: {max_length: 512}\n",
    [],
    `${F}: data.max_length: 512 exceeds model.context_length 256`,
  ],
  [
    "gpt2 init without weights",
    "init: {from: gpt2}\n",
    [],
    `${F}: init.weights: init.from is gpt2 but no weights file is given`,
  ],
  [
    "unknown backend",
    "backend: tpu\n",
    [],
    `${F}: backend: "tpu" is not one of auto, cpu, tfjs-cpu, wasm, webgpu, tensorflow`,
  ],
  [
    "run name with a space",
    "name: my run\n",
    [],
    /^\S+x\.yaml: name: "my run" is not a run name \(/,
  ],
  // overrides: named instead of the file
  [
    "--set without =",
    "",
    ["training.lr"],
    "--set training.lr: expected key=value, e.g. --set training.lr=1e-3",
  ],
  ["--set without a key", "", ["=5"], "--set =5: expected key=value, e.g. --set training.lr=1e-3"],
  [
    "--set of an unknown key",
    "",
    ["training.lrr=1"],
    "--set training.lrr=1: training.lrr: unknown key; did you mean training.lr?",
  ],
  [
    "--set of a key too deep",
    "",
    ["model.emb_dim.x=1"],
    "--set model.emb_dim.x=1: model.emb_dim.x: unknown key; did you mean model.emb_dim?",
  ],
  [
    "--set of a section",
    "",
    ["model=5"],
    "--set model=5: model: a section, not a key; set one key, e.g. model.vocab_size=…",
  ],
  [
    "--set of a bad value",
    "",
    ["model.emb_dim=abc"],
    '--set model.emb_dim=abc: model.emb_dim: "abc" is not a positive integer',
  ],
  [
    "--set breaking a rule across keys",
    "",
    ["model.n_heads=5"],
    "--set model.n_heads=5: model.n_heads: 5 does not divide emb_dim 768",
  ],
  [
    "--set of the other key of the rule",
    "",
    ["model.emb_dim=100"],
    "--set model.emb_dim=100: model.n_heads: 12 does not divide emb_dim 100",
  ],
  [
    "--set of an unknown backend",
    "",
    ["backend=tpu"],
    '--set backend=tpu: backend: "tpu" is not one of auto, cpu, tfjs-cpu, wasm, webgpu, tensorflow',
  ],
];

Deno.test(`${BAD.length} bad experiment files and overrides: one line naming file or override, key and cause; exit 2`, async () => {
  for (const [name, text, overrides, expected] of BAD) {
    const err = await loadError(text, overrides);
    assertEquals(err.exitCode, 2, name);
    ok(!err.message.includes("\n"), `${name}: more than one line: ${err.message}`);
    if (typeof expected === "string") assertEquals(err.message, expected, name);
    else match(err.message, expected, name);
  }
});

Deno.test("the experiment path is named when it is a directory", async () => {
  let err: unknown;
  await loadExperiment(DIR).catch((e) => err = e);
  ok(err instanceof UserError);
  assertEquals(err.message, `${DIR}: is a directory, not a YAML file`);
});

Deno.test("an empty file is the book's run, named after the file; sections fill in key by key", async () => {
  const empty = await load("", [], "empty-run.yml");
  assertEquals(empty, { ...structuredClone(DEFAULTS), name: "empty-run" });
  const partial = await load("model:\n  emb_dim: 64\n  n_heads: 4\ndata:\ntraining: {lr: 1e-3}\n");
  assertEquals(partial.model, { ...DEFAULTS.model, emb_dim: 64, n_heads: 4 });
  assertEquals(partial.data, DEFAULTS.data); // `data:` with nothing under it keeps the defaults
  assertEquals(partial.training.lr, 0.001); // YAML 1.2: 1e-3 is a number
  assertEquals(partial.training.epochs, DEFAULTS.training.epochs);
  assertEquals(partial.name, "x");
  assertEquals((await load("name: my-run\n")).name, "my-run");
  assertEquals(DEFAULTS.name, "", "DEFAULTS untouched");
});

Deno.test("overrides: YAML scalars with the key's type, later ones win, text keys keep their text", async () => {
  const cfg = await load("training: {lr: 0.5}\n", [
    "training.lr=1e-3",
    "model.qkv_bias=true",
    "sampling.top_k=null",
    "data.stride=32",
    "training.start_context=Once upon a time",
    "name=2024",
    "backend=cpu",
    "data.path=other.txt",
    "data.path=data/x=y.txt", // only the first = splits
    "sampling.temperature=0",
    "sampling.temperature=0.7",
  ]);
  assertEquals(cfg.training.lr, 0.001);
  assertEquals(cfg.model.qkv_bias, true);
  assertEquals(cfg.sampling.top_k, null);
  assertEquals(cfg.data.stride, 32);
  assertEquals(cfg.training.start_context, "Once upon a time");
  assertEquals(cfg.name, "2024"); // a run name, not the number 2024
  assertEquals(cfg.backend, "cpu");
  assertEquals(cfg.data.path, "data/x=y.txt");
  assertEquals(cfg.sampling.temperature, 0.7);
  assertEquals((await load("", ["training.start_context=42"])).training.start_context, "42");
  // a bad value of the file is still blamed on the file when an override sets another key
  assertEquals(
    (await loadError("model: {emb_dim: abc}\n", ["training.lr=1"])).message,
    `${F}: model.emb_dim: "abc" is not a positive integer`,
  );
});

Deno.test("both shipped experiments load; verdict.yaml writes out every key and is the book's run", async () => {
  const verdict = await loadExperiment("experiments/verdict.yaml");
  assertEquals(verdict, { ...structuredClone(DEFAULTS), name: "verdict" });
  const doc = parseYaml(await Deno.readTextFile("experiments/verdict.yaml")) as Record<
    string,
    unknown
  >;
  const written = Object.entries(doc).flatMap(([k, v]) =>
    v !== null && typeof v === "object" ? Object.keys(v).map((s) => `${k}.${s}`) : [k]
  );
  assertEquals(written.sort(), configKeys().filter((k) => k !== "name").sort());

  const small = await loadExperiment("experiments/verdict-small.yaml");
  assertEquals(small.name, "verdict-small");
  assertEquals(small.data, { ...DEFAULTS.data, batch_size: small.data.batch_size });
  ok(paramCount(small.model) < paramCount(verdict.model) / 20, "a small model");
  assertEquals(small.model.emb_dim % small.model.n_heads, 0);
});

Deno.test("configHash: sha256 of sorted-key JSON, blind to key order, sampling, backend and name", async () => {
  const a = await load(
    "model: {emb_dim: 64, n_heads: 4}\ntraining: {lr: 0.001, epochs: 2}\n",
    [],
    "a.yaml",
  );
  const b = await load(
    "training: {epochs: 2, lr: 0.001}\nmodel: {n_heads: 4, emb_dim: 64}\n",
    [],
    "b.yaml",
  );
  assertEquals(configHash(a), configHash(b));
  assertEquals(modelHash(a), modelHash(b));
  match(configHash(a), /^[0-9a-f]{16}$/);

  // an independent canonical JSON: JSON.stringify with every object's keys sorted
  const sorted = (v: unknown): unknown =>
    v !== null && typeof v === "object"
      ? Object.fromEntries(
        Object.keys(v).sort().map((k) => [k, sorted((v as Record<string, unknown>)[k])]),
      )
      : v;
  const sha = (v: unknown) =>
    createHash("sha256").update(JSON.stringify(sorted(v))).digest("hex").slice(0, 16);
  // The training keys added after the hash (kept checkpoints, spike guard) count only where set.
  const later = [
    "keep_best",
    "keep_last",
    "early_stop_patience",
    "skip_spikes",
    "multiple_choice",
  ] as const;
  const training = Object.fromEntries(
    Object.entries(a.training).filter(([k, v]) =>
      !(later as readonly string[]).includes(k) ||
      JSON.stringify(v) !== JSON.stringify(DEFAULTS.training[k as (typeof later)[number]])
    ),
  );
  const { sources, ...data } = a.data; // data.sources, added later too, counts only where set
  assertEquals(sources, null);
  assertEquals(configHash(a), sha({ data, init: a.init, model: a.model, training }));
  assertEquals(modelHash(a), sha(a.model));

  const c = await load("", ["sampling.temperature=0", "backend=cpu", "name=other"], "a.yaml");
  const d = await load("", [], "a.yaml");
  assertEquals(configHash(c), configHash(d));
  const wider = await load("", ["model.emb_dim=1536"], "a.yaml");
  ok(configHash(wider) !== configHash(d) && modelHash(wider) !== modelHash(d), "model key");
  const slower = await load("", ["training.lr=1e-5"], "a.yaml");
  ok(configHash(slower) !== configHash(d), "training key");
  assertEquals(modelHash(slower), modelHash(d));
  ok(configHash(await load("", ["data.batch_size=4"], "a.yaml")) !== configHash(d), "data key");
});

Deno.test("paramCount matches the initialised model; describeConfig names size, data, loop and hash", async () => {
  for (const qkv_bias of [false, true]) {
    const m = {
      ...DEFAULTS.model,
      vocab_size: 97,
      context_length: 16,
      emb_dim: 24,
      n_heads: 3,
      n_layers: 2,
      qkv_bias,
    };
    const params = initGPTParams(m, new TorchGenerator(1));
    assertEquals(paramCount(m), params.reduce((n, p) => n + sizeOf(p.shape), 0));
  }
  assertEquals(paramCount(DEFAULTS.model), 163_009_536 - 768 * 768); // the book's 163M with context 256

  const verdict = await loadExperiment("experiments/verdict.yaml");
  const lines = describeConfig(verdict);
  assertEquals(lines, [
    "verdict: GPT of 162.4M parameters (12 layers, 12 heads, emb_dim 768, context 256, drop_rate 0.1)",
    "data: data/the-verdict.txt, 90% train, batches of 2 × 256 tokens, stride 256",
    "training: 10 epochs, AdamW lr 0.0004 weight_decay 0.1, eval every 5 steps on 5 batches, seed 123",
    `init: random (seed 123); backend auto; config ${configHash(verdict)}`,
  ]);
  const d = describeConfig(
    await load("", [
      "training.warmup=0.2",
      "training.initial_lr=1e-5",
      "training.lr_schedule=cosine",
      "training.min_lr=1e-6",
      "training.max_grad_norm=1",
      "training.grad_accum_steps=4",
    ]),
  );
  assertEquals(
    d[3],
    "schedule: warmup 20% of steps from lr 0.00001, cosine decay to 0.000001, clip gradient norm at 1, " +
      "4 micro-batches per step",
  );
});

// ---------------------------------------------------------------------------------------------------------------
// lib/cli.ts

const SPEC = {
  task: "train",
  usage: "deno task train <experiment.yaml> [options]",
  about: "Trains a model.",
  positionals: ["experiment.yaml"],
  flags: {
    lr: { type: "number", min: 0, arg: "x", help: "learning rate" },
    epochs: { type: "integer", min: 1, default: 10, arg: "n", help: "epochs" },
    resume: { type: "boolean", help: "continue" },
    out: { type: "string", short: "o", arg: "dir", help: "output directory" },
  },
} as const satisfies TaskSpec;

Deno.test("parseTaskArgs: typed flags, defaults, repeated --set, positionals", () => {
  const p = parseTaskArgs([
    "a.yaml",
    "--lr",
    "1e-3",
    "--set",
    "x.y=1",
    "-o",
    "d",
    "--set=z=2",
    "--resume",
  ], SPEC)!;
  assertEquals(p.positionals, ["a.yaml"]);
  assertEquals(p.values, { lr: 0.001, epochs: 10, resume: true, out: "d", set: ["x.y=1", "z=2"] });
  const q = parseTaskArgs(["a.yaml", "--epochs=3"], SPEC)!;
  assertEquals(q.values, { lr: undefined, epochs: 3, resume: false, out: undefined, set: [] });
  const n: number = q.values.epochs; // typed: a number, not a string
  assertEquals(n, 3);
  const many = parseTaskArgs(["a", "b", "c"], {
    task: "compare",
    usage: "",
    positionals: ["run..."],
  });
  assertEquals(many!.positionals, ["a", "b", "c"]);
  assertEquals(parseTaskArgs([], { task: "t", usage: "", positionals: ["[x]"] })!.positionals, []);
});

Deno.test("parseTaskArgs: --help returns null; the help lists every flag with its default", () => {
  const log = console.log;
  const printed: string[] = [];
  console.log = (s: string) => printed.push(s);
  try {
    assertEquals(parseTaskArgs(["-h"], SPEC), null);
    assertEquals(parseTaskArgs(["a.yaml", "--help", "--lrr"], SPEC), null);
  } finally {
    console.log = log;
  }
  assertEquals(printed, [formatHelp(SPEC), formatHelp(SPEC)]);
  assertEquals(
    formatHelp(SPEC),
    `usage: deno task train <experiment.yaml> [options]

Trains a model.

options:
  --lr x             learning rate
  --epochs n         epochs (default 10)
  --resume           continue
  -o, --out dir      output directory
  --set key=value    override a config key, e.g. --set training.lr=1e-3 (repeatable)
  -h, --help         show this help`,
  );
});

Deno.test("parseTaskArgs: every mistake is one line naming the task", () => {
  const cases: [string[], string][] = [
    [["a.yaml", "--lrr", "1"], "train: unknown flag --lrr; did you mean --lr? (see --help)"],
    [
      ["a.yaml", "--epoch", "1"],
      "train: unknown flag --epoch; did you mean --epochs? (see --help)",
    ],
    [["a.yaml", "--frobnicate"], "train: unknown flag --frobnicate (see --help)"],
    [["a.yaml", "-x"], "train: unknown flag -x (see --help)"],
    [[], "train: missing <experiment.yaml> (see --help)"],
    [["a.yaml", "b.yaml"], "train: unexpected argument b.yaml (see --help)"],
    [["a.yaml", "--lr", "abc"], "train: --lr abc: expected a number >= 0"],
    [["a.yaml", "--lr="], "train: --lr : expected a number >= 0"],
    [["a.yaml", "--lr=-1"], "train: --lr -1: expected a number >= 0"],
    [["a.yaml", "--epochs", "1.5"], "train: --epochs 1.5: expected an integer >= 1"],
    [["a.yaml", "--epochs", "0"], "train: --epochs 0: expected an integer >= 1"],
    [["a.yaml", "--lr"], "train: --lr needs a value (see --help)"],
    [
      ["a.yaml", "--lr", "-1"],
      "train: --lr needs a value (for one starting with -, write --lr=-1) (see --help)",
    ],
    [["a.yaml", "--resume=yes"], "train: --resume takes no value (see --help)"],
  ];
  for (const [argv, expected] of cases) {
    let err: unknown;
    try {
      parseTaskArgs(argv, SPEC);
    } catch (e) {
      err = e;
    }
    ok(err instanceof UserError, `${argv.join(" ")}: ${err}`);
    assertEquals([err.message, err.exitCode], [expected, 2], argv.join(" "));
  }
});

Deno.test("parseTaskArgs, older form (task, usage, options): parses and suggests flags the same way", () => {
  const opts = {
    sort: { type: "string", default: "best" },
    json: { type: "boolean", default: false },
  } as const;
  const p = parseTaskArgs("compare", "usage", opts, ["a", "--json"])!;
  assertEquals([p.values.sort, p.values.json, p.positionals], ["best", true, ["a"]]);
  let err: unknown;
  try {
    parseTaskArgs("compare", "usage", opts, ["--srot", "x"]);
  } catch (e) {
    err = e;
  }
  ok(err instanceof UserError);
  assertEquals(err.message, "compare: unknown flag --srot; did you mean --sort? (see --help)");
});

Deno.test("closest: a likely typo or nothing", () => {
  assertEquals(closest("lrr", ["lr", "epochs"]), "lr");
  assertEquals(closest("model.emb_dm", configKeys()), "model.emb_dim");
  assertEquals(closest("banana", ["lr", "epochs"]), null);
  assertEquals(closest("x", []), null);
});
