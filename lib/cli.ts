/**
 * The flag parsing every task shares: `node:util` parseArgs plus what each task would otherwise repeat: `-h/--help`
 * with a generated flag list, repeated `--set key=value`, typed numbers, positional counts, and every mistake as one
 * UserError line naming the task (`train: unknown flag --lrr; did you mean --lr? (see --help)`).
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { closest } from "./config.ts";
import { UserError } from "./errors.ts";

/** One flag of a task. `number`/`integer` flags are checked and returned as numbers. */
export interface FlagSpec {
  type: "string" | "boolean" | "number" | "integer";
  help: string;
  /** Placeholder of the value in the help, e.g. `n` (default `value`). */
  arg?: string;
  short?: string;
  default?: string | number;
  /** Smallest accepted value of a number or integer flag. */
  min?: number;
}

/** What a task accepts. Positional names: `name` required, `[name]` optional, `name...` one or more (last). */
export interface TaskSpec {
  task: string;
  /** The usage line without `usage: `, e.g. `deno task train <experiment.yaml> [options]`. */
  usage: string;
  /** A paragraph printed under the usage line. */
  about?: string;
  positionals?: readonly string[];
  flags?: Record<string, FlagSpec>;
}

type ValueOf<F extends FlagSpec> = F["type"] extends "boolean" ? boolean
  : F["type"] extends "string" ? string
  : number;

/** Parsed flags: booleans default to false; others are undefined unless given or defaulted. */
export type FlagValues<F extends Record<string, FlagSpec>> =
  & {
    [K in keyof F]: F[K]["type"] extends "boolean" ? boolean
      : F[K] extends { default: string | number } ? ValueOf<F[K]>
      : ValueOf<F[K]> | undefined;
  }
  & { set: string[] };

/** What {@link parseTaskArgs} returns when the task should run. */
export interface ParsedTask<F extends Record<string, FlagSpec>> {
  values: FlagValues<F>;
  positionals: string[];
}

type Options = NonNullable<ParseArgsConfig["options"]>;
const HELP = { help: { type: "boolean", short: "h", default: false } } as const;
const SET: FlagSpec = {
  type: "string",
  arg: "key=value",
  help: "override a config key, e.g. --set training.lr=1e-3 (repeatable)",
};

/** The `--help` text of a task: usage line, about paragraph, one line per flag with its default. */
export function formatHelp(spec: TaskSpec): string {
  const flags: [string, FlagSpec][] = [...Object.entries(spec.flags ?? {}), ["set", SET]];
  const rows = flags.map(([name, f]) => {
    const head = `${f.short ? `-${f.short}, ` : ""}--${name}` +
      (f.type === "boolean" ? "" : ` ${f.arg ?? "value"}`);
    return [head, f.help + (f.default !== undefined ? ` (default ${f.default})` : "")];
  });
  rows.push(["-h, --help", "show this help"]);
  const width = Math.max(...rows.map(([h]) => h.length)) + 4;
  const about = spec.about ? `\n\n${spec.about}` : "";
  return `usage: ${spec.usage}${about}\n\noptions:\n` +
    rows.map(([h, text]) => `  ${h.padEnd(width)}${text}`).join("\n");
}

/** Turns a parseArgs error into one line naming the task and the flag. */
function flagError(task: string, flags: string[], err: unknown): UserError {
  const msg = err instanceof Error ? err.message : String(err);
  const unknown = msg.match(/^Unknown option '(-{1,2})([^']+)'/);
  if (unknown) {
    const near = unknown[1] === "--" ? closest(unknown[2], flags) : null;
    const hint = near ? `; did you mean --${near}?` : "";
    return new UserError(`${task}: unknown flag ${unknown[1]}${unknown[2]}${hint} (see --help)`);
  }
  const flag = msg.match(/^Option '(?:-\w, )?(--[^' ]+)/)?.[1];
  if (flag && /ambiguous/.test(msg)) {
    return new UserError(
      `${task}: ${flag} needs a value (for one starting with -, write ${flag}=-1) (see --help)`,
    );
  }
  if (flag && /argument missing/.test(msg)) {
    return new UserError(`${task}: ${flag} needs a value (see --help)`);
  }
  if (flag && /does not take an argument/.test(msg)) {
    return new UserError(`${task}: ${flag} takes no value (see --help)`);
  }
  return new UserError(`${task}: ${msg.split("\n")[0].replace(/\.$/, "")} (see --help)`);
}

function checkPositionals(task: string, names: readonly string[], got: string[]): void {
  const required = names.filter((n) => !n.startsWith("[")).length;
  const variadic = names.at(-1)?.endsWith("...") ?? false;
  if (got.length < required) {
    const missing = names[got.length].replace(/\.\.\.$/, "");
    throw new UserError(`${task}: missing <${missing}> (see --help)`);
  }
  if (!variadic && got.length > names.length) {
    throw new UserError(`${task}: unexpected argument ${got[names.length]} (see --help)`);
  }
}

function toNumber(task: string, name: string, f: FlagSpec, raw: string): number {
  const n = raw.trim() === "" ? NaN : Number(raw);
  const kind = f.type === "integer" ? "an integer" : "a number";
  const min = f.min !== undefined ? ` >= ${f.min}` : "";
  if (
    !Number.isFinite(n) || (f.type === "integer" && !Number.isInteger(n)) ||
    (f.min !== undefined && n < f.min)
  ) {
    throw new UserError(`${task}: --${name} ${raw}: expected ${kind}${min}`);
  }
  return n;
}

/** Whether -h/--help comes before any `--`: help wins over every other mistake on the line. */
function wantsHelp(argv: string[]): boolean {
  const end = argv.indexOf("--");
  return (end < 0 ? argv : argv.slice(0, end)).some((a) => a === "-h" || a === "--help");
}

function parseSpec(argv: string[], spec: TaskSpec): ParsedTask<Record<string, FlagSpec>> | null {
  if (wantsHelp(argv)) {
    console.log(formatHelp(spec));
    return null;
  }
  const flags = spec.flags ?? {};
  const options: Options = { ...HELP, set: { type: "string", multiple: true, default: [] } };
  for (const [name, f] of Object.entries(flags)) {
    options[name] = f.type === "boolean"
      ? { type: "boolean", default: false, ...(f.short ? { short: f.short } : {}) }
      : { type: "string", ...(f.short ? { short: f.short } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options });
  } catch (err) {
    throw flagError(spec.task, Object.keys(options), err);
  }
  const raw = parsed.values as Record<string, string | boolean | string[] | undefined>;
  checkPositionals(spec.task, spec.positionals ?? [], parsed.positionals);
  const values: Record<string, unknown> = { set: raw.set };
  for (const [name, f] of Object.entries(flags)) {
    const v = raw[name] ?? f.default;
    values[name] = typeof v === "string" && (f.type === "number" || f.type === "integer")
      ? toNumber(spec.task, name, f, v)
      : v;
  }
  return {
    values: values as FlagValues<Record<string, FlagSpec>>,
    positionals: parsed.positionals,
  };
}

type LegacyParsed<O extends Options> = ReturnType<
  typeof parseArgs<{ args: string[]; allowPositionals: true; options: O & typeof HELP }>
>;

/**
 * Parses a task's arguments. Returns null after printing the help when `-h`/`--help` was given (the task then
 * returns and exits 0); every mistake is a UserError of one line.
 *
 * @example
 * const parsed = parseTaskArgs(Deno.args, {
 *   task: "eval",
 *   usage: "deno task eval <experiment.yaml> [options]",
 *   positionals: ["experiment.yaml"],
 *   flags: { "num-batches": { type: "integer", min: 1, arg: "n", help: "batches per loader" } },
 * });
 * if (!parsed) return;
 * const cfg = await loadExperiment(parsed.positionals[0], parsed.values.set);
 */
export function parseTaskArgs<const S extends TaskSpec>(
  argv: string[],
  spec: S,
):
  | ParsedTask<S["flags"] extends Record<string, FlagSpec> ? S["flags"] : Record<never, never>>
  | null;
/**
 * The older form: raw parseArgs `options`, a hand-written `usage` printed for `--help`, no positional or number
 * checks. Kept for the tasks that still call it; new code passes a {@link TaskSpec}.
 */
export function parseTaskArgs<const O extends Options>(
  task: string,
  usage: string,
  options: O,
  args?: string[],
): LegacyParsed<O> | null;
export function parseTaskArgs(
  a: string[] | string,
  b: TaskSpec | string,
  options?: Options,
  args: string[] = Deno.args,
): unknown {
  if (Array.isArray(a)) return parseSpec(a, b as TaskSpec);
  if (wantsHelp(args)) {
    console.log(b);
    return null;
  }
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, options: { ...options, ...HELP } });
  } catch (err) {
    throw flagError(a, Object.keys({ ...options, ...HELP }), err);
  }
  return parsed;
}
