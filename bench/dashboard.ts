/**
 * The dashboard's load time and memory, printed as JSON lines: 100 generated runs, and one 100k-line log.
 * `--screenshot docs/dashboard.png` instead trains experiments/verdict-small.yaml into a temporary checkpoints
 * directory and screenshots the page while it runs. `--load` instead loads a `deno task dashboard` process on
 * loopback, bounded in count and time: 1,000 event streams opened at once (what a page opened a thousand times
 * asks), then 64 clients asking /api/runs as fast as they can for 5 s; it prints the streams held and refused,
 * the requests answered per second by status, a normal client's latency meanwhile, and the server's RSS.
 *
 * `deno run -A bench/dashboard.ts [--screenshot file.png | --load]`
 */
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { startDashboard } from "../lib/views/dashboard/server.ts";
import { Browser, findChromium } from "../tests/_chromium.ts";
import { holdGet, rssKb, spawnDashboard, writeRunLog } from "../tests/_dashboard.ts";

const chromium = findChromium();

/** The proportional set size (MiB) of process `pid` and its descendants, from /proc (Linux). */
function treePssMb(pid: number): number | null {
  const parent = new Map<number, number>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      parent.set(Number(e.name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch { /* gone */ }
  }
  const tree = new Set([pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [p, pp] of parent) if (tree.has(pp) && !tree.has(p)) tree.add(p), grew = true;
  }
  let kb = 0;
  for (const p of tree) {
    try {
      kb += Number(Deno.readTextFileSync(`/proc/${p}/smaps_rollup`).match(/^Pss:\s+(\d+)/m)![1]);
    } catch {
      return null;
    }
  }
  return +(kb / 1024).toFixed(1);
}

/** Opens the page over `runs`, then appends an eval line to `runs[0]` and times it reaching row and chart. */
async function measure(label: string, dir: string, runs: string[], evals: number) {
  const dash = startDashboard(dir, { port: 0 });
  const browser = await Browser.launch(chromium!);
  const t0 = performance.now();
  await browser.goto(`${dash.url}?runs=${encodeURIComponent(runs.join(","))}`);
  await browser.waitFor("document.body.dataset.ready === '1'");
  const loadMs = performance.now() - t0;
  const m = await browser.metrics();
  const step = evals + 1, name = JSON.stringify(runs[0]);
  const line = { type: "eval", epoch: 1, step, tokens_seen: 512 * step, train_loss: 0.5 };
  const t1 = performance.now();
  Deno.writeTextFileSync(
    `${dir}/${runs[0]}/log.jsonl`,
    JSON.stringify({ ...line, val_loss: 1, lr: 1e-4, elapsed_s: step / 10, tokens_per_s: 5120 }) +
      "\n",
    { append: true },
  );
  await browser.waitFor(
    `dash.data[${name}].series.step.at(-1) === ${step} && document.querySelector(
      'tr.run[data-run=' + JSON.stringify(${name}) + ']').cells[4].textContent === "${step}"`,
  );
  console.log(JSON.stringify({
    case: label,
    load_ms: Math.round(loadMs),
    live_line_ms: Math.round(performance.now() - t1),
    js_heap_used_mb: +(m.JSHeapUsedSize / 2 ** 20).toFixed(1),
    chromium_pss_mb: treePssMb(browser.pid),
    server_rss_mb: +(Deno.memoryUsage().rss / 2 ** 20).toFixed(1),
    rows: await browser.eval("dash.runs.length"),
    points_drawn: await browser.eval("dash.charts.loss.data[0].length"),
    loadavg: Deno.loadavg(),
  }));
  await browser.close();
  await dash.shutdown();
}

/** Screenshots the page while experiments/verdict-small.yaml trains (in this process, 120 steps). */
async function screenshot(out: string) {
  const dir = Deno.makeTempDirSync({ prefix: "gpt-ts-dash-" });
  const cfg = await loadExperiment("experiments/verdict-small.yaml", ["name=verdict-small"]);
  const run = runTraining(cfg, {
    print: () => {},
    progress: false,
    checkpointsDir: dir,
    stopAfterSteps: 120,
  });
  while (!(await Deno.stat(`${dir}/verdict-small/log.jsonl`).catch(() => null))) {
    await new Promise((r) => setTimeout(r, 20)); // until the run (in this process) logs its first line
  }
  const dash = startDashboard(dir, { port: 0 });
  const browser = await Browser.launch(chromium!, 1500, 1000);
  await browser.goto(`${dash.url}?runs=verdict-small&x=tokens`);
  await browser.waitFor("document.body.dataset.ready === '1'");
  // the chart has a dozen evals and a sample, and the run's row shows the chart's last point
  const row = `document.querySelector('tr.run[data-run="verdict-small"]')`;
  await browser.waitFor(
    `dash.charts.loss?.data[0].length >= 12 && dash.data['verdict-small'].samples.length &&
      ${row}.cells[5].textContent === String(dash.data['verdict-small'].series.tokens.at(-1))`,
    600_000,
  );
  await browser.eval("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"); // drawn
  const cells = await browser.eval<string[]>(`[...${row}.cells].map((c) => c.textContent)`);
  const last = await browser.eval("dash.data['verdict-small'].series.tokens.at(-1)");
  Deno.writeFileSync(out, await browser.screenshot());
  await run;
  await browser.waitFor(`${row}.dataset.status !== "running"`);
  console.log(JSON.stringify({
    screenshot: out,
    row_at_screenshot: cells.slice(2),
    chart_last_tokens: last,
    status_after_run: await browser.eval(`${row}.dataset.status`),
  }));
  await browser.close();
  await dash.shutdown();
  Deno.removeSync(dir, { recursive: true });
}

/** What {@link load} measures a request by: its status and how long it took (ms). */
async function timedGet(url: string): Promise<{ status: number; ms: number }> {
  const t0 = performance.now();
  const r = await fetch(url);
  await r.body?.cancel();
  return { status: r.status, ms: performance.now() - t0 };
}

/** The load test described at the top: loopback only, 1,000 connections at most, 5 s of flood. */
async function load() {
  const dir = Deno.makeTempDirSync({ prefix: "gpt-ts-dash-" });
  for (const n of ["a", "b", "c"]) writeRunLog(dir, `sweep.lr=${n}`, 200, 4e-4, ["a sample"]);
  const dash = await spawnDashboard(["--port", "0", dir]);
  const pid = dash.proc.pid, mb = async () => +((await rssKb(pid) ?? NaN) / 1024).toFixed(1);
  const page = [
    "",
    "app.js",
    "style.css",
    "uplot.js",
    "uplot.css",
    "api/runs",
    "api/run?run=sweep.lr%3Da",
  ];
  const loadPage = async () => {
    const t0 = performance.now();
    const got = await Promise.all(page.map((p) => timedGet(dash.url + p)));
    return { ok: got.every((g) => g.status === 200), ms: Math.round(performance.now() - t0) };
  };
  await loadPage(), await loadPage();
  const idle = await mb();

  const opened = await Promise.all(
    Array.from({ length: 1000 }, () => holdGet(dash.port, "/api/events?run=sweep.lr%3Da")),
  );
  const during = await loadPage();
  console.log(JSON.stringify({
    case: "1000 event streams opened at once from one client",
    held: opened.filter((o) => o.status === 200).length,
    refused_503: opened.filter((o) => o.status === 503).length,
    page_meanwhile: during,
    rss_idle_mb: idle,
    rss_mb: await mb(),
  }));
  for (const o of opened) o.conn.close();

  const counts = new Map<number, number>(), seconds = 5, workers = 64;
  const end = performance.now() + seconds * 1000;
  let peak = idle;
  const flood = async () => {
    while (performance.now() < end) {
      const { status } = await timedGet(`${dash.url}api/runs`);
      counts.set(status, (counts.get(status) ?? 0) + 1);
    }
  };
  const probes: number[] = [];
  const probe = async () => { // a normal client asking for the page, one request after another
    while (performance.now() < end) {
      const g = await timedGet(dash.url);
      if (g.status === 200) probes.push(g.ms);
      peak = Math.max(peak, await mb());
    }
  };
  const t0 = performance.now();
  await Promise.all([...Array.from({ length: workers }, flood), probe()]);
  const elapsed = (performance.now() - t0) / 1000;
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  probes.sort((a, b) => a - b);
  console.log(JSON.stringify({
    case: `${workers} clients flooding /api/runs for ${seconds} s`,
    answered_per_s: Math.round(total / elapsed),
    by_status_per_s: Object.fromEntries(
      [...counts].map(([s, n]) => [s, Math.round(n / elapsed)]),
    ),
    page_latency_ms: {
      p50: +probes[probes.length >> 1].toFixed(1),
      max: +probes.at(-1)!.toFixed(1),
    },
    page_requests: probes.length,
    rss_idle_mb: idle,
    rss_peak_mb: peak,
    rss_after_mb: await mb(),
    loadavg: Deno.loadavg(),
  }));
  await dash.stop();
  Deno.removeSync(dir, { recursive: true });
}

const shot = Deno.args.indexOf("--screenshot");
if (Deno.args.includes("--load")) {
  await load();
} else if (!chromium) {
  throw new Error("no chromium installed");
} else if (shot >= 0) {
  await screenshot(Deno.args[shot + 1] ?? "docs/dashboard.png");
} else {
  const many = Deno.makeTempDirSync({ prefix: "gpt-ts-dash-" });
  const names: string[] = [];
  for (let i = 0; i < 100; i++) {
    names.push(`sweep.lr=${i}`), writeRunLog(many, names.at(-1)!, 200, 1e-4 * (i + 1));
  }
  await measure("100 runs, 200 evals each, 10 selected", many, names.slice(0, 10), 200);
  const long = Deno.makeTempDirSync({ prefix: "gpt-ts-dash-" });
  writeRunLog(long, "long", 100_000, 4e-4);
  await measure("one 100k-line log", long, ["long"], 100_000);
  Deno.removeSync(many, { recursive: true }), Deno.removeSync(long, { recursive: true });
}
