// The dashboard page: the run list, uPlot charts of the selected runs, the differing config keys, the samples,
// and one EventSource for live lines. What tests read is on window.dash (state, charts, runs).
"use strict";
const $ = (s) => document.querySelector(s);
const dash = (globalThis.dash = {
  runs: [],
  data: {},
  charts: {},
  state: readState(),
  es: null,
  updates: 0,
  rowUpdates: 0,
});

function readState() {
  const q = new URLSearchParams(location.search);
  return {
    runs: (q.get("runs") || "").split(",").filter(Boolean),
    x: q.get("x") || "step",
    smooth: q.has("smooth") ? Number(q.get("smooth")) : 0.6,
    log: q.get("log") === "1",
    filter: q.get("filter") || "",
  };
}
function writeState() {
  const s = dash.state, q = new URLSearchParams();
  if (s.runs.length) q.set("runs", s.runs.join(","));
  q.set("x", s.x), q.set("smooth", String(s.smooth));
  if (s.log) q.set("log", "1");
  if (s.filter) q.set("filter", s.filter);
  history.replaceState(null, "", "?" + q);
}

/** A colour from the run's name, so it is the same on every load and whatever else is selected. */
function colour(name, alpha = 1) {
  let h = 2166136261;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return `hsla(${(h >>> 0) % 360}, 70%, 42%, ${alpha})`;
}
function globRe(g) {
  if (!/[*?]/.test(g)) return { test: (n) => n.includes(g) };
  return new RegExp(
    "^" + g.replace(/[.+^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*").replaceAll("?", ".") + "$",
  );
}
const fmt = (v, d) => (v === null || v === undefined ? "-" : Number(v).toFixed(d));
const esc = (s) =>
  String(s).replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c],
  );

/** JSON from the server; a refusal (429 past the request rate, 401 without the token) is said on the page. */
async function getJson(url) {
  const r = await fetch(url);
  if (r.ok || r.headers.get("content-type") === "application/json") return r.json();
  const why = (await r.text()).trim() || r.statusText;
  $("#live").dataset.live = "refused", $("#live").textContent = `○ ${r.status}: ${why}`;
  throw new Error(`${url}: ${r.status} ${why}`);
}

async function loadRuns() {
  dash.runs = await getJson("/api/runs");
  const known = new Set(dash.runs.map((r) => r.name));
  dash.state.runs = dash.state.runs.filter((n) => known.has(n));
  if (!dash.state.runs.length) {
    dash.state.runs = dash.runs.filter((r) => !r.warning).slice(0, 1).map((r) => r.name);
  }
  renderRuns();
}

function runRow(r) {
  const on = dash.state.runs.includes(r.name);
  const cells = r.warning && r.steps === undefined
    ? `<td colspan="10" class="text">⚠ ${esc(r.warning)}</td>`
    : `<td class="status-${r.status}">${r.status}</td><td>${
      esc(r.backend ?? "-")
    }</td><td>${r.steps}</td>` +
      `<td>${r.tokens_seen}</td><td>${fmt(r.final_train_loss, 3)}</td><td>${
        fmt(r.final_val_loss, 3)
      }</td>` +
      `<td>${fmt(r.best_val_loss, 3)}</td><td>${fmt(r.tokens_per_s, 0)}</td>` +
      `<td>${r.mfu == null ? "-" : `${fmt(r.mfu * 100, 1)}%`}</td><td>${
        fmt(r.mc_acc_norm, 3)
      }</td>`;
  const warn = r.warning && r.steps !== undefined
    ? `<tr class="warn" data-warning="${esc(r.name)}"><td></td><td colspan="11">⚠ ${
      esc(r.warning)
    }</td></tr>`
    : "";
  return `<tr class="run${r.warning ? " warn" : ""}" data-run="${esc(r.name)}" data-status="${
    r.status ?? "unreadable"
  }">` +
    `<td><input type="checkbox" ${on ? "checked" : ""}></td>` +
    `<td><span class="swatch" data-swatch="${esc(r.name)}"></span>${
      esc(r.name)
    }</td>${cells}</tr>${warn}`;
}

function renderRuns() {
  const re = globRe(dash.state.filter);
  const shown = dash.runs.filter((r) => !dash.state.filter || re.test(r.name));
  const html = [];
  let group = null;
  for (const r of shown) {
    if (r.group !== group && r.group) {
      const n = shown.filter((s) => s.group === r.group).length;
      html.push(
        `<tr class="group" data-group="${
          esc(r.group)
        }"><td><input type="checkbox"></td><td colspan="9">${esc(r.group)}.* (${n} runs)</td></tr>`,
      );
    }
    group = r.group;
    html.push(runRow(r));
  }
  $("#runs tbody").innerHTML = html.join("") ||
    `<tr><td colspan="10" class="empty">no runs</td></tr>`;
  paintSwatches();
}

/** Colours the run list's swatches (through the DOM: the page's CSP allows no inline style attributes). */
function paintSwatches() {
  for (const el of document.querySelectorAll(".swatch[data-swatch]")) {
    el.style.background = colour(el.dataset.swatch);
  }
}

/** TensorBoard's debiased EMA: last = last·w + (1−w)·y, shown = last / (1 − wⁿ). */
function smooth(ys, w) {
  if (!w) return ys;
  let last = 0, n = 0;
  return ys.map((y) => {
    if (y === null || !Number.isFinite(y)) return null;
    last = last * w + (1 - w) * y, n++;
    return last / (1 - w ** n);
  });
}

async function loadRun(name) {
  const d = await getJson(`/api/run?run=${encodeURIComponent(name)}`);
  dash.data[name] = d;
}

/** Applies live lines as readRunLog does: evals appended, a resumed run's header drops the evals past its step. */
function applyLines(name, lines, reset) {
  const d = dash.data[name];
  if (!d) return;
  const s = d.series;
  if (reset) { // the log was replaced: its lines come again from the start
    for (const k of Object.keys(s)) s[k].length = 0;
    d.samples.length = 0, d.headers = 0, d.wall_base = 0, d.wall_seg = 0;
  }
  for (const l of lines) {
    if (l.type === "header") {
      if (d.headers++) {
        const from = typeof l.resumed_from_step === "number" ? l.resumed_from_step : 0;
        const keep = s.step.map((v, i) => (v > from ? -1 : i)).filter((i) => i >= 0);
        for (const k of Object.keys(s)) s[k] = keep.map((i) => s[k][i]);
      }
      d.wall_base += d.wall_seg, d.wall_seg = 0;
    } else if (l.type === "eval") {
      s.step.push(l.step),
        s.tokens.push(l.tokens_seen),
        s.wall.push(d.wall_base + (l.elapsed_s ?? 0));
      s.train.push(l.train_loss),
        s.val.push(l.val_loss),
        s.lr.push(l.lr ?? null),
        s.grad_norm.push(l.grad_norm ?? null),
        s.mc_acc.push(l.mc_acc ?? null),
        s.mc_acc_norm.push(l.mc_acc_norm ?? null);
      d.wall_seg = Math.max(d.wall_seg, l.elapsed_s ?? 0);
    } else if (l.type === "sample") d.samples.push({ step: l.step, epoch: l.epoch, text: l.text });
  }
  dash.updates++;
}

/** Takes the run list's changed rows from the live stream; `names` is the whole list, in order. */
function applyRows({ names, rows }) {
  const byName = new Map(dash.runs.map((r) => [r.name, r]));
  let full = names.length !== dash.runs.length || names.some((n, i) => dash.runs[i].name !== n);
  for (const r of rows) {
    const old = byName.get(r.name);
    if (!old || old.group !== r.group) full = true;
    byName.set(r.name, r);
  }
  dash.runs = names.map((n) => byName.get(n));
  if (full) renderRuns();
  else {
    for (const r of rows) {
      const tr = $(`tr.run[data-run="${CSS.escape(r.name)}"]`);
      if (!tr) continue; // filtered out
      $(`tr[data-warning="${CSS.escape(r.name)}"]`)?.remove();
      tr.outerHTML = runRow(r);
    }
    paintSwatches();
  }
  dash.rowUpdates++;
}

/**
 * One chart: for each run, `keys` as series; `smoothed` (the losses, which are noisy) draws each smoothed with
 * the raw curve faint behind, otherwise (a schedule, a norm) each is drawn raw, once.
 */
function drawChart(id, title, keys, logScale, smoothed) {
  const el = $(`#chart-${id}`);
  const runs = dash.state.runs.filter((n) => dash.data[n]);
  const tables = [], series = [{ label: dash.state.x }], meta = [];
  for (const n of runs) {
    const s = dash.data[n].series, x = s[dash.state.x];
    if (!keys.some((k) => s[k].some((v) => v !== null))) continue;
    for (const [k, dashed] of keys.map((k, i) => [k, i > 0])) {
      const raw = s[k].map((v) => (logScale && !(v > 0) ? null : v));
      const line = (label, stroke, width) => ({
        label,
        stroke,
        width,
        dash: dashed ? [6, 4] : undefined,
        spanGaps: true,
      });
      tables.push([x, smoothed ? smooth(raw, dash.state.smooth) : raw]);
      series.push(line(`${n} ${k}`, colour(n), 2));
      meta.push({ run: n, split: k, raw: !smoothed, colour: colour(n) });
      if (!smoothed) continue;
      tables.push([x, raw]);
      series.push(line(`${n} ${k} (raw)`, colour(n, 0.22), 1));
      meta.push({ run: n, split: k, raw: true, colour: colour(n, 0.22) });
    }
  }
  dash.charts[id]?.destroy();
  delete dash.charts[id];
  if (!tables.length) {
    el.innerHTML = `<div class="empty">${title}: not logged by the selected runs</div>`;
    return;
  }
  el.innerHTML = "";
  const data = uPlot.join(tables.map((t) => [Float64Array.from(t[0]), t[1]]));
  const width = Math.max(300, el.clientWidth - 2);
  const u = new uPlot(
    {
      title,
      width,
      height: id === "loss" ? 360 : 220,
      scales: { x: { time: false }, y: { distr: logScale ? 3 : 1 } },
      series,
      cursor: { sync: { key: "runs" } },
      legend: { live: true },
      axes: [{
        label: { step: "step", tokens: "tokens seen", wall: "wall time (s)" }[dash.state.x],
      }, { size: 60, values: (_u, ticks) => ticks.map(tick) }],
    },
    data,
    el,
  );
  u.meta = meta;
  dash.charts[id] = u;
}

/** A y-axis label: small values (a learning rate) in exponent form, not rounded to 0. */
const tick = (v) =>
  v === null ? "" : v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(2) : String(+v.toPrecision(4));

function drawAll() {
  drawChart("loss", "train and val loss (val dashed)", ["train", "val"], dash.state.log, true);
  drawChart("lr", "learning rate", ["lr"], false, false);
  drawChart("grad_norm", "gradient norm", ["grad_norm"], false, false);
  drawChart(
    "mc",
    "multiple choice: acc, acc_norm (dashed)",
    ["mc_acc", "mc_acc_norm"],
    false,
    false,
  );
  document.body.dataset.drawn = String(++dash.draws || (dash.draws = 1));
}

async function renderDiff() {
  const names = dash.state.runs;
  if (names.length < 2) {
    return ($("#diff").innerHTML = `<tr><td class="empty text">select two runs or more</td></tr>`);
  }
  const d = await getJson(
    "/api/diff?" + names.map((n) => "run=" + encodeURIComponent(n)).join("&"),
  );
  if (!d.keys?.length) {
    return ($("#diff").innerHTML = `<tr><td class="empty text">the configs are the same</td></tr>`);
  }
  $("#diff").innerHTML =
    `<tr><th>run</th>${d.keys.map((k) => `<th>${esc(k)}</th>`).join("")}</tr>` +
    names.map((n) =>
      `<tr><td class="text">${esc(n)}</td>${
        d.values[n].map((v) => `<td>${esc(JSON.stringify(v))}</td>`).join("")
      }</tr>`
    ).join("");
}

/** The samples, built as DOM nodes whose text is set as text: what training wrote never runs as HTML. */
function renderSamples() {
  const out = [];
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  for (const n of dash.state.runs) {
    for (const s of dash.data[n]?.samples ?? []) {
      const div = el("div", "sample"), name = el("b", "", n);
      name.style.color = colour(n);
      div.append(name, ` step ${s.step} (epoch ${s.epoch}): `, el("span", "text", String(s.text)));
      out.push(div);
    }
  }
  $("#samples").replaceChildren(...(out.length ? out : [el("div", "empty", "no samples yet")]));
}

/** One EventSource: the selected runs' lines from the byte sizes the page loaded, and the run list's rows. */
function follow() {
  dash.es?.close();
  const names = dash.state.runs.filter((n) => dash.data[n]);
  const q = names.map((n) => `run=${encodeURIComponent(n)}&from=${dash.data[n].size}`).join("&");
  const es = (dash.es = new EventSource("/api/events?" + q));
  es.onopen = () => ($("#live").dataset.live = "1", $("#live").textContent = "● live");
  es.onerror = () => {
    // closed: the server refused the stream (too many live views open); otherwise the browser retries
    const refused = es.readyState === EventSource.CLOSED;
    $("#live").dataset.live = refused ? "refused" : "0";
    $("#live").textContent = refused ? "○ not live: too many views open" : "○ reconnecting";
  };
  let pending = false;
  es.addEventListener("lines", (ev) => {
    const { run, lines, reset } = JSON.parse(ev.data);
    applyLines(run, lines, reset);
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => (pending = false, drawAll(), renderSamples()));
  });
  es.addEventListener("rows", (ev) => applyRows(JSON.parse(ev.data)));
}

async function select() {
  writeState();
  await Promise.all(dash.state.runs.filter((n) => !dash.data[n]).map(loadRun));
  drawAll(), renderSamples(), renderDiff(), follow();
}

$("#runs").addEventListener("change", (ev) => {
  const tr = ev.target.closest("tr");
  const names = tr.dataset.group
    ? dash.runs.filter((r) => r.group === tr.dataset.group && !r.warning).map((r) => r.name)
    : [tr.dataset.run];
  const s = new Set(dash.state.runs);
  for (const n of names) ev.target.checked ? s.add(n) : s.delete(n);
  dash.state.runs = dash.runs.map((r) => r.name).filter((n) => s.has(n));
  renderRuns(), select();
});
$("#filter").addEventListener(
  "input",
  (ev) => (dash.state.filter = ev.target.value, writeState(), renderRuns()),
);
$("#x").addEventListener(
  "change",
  (ev) => (dash.state.x = ev.target.value, writeState(), drawAll()),
);
$("#smooth").addEventListener("input", (ev) => {
  dash.state.smooth = Number(ev.target.value),
    $("#smooth-out").value = dash.state.smooth.toFixed(2);
  writeState(), drawAll();
});
$("#log").addEventListener(
  "change",
  (ev) => (dash.state.log = ev.target.checked, writeState(), drawAll()),
);

(async () => {
  const s = dash.state;
  $("#filter").value = s.filter,
    $("#x").value = s.x,
    $("#smooth").value = s.smooth,
    $("#log").checked = s.log;
  $("#smooth-out").value = s.smooth.toFixed(2);
  await loadRuns();
  await select();
  document.body.dataset.ready = "1";
})();
