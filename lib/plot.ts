/**
 * Dependency-free SVG line charts for loss curves (the book's figure 5.12: train and val loss against tokens seen,
 * epochs on a second axis). One colour per run, solid for train and dashed for val, a legend that stays readable
 * with ten runs.
 */

/** One line of a chart. */
export interface Series {
  label: string;
  points: [number, number][]; // (x, y)
  color?: string;
  dash?: boolean;
}

/** What {@link lineChartSVG} draws. */
export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  width?: number;
  height?: number;
  /** A second x axis on top: label and a map from the main x to its value (e.g. tokens → epochs). */
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

/** Escapes text for SVG. */
export function escapeXml(s: string): string {
  return s.replace(
    /[<>&"']/g,
    (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!,
  );
}

/** About `n` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, n = 6): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

function fmtTick(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  return `${+v.toPrecision(4)}`;
}

/** A standalone SVG document with axes, grid, one path per series and a legend. */
export function lineChartSVG(spec: ChartSpec): string {
  const W = spec.width ?? 760, H = spec.height ?? 440;
  const legendW = 190, m = { l: 64, r: legendW + 16, t: spec.secondaryX ? 64 : 40, b: 52 };
  const pts = spec.series.flatMap((s) => s.points).filter(([x, y]) =>
    Number.isFinite(x) && Number.isFinite(y)
  );
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  let [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  let [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad, y1 += pad;
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.t + (1 - (y - y0) / (y1 - y0)) * ph;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l + pw / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">` +
    `${escapeXml(spec.title)}</text>`,
  ];
  for (const v of niceTicks(x0, x1)) {
    out.push(`<line x1="${sx(v)}" y1="${m.t}" x2="${sx(v)}" y2="${m.t + ph}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${sx(v)}" y="${m.t + ph + 16}" text-anchor="middle">${fmtTick(v)}</text>`);
  }
  for (const v of niceTicks(y0, y1)) {
    out.push(`<line x1="${m.l}" y1="${sy(v)}" x2="${m.l + pw}" y2="${sy(v)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${m.l - 6}" y="${sy(v) + 4}" text-anchor="end">${fmtTick(v)}</text>`);
  }
  out.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  out.push(
    `<text x="${m.l + pw / 2}" y="${H - 12}" text-anchor="middle">${escapeXml(spec.xLabel)}</text>`,
    `<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">` +
      `${escapeXml(spec.yLabel)}</text>`,
  );
  if (spec.secondaryX) {
    for (const [x, label] of spec.secondaryX.ticks) {
      if (x < x0 || x > x1) continue;
      out.push(`<line x1="${sx(x)}" y1="${m.t}" x2="${sx(x)}" y2="${m.t - 5}" stroke="#333"/>`);
      out.push(`<text x="${sx(x)}" y="${m.t - 9}" text-anchor="middle">${escapeXml(label)}</text>`);
    }
    out.push(
      `<text x="${m.l + pw / 2}" y="${m.t - 26}" text-anchor="middle">${
        escapeXml(spec.secondaryX.label)
      }</text>`,
    );
  }
  spec.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const dash = s.dash ? ` stroke-dasharray="6 4"` : "";
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (p.length) {
      const d = p.map(([x, y], k) => `${k ? "L" : "M"}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`)
        .join(" ");
      out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
    }
    const ly = m.t + 8 + i * 18, lx = W - legendW;
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${
        lx + 26
      }" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
    );
    out.push(`<text x="${lx + 32}" y="${ly + 4}">${escapeXml(s.label.slice(0, 26))}</text>`);
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
