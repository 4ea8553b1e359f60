/**
 * Every file or folder of the project that the README (or a page under docs/) names in backticks or links to
 * exists: a module that moves takes its mentions along.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const TOP = ["lib", "tasks", "tests", "bench", "docs", "experiments", "scaleout"];

/** The project paths a Markdown text names: `lib/…` in backticks or a link's target, placeholders and globs aside. */
export function namedPaths(md: string): string[] {
  const spans = [...md.matchAll(/`([^`\s]+)`|\]\(([^)\s#]+)\)/g)].map((m) => m[1] ?? m[2]);
  return [...new Set(spans)].filter((p) =>
    TOP.some((t) => p.startsWith(`${t}/`)) && /^[\w./-]+$/.test(p) && !p.includes("..")
  );
}

/** Folders that runs write (ignored by git, so absent from a fresh clone), from .gitignore's plain entries. */
const WRITTEN = Deno.readTextFileSync(new URL(".gitignore", ROOT)).split("\n")
  .filter((l) => /^[\w./-]+\/$/.test(l));

function exists(path: string): boolean {
  if (WRITTEN.some((dir) => path.startsWith(dir))) return true;
  try {
    Deno.statSync(new URL(path, ROOT));
    return true;
  } catch {
    return false;
  }
}

Deno.test("every project path the README and docs/ name exists", () => {
  const pages = [
    "README.md",
    ...[...Deno.readDirSync(new URL("docs/", ROOT))]
      .filter((e) => e.name.endsWith(".md")).map((e) => `docs/${e.name}`),
  ];
  const missing = pages.flatMap((page) =>
    namedPaths(Deno.readTextFileSync(new URL(page, ROOT)))
      .filter((p) => !exists(p))
      .map((p) => `${page}: ${p}`)
  );
  assertEquals(missing, []);
});

Deno.test("the path check reads backticks and links and skips placeholders", () => {
  assertEquals(
    namedPaths("`lib/x.ts`, [a](docs/y.md), `checkpoints/<name>/`, `tests/*.ts`, `lib/x.ts`"),
    ["lib/x.ts", "docs/y.md"],
  );
});
