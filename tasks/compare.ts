/**
 * `deno task compare <experiment names | run dirs | log paths | globs> [--sort key] [--json] [--out file.svg]`:
 * one row per run with the config keys that differ, losses, speed and status; optionally one SVG of all curves.
 */
import { parseArgs } from "node:util";
import {
  compareRuns,
  compareSVG,
  formatTable,
  resolveRunLogs,
  SORT_KEYS,
  sortRows,
} from "../lib/compare.ts";
import { runTask, UserError } from "../lib/errors.ts";

const USAGE = `usage: deno task compare <run> [<run> …] [options]

A run is an experiment name (checkpoints/<name>/), an experiment YAML, a run directory, a log.jsonl path, or a
glob such as 'verdict-lr-sweep.*' (quote it).

options:
  --sort key    ${SORT_KEYS.join(" | ")} (default best_val_loss)
  --json        print the rows as one JSON array
  --out file    write all runs' train (solid) and val (dashed) loss curves to an SVG file
  -h, --help    show this help`;

await runTask(async () => {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      allowPositionals: true,
      options: {
        sort: { type: "string", default: "best_val_loss" },
        json: { type: "boolean", default: false },
        out: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    throw new UserError(`compare: ${(err as Error).message.split("\n")[0]} (see --help)`);
  }
  const { values, positionals } = parsed;
  if (values.help) return console.log(USAGE);
  if (positionals.length === 0) throw new UserError("compare: name at least one run (see --help)");
  const sortKey = values.sort as typeof SORT_KEYS[number];
  if (!SORT_KEYS.includes(sortKey)) {
    throw new UserError(
      `compare: --sort ${values.sort}: unknown column; use one of ${SORT_KEYS.join(", ")}`,
    );
  }
  const { logs, rows, warnings } = compareRuns(resolveRunLogs(positionals));
  for (const w of warnings) console.error(`warning: ${w}`);
  const sorted = sortRows(rows, sortKey);
  if (values.json) console.log(JSON.stringify(sorted));
  else console.log(formatTable(sorted));
  if (values.out) {
    const tmp = `${values.out}.tmp-${Deno.pid}`;
    await Deno.writeTextFile(tmp, compareSVG(logs, rows));
    await Deno.rename(tmp, values.out);
    if (!values.json) console.log(`wrote ${values.out}`);
  }
});
