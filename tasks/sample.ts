/**
 * `deno task sample <experiment.yaml> [--prompt … --temperature … --top-k … --max-new-tokens … --seed …
 * --num-samples … --eos-id … --init --checkpoint best|last|path]`: continuations from the experiment's checkpoint with the
 * book's `generate` (section 5.3), streamed token by token. Same seed, same text.
 */
import { initBackend, usePrecision } from "../lib/backends/backend.ts";
import { flagOverride, loadExperiment } from "../lib/config.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { generateCached } from "../lib/model/kvcache.ts";
import { loadModel } from "../lib/train/load.ts";
import { checkMemoryFits, checkSampling, checkTokenizerFits } from "../lib/train/preflight.ts";
import { TorchGenerator } from "../lib/model/rng.ts";
import { textToTokenIds, tokenIdsToText } from "../lib/data/tokenizer.ts";

const USAGE = `usage: deno task sample <experiment.yaml> [options]

Prints continuations of a prompt from the experiment's latest checkpoint. Defaults come from the YAML's sampling
section; the prompt defaults to training.start_context and the seed to training.seed.

options:
  --prompt text          the text to continue
  --temperature t        0 = greedy (argmax); > 0 samples from softmax(logits / t)
  --top-k k              keep the k most likely tokens (0 or "none": all)
  --max-new-tokens n     tokens to generate
  --eos-id id            stop at this token id
  --seed s               seeds PyTorch's generator right before generating (torch.manual_seed(s))
  --num-samples n        continuations to print (drawn one after another from the same generator)
  --init                 use the seeded untrained model instead of a checkpoint
  --checkpoint c         use this checkpoint: best (training.keep_best), last (the default), or a file
  --set key=value        override a config key (repeatable); --backend name as --set backend=name,
                         --precision fp32|bf16-mixed as --set precision=…
  -h, --help             show this help`;

function int(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new UserError(`sample: --${flag} ${v}: expected an integer >= ${min}`);
  }
  return n;
}

await runTask(async () => {
  const parsed = parseTaskArgs("sample", USAGE, {
    prompt: { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "max-new-tokens": { type: "string" },
    "eos-id": { type: "string" },
    seed: { type: "string" },
    "num-samples": { type: "string", default: "1" },
    init: { type: "boolean", default: false },
    checkpoint: { type: "string" },
    set: { type: "string", multiple: true, default: [] },
    backend: { type: "string" },
    precision: { type: "string" },
  });
  if (!parsed) return;
  const { values: v, positionals } = parsed;
  if (positionals.length !== 1) {
    throw new UserError(`sample: expected one experiment file (see --help)`);
  }
  const overrides = [...(v.set ?? [])];
  if (v.backend) overrides.push(flagOverride("backend", "backend", v.backend));
  if (v.precision) overrides.push(flagOverride("precision", "precision", v.precision));
  const cfg = await loadExperiment(positionals[0], overrides);
  checkTokenizerFits(cfg); // prompts and data are GPT-2 token ids
  checkMemoryFits(cfg, "sample");
  let temperature = cfg.sampling.temperature;
  if (v.temperature !== undefined) {
    temperature = Number(v.temperature);
    if (!(temperature >= 0) || !Number.isFinite(temperature)) {
      throw new UserError(`sample: --temperature ${v.temperature}: expected a finite number >= 0`);
    }
  }
  let topK = cfg.sampling.top_k;
  if (v["top-k"] !== undefined) {
    topK = v["top-k"] === "none" || v["top-k"] === "0" ? null : int("top-k", v["top-k"], 1)!;
  }
  const maxNewTokens = int("max-new-tokens", v["max-new-tokens"], 0) ?? cfg.sampling.max_new_tokens;
  const eosId = int("eos-id", v["eos-id"], 0) ?? cfg.sampling.eos_id;
  const seed = int("seed", v.seed, 0) ?? cfg.training.seed;
  const numSamples = int("num-samples", v["num-samples"], 1)!;
  if (v.init && v.checkpoint) {
    throw new UserError("sample: --init and --checkpoint exclude each other");
  }
  checkSampling(cfg, { topK, eosId });
  if (v.prompt === "") {
    // The book's generate continues a context of at least one token; nothing to continue is the user's input.
    throw new UserError(`sample: --prompt "": empty; give at least one word to continue`);
  }

  const backend = await initBackend(cfg.backend);
  const { model, source } = await loadModel(cfg, { init: v.init, checkpoint: v.checkpoint });
  const precision = usePrecision(cfg.precision, backend.name, [...model.params.values()]);
  // Greedy decoding (temperature 0) takes the argmax: top-k and the seed change nothing, so they are not shown.
  const settings = temperature === 0
    ? "temperature 0 (greedy)"
    : `temperature ${temperature}, top-k ${topK ?? "none"}, seed ${seed}`;
  console.error(`${cfg.name}: ${source}; ${settings}; precision ${precision}`);
  let prompt = textToTokenIds(v.prompt ?? cfg.training.start_context);
  const ctx = model.cfg.context_length;
  if (prompt.length > ctx) {
    console.error(
      `note: the prompt has ${prompt.length} tokens; keeping its last ${ctx} (context_length)`,
    );
    prompt = prompt.slice(-ctx);
  }
  const rng = new TorchGenerator(seed);
  const enc = new TextEncoder();
  for (let s = 0; s < numSamples; s++) {
    if (numSamples > 1) console.log(`--- sample ${s + 1}`);
    const ids = prompt.slice();
    let shown = tokenIdsToText(ids);
    Deno.stdout.writeSync(enc.encode(shown));
    await generateCached(model, prompt, {
      maxNewTokens,
      temperature,
      topK,
      eosId,
      rng,
      onToken: (id) => {
        ids.push(id);
        const text = tokenIdsToText(ids);
        if (text.startsWith(shown) && !text.endsWith("\uFFFD")) {
          Deno.stdout.writeSync(enc.encode(text.slice(shown.length)));
          shown = text;
        }
      },
    });
    const text = tokenIdsToText(ids);
    if (text.startsWith(shown)) Deno.stdout.writeSync(enc.encode(text.slice(shown.length)));
    console.log();
  }
  model.dispose();
});
