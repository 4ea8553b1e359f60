import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import { UserError } from "../lib/errors.ts";
import {
  type HeaderRecord,
  readRunLog,
  RUN_LOG_SCHEMA,
  RunLog,
  RUNNING_WINDOW_S,
} from "../lib/runs/runlog.ts";
import { tempDir } from "./_helpers.ts";

const header = (resumed: number | null = null): HeaderRecord => ({
  type: "header",
  schema_version: RUN_LOG_SCHEMA,
  engine: "gpt-ts",
  experiment: "r",
  run: "r",
  config: { training: { lr: 1e-3 } },
  config_hash: "0",
  seed: 123,
  backend: "cpu",
  backend_reason: "test",
  params: 1,
  versions: {},
  git_commit: null,
  start_time: new Date(0).toISOString(),
  resumed_from_step: resumed,
});
const evalLine = (step: number, loss: number) => ({
  type: "eval",
  epoch: 1,
  step,
  tokens_seen: 512 * step,
  train_loss: loss,
  val_loss: loss + 1,
  lr: 1e-3,
  elapsed_s: step,
  tokens_per_s: 512,
});

function writeLines(path: string, lines: unknown[], tail = ""): void {
  Deno.writeTextFileSync(path, lines.map((l) => JSON.stringify(l) + "\n").join("") + tail);
}

Deno.test("RunLog creates its directory, appends one line per write and never rewrites", () => {
  const dir = tempDir();
  const path = `${dir}/deep/run/log.jsonl`;
  const a = RunLog.open(path);
  a.write(header());
  a.write({ type: "sample", epoch: 1, step: 9, text: 'line\nbreak "quoted" ünïcode' });
  a.close();
  const b = RunLog.open(path); // a resumed process appends
  b.write(header(9));
  b.close();
  const text = Deno.readTextFileSync(path);
  assertEquals(text.split("\n").length, 4); // 3 lines + the final newline
  const log = readRunLog(path);
  assertEquals(log.lines.map((l) => l.type), ["header", "sample", "header"]);
  assertEquals(log.samples[0].text, 'line\nbreak "quoted" ünïcode');
  assertEquals(log.headers.length, 2);
  assertEquals(log.header!.resumed_from_step, null);
  assertEquals(log.warnings, []);
});

Deno.test("a truncated last line is skipped with one warning", () => {
  const path = `${tempDir()}/log.jsonl`;
  writeLines(
    path,
    [header(), evalLine(5, 9), evalLine(10, 8)],
    '{"type":"eval","step":15,"train_lo',
  );
  const log = readRunLog(path);
  assertEquals(log.evals.map((e) => e.step), [5, 10]);
  assertEquals(log.warnings, [`${path}: skipped 1 unreadable line (first: line 4)`]);
});

Deno.test("foreign lines (not JSON, JSON without a known type) are skipped with ONE warning", () => {
  const path = `${tempDir()}/log.jsonl`;
  const foreign = [
    "not json",
    '{"foo":1}',
    "[1,2]",
    "null",
    '"eval"',
    '{"type":"weird"}',
    "\x00\xff",
  ];
  Deno.writeTextFileSync(
    path,
    [
      JSON.stringify(header()),
      ...foreign.slice(0, 3),
      JSON.stringify(evalLine(5, 9)),
      ...foreign.slice(3),
    ]
      .join("\n") + "\n",
  );
  Deno.writeFileSync(path, new Uint8Array([0xff, 0xfe, 0x80, 0x0a]), { append: true }); // not UTF-8
  const log = readRunLog(path);
  assertEquals(log.lines.map((l) => l.type), ["header", "eval"]);
  assertEquals(log.warnings, [`${path}: skipped 8 unreadable lines (first: line 2)`]);
});

Deno.test("content never throws; a missing or unreadable file is a UserError naming it", () => {
  const dir = tempDir();
  Deno.writeTextFileSync(`${dir}/empty.jsonl`, "");
  const empty = readRunLog(`${dir}/empty.jsonl`);
  assertEquals([empty.lines, empty.header, empty.evals, empty.warnings], [[], null, [], []]);
  throws(
    () => readRunLog(`${dir}/missing.jsonl`),
    (e) => e instanceof UserError && e.message === `${dir}/missing.jsonl: no such run log`,
  );
  throws(() => readRunLog(dir), (e) => e instanceof UserError && e.message.startsWith(dir));
});

Deno.test("status: finished, interrupted, crashed (error line or stale), running", () => {
  const path = `${tempDir()}/log.jsonl`;
  const statusOf = (lines: unknown[], now = Date.now()) => {
    writeLines(path, lines);
    return readRunLog(path, now).status;
  };
  const summary = { type: "summary", status: "finished", steps: 10, tokens_seen: 5120 };
  const later = Date.now() + (RUNNING_WINDOW_S + 1) * 1000;
  assertEquals(statusOf([header(), evalLine(5, 9), summary]), "finished");
  assertEquals(statusOf([header(), summary, { type: "epoch", epoch: 1, step: 10 }]), "finished");
  assertEquals(statusOf([header(), evalLine(5, 9), summary], later), "finished");
  assertEquals(
    statusOf([header(), { type: "interrupted", step: 7, reason: "signal" }], later),
    "interrupted",
  );
  assertEquals(statusOf([header(), { type: "error", step: 7, reason: "NaN loss" }]), "crashed");
  assertEquals(statusOf([header(), evalLine(5, 9)]), "running"); // written just now
  assertEquals(statusOf([header(), evalLine(5, 9)], later), "crashed"); // silent for too long
  // interrupted, then resumed: the new header means the run goes on
  const resumed = [header(), evalLine(5, 9), { type: "interrupted", step: 5 }, header(5)];
  assertEquals(statusOf(resumed), "running");
  assertEquals(readRunLog(path).summary, null);
});

Deno.test("a run resumed from step s drops the earlier segment's evals past s (redone after a crash)", () => {
  const path = `${tempDir()}/log.jsonl`;
  writeLines(path, [
    header(),
    evalLine(5, 9),
    evalLine(10, 8),
    evalLine(15, 7.5), // after the last checkpoint at step 10; the crash loses it
    header(10),
    evalLine(15, 7.4),
    evalLine(20, 7),
  ]);
  const log = readRunLog(path);
  assertEquals(log.evals.map((e) => [e.step, e.train_loss]), [[5, 9], [10, 8], [15, 7.4], [20, 7]]);
  assertEquals(log.lines.filter((l) => l.type === "eval").length, 5); // lines keep everything
});
