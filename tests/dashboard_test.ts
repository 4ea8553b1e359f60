/**
 * `deno task dashboard` in a real headless Chromium: the runs of a checkpoints directory trained here (a tiny model
 * through lib/runs/run.ts), one chart series per run and split, a live eval line reaching the open page, the
 * smoothing and log-scale controls, and paths outside the directory refused.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { listRuns, runDir, startDashboard } from "../lib/runs/dashboard/server.ts";
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
  const outside = tempDir();
  Deno.writeTextFileSync(`${outside}/log.jsonl`, "{}\n");
  Deno.symlinkSync(outside, `${dir}/escape`);
  return dir;
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
      const rows = await browser.eval<{ run: string; status: string; cells: string[] }[]>(
        `[...document.querySelectorAll("tr.run")].map((tr) => ({ run: tr.dataset.run, status: tr.dataset.status,
          cells: [...tr.cells].map((c) => c.textContent) }))`,
      );
      assertEquals(rows.map((r) => r.run), ["foreign", B, A]);
      const { rows: cmp } = compareRuns([`${dir}/${A}/log.jsonl`]);
      const a = rows.find((r) => r.run === A)!;
      assertEquals(a.status, "finished");
      assertEquals(a.cells[4], String(cmp[0].steps));
      assertEquals(a.cells[7], cmp[0].final_val_loss!.toFixed(3));
      const warning = await browser.eval<string>(
        `document.querySelector('tr[data-warning="foreign"]').textContent`,
      );
      ok(warning.includes("skipped 2 unreadable lines"), warning);
      assertEquals(
        await browser.eval(`document.querySelector("tr.group").dataset.group`),
        "tiny-sweep",
      );
      ok(!rows.some((r) => r.run === "escape"), "the symlink out of the directory is not listed");

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

      // a new eval line reaches the open page without a reload; a half-written line waits for its newline
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
      const f = Deno.openSync(`${dir}/${A}/log.jsonl`, { append: true });
      f.writeSync(new TextEncoder().encode(line.slice(0, 20)));
      await new Promise((r) => setTimeout(r, 1200));
      assertEquals(await steps(), before, "a truncated line is held back");
      f.writeSync(new TextEncoder().encode(line.slice(20) + "\n"));
      f.close();
      await browser.waitFor("Array.from(dash.charts.loss.data[0]).includes(999)", 5000);
      ok(
        await browser.eval(
          "!!window.dash && performance.getEntriesByType('navigation').length === 1",
        ),
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
  const root = `${dir}/inner`;
  ok(runDir(root, "run"));
  ok(runDir(root, "link"), "a symlink inside the directory is fine");
  for (const bad of ["..", "../inner/run", "up", "run/../..", ".", ""]) {
    assertEquals(runDir(root, bad), null, bad);
  }
  assertEquals(listRuns(root).map((r) => r.name), ["link", "run"]);

  const dash = startDashboard(root, { port: 0 });
  try {
    for (const q of ["run=..", "run=../log.jsonl", "run=up", "run=%2e%2e%2Finner%2Frun"]) {
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
