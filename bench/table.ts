/**
 * The short table `deno task bench` prints on stderr after its JSON lines: one row per line, the figures a person
 * reads first (seconds, tokens/s or MB/s, peak RSS, the ratios), rounded. The JSON lines on stdout stay as they are
 * for scripts.
 */

type Line = Record<string, unknown>;

/** A number rounded to `digits` decimals, or `-` when the field is missing or not a number. */
function fixed(v: unknown, digits: number): string {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "-";
}

/** Which matrix library ran a line, in a word: `OpenBLAS 0.3.21`, `wasm GEMM`, `PyTorch 1.13.0`. */
function library(r: Line): string {
  const bf16 = r.precision === "bf16-mixed" ? " bf16" : "";
  if (r.impl === "pytorch") return `PyTorch ${r.torch ?? ""}${bf16}`.trim();
  if (r.case === "auto_choice") return `auto: ${r.picked}${bf16}`;
  const lib = String(r.matrix_library ?? r.backend ?? "-");
  return (lib.startsWith("WebAssembly") ? "wasm GEMM" : lib.split(",")[0]) + bf16;
}

/** The ratio columns of a speed line, as `1.57× PyTorch` etc. */
function ratios(r: Line): string {
  const parts: [string, string][] = [
    ["ratio_vs_pytorch", "PyTorch"],
    ["ratio_vs_native", "native"],
    ["ratio_vs_matmul", "products"],
    ["ratio_vs_fp32", "fp32"],
  ];
  if (r.case === "auto_choice") {
    return r.auto_is_fastest ? "the fastest step" : `fastest step: ${r.fastest_step}`;
  }
  return parts.filter(([k]) => typeof r[k] === "number")
    .map(([k, what]) => `${fixed(r[k], 2)}× ${what}`).join(", ") || "-";
}

/** Text cells in columns two spaces apart: the first two (names) left-aligned, the figures right-aligned. */
export function columns(head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join("  ")
      .trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

function speedTable(lines: Line[]): string {
  const head = [
    "case",
    "library",
    "batch",
    "median s",
    "tokens/s",
    "MFU %",
    "products s",
    "peak RSS MB",
  ];
  const body = lines.map((r) => [
    String(r.case),
    library(r),
    fixed(r.batch, 0),
    fixed(r.median_s, 3),
    fixed(r.tokens_per_s, 1),
    typeof r.mfu === "number" ? fixed(r.mfu * 100, 1) : "-",
    fixed(r.matmul_s, 3),
    fixed(r.peak_rss_mb, 0),
  ]);
  return columns([...head, "ratios"], body.map((b, i) => [...b, ratios(lines[i])]));
}

function dataTable(lines: Line[]): string {
  const head = ["case", "form", "MB of text", "MB/s", "tokens/s", "peak RSS MB", "vs .txt"];
  const body = lines.map((r) => [
    String(r.case),
    String(r.format ?? (r.case === "tokenize" ? "txt" : "-")),
    fixed(r.text_mb ?? r.mb, 1),
    fixed(r.mb_per_s, 1),
    fixed(r.tokens_per_s, 0),
    fixed(r.peak_rss_mb, 0),
    fixed(r.ratio_vs_txt, 2),
  ]);
  return columns(head, body);
}

/**
 * The bench's lines as one or two tables (speed cases; data cases), with a line per case that failed or was
 * skipped.
 *
 * @example
 * console.error(benchTable([{ case: "train_step", impl: "ours", batch: 2, median_s: 2.6, tokens_per_s: 197 }]));
 */
export function benchTable(lines: Line[]): string {
  const failed = lines.filter((r) => r.error !== undefined || r.skipped !== undefined);
  const ok = lines.filter((r) => !failed.includes(r));
  const isData = (r: Line) => ["tokenize", "loader", "prepare", "stream"].includes(String(r.case));
  const speed = ok.filter((r) => !isData(r)), data = ok.filter(isData);
  const parts = [
    ...(speed.length ? [speedTable(speed)] : []),
    ...(data.length ? [dataTable(data)] : []),
    ...failed.map((r) => {
      const what = [r.impl === "pytorch" ? "PyTorch" : r.matrix_lib, r.precision, r.setting]
        .filter((x) => x).join(", ");
      return `${r.case}${r.batch ? ` batch ${r.batch}` : ""}${what ? ` (${what})` : ""}: ${
        r.error ?? r.skipped
      }`;
    }),
  ];
  return parts.join("\n\n");
}
