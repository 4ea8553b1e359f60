/**
 * The folders of `lib/` are layers: a module imports only from its own folder or from a layer below it, so
 * the tree reads bottom to top (records → backends → data → model → weights → train → runs). This test reads
 * every import of every module under `lib/` and fails on one that runs upward.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";

/** Bottom to top; "" is `lib/` itself (config, errors, CLI parsing, progress: shared by every layer). */
export const LAYERS = ["", "backends", "data", "model", "weights", "train", "runs"];

const LIB = new URL("../lib/", import.meta.url);

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
