import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { formatTick, lineChartSVG, niceTicks, PALETTE, type Series } from "../lib/views/plot.ts";

/**
 * A small XML well-formedness check: every tag closes in order, attributes are quoted and unique, text holds no
 * raw `<` and only the five named (or numeric) entities, and there is one root element. Returns the root's name.
 */
function checkXml(xml: string): string {
  const tag = /<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>/y;
  const badAmp = /&(?!(?:lt|gt|amp|quot|apos|#\d+|#x[0-9a-fA-F]+);)/;
  const stack: string[] = [];
  let root = "", i = 0;
  while (i < xml.length) {
    const lt = xml.indexOf("<", i);
    const text = xml.slice(i, lt < 0 ? xml.length : lt);
    if (badAmp.test(text)) throw new Error(`bad & in text at ${i}: ${text.slice(0, 40)}`);
    if (!stack.length && text.trim() && root) throw new Error(`text after the root at ${i}`);
    if (lt < 0) break;
    tag.lastIndex = lt;
    const m = tag.exec(xml);
    if (!m) throw new Error(`malformed tag at ${lt}: ${xml.slice(lt, lt + 60)}`);
    const [whole, close, name, attrs, selfClose] = m;
    const names = [...attrs.matchAll(/([\w:.-]+)\s*=/g)].map((a) => a[1]);
    if (new Set(names).size !== names.length) throw new Error(`duplicate attribute in ${whole}`);
    if (badAmp.test(attrs)) throw new Error(`bad & in attribute: ${whole}`);
    if (close) {
      if (stack.pop() !== name) throw new Error(`</${name}> closes the wrong element at ${lt}`);
    } else {
      if (!stack.length && root) throw new Error(`second root element <${name}>`);
      if (!stack.length) root = name;
      if (!selfClose) stack.push(name);
    }
    i = lt + whole.length;
  }
  if (stack.length) throw new Error(`unclosed <${stack.at(-1)}>`);
  return root;
}

const curve = (n: number, scale: number): [number, number][] =>
  Array.from({ length: n }, (_, k) => [512 * (k + 1), 11 * Math.exp(-k / scale) + 1]);

Deno.test("the XML check rejects what a browser would", () => {
  for (
    const bad of [
      "<svg><g></svg>",
      "<svg a=1></svg>",
      '<svg a="1" a="2"></svg>',
      "<svg>a < b</svg>",
      "<svg>R&D</svg>",
      "<svg/><svg/>",
    ]
  ) {
    let threw = false;
    try {
      checkXml(bad);
    } catch {
      threw = true;
    }
    ok(threw, bad);
  }
  assertEquals(checkXml('<svg x="&amp;"><g/>a &lt; b</svg>'), "svg");
});

Deno.test("a chart is standalone, well-formed SVG with one path per series; text is escaped", () => {
  const svg = lineChartSVG({
    title: `Loss <of> "run" & 'co'`,
    xLabel: "Tokens seen",
    yLabel: "Loss",
    series: [
      { label: "train <a&b>", points: curve(20, 5) },
      { label: "val", points: curve(20, 8), dash: true },
      { label: "empty", points: [] }, // no path, still a legend row
    ],
  });
  assertEquals(checkXml(svg), "svg");
  ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  assertEquals((svg.match(/<path /g) ?? []).length, 2);
  assertEquals((svg.match(/<path [^>]*stroke-dasharray/g) ?? []).length, 1);
  ok(svg.includes("Loss &lt;of&gt; &quot;run&quot; &amp; &apos;co&apos;"));
  ok(svg.includes("train &lt;a&amp;b&gt;"));
  ok(!svg.includes("<a&b>"));
});

Deno.test("non-finite points break a line instead of spoiling the axes; a lone point is drawn", () => {
  const svg = lineChartSVG({
    title: "t",
    xLabel: "x",
    yLabel: "y",
    series: [
      { label: "diverged", points: [[1, 5], [2, 4], [3, NaN], [4, Infinity], [5, 3], [6, 2]] },
      { label: "one", points: [[3, 3.5]] },
    ],
  });
  checkXml(svg);
  const paths = [...svg.matchAll(/<path d="([^"]*)"/g)].map((m) => m[1]);
  assertEquals(paths.length, 2);
  assertEquals(paths[0].match(/M/g)!.length, 2); // two pieces
  ok(!/NaN|Infinity/.test(svg));
  ok(paths[1].includes("h0.01"));
});

Deno.test("20 series (10 runs × train/val) keep a readable legend: a row per run, a style key", () => {
  const series: Series[] = [];
  for (let r = 0; r < 10; r++) {
    const group = `verdict-lr-sweep.lr=${(0.0005 * 2 ** r).toPrecision(2)},n_layers=${1 + r % 3}`;
    series.push({ label: "train", group, points: curve(18, 3 + r), color: PALETTE[r] });
    series.push({ label: "val", group, points: curve(18, 4 + r), color: PALETTE[r], dash: true });
  }
  const svg = lineChartSVG({ title: "Ten runs", xLabel: "Tokens seen", yLabel: "Loss", series });
  checkXml(svg);
  assertEquals((svg.match(/<path /g) ?? []).length, 20);
  const legendLines = [
    ...svg.matchAll(/<line x1="(\d+)" y1="([\d.]+)" x2="\d+"[^>]*stroke="([^"]+)"/g),
  ]
    .filter((m) => Number(m[1]) > 500);
  assertEquals(legendLines.length, 12); // 10 runs + train + val
  assertEquals(legendLines.slice(0, 10).map((m) => m[3]), PALETTE);
  const ys = legendLines.map((m) => Number(m[2]));
  ok(ys.every((y, i) => i === 0 || y - ys[i - 1] >= 18), "rows do not overlap");
  const height = Number(svg.match(/height="(\d+)"/)![1]);
  ok(ys.at(-1)! < height - 20, "the legend fits");
  // the shared sweep name is printed once; each run's row keeps what differs
  ok(svg.includes(">verdict-lr-sweep.*</text>"));
  ok(svg.includes(">lr=0.00050,n_layers=1</text>"));
  ok(svg.includes(">train</text>") && svg.includes(">val</text>"));
});

Deno.test("secondary x axis: epochs on top, labels thinned so they never overlap", () => {
  const ticks: [number, string][] = Array.from({ length: 101 }, (_, e) => [e * 100, String(e)]);
  const svg = lineChartSVG({
    title: "t",
    xLabel: "Tokens seen",
    yLabel: "Loss",
    series: [{ label: "train", points: curve(20, 5).map(([x, y]) => [x * 10000 / 10240, y]) }],
    secondaryX: { label: "Epochs", ticks },
  });
  checkXml(svg);
  ok(svg.includes(">Epochs</text>"));
  const top = [...svg.matchAll(/<line x1="([\d.]+)" y1="70" x2="[\d.]+" y2="65"/g)].map((m) =>
    Number(m[1])
  );
  ok(top.length >= 5 && top.length < 101, `${top.length} epoch ticks`);
  ok(top.every((x, i) => i === 0 || x - top[i - 1] >= 12));
});

Deno.test("nice ticks are round, inside the range, and about as many as asked", () => {
  assertEquals(niceTicks(0, 46080, 5), [0, 10000, 20000, 30000, 40000]);
  assertEquals(niceTicks(0.31, 11.2, 6), [2, 4, 6, 8, 10]);
  assertEquals(niceTicks(0.1, 0.3, 4), [0.1, 0.15, 0.2, 0.25, 0.3]);
  assertEquals(niceTicks(5, 5), [5]);
  for (const [lo, hi] of [[0, 1], [3.7, 9.2], [1e-4, 3e-3], [12, 1.2e6]]) {
    const t = niceTicks(lo, hi, 6);
    ok(t.length >= 3 && t.length <= 12, `${lo}..${hi}: ${t}`);
    ok(t[0] >= lo && t.at(-1)! <= hi);
  }
  assertEquals(
    [0, 2.5, 10000, 12500, 46080, 3e6, 1.5e9].map((v) => formatTick(v)),
    ["0", "2.5", "10k", "12.5k", "46.08k", "3M", "1.5G"],
  );
  assertEquals([0, 2000, 10000].map((v) => formatTick(v, 10000)), ["0", "2k", "10k"]); // one unit per axis
});

Deno.test("the legend prints a sweep's base once, but never cuts a run name that another one extends", () => {
  const legend = (...names: string[]) => {
    const series: Series[] = names.flatMap((group, i) => [
      { label: "train", group, points: curve(5, 3 + i), color: PALETTE[i] },
      { label: "val", group, points: curve(5, 4 + i), color: PALETTE[i], dash: true },
    ]);
    const svg = lineChartSVG({ title: "t", xLabel: "x", yLabel: "y", series });
    return [...svg.matchAll(/<text [^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
  };
  const run = legend("verdict-small", "verdict-small-lr5e-3");
  ok(run.includes("verdict-small") && run.includes("verdict-small-lr5e-3"), run.join(" | "));
  ok(!run.includes("verdict-*") && !run.includes("small"), run.join(" | "));
  const sweep = legend("verdict-lr-sweep.lr=0.001", "verdict-lr-sweep.lr=0.01");
  ok(sweep.includes("verdict-lr-sweep.*") && sweep.includes("lr=0.001"), sweep.join(" | "));
});
