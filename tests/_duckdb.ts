/**
 * Writes a Parquet file with DuckDB in a child process: `deno run … tests/_duckdb.ts <jsonl> <out> <codec> <docs>`
 * copies the first `docs` rows (by `id`) of a JSON Lines file into `out` in row groups of 2048 rows and prints the
 * number of row groups as JSON.
 *
 * DuckDB is a Node-API addon; loaded into the test runner it stays there until the process ends, and one CI run of
 * the suite aborted in glibc's heap checks at that exit after every test had passed. In a child process that ends
 * with `Deno.exit` its native state never meets the test runner's shutdown.
 */
import { DuckDBInstance } from "@duckdb/node-api";

const ROOT = new URL("..", import.meta.url).pathname;

/** Runs this script in a child process; resolves to the number of row groups written. */
export async function duckParquet(
  jsonl: string,
  out: string,
  codec: "zstd" | "snappy",
  docs = 5000,
): Promise<number> {
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      "--allow-ffi",
      "--config",
      `${ROOT}deno.json`,
      new URL(import.meta.url).pathname,
      jsonl,
      out,
      codec,
      String(docs),
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(child.stdout);
  if (!child.success) {
    throw new Error(`DuckDB child exited ${child.code}: ${new TextDecoder().decode(child.stderr)}`);
  }
  return JSON.parse(text);
}

async function main([jsonl, out, codec, docs]: string[]): Promise<never> {
  const db = await DuckDBInstance.create(":memory:", { threads: "1" });
  const c = await db.connect();
  await c.run(
    `COPY (SELECT id, text FROM read_json('${jsonl}', format = 'newline_delimited') ` +
      `WHERE id < ${Number(docs)} ORDER BY id) TO '${out}' ` +
      `(FORMAT parquet, COMPRESSION ${codec}, ROW_GROUP_SIZE 2048)`,
  );
  const groups = await c.runAndReadAll(
    `SELECT count(DISTINCT row_group_id) FROM parquet_metadata('${out}')`,
  );
  console.log(JSON.stringify(Number(groups.getRows()[0][0])));
  c.closeSync();
  db.closeSync();
  Deno.exit(0);
}

if (import.meta.main) await main(Deno.args);
