/**
 * The flag parsing every task shares: `node:util` parseArgs with positionals, `-h/--help`, and a bad flag turned
 * into one UserError line naming the task.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UserError } from "./errors.ts";

type Options = NonNullable<ParseArgsConfig["options"]>;
const HELP = { help: { type: "boolean", short: "h", default: false } } as const;

/**
 * Parses `args` for `task`; returns null after printing `usage` when help was asked for.
 *
 * @example
 * const parsed = parseTaskArgs("eval", USAGE, { json: { type: "boolean", default: false } });
 * if (!parsed) return;
 */
export function parseTaskArgs<const O extends Options>(
  task: string,
  usage: string,
  options: O,
  args: string[] = Deno.args,
) {
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, options: { ...options, ...HELP } });
  } catch (err) {
    const msg = (err as Error).message;
    const unknown = msg.match(/^Unknown option '(-{1,2}[^']+)'/);
    if (unknown) {
      const flags = Object.keys(options).map((k) => `--${k}`);
      const close = flags.find((f) => f.startsWith(unknown[1]) || unknown[1].startsWith(f));
      const hint = close ? `; did you mean ${close}?` : "";
      throw new UserError(`${task}: unknown flag ${unknown[1]}${hint} (see --help)`);
    }
    throw new UserError(`${task}: ${msg.split("\n")[0].replace(/\.$/, "")} (see --help)`);
  }
  if ((parsed.values as Record<string, unknown>).help) {
    console.log(usage);
    return null;
  }
  return parsed;
}
