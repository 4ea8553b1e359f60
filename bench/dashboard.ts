/**
 * The dashboard's load time and memory, printed as JSON lines: 100 generated runs, and one 100k-line log.
 * `--screenshot docs/dashboard.png` instead trains experiments/verdict-small.yaml into a temporary checkpoints
 * directory and screenshots the page while it runs.
 *
 * `deno run -A bench/dashboard.ts [--screenshot file.png]`
 */
import { loadExperiment } from "../lib/config.ts";
import { runTraining } from "../lib/runs/run.ts";
import { startDashboard } from "../lib/runs/dashboard/server.ts";
import { Browser, findChromium } from "../tests/_chromium.ts";

const chromium = findChromium();
if (!chromium) throw new Error("no chromium installed");

function writeLog(dir: string, name: string, evals: number, lr: number) {
  Deno.mkdirSync(`${dir}/${name}`, { recursive: true });
  const lines = [JSON.stringify({
    type: "header",
    schema_version: 1,
    engine: "gpt-ts",
    run: name,
    experiment: name,
    backend: "blas",
    config: { name, training: { lr, seed: 123 } },
    resumed_from_step: null,
  })];
  for (let i = 1; i <= evals; i++) {
    const loss = 10 * Math.exp(-i / (evals / 3)) + 1 + 0.3 * Math.sin(i * 7.1);
    lines.push(JSON.stringify({
      type: "eval",
      epoch: 1,
      step: i,
      tokens_seen: 512 * i,
      train_loss: loss,
      val_loss: loss + 0.5,
      lr,
      grad_norm: 1 + Math.cos(i),
      elapsed_s: i * 0.1,
      tokens_per_s: 5120,
    }));
  }
  Deno.writeTextFileSync(`${dir}/${name}/log.jsonl`, lines.join("\n") + "\n");
}

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
  await browser.waitFor("document.body.dataset.ready === '1'", 120_000);
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
    30_000,
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
    await new Promise((r) => setTimeout(r, 200));
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
  await new Promise((r) => setTimeout(r, 100));
  const cells = await browser.eval<string[]>(`[...${row}.cells].map((c) => c.textContent)`);
  const last = await browser.eval("dash.data['verdict-small'].series.tokens.at(-1)");
  Deno.writeFileSync(out, await browser.screenshot());
  await run;
  await browser.waitFor(`${row}.dataset.status !== "running"`, 10_000);
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

const shot = Deno.args.indexOf("--screenshot");
if (shot >= 0) {
  await screenshot(Deno.args[shot + 1] ?? "docs/dashboard.png");
} else {
  const many = Deno.makeTempDirSync({ prefix: "gpt-ts-dash-" });
  const names: string[] = [];
  for (let i = 0; i < 100; i++) {
    names.push(`sweep.lr=${i}`), writeLog(many, names.at(-1)!, 200, 1e-4 * (i + 1));
  }
  await measure("100 runs, 200 evals each, 10 selected", many, names.slice(0, 10), 200);
  const long = Deno.makeTempDirSync({ prefix: "gpt-ts-dash-" });
  writeLog(long, "long", 100_000, 4e-4);
  await measure("one 100k-line log", long, ["long"], 100_000);
  Deno.removeSync(many, { recursive: true }), Deno.removeSync(long, { recursive: true });
}
