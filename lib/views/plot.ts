/**
 * Dependency-free SVG line charts for loss curves, like the book's figure 5.12: train and val loss against tokens
 * seen, epochs on a second axis on top. For comparisons, one colour per run, solid for train and dashed for val,
 * with a legend of one row per run plus a style key, so that ten runs (twenty lines) stay readable.
 */

/** One line of a chart. */
export interface Series {
  label: string;
  points: [number, number][]; // (x, y); a non-finite point breaks the line
  color?: string; // default: the palette, by series index
  dash?: boolean;
  /**
   * Series sharing a group share one legend row (the group's name in the first series' colour); their labels
   * and dash styles then appear once each in a grey style key, e.g. "train" solid and "val" dashed.
   */
  group?: string;
}

/** What {@link lineChartSVG} draws. */
export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  width?: number; // default 760
  height?: number; // default 440; grows when the legend needs more room
  /** A second x axis on top: its label and ticks at main-axis positions, e.g. tokens seen → "epoch 3". */
  secondaryX?: { label: string; ticks: [number, string][] };
}

/** Ten colours that stay apart from each other (Tableau 10). */
export const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

const FONT_PX = 12;
const CHAR_PX = 6.6; // average advance of a 12 px sans-serif character, for sizing the legend
const ROW_PX = 18; // legend row height
const GAP_PX = 8; // before the legend's style key
const MAX_LEGEND_PX = 300;

/** Escapes text for SVG content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(
    /[<>&"']/g,
    (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!,
  );
}

/** About `n` round tick values (1, 2, 2.5, 5 × 10^k apart) inside [lo, hi]. */
export function niceTicks(lo: number, hi: number, n = 6): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, n), mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw * (1 - 1e-9))!;
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) {
    out.push(Number((k * step).toPrecision(12)));
  }
  return out;
}

/** A tick label: 12.5k, 3M, 0.25; `scale` (the axis's largest |tick|) picks the unit so that an axis keeps one. */
export function formatTick(v: number, scale = Math.abs(v)): string {
  for (const [from, size, unit] of [[1e9, 1e9, "G"], [1e6, 1e6, "M"], [1e4, 1e3, "k"]] as const) {
    if (scale >= from && v !== 0) return `${+(v / size).toPrecision(4)}${unit}`;
  }
  return `${+v.toPrecision(4)}`;
}

/** Every k-th tick (k = 1, 2, 5, 10, 20, …), so that the widest label never touches its neighbours. */
function thinTicks(ticks: [number, string][], sx: (x: number) => number): [number, string][] {
  let gap = Infinity;
  for (let i = 1; i < ticks.length; i++) {
    const d = sx(ticks[i][0]) - sx(ticks[i - 1][0]);
    if (d > 0) gap = Math.min(gap, d);
  }
  const need = (Math.max(0, ...ticks.map((t) => t[1].length)) + 1) * CHAR_PX;
  let k = 1;
  for (let mag = 1; k * gap < need; mag *= 10) {
    k = [1, 2, 5].map((f) => f * mag).find((c) => c * gap >= need) ?? 10 * mag;
  }
  return ticks.filter((_, i) => i % k === 0);
}

/** Shortens a label to `max` characters by cutting its middle (run names differ at their ends). */
function shorten(s: string, max: number): string {
  if (s.length <= max) return s;
  const head = Math.ceil((max - 1) / 2), tail = Math.floor((max - 1) / 2);
  return `${s.slice(0, head)}…${s.slice(s.length - tail)}`;
}

interface LegendRow {
  label: string;
  color: string | null; // null: a heading, text only
  dash: boolean;
  gap?: boolean; // space above: the style key after the runs
}

/**
 * The common start of the labels, cut after a separator, when it is worth printing once as a heading: a sweep's
 * base name. Not when one label is the whole common start (`verdict-small` beside `verdict-small-lr5e-3`: a run
 * and its variant, whose names would be cut mid-name).
 */
function commonPrefix(labels: string[]): string {
  if (labels.length < 2) return "";
  let p = labels[0];
  for (const l of labels) while (!l.startsWith(p)) p = p.slice(0, -1);
  if (labels.includes(p)) return "";
  // cut after the last separator that is not inside a number (the "." of "lr=0.001")
  let cut = 0;
  for (let i = 0; i < p.length; i++) {
    if (/[.,\-_/ ]/.test(p[i]) && !/\d/.test(p[i - 1] ?? "")) cut = i + 1;
  }
  p = p.slice(0, cut);
  return p.length >= 4 && labels.every((l) => l.length > p.length) ? p : "";
}

/**
 * One row per ungrouped series, one per group, then the grouped series' styles in grey. A prefix that every
 * colour row shares (a sweep's base name) becomes a heading, and the rows keep the part that differs.
 */
function legendRows(series: Series[], colors: string[]): LegendRow[] {
  let rows: LegendRow[] = [];
  const groups = new Set<string>(), styles = new Map<boolean, string>();
  series.forEach((s, i) => {
    if (s.group === undefined) {
      return rows.push({ label: s.label, color: colors[i], dash: !!s.dash });
    }
    if (!groups.has(s.group)) rows.push({ label: s.group, color: colors[i], dash: false });
    groups.add(s.group);
    if (!styles.has(!!s.dash)) styles.set(!!s.dash, s.label);
  });
  const prefix = commonPrefix(rows.map((r) => r.label));
  if (prefix) {
    rows = [
      { label: `${prefix}*`, color: null, dash: false },
      ...rows.map((r) => ({ ...r, label: r.label.slice(prefix.length) })),
    ];
  }
  let gap = rows.length > 0;
  for (const [dash, label] of styles) rows.push({ label, color: "#555", dash, gap }), gap = false;
  return rows;
}

const DASH = ` stroke-dasharray="7 4"`;
const f1 = (v: number) => v.toFixed(1);

/** Where a chart's parts go: size, margins, plot area, data ranges and the scales onto it, legend rows. */
interface ChartFrame {
  W: number;
  H: number;
  m: { l: number; r: number; t: number; b: number };
  pw: number;
  ph: number;
  x0: number;
  x1: number;
  sx: (x: number) => number;
  y0: number;
  y1: number;
  sy: (y: number) => number;
  colors: string[];
  rows: LegendRow[];
  legendW: number;
  labelChars: number;
}

function finite(p: [number, number]): boolean {
  return Number.isFinite(p[0]) && Number.isFinite(p[1]);
}

/** Lays a chart out: the legend's width sets the right margin, the finite points set the ranges. */
function chartFrame(spec: ChartSpec): ChartFrame {
  const colors = spec.series.map((s, i) => s.color ?? PALETTE[i % PALETTE.length]);
  const rows = legendRows(spec.series, colors);
  const labelChars = Math.floor((MAX_LEGEND_PX - 40) / CHAR_PX);
  const longest = Math.max(
    0,
    ...rows.map((r) => Math.min(r.label.length, labelChars) - (r.color === null ? 5 : 0)),
  );
  const legendW = rows.length ? Math.ceil(40 + longest * CHAR_PX) : 0;
  const m = { l: 64, r: legendW + 20, t: spec.secondaryX ? 70 : 40, b: 52 };
  const W = spec.width ?? 760;
  const H = Math.max(spec.height ?? 440, m.t + m.b + rows.length * ROW_PX + GAP_PX + 8);
  const pw = W - m.l - m.r, ph = H - m.t - m.b;

  const pts = spec.series.flatMap((s) => s.points.filter(finite));
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  let [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (x0 > 0 && x0 < 0.2 * x1) x0 = 0; // curves that start near the origin read better from 0
  if (x1 === x0) [x0, x1] = [x0 - 0.5, x1 + 0.5];
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pad = (y1 - y0) * 0.05;
  [y0, y1] = [y0 - pad, y1 + pad];
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.t + (1 - (y - y0) / (y1 - y0)) * ph;
  return { W, H, m, pw, ph, x0, x1, sx, y0, y1, sy, colors, rows, legendW, labelChars };
}

/** The grid, tick labels, plot border and axis labels. */
function axesSVG(spec: ChartSpec, f: ChartFrame): string[] {
  const { m, pw, ph, H, sx, sy } = f;
  const out: string[] = [];
  const xTicks = niceTicks(f.x0, f.x1, Math.max(2, Math.floor(pw / 90)));
  const yTicks = niceTicks(f.y0, f.y1, Math.max(2, Math.floor(ph / 50)));
  const xScale = Math.max(...xTicks.map(Math.abs)), yScale = Math.max(...yTicks.map(Math.abs));
  for (const v of xTicks) {
    const x = f1(sx(v));
    out.push(`<line x1="${x}" y1="${m.t}" x2="${x}" y2="${m.t + ph}" stroke="#e6e6e6"/>`);
    out.push(
      `<text x="${x}" y="${m.t + ph + 16}" text-anchor="middle">${formatTick(v, xScale)}</text>`,
    );
  }
  for (const v of yTicks) {
    const y = f1(sy(v));
    out.push(`<line x1="${m.l}" y1="${y}" x2="${m.l + pw}" y2="${y}" stroke="#e6e6e6"/>`);
    out.push(
      `<text x="${m.l - 6}" y="${f1(sy(v) + 4)}" text-anchor="end">${formatTick(v, yScale)}</text>`,
    );
  }
  out.push(
    `<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
    `<text x="${f1(m.l + pw / 2)}" y="${H - 12}" text-anchor="middle">${
      escapeXml(spec.xLabel)
    }</text>`,
    `<text transform="translate(18 ${f1(m.t + ph / 2)}) rotate(-90)" text-anchor="middle">` +
      `${escapeXml(spec.yLabel)}</text>`,
  );
  return out;
}

/** The secondary x axis along the top (e.g. tokens seen), when the spec has one. */
function secondaryAxisSVG(spec: ChartSpec, f: ChartFrame): string[] {
  if (!spec.secondaryX) return [];
  const { m, pw, sx, x0, x1 } = f;
  const out: string[] = [];
  const ticks = spec.secondaryX.ticks.filter(([x]) => x >= x0 && x <= x1)
    .sort((a, b) => a[0] - b[0]);
  for (const [v, label] of thinTicks(ticks, sx)) {
    const x = f1(sx(v));
    out.push(`<line x1="${x}" y1="${m.t}" x2="${x}" y2="${m.t - 5}" stroke="#333"/>`);
    out.push(`<text x="${x}" y="${m.t - 9}" text-anchor="middle">${escapeXml(label)}</text>`);
  }
  out.push(
    `<text x="${f1(m.l + pw / 2)}" y="${m.t - 30}" text-anchor="middle">` +
      `${escapeXml(spec.secondaryX.label)}</text>`,
  );
  return out;
}

/** One path per series, broken where a point is not finite. */
function seriesSVG(spec: ChartSpec, f: ChartFrame): string[] {
  const { sx, sy, colors } = f;
  const out: string[] = [];
  spec.series.forEach((s, i) => {
    let d = "", pen = false, n = 0;
    for (const p of s.points) {
      if (!finite(p)) {
        pen = false;
        continue;
      }
      d += `${d ? " " : ""}${pen ? "L" : "M"}${f1(sx(p[0]))} ${f1(sy(p[1]))}`;
      pen = true, n++;
    }
    if (!n) return;
    if (n === 1) d += " h0.01"; // a lone point: the round cap draws a dot
    out.push(
      `<path d="${d}" fill="none" stroke="${escapeXml(colors[i])}" stroke-width="2" ` +
        `stroke-linejoin="round" stroke-linecap="round"${s.dash ? DASH : ""}>` +
        `<title>${
          escapeXml(s.group === undefined ? s.label : `${s.group} ${s.label}`)
        }</title></path>`,
    );
  });
  return out;
}

/** The legend at the right: a line and label per series, group headings in grey. */
function legendSVG(f: ChartFrame): string[] {
  const { W, m, legendW, labelChars, rows } = f;
  const out: string[] = [];
  const lx = W - legendW - 4;
  let y = m.t + 10 - ROW_PX;
  for (const r of rows) {
    y += ROW_PX + (r.gap ? GAP_PX : 0);
    const label = shorten(r.label, labelChars);
    if (r.color === null) {
      out.push(`<text x="${lx}" y="${y + 4}" fill="#555">${escapeXml(label)}</text>`);
      continue;
    }
    out.push(
      `<line x1="${lx}" y1="${y}" x2="${lx + 28}" y2="${y}" stroke="${escapeXml(r.color)}" ` +
        `stroke-width="2.5"${r.dash ? DASH : ""}/>`,
      `<text x="${lx + 34}" y="${y + 4}">${escapeXml(label)}` +
        `${label === r.label ? "" : `<title>${escapeXml(r.label)}</title>`}</text>`,
    );
  }
  return out;
}

/**
 * A standalone SVG document: title, axes with round ticks, grid, one `<path>` per series (none for a series with
 * no finite point), an optional secondary x axis on top, and a legend on the right.
 *
 * @example
 * Deno.writeTextFileSync("loss.svg", lineChartSVG({
 *   title: "Loss", xLabel: "Tokens seen", yLabel: "Loss",
 *   series: [{ label: "train", points: [[0, 11], [512, 9]] }, { label: "val", points: [[0, 11], [512, 10]], dash: true }],
 * }));
 */
export function lineChartSVG(spec: ChartSpec): string {
  const f = chartFrame(spec);
  const { W, H, m, pw } = f;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="Helvetica, Arial, sans-serif" font-size="${FONT_PX}">`,
    `<title>${escapeXml(spec.title)}</title>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${f1(m.l + pw / 2)}" y="22" text-anchor="middle" font-size="15" font-weight="bold">` +
    `${escapeXml(spec.title)}</text>`,
    ...axesSVG(spec, f),
    ...secondaryAxisSVG(spec, f),
    ...seriesSVG(spec, f),
    ...legendSVG(f),
    "</svg>",
  ].join("\n") + "\n";
}
