/**
 * The folders of `lib/` are layers: a module imports only from its own folder or from a layer below it, so
 * the tree reads bottom to top (records → backends → data → model → weights → train → runs → views). This test reads
 * every import of every module under `lib/` and fails on one that runs upward.
 *
 * The backends layer has one face (lib/backends/backend.ts) and one folder per implementation behind it
 * (cpu/, webgpu/, tensorflow/): no module of lib/ outside lib/backends/, and no task, imports a file inside an
 * implementation folder. Tests and benchmarks may: they check and time the implementations themselves.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";

/** Bottom to top; "" is `lib/` itself (config, errors, CLI parsing, progress: shared by every layer). */
export const LAYERS = ["", "backends", "data", "model", "weights", "train", "runs", "views"];

const LIB = new URL("../lib/", import.meta.url);

const ROOT = new URL("../", import.meta.url);
const BACKENDS = new URL("backends/", LIB);

function* modules(dir: URL, prefix = ""): Generator<string> {
  for (const entry of Deno.readDirSync(dir)) {
    const rel = prefix + entry.name;
    if (entry.isDirectory) yield* modules(new URL(`${entry.name}/`, dir), `${rel}/`);
    else if (rel.endsWith(".ts")) yield rel;
  }
}

/** The layer of a module path relative to `lib/` ("data/bpe.ts" → "data"). */
function layerOf(rel: string): string {
  const i = rel.indexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}

/** Every relative module specifier in a source text: static imports and exports, dynamic imports, workers. */
function relativeImports(src: string): string[] {
  const specs = src.matchAll(
    /(?:from\s+|import\s*\(\s*|import\s+|new URL\(\s*)["'](\.{1,2}\/[^"']+)["']/g,
  );
  return [...specs].map((m) => m[1]);
}

/**
 * Every relative module a source text imports (statically, dynamically or re-exported) with its line, as
 * `line N: <the line>` (a multi-line import's specifier is on its closing `} from "…"` line). A URL built to read
 * a file (tasks/build_wasm.ts reads the C sources) is not an import.
 */
function importLines(src: string): { spec: string; where: string }[] {
  const out: { spec: string; where: string }[] = [];
  src.split("\n").forEach((line, i) => {
    for (
      const [, spec] of line.matchAll(
        /(?:from\s+|import\s*\(\s*|import\s+)["'](\.{1,2}\/[^"']+)["']/g,
      )
    ) {
      out.push({ spec, where: `line ${i + 1}: ${line.trim()}` });
    }
  });
  return out;
}

/** The implementation folder of lib/backends/ that `target` (a URL) lies in, or null. */
function implementationOf(target: URL): string | null {
  if (!target.href.startsWith(BACKENDS.href)) return null;
  const rest = target.href.slice(BACKENDS.href.length);
  const i = rest.indexOf("/");
  return i < 0 ? null : rest.slice(0, i);
}

/** `path line N: …` for each import in `src` (the module at `url`) of a file inside a backend's folder. */
function implementationImports(url: URL, src: string): string[] {
  const rel = url.href.slice(ROOT.href.length);
  if (url.href.startsWith(BACKENDS.href)) return [];
  return importLines(src)
    .filter(({ spec }) => implementationOf(new URL(spec, url)) !== null)
    .map(({ where }) => `${rel} ${where}`);
}

Deno.test("no module outside lib/backends/ imports a file inside a backend's implementation folder", () => {
  const offending: string[] = [];
  for (const rel of modules(LIB)) {
    const url = new URL(rel, LIB);
    offending.push(...implementationImports(url, Deno.readTextFileSync(url)));
  }
  const TASKS = new URL("tasks/", ROOT);
  for (const rel of modules(TASKS)) {
    const url = new URL(rel, TASKS);
    offending.push(...implementationImports(url, Deno.readTextFileSync(url)));
  }
  assertEquals(
    offending,
    [],
    `import the face, lib/backends/backend.ts, instead:\n${offending.join("\n")}`,
  );
});

Deno.test("the face check sees an import of a CPU internal from lib/model/, with its line", () => {
  const planted =
    `import * as tf from "@tensorflow/tfjs-core";\nimport {\n  parallelFor,\n} from "../backends/cpu/pool.ts";\n` +
    `import { hostArray } from "../backends/backend.ts";\nimport "../backends/cpu/row_kernels.ts";\n`;
  assertEquals(implementationImports(new URL("model/ops.ts", LIB), planted), [
    'lib/model/ops.ts line 4: } from "../backends/cpu/pool.ts";',
    'lib/model/ops.ts line 6: import "../backends/cpu/row_kernels.ts";',
  ]);
});

Deno.test("lib/: every folder is a known layer and no module imports a layer above its own", () => {
  const upward: string[] = [];
  for (const rel of modules(LIB)) {
    const from = layerOf(rel);
    assertEquals(LAYERS.includes(from), true, `lib/${rel}: folder "${from}" is not in LAYERS`);
    for (const spec of relativeImports(Deno.readTextFileSync(new URL(rel, LIB)))) {
      const target = new URL(spec, new URL(rel, LIB)).href.slice(LIB.href.length);
      const to = layerOf(target);
      if (target.startsWith("..") || !LAYERS.includes(to)) {
        upward.push(`lib/${rel} imports ${spec}: outside lib/`);
      } else if (LAYERS.indexOf(to) > LAYERS.indexOf(from)) {
        upward.push(`lib/${rel} (${from || "lib"}) imports lib/${target} (${to}), a layer above`);
      }
    }
  }
  assertEquals(upward, []);
});

Deno.test("the layer check sees upward imports (a module of data/ importing model/ is caught)", () => {
  const specs = relativeImports(
    `import { GPTModel } from "../model/model.ts";\nconst w = new URL("./w.ts", x);`,
  );
  assertEquals(specs, ["../model/model.ts", "./w.ts"]);
  const target = new URL("../model/model.ts", new URL("data/corpus.ts", LIB)).href.slice(
    LIB.href.length,
  );
  assertEquals(LAYERS.indexOf(layerOf(target)) > LAYERS.indexOf(layerOf("data/corpus.ts")), true);
});
