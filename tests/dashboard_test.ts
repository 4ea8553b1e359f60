/**
 * `deno task dashboard` in a real headless Chromium: the runs of a checkpoints directory trained here (a tiny model
 * through lib/runs/run.ts), one chart series per run and split, a live eval line reaching the open page, the
 * smoothing and log-scale controls, and paths outside the directory refused.
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { listRuns, runDir, runLog, startDashboard } from "../lib/views/dashboard/server.ts";
import { compareRuns } from "../lib/views/compare.ts";
import { acquireRunLock } from "../lib/runs/lock.ts";
import { Browser, findChromium } from "./_chromium.ts";
import {
  DashboardExit,
  holdGet,
  rawGet,
  rssKb,
  spawnDashboard,
  writeRunLog,
} from "./_dashboard.ts";
import { ensureVerdict, ignoredBecause, tempDir, TINY_RUN } from "./_helpers.ts";
import { LIMITS } from "../lib/views/dashboard/server.ts";
import { MAX_READ } from "../lib/views/dashboard/live.ts";

const CHROMIUM = findChromium();
/** The reason on each browser test's own "ignored" line where Chromium is missing. */
const needsChromium = ignoredBecause(
  CHROMIUM ? null : "no chromium installed (apt-get install chromium)",
);

const TINY = [
  ...TINY_RUN,
  "training.epochs=2",
  "training.eval_freq=3",
  "training.eval_iter=1",
  // multiple-choice scores at every evaluation, for their chart
  `training.multiple_choice=${
    new URL("./fixtures/multiple-choice.jsonl", import.meta.url).pathname
  }`,
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
  name:
    `dashboard: run list, charts, live lines, smoothing and log scale in headless Chromium${needsChromium}`,
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

      // the run list is not clipped by the chart pane: its last column (tok/s) ends left of the charts
      const edges = await browser.eval<number[]>(`[
        document.querySelector("#runs thead th:last-child").getBoundingClientRect().right,
        document.querySelector("#runs-pane").getBoundingClientRect().right,
        document.querySelector("#charts").getBoundingClientRect().left]`);
      ok(edges[0] <= edges[1] && edges[1] <= edges[2], `tok/s column ${edges} clipped`);

      // one loss series per run and split (plus each one's faint raw curve)
      const meta = await browser.eval<{ run: string; split: string; raw: boolean }[]>(
        "dash.charts.loss.meta",
      );
      assertEquals(
        meta.filter((m) => !m.raw).map((m) => `${m.run} ${m.split}`).sort(),
        [`${A} train`, `${A} val`, `${B} train`, `${B} val`].sort(),
      );
      assertEquals(await browser.eval("dash.charts.loss.series.length"), 1 + meta.length);
      ok(await browser.eval("dash.charts.lr.meta.length === 2"), "lr is charted once per run");
      assertEquals(
        await browser.eval<string[]>(
          "dash.charts.mc.meta.map((m) => `${m.run} ${m.split}`).sort()",
        ),
        [`${A} mc_acc`, `${A} mc_acc_norm`, `${B} mc_acc`, `${B} mc_acc_norm`].sort(),
        "the multiple-choice scores are charted, acc and acc_norm per run",
      );

      // a new eval line reaches the open page's chart and A's row without a reload (A runs again: its last line
      // is an eval, not a summary, and this process holds its run lock as a trainer would); a half-written line
      // waits for its newline
      const log = `${dir}/${A}/log.jsonl`;
      const release = acquireRunLock(`${dir}/${A}.lock`, A, () => {});
      const steps = () => browser.eval<number[]>(`dash.data[${JSON.stringify(A)}].series.step`);
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
      // B's next line, written after A's half line, reaching the page and B's row: the server has looked at both
      // logs since (it reads all followed logs in one pass, and all rows in one pass)
      const stepB = Number(compareRuns([`${dir}/${B}/log.jsonl`]).rows[0].steps) + 1;
      append(`${dir}/${B}/log.jsonl`, line.replace('"step":999', `"step":${stepB}`) + "\n");
      await browser.waitFor(`dash.data[${JSON.stringify(B)}].series.step.includes(${stepB})`);
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${B}"]').cells[4].textContent === "${stepB}"`,
      );
      assertEquals(await steps(), before, "a truncated line is held back");
      assertEquals((await row(A)).cells.slice(2, 8), a.cells.slice(2, 8), "and so is the row");
      append(log, line.slice(20) + "\n");
      await browser.waitFor("Array.from(dash.charts.loss.data[0]).includes(999)");
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${A}"]').cells[4].textContent === "999"`,
      );
      const live = await row(A);
      assertEquals(live.status, "running");
      assertEquals(live.cells.slice(4, 7), ["999", String(999 * 512), "1.500"]);
      assertEquals(live.cells[7], "2.500");

      // the run finishes while the page is open: its row turns from running to finished
      append(log, JSON.stringify({ ...cmp[0], type: "summary", status: "finished" }) + "\n");
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${A}"]').dataset.status === "finished"`,
      );
      release();

      // a resumed run's second header: the evals past its step go, as compare drops them
      const header = Deno.readTextFileSync(log).split("\n")[0];
      const from = Number(compareRuns([log]).logs[0].evals[1].step);
      append(
        log,
        JSON.stringify({ ...JSON.parse(header), resumed_from_step: from }) + "\n" +
          line.replace('"step":999', `"step":${from + 1}`) + "\n",
      );
      await browser.waitFor(`!dash.data[${JSON.stringify(A)}].series.step.includes(999)`);
      const resumed = compareRuns([log]);
      assertEquals(
        await browser.eval(`dash.data[${JSON.stringify(A)}].series.step`),
        resumed.logs[0].evals.map((e) => e.step),
      );
      await browser.waitFor(
        `document.querySelector('tr.run[data-run="${A}"]').cells[4].textContent === "${from + 1}"`,
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
      // the learning rate and gradient norm are not noisy: drawn raw (a schedule unlagged), once per run
      for (const [chart, key] of [["lr", "lr"]]) { // these tiny runs log no gradient norm
        const drawn = await browser.eval<{ labels: string[]; curves: (number | null)[][] }>(
          `(() => { const u = dash.charts.${chart}; return { labels: u.series.slice(1).map((s) => s.label),
            curves: u.meta.map((m, i) => Array.from(u.data[1 + i])) }; })()`,
        );
        assertEquals(drawn.labels, [`${A} ${key}`, `${B} ${key}`]);
        for (const [i, run] of [A, B].entries()) {
          const served = await browser.eval<(number | null)[]>(
            `dash.data[${JSON.stringify(run)}].series.${key}`,
          );
          assertEquals(drawn.curves[i].filter((v) => v != null), served.filter((v) => v != null));
        }
      }
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

/** A checkpoints directory of hand-written logs: `run` (with `samples`) and a foreign log. */
function smallDir(samples: string[] = []): string {
  const dir = tempDir();
  writeRunLog(dir, "run", 20, 4e-4, samples);
  Deno.mkdirSync(`${dir}/foreign`);
  Deno.writeTextFileSync(`${dir}/foreign/log.jsonl`, "not json\n");
  return dir;
}

Deno.test("dashboard: a foreign Host is refused with 403; /api/ answers only its own origin", async () => {
  const dir = smallDir();
  const dash = startDashboard(dir, { port: 0, allowedHosts: ["proxy.example"] });
  const port = Number(new URL(dash.url).port), own = `127.0.0.1:${port}`;
  try {
    for (
      const host of [`evil.example:${port}`, `127.0.0.1:${port + 1}`, `localhost.evil:${port}`, ""]
    ) {
      for (const path of ["/", "/api/runs", "/api/events?run=run"]) {
        const r = await rawGet(port, path, host ? { host } : {});
        assertEquals([r.status, r.body], [403, ""], `${host} ${path}`);
      }
    }
    for (const host of [own, `localhost:${port}`, "proxy.example", "PROXY.example:443"]) {
      assertEquals((await rawGet(port, "/api/runs", { host })).status, 200, host);
    }
    // what a browser sends from another origin's page, and from the page itself
    const cross: Record<string, string>[] = [
      { origin: "http://evil.example" },
      { origin: `http://127.0.0.1:${port + 1}` },
      { "sec-fetch-site": "cross-site" },
      { "sec-fetch-site": "same-site" },
      { origin: "null" },
    ];
    for (const h of cross) {
      for (const path of ["/api/runs", "/api/run?run=run", "/api/events?run=run"]) {
        const r = await rawGet(port, path, { host: own, ...h });
        assertEquals(r.status, 403, `${JSON.stringify(h)} ${path}`);
        ok(!r.headers["access-control-allow-origin"], "no CORS");
      }
    }
    const same = await rawGet(port, "/api/runs", {
      host: own,
      origin: `http://${own}`,
      "sec-fetch-site": "same-origin",
    });
    assertEquals(same.status, 200);
    ok(!same.headers["access-control-allow-origin"], "no CORS");
    // the page's security headers
    const page = await rawGet(port, "/", { host: own });
    assertEquals(page.headers["x-content-type-options"], "nosniff");
    assertEquals(page.headers["referrer-policy"], "no-referrer");
    ok(/script-src 'self';/.test(page.headers["content-security-policy"]), "CSP");
    ok(/style-src 'self';/.test(page.headers["content-security-policy"]), "CSP");
    ok(/default-src 'none'/.test(page.headers["content-security-policy"]), "CSP");
  } finally {
    await dash.shutdown();
  }
});

Deno.test("dashboard: /api/ past the request rate is refused with 429 and a Retry-After", async () => {
  const dir = smallDir();
  // no refill: exactly the burst is served, whatever the machine's speed
  const dash = startDashboard(dir, { port: 0, limits: { ratePerS: 0, burst: 20 } });
  try {
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) {
      const r = await fetch(`${dash.url}api/runs`);
      statuses.push(r.status);
      if (r.status === 429) assertEquals(r.headers.get("retry-after"), "1");
      await r.body?.cancel();
    }
    assertEquals(statuses, [...Array(20).fill(200), ...Array(10).fill(429)]);
    const page = await fetch(dash.url); // the page's own files are not rationed
    assertEquals(page.status, 200);
    await page.body?.cancel();
  } finally {
    await dash.shutdown();
  }
});

Deno.test("dashboard: event streams past the cap per client, or in all, are refused with 503", async () => {
  const dir = smallDir();
  for (
    const [limits, cap] of [[{ streamsPerClient: 2, streams: 10 }, 2], [{
      streamsPerClient: 10,
      streams: 3,
    }, 3]] as const
  ) {
    const dash = startDashboard(dir, { port: 0, limits });
    const port = Number(new URL(dash.url).port);
    const held = await Promise.all(
      Array.from({ length: 6 }, () => holdGet(port, "/api/events?run=run")),
    );
    try {
      assertEquals(held.map((h) => h.status).sort(), [
        ...Array(cap).fill(200),
        ...Array(6 - cap).fill(503),
      ]);
    } finally {
      held.forEach((h) => h.conn.close());
      await dash.shutdown();
    }
  }
});

Deno.test("dashboard: no response carries the checkpoints directory's absolute path", async () => {
  const dir = smallDir(["the sample"]);
  const real = Deno.realPathSync(dir);
  const dash = startDashboard(dir, { port: 0 });
  try {
    const texts: string[] = [];
    for (
      const path of [
        "",
        "app.js",
        "api/runs",
        "api/run?run=run",
        "api/run?run=foreign",
        "api/run?run=nothere",
        "api/diff?run=run&run=foreign",
      ]
    ) {
      texts.push(`${path}: ` + await (await fetch(dash.url + path)).text());
    }
    // the live stream's first events: the rows, and the run's lines from the start
    const es = await fetch(`${dash.url}api/events?run=run&run=foreign&from=0&from=0`);
    const reader = es.body!.pipeThrough(new TextDecoderStream()).getReader();
    let stream = "";
    while (!(stream.includes("event: rows") && stream.includes("event: lines"))) {
      stream += (await reader.read()).value;
    }
    await reader.cancel();
    texts.push(stream);
    ok(texts[2].includes('"run/log.jsonl"') && texts[2].includes("foreign/log.jsonl"), texts[2]);
    for (const t of texts) {
      for (const p of new Set([dir, real])) ok(!t.includes(p), `${p} in ${t.slice(0, 400)}`);
    }
  } finally {
    await dash.shutdown();
  }
});

Deno.test("dashboard: the live stream reads a huge log in bounded steps", async () => {
  const dir = tempDir();
  const path = writeRunLog(dir, "big", 20_000, 4e-4); // about 4 MiB
  const size = Deno.statSync(path).size;
  ok(size > 8 * MAX_READ, `${size} bytes`);
  const dash = startDashboard(dir, { port: 0 });
  try {
    const es = await fetch(`${dash.url}api/events?run=big&from=0`);
    const reader = es.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "", lines = 0, biggest = 0, offset = 0;
    while (offset < size) {
      buf += (await reader.read()).value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = ev.match(/^data: (.*)$/m)?.[1];
        if (!ev.includes("event: lines") || !data) continue;
        biggest = Math.max(biggest, data.length);
        lines += JSON.parse(data).lines.length;
        offset = JSON.parse(ev.match(/^id: (.*)$/m)![1]).big;
      }
    }
    await reader.cancel();
    assertEquals(lines, 20_001, "every line arrives");
    ok(biggest < 2 * MAX_READ, `one event of ${biggest} bytes for a ${size}-byte log`);
  } finally {
    await dash.shutdown();
  }
});

Deno.test("dashboard task: a checkpoints directory that is not there is one line, exit 2", async () => {
  const file = `${tempDir()}/file`;
  Deno.writeTextFileSync(file, "");
  for (const [dir, why] of [["nosuchdir", "no such directory"], [file, "not a directory"]]) {
    try {
      const served = await spawnDashboard(["--port", "0", dir]);
      await served.stop();
      throw new Error(`served ${dir}: ${served.out.join(" / ")}`);
    } catch (err) {
      if (!(err instanceof DashboardExit)) throw err;
      assertEquals(err.code, 2);
      ok(err.stderr.startsWith(`error: dashboard: ${dir}: ${why}`), err.stderr);
      assertEquals(err.stderr.trim().split("\n").length, 1, err.stderr);
    }
  }
});

Deno.test({
  name: "dashboard: off loopback every request needs the printed token",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = smallDir();
    // listening on every address, spoken to on loopback only
    const dash = await spawnDashboard(["--host", "0.0.0.0", "--port", "0", dir]);
    const base = `http://127.0.0.1:${dash.port}/`;
    try {
      const token = new URL(dash.url).searchParams.get("token")!;
      ok(/^[0-9a-f]{48}$/.test(token), dash.url);
      const status = async (url: string, headers: Record<string, string> = {}) => {
        const r = await fetch(url, { headers, redirect: "manual" });
        await r.body?.cancel();
        return {
          status: r.status,
          cookie: r.headers.get("set-cookie"),
          to: r.headers.get("location"),
        };
      };
      for (const path of ["", "app.js", "api/runs", "api/run?run=run", "api/events?run=run"]) {
        assertEquals((await status(base + path)).status, 401, `no token: ${path}`);
      }
      const wrong = token.slice(0, -1) + (token.endsWith("0") ? "1" : "0");
      const cookieName = `gpt-ts-dashboard-${dash.port}`;
      for (
        const [url, h] of [
          [`${base}?token=${wrong}`, {}],
          [`${base}api/runs?token=${token.slice(0, 8)}`, {}],
          [`${base}api/runs`, { authorization: `Bearer ${wrong}` }],
          [`${base}api/runs`, { cookie: `${cookieName}=${wrong}` }],
        ] as const
      ) assertEquals((await status(url, h)).status, 401, `${url} ${JSON.stringify(h)}`);
      // the printed URL: sets the cookie and sends the browser on without the token in its address
      const first = await status(dash.url.replace(/^http:\/\/[^/]+\//, base));
      assertEquals([first.status, first.to], [303, "/"]);
      ok(first.cookie!.startsWith(`${cookieName}=${token};`) && /HttpOnly/.test(first.cookie!));
      const cookie = first.cookie!.split(";")[0];
      assertEquals((await status(`${base}api/runs`, { cookie })).status, 200);
      assertEquals(
        (await status(`${base}api/runs`, { authorization: `Bearer ${token}` })).status,
        200,
      );
      if (CHROMIUM) { // and in a browser: the printed URL opens the page, whose own requests then pass
        const browser = await Browser.launch(CHROMIUM);
        try {
          await browser.goto(dash.url);
          await browser.waitFor("document.body.dataset.ready === '1'");
          assertEquals(await browser.eval("dash.runs.map((r) => r.name)"), ["foreign", "run"]);
          ok(
            !(await browser.eval<string>("location.href")).includes(token),
            "token out of the address",
          );
        } finally {
          await browser.close();
        }
      }
    } finally {
      await dash.stop();
    }
  },
});

Deno.test({
  name:
    "dashboard: 500 event streams are refused past the cap, the page still loads, RSS within 2x idle",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = smallDir(["a sample"]);
    const dash = await spawnDashboard(["--port", "0", dir]);
    const page = async () => {
      for (const p of ["", "app.js", "style.css", "uplot.js", "api/runs", "api/run?run=run"]) {
        const r = await fetch(dash.url + p);
        assertEquals(r.status, 200, p);
        await r.body?.cancel();
      }
    };
    const held: Deno.Conn[] = [];
    try {
      await page(), await page(); // warm: what a first visit loads and compiles
      const idle = await rssKb(dash.proc.pid);
      const opened = await Promise.all(
        Array.from({ length: 500 }, () => holdGet(dash.port, "/api/events?run=run")),
      );
      held.push(...opened.map((o) => o.conn));
      const count = (s: number) => opened.filter((o) => o.status === s).length;
      const cap = Math.min(LIMITS.streamsPerClient, LIMITS.streams);
      assertEquals([count(200), count(503)], [cap, 500 - cap]);
      await page(); // a normal client while all 500 connections are held
      const busy = await rssKb(dash.proc.pid);
      if (idle === null || busy === null) {
        console.log("RSS check ignored: no ps (apt-get install procps)");
      } else ok(busy <= 2 * idle, `RSS ${busy} KiB with 500 connections, ${idle} KiB idle`);
    } finally {
      for (const c of held) c.close();
      await dash.stop();
    }
  },
});

Deno.test({
  name:
    `dashboard: a cross-origin page cannot read /api/runs; a rebound name gets 403 (Chromium)${needsChromium}`,
  ignore: !CHROMIUM,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = smallDir();
    const dash = startDashboard(dir, { port: 0 });
    const port = new URL(dash.url).port;
    // another origin on loopback: a page of its own on another port
    const other = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      () =>
        new Response("<!doctype html><title>other</title>", {
          headers: { "content-type": "text/html" },
        }),
    );
    // DNS rebinding: a name of the attacker's that resolves to loopback
    const browser = await Browser.launch(CHROMIUM!, 800, 600, [
      "--host-resolver-rules=MAP rebind.example 127.0.0.1",
    ]);
    const seen = new Map<string, number>();
    browser.on("Network.responseReceived", (p) => {
      const r = p.response as { url: string; status: number };
      seen.set(r.url, r.status);
    });
    try {
      await browser.send("Network.enable");
      await browser.goto(`http://127.0.0.1:${other.addr.port}/`);
      const api = `http://127.0.0.1:${port}/api/runs`;
      const got = await browser.eval<string>(
        `fetch(${JSON.stringify(api)}).then((r) => r.text()).then((t) => "read " + t,
          (e) => "refused " + e.message)`,
      );
      ok(got.startsWith("refused"), got);
      const opaque = await browser.eval<string>(
        `fetch(${JSON.stringify(api)}, { mode: "no-cors" }).then((r) => r.text())`,
      );
      assertEquals(opaque, "", "an opaque response shows nothing");
      assertEquals(seen.get(api), 403, "the server refused it too");

      await browser.goto(`http://rebind.example:${port}/`);
      assertEquals(seen.get(`http://rebind.example:${port}/`), 403);
      const rebound = await browser.eval<string>(
        `fetch("/api/runs").then((r) => r.status + " " + r.statusText, (e) => "failed " + e.message)`,
      );
      ok(!rebound.startsWith("200"), rebound);
      assertEquals(seen.get(`http://rebind.example:${port}/api/runs`) ?? 403, 403);
    } finally {
      await browser.close();
      await other.shutdown();
      await dash.shutdown();
    }
  },
});

Deno.test({
  name:
    `dashboard: a sample's text shows as text, never runs as HTML, under the page's CSP (Chromium)${needsChromium}`,
  ignore: !CHROMIUM,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const evil = "<img src=x onerror=alert(1)>";
    const dir = smallDir([evil, `</div><script>alert(2)</script>`]);
    const dash = startDashboard(dir, { port: 0 });
    const browser = await Browser.launch(CHROMIUM!);
    const dialogs: unknown[] = [];
    browser.on("Page.javascriptDialogOpening", (p) => dialogs.push(p));
    try {
      await browser.send("Page.addScriptToEvaluateOnNewDocument", {
        source: `window.violations = [];
          document.addEventListener("securitypolicyviolation", (e) =>
            window.violations.push(e.violatedDirective + " " + e.blockedURI));`,
      });
      await browser.goto(`${dash.url}?runs=run`);
      await browser.waitFor("document.body.dataset.ready === '1'");
      const texts = await browser.eval<string[]>(
        `[...document.querySelectorAll("#samples .sample .text")].map((e) => e.textContent)`,
      );
      assertEquals(texts, [evil, `</div><script>alert(2)</script>`]);
      assertEquals(
        await browser.eval(`document.querySelectorAll("#samples img, #samples script").length`),
        0,
      );
      assertEquals(dialogs, []);
      assertEquals(await browser.eval("window.violations"), [], "the page keeps its own CSP");
      ok(
        (await browser.eval<string>(`document.querySelector(".swatch").style.background`)).length,
        "swatches coloured without inline style attributes",
      );
      // at the default smoothing, the gradient norm (noisy, but not a loss) is drawn raw and once
      assertEquals(await browser.eval("dash.state.smooth"), 0.6);
      assertEquals(
        await browser.eval("dash.charts.grad_norm.series.slice(1).map((s) => s.label)"),
        ["run grad_norm"],
      );
      assertEquals(
        await browser.eval("Array.from(dash.charts.grad_norm.data[1])"),
        await browser.eval("dash.data.run.series.grad_norm"),
      );
    } finally {
      await browser.close();
      await dash.shutdown();
    }
  },
});

Deno.test({
  name: `dashboard: a page refused past the request rate says so (Chromium)${needsChromium}`,
  ignore: !CHROMIUM,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dash = startDashboard(smallDir(), { port: 0, limits: { ratePerS: 0, burst: 1 } });
    const browser = await Browser.launch(CHROMIUM!);
    try {
      await browser.goto(`${dash.url}?runs=run`); // /api/runs passes, /api/run is one too many
      await browser.waitFor(`document.querySelector("#live").dataset.live === "refused"`);
      assertEquals(
        await browser.eval(`document.querySelector("#live").textContent`),
        "○ 429: too many requests: slow down",
      );
    } finally {
      await browser.close();
      await dash.shutdown();
    }
  },
});
