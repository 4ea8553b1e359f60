/**
 * `deno task dashboard` in a real headless Chromium: the runs of a checkpoints directory trained here (a tiny model
 * through lib/runs/run.ts), one chart series per run and split, a live eval line reaching the open page, the
 * smoothing and log-scale controls, and paths outside the directory refused.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { listRuns, runDir, runLog, startDashboard } from "../lib/runs/dashboard/server.ts";
import { compareRuns } from "../lib/runs/compare.ts";
import { Browser, findChromium } from "./_chromium.ts";
import { ensureVerdict, tempDir, TINY_RUN } from "./_helpers.ts";

const CHROMIUM = findChromium();
if (!CHROMIUM) {
  console.log("dashboard browser tests ignored: no chromium installed (apt-get install chromium)");
}

const TINY = [
  ...TINY_RUN,
  "training.epochs=2",
  "training.eval_freq=3",
  "training.eval_iter=1",
];
const quiet = { print: () => {}, progress: false };

/** A checkpoints directory with two real runs of one sweep, a foreign log, and a symlink out of it. */
async function fixture(): Promise<string> {
  await ensureVerdict();
  const dir = tempDir();
  for (const lr of ["0.004", "0.001"]) {
    const cfg = await loadExperiment("experiments/verdict-small.yaml", [
      ...TINY,
      `training.lr=${lr}`,
      `name=tiny-sweep.lr=${lr}`,
    ]);
    await runTraining(cfg, { ...quiet, checkpointsDir: dir });
  }
  Deno.mkdirSync(`${dir}/foreign`);
  Deno.writeTextFileSync(`${dir}/foreign/log.jsonl`, 'not json\n{"type":"other"}\n');
  // a real log with a line that is not JSON in the middle
  const lines = Deno.readTextFileSync(`${dir}/tiny-sweep.lr=0.001/log.jsonl`).split("\n");
  Deno.mkdirSync(`${dir}/malformed`);
  Deno.writeTextFileSync(
    `${dir}/malformed/log.jsonl`,
    [...lines.slice(0, 3), "{oops", ...lines.slice(3)].join("\n"),
  );
  const outside = tempDir();
  Deno.writeTextFileSync(`${outside}/log.jsonl`, lines.join("\n"));
  Deno.symlinkSync(outside, `${dir}/escape`);
  Deno.mkdirSync(`${dir}/sneaky`);
  Deno.symlinkSync(`${outside}/log.jsonl`, `${dir}/sneaky/log.jsonl`);
  return dir;
}

/** Appends text to a log in one write, as RunLog does. */
function append(path: string, text: string) {
  const f = Deno.openSync(path, { append: true });
  f.writeSync(new TextEncoder().encode(text));
  f.close();
}

const A = "tiny-sweep.lr=0.004", B = "tiny-sweep.lr=0.001";

Deno.test({
  name: "dashboard: run list, charts, live lines, smoothing and log scale in headless Chromium",
  ignore: !CHROMIUM,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await fixture();
    const dash = startDashboard(dir, { port: 0 });
    const browser = await Browser.launch(CHROMIUM!);
    try {
      await browser.goto(`${dash.url}?runs=${encodeURIComponent(`${A},${B}`)}&smooth=0`);
      await browser.waitFor("document.body.dataset.ready === '1'");

      // the run list: both trained runs as compare sees them, grouped as one sweep; the foreign log as a warning
      // in its row, the malformed one with its figures and a warning row; no symlink out of the directory
      const rows = () =>
        browser.eval<{ run: string; status: string; cells: string[] }[]>(
          `[...document.querySelectorAll("tr.run")].map((tr) => ({ run: tr.dataset.run,
            status: tr.dataset.status, cells: [...tr.cells].map((c) => c.textContent) }))`,
        );
      const row = async (name: string) => (await rows()).find((r) => r.run === name)!;
      assertEquals((await rows()).map((r) => r.run), ["foreign", "malformed", B, A]);
      const { rows: cmp } = compareRuns([`${dir}/${A}/log.jsonl`]);
      const a = await row(A);
      assertEquals(a.status, "finished");
      assertEquals(a.cells[4], String(cmp[0].steps));
      assertEquals(a.cells[7], cmp[0].final_val_loss!.toFixed(3));
      const foreign = await row("foreign");
      assertEquals(foreign.status, "unreadable");
      ok(foreign.cells[2].includes("skipped 2 unreadable lines"), foreign.cells[2]);
      ok(foreign.cells[2].includes("no header line"), foreign.cells[2]);
      const malformed = await row("malformed");
      assertEquals(malformed.cells[4], (await row(B)).cells[4], "a bad line does not hide the run");
      const warning = await browser.eval<string>(
        `document.querySelector('tr[data-warning="malformed"]').textContent`,
      );
      ok(warning.includes("skipped 1 unreadable line (first: line 4)"), warning);
      assertEquals(
        await browser.eval(`document.querySelector("tr.group").dataset.group`),
        "tiny-sweep",
      );

      // one loss series per run and split (plus each one's faint raw curve)
      const meta = await browser.eval<{ run: string; split: string; raw: boolean }[]>(
        "dash.charts.loss.meta",
      );
      assertEquals(
        meta.filter((m) => !m.raw).map((m) => `${m.run} ${m.split}`).sort(),
        [`${A} train`, `${A} val`, `${B} train`, `${B} val`].sort(),
      );
      assertEquals(await browser.eval("dash.charts.loss.series.length"), 1 + meta.length);
      ok(await browser.eval("dash.charts.lr.meta.length === 4"), "lr is charted for both runs");

      // a new eval line reaches the open page's chart and A's row without a reload (A runs again: its last line
      // is an eval, not a summary); a half-written line waits for its newline
      const log = `${dir}/${A}/log.jsonl`;
      const steps = () => browser.eval<number[]>("Array.from(dash.charts.loss.data[0])");
      const before = await steps();
      const line = JSON.stringify({
        type: "eval",
        epoch: 3,
        step: 999,
        tokens_seen: 999 * 512,
        train_loss: 1.5,
        val_loss: 2.5,
        lr: 0.004,
        grad_norm: null,
        elapsed_s: 50,
        tokens_per_s: 100,
      });
      append(log, line.slice(0, 20));
      await new Promise((r) => setTimeout(r, 1500));
      assertEquals(await steps(), before, "a truncated line is held back");
      assertEquals((await row(A)).cells.slice(2, 8), a.cells.slice(2, 8), "and so is the row");
      append(log, line.slice(20) + "\n");
      await browser.waitFor("Array.from(dash.charts.loss.data[0]).includes(999)", 5000);
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${A}"]').cells[4].textContent === "999"`,
        5000,
      );
      const live = await row(A);
      assertEquals(live.status, "running");
      assertEquals(live.cells.slice(4, 7), ["999", String(999 * 512), "1.500"]);
      assertEquals(live.cells[7], "2.500");

      // the run finishes while the page is open: its row turns from running to finished
      append(log, JSON.stringify({ ...cmp[0], type: "summary", status: "finished" }) + "\n");
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${A}"]').dataset.status === "finished"`,
        5000,
      );

      // a resumed run's second header: the evals past its step go, as compare drops them
      const header = Deno.readTextFileSync(log).split("\n")[0];
      const from = Number(compareRuns([log]).logs[0].evals[1].step);
      append(
        log,
        JSON.stringify({ ...JSON.parse(header), resumed_from_step: from }) + "\n" +
          line.replace('"step":999', `"step":${from + 1}`) + "\n",
      );
      await browser.waitFor(`!dash.data[${JSON.stringify(A)}].series.step.includes(999)`, 5000);
      const resumed = compareRuns([log]);
      assertEquals(
        await browser.eval(`dash.data[${JSON.stringify(A)}].series.step`),
        resumed.logs[0].evals.map((e) => e.step),
      );
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${A}"]').cells[4].textContent === "${from + 1}"`,
        5000,
      );
      // a log replaced by a shorter one (a fresh start) is drawn again from its start
      const logB = `${dir}/${B}/log.jsonl`;
      const fresh = Deno.readTextFileSync(logB).split("\n").slice(0, 3).join("\n") + "\n";
      Deno.writeTextFileSync(`${logB}.tmp`, fresh);
      Deno.renameSync(`${logB}.tmp`, logB);
      const freshSteps = compareRuns([logB]).logs[0].evals.map((e) => e.step);
      await browser.waitFor(
        `JSON.stringify(dash.data[${JSON.stringify(B)}].series.step) === ${
          JSON.stringify(JSON.stringify(freshSteps))
        }`,
        5000,
      );
      ok(
        await browser.eval(
          "!!window.dash && performance.getEntriesByType('navigation').length === 1",
        ),
        "no reload",
      );

      // smoothing: at 0 the drawn curve is the raw one; at 0.9 it is not, and the raw one stays behind it
      const curve = () =>
        browser.eval<(number | null)[][]>(
          `(() => { const u = dash.charts.loss, i = u.meta.findIndex((m) => m.run === ${
            JSON.stringify(A)
          } && m.split === "train");
          return [Array.from(u.data[1 + i]), Array.from(u.data[2 + i])]; })()`,
        );
      const [s0, r0] = await curve();
      assertEquals(s0, r0);
      await browser.eval(`(() => { const el = document.querySelector("#smooth"); el.value = "0.9";
        el.dispatchEvent(new Event("input")); })()`);
      const [s9, r9] = await curve();
      assertEquals(r9, r0);
      ok(
        s9.some((v, i) => v !== null && r9[i] !== null && Math.abs(v - r9[i]!) > 1e-6),
        "smoothed differs",
      );
      ok(
        (await browser.eval<string>("location.search")).includes("smooth=0.9"),
        "state in the URL",
      );

      // log scale
      assertEquals(await browser.eval("dash.charts.loss.scales.y.distr"), 1);
      await browser.eval(`document.querySelector("#log").click()`);
      assertEquals(await browser.eval("dash.charts.loss.scales.y.distr"), 3);

      // a link reopens the same view, each run in the colour it had, whatever else is selected
      const colours = () =>
        browser.eval<Record<string, string>>(
          "Object.fromEntries(dash.charts.loss.meta.map((m) => [m.run, m.colour]))",
        );
      const was = await colours(), href = await browser.eval<string>("location.href");
      ok(was[A] !== was[B], "one colour per run");
      await browser.goto("about:blank");
      await browser.goto(href);
      await browser.waitFor("document.body.dataset.ready === '1'");
      assertEquals(
        await browser.eval(`[dash.state.runs, dash.state.smooth, dash.state.log,
          document.querySelector("#smooth").value, document.querySelector("#log").checked,
          dash.charts.loss.scales.y.distr]`),
        [[A, B], 0.9, true, "0.9", true, 3],
      );
      assertEquals(await colours(), was);
      await browser.goto(`${dash.url}?runs=${encodeURIComponent(A)}`);
      await browser.waitFor("document.body.dataset.ready === '1'");
      assertEquals(await colours(), { [A]: was[A] });
    } finally {
      await browser.close();
      await dash.shutdown();
    }
  },
});

Deno.test("dashboard: paths outside the checkpoints directory are refused", async () => {
  const dir = tempDir();
  Deno.mkdirSync(`${dir}/inner/run`, { recursive: true });
  Deno.writeTextFileSync(`${dir}/inner/run/log.jsonl`, "");
  Deno.writeTextFileSync(`${dir}/log.jsonl`, "");
  Deno.symlinkSync(`${dir}/inner/run`, `${dir}/inner/link`);
  Deno.symlinkSync(dir, `${dir}/inner/up`);
  Deno.mkdirSync(`${dir}/inner/sneaky`);
  Deno.symlinkSync(`${dir}/log.jsonl`, `${dir}/inner/sneaky/log.jsonl`);
  const root = `${dir}/inner`;
  ok(runDir(root, "run"));
  ok(runDir(root, "link"), "a symlink inside the directory is fine");
  for (const bad of ["..", "../inner/run", "up", "run/../..", ".", ""]) {
    assertEquals(runDir(root, bad), null, bad);
  }
  assertEquals(runLog(root, "sneaky"), null, "a log that is a symlink out of the directory");
  assertEquals(listRuns(root).map((r) => r.name), ["link", "run"]);

  const dash = startDashboard(root, { port: 0 });
  try {
    for (
      const q of ["run=..", "run=../log.jsonl", "run=up", "run=%2e%2e%2Finner%2Frun", "run=sneaky"]
    ) {
      const r = await fetch(`${dash.url}api/run?${q}`);
      assertEquals(r.status, 404, q);
      ok((await r.json()).error.includes("not a run"), q);
    }
    const r = await fetch(`${dash.url}../../etc/passwd`);
    assertEquals(r.status, 404);
    await r.body?.cancel();
    assertEquals((await fetch(`${dash.url}api/run?run=run`)).status, 200);
  } finally {
    await dash.shutdown();
  }
});
