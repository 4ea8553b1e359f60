/**
 * Figures the README states that a newcomer measures in the first hour stay near what this checkout measures:
 * the npm packages' size on disk (`du -skD node_modules`: Deno installs every package in deno.lock on the first task)
 * and verdict-small's peak RSS over 2 steps and a checkpoint (bench/memory.ts, the figure the memory estimate is
 * calibrated on). Sizes, not timings: they depend on the lockfile and the code, not on the machine's load.
 */
import { ok } from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;
const README = Deno.readTextFileSync(`${ROOT}README.md`);
/** How far a stated figure may be from the measured one (file systems and allocators differ a little). */
const TOLERANCE = 0.15;

function near(stated: number, measured: number, what: string) {
  ok(
    Math.abs(stated - measured) <= TOLERANCE * measured,
    `README says ${what} ${stated}, measured ${measured.toFixed(0)} (more than ${
      TOLERANCE * 100
    } % apart)`,
  );
}

Deno.test("README: the npm packages' size in node_modules/ is what du measures", async () => {
  const stated = Number(
    README.match(/about (\d+) MB for the npm packages in `node_modules\/`/)?.[1],
  );
  ok(stated > 0, "the README states no size for node_modules/");
  const out = await new Deno.Command("du", { args: ["-skD", `${ROOT}node_modules`] }).output();
  const mb = Number(new TextDecoder().decode(out.stdout).split("\t")[0]) * 1024 / 1e6;
  near(stated, mb, "node_modules/ MB");
});

Deno.test("README: verdict-small's peak RSS over 2 steps and a checkpoint is what bench/memory.ts measures", async () => {
  const stated = Number(README.match(/verdict-small (\d+) MiB measured/)?.[1]);
  ok(stated > 0, "the README states no peak RSS for verdict-small");
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "bench/memory.ts", "experiments/verdict-small.yaml"],
    cwd: ROOT,
    env: { GLIBC_TUNABLES: "glibc.malloc.hugetlb=1" },
    stderr: "inherit",
  }).output();
  const line = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "{}";
  near(stated, JSON.parse(line).peak_rss_mib, "verdict-small MiB");
});
