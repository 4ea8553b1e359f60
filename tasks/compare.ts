/**
 * `deno task compare <runs…> [--sort key] [--json] [--out file.svg]`: one row per run with the config keys that
 * differ, losses, speed and status; optionally one SVG of every run's loss curves.
 *
 * Exit codes: 0 done; 2 bad arguments or an unknown run (one line on stderr).
 */
import {
  compareRuns,
  compareSVG,
  formatTable,
  resolveRunLogs,
  resolveSortKey,
  sortRows,
} from "../lib/views/compare.ts";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { claimOutput, outputMark, writeOutputFile } from "../lib/outputs.ts";

const USAGE = `usage: deno task compare <run> [<run> …] [options]

A run is a run name (checkpoints/<name>/), a run directory, a log.jsonl path, an experiment YAML (its run, or
every point of its sweep), or a glob such as 'verdict-lr-sweep.*' (quoted; * and ? in the last component).

options:
  --sort key    a column of the table, best first: run, steps, tokens, train, val, "best train",
                "best val" (or best_val), "val ppl", tok/s, wall, status; a field of --json such as
                best_val_loss; or a differing config key such as training.lr (default "best val")
  --json        print the rows as one JSON array (schema: RunRow in lib/views/compare.ts)
  --out file    write every run's train (solid) and val (dashed) loss against tokens seen to an SVG file
                (a new file, or one compare wrote before)
  -h, --help    show this help`;

await runTask(async () => {
  const parsed = parseTaskArgs("compare", USAGE, {
    sort: { type: "string", default: "best val" },
    json: { type: "boolean", default: false },
    out: { type: "string" },
  });
  if (!parsed) return;
  const { values, positionals } = parsed;
  if (positionals.length === 0) throw new UserError("compare: name at least one run (see --help)");
  if (values.out !== undefined) {
    await claimOutput(values.out, "compare --out", {
      kind: "file",
      mark: outputMark("compare --out"),
    });
  }

  const resolved = await resolveRunLogs(positionals);
  const { logs, rows, warnings } = compareRuns(resolved.paths);
  for (const w of [...resolved.warnings, ...warnings]) console.error(`warning: ${w}`);
  const sorted = sortRows(rows, resolveSortKey(rows, values.sort));
  console.log(values.json ? JSON.stringify(sorted, null, 2) : formatTable(sorted));

  if (values.out !== undefined) {
    const mark = `<!-- ${outputMark("compare --out")} -->\n`;
    await writeOutputFile(values.out, "compare --out", mark + compareSVG(logs, rows));
    if (!values.json) console.log(`wrote ${values.out}`);
  }
});
