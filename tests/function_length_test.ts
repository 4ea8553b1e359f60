/**
 * Functions in `lib/` fit on a screen: this test parses every module under `lib/` (TypeScript, and the dashboard's
 * JavaScript) with the TypeScript compiler and fails on a function of any kind (declaration, expression, arrow,
 * method, accessor, constructor, static block) whose body is longer than {@link MAX_BODY_LINES} lines, except the
 * numeric kernels of {@link ALLOWED}, which read better whole.
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import ts from "typescript";

/** Lines between a body's braces, blank and comment lines included. */
const MAX_BODY_LINES = 80;

/**
 * The functions allowed to be longer, as {@link longFunctions} names them (`lib/x.ts:Class.method`), each a
 * numeric kernel whose loops share their indices and scratch arrays: cut into pieces, each piece would need the
 * whole loop nest's context to read.
 */
const ALLOWED = new Set<string>([]);

const LIB = new URL("../lib/", import.meta.url);

function* modules(dir: URL, prefix = ""): Generator<string> {
  for (const entry of Deno.readDirSync(dir)) {
    const rel = prefix + entry.name;
    if (entry.isDirectory) yield* modules(new URL(`${entry.name}/`, dir), `${rel}/`);
    else if (/\.(ts|js)$/.test(rel)) yield rel; // the dashboard's app.js too
  }
}

/** A code unit with a body: every kind of function (block or expression body) and a class's static block. */
type Unit = ts.FunctionLikeDeclaration | ts.ClassStaticBlockDeclaration;

function isUnit(node: ts.Node): node is Unit {
  return ts.isClassStaticBlockDeclaration(node) ||
    (ts.isFunctionLike(node) && "body" in node && node.body !== undefined);
}

/** A function's own name as a reader finds it: its own, its variable's or property's, or `<anonymous>`. */
function ownName(node: Unit, file: ts.SourceFile): string {
  if (ts.isClassStaticBlockDeclaration(node)) return "static";
  if (ts.isConstructorDeclaration(node)) return "constructor";
  if (node.name) return node.name.getText(file);
  const parent = node.parent;
  if (
    (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) ||
      ts.isPropertyDeclaration(parent)) && parent.name
  ) return parent.name.getText(file);
  return "<anonymous>";
}

/**
 * `lib/<path>:<name> (<n> lines)` for every function in `src` whose body is longer than the limit; a nested
 * function or a method is named after what holds it (`outer.inner`, `Class.method`). A body's lines are those
 * between its first and last line (the braces, or an expression body's first and last line).
 */
export function longFunctions(path: string, src: string): { key: string; lines: number }[] {
  const file = ts.createSourceFile(path, src, ts.ScriptTarget.Latest, true);
  const out: { key: string; lines: number }[] = [];
  const visit = (node: ts.Node, scope: string[]) => {
    let inner = scope;
    if (isUnit(node)) {
      inner = [...scope, ownName(node, file)];
      const body = node.body!;
      const first = file.getLineAndCharacterOfPosition(body.getStart(file)).line;
      const last = file.getLineAndCharacterOfPosition(body.getEnd()).line;
      const lines = last - first - 1;
      if (lines > MAX_BODY_LINES) out.push({ key: `${path}:${inner.join(".")}`, lines });
    } else if ((ts.isClassDeclaration(node) || ts.isClassExpression(node)) && node.name) {
      inner = [...scope, node.name.getText(file)];
    }
    ts.forEachChild(node, (child) => visit(child, inner));
  };
  visit(file, []);
  return out;
}

Deno.test("longFunctions measures a body between its braces", () => {
  const body = (n: number) =>
    Array.from({ length: n }, (_, i) => `  const x${i} = ${i};`).join("\n");
  const src = `function short() {\n${body(MAX_BODY_LINES)}\n}\n` +
    `class C {\n  long() {\n${body(MAX_BODY_LINES + 1)}\n  }\n}\n` +
    `const arrow = () => {\n${body(MAX_BODY_LINES + 2)}\n};\n`;
  assertEquals(longFunctions("x.ts", src), [
    { key: "x.ts:C.long", lines: MAX_BODY_LINES + 1 },
    { key: "x.ts:arrow", lines: MAX_BODY_LINES + 2 },
  ]);
});

Deno.test("longFunctions finds every kind of function, nested ones under their holder's name", () => {
  const n = MAX_BODY_LINES + 1;
  const stmts = Array.from({ length: n }, (_, i) => `x${i}();`).join("\n");
  const items = Array.from({ length: n }, (_, i) => `a${i}: ${i},`).join("\n");
  const src = [
    `class K {`,
    `  constructor() {\n${stmts}\n}`,
    `  get g() {\n${stmts}\n}`,
    `  static {\n${stmts}\n}`,
    `  field = () => {\n${stmts}\n};`,
    `}`,
    `const obj = {`,
    `  method() {\n${stmts}\n},`,
    `  prop: () => {\n${stmts}\n},`,
    `  expr: function () {\n${stmts}\n},`,
    `};`,
    `function outer() {`,
    `  function inner() {\n${stmts}\n}`,
    `  [1].forEach(() => {\n${stmts}\n});`,
    `}`,
    `const concise = () => ({\n${items}\n});`,
    `export default function () {\n${stmts}\n}`,
  ].join("\n");
  const keys = longFunctions("k.js", src).map((f) => f.key);
  assertEquals(keys, [
    "k.js:K.constructor",
    "k.js:K.g",
    "k.js:K.static",
    "k.js:K.field",
    "k.js:method",
    "k.js:prop",
    "k.js:expr",
    "k.js:outer",
    "k.js:outer.inner",
    "k.js:outer.<anonymous>",
    "k.js:concise",
    "k.js:<anonymous>",
  ]);
});

Deno.test(`lib/: no function body is longer than ${MAX_BODY_LINES} lines (numeric kernels aside)`, () => {
  const long: string[] = [];
  const allowedSeen = new Set<string>();
  for (const rel of [...modules(LIB)].sort()) {
    for (const f of longFunctions(`lib/${rel}`, Deno.readTextFileSync(new URL(rel, LIB)))) {
      if (ALLOWED.has(f.key)) allowedSeen.add(f.key);
      else long.push(`${f.key} (${f.lines} lines)`);
    }
  }
  assertEquals(long, [], `split these functions into named phases:\n${long.join("\n")}`);
  // An entry that no longer needs the exception goes, so the list stays the list of long kernels.
  assertEquals([...ALLOWED].filter((k) => !allowedSeen.has(k)), [], "stale ALLOWED entries");
});
