/**
 * The matrix library chosen by measurement: `auto` takes the fastest library in the per-machine cache for the
 * run's precision (the cache is written here as an input), names it and the measured figures in the header, and
 * measures afresh where the cache has no entry for this machine. An OpenBLAS on a generic core gets its fix.
 */
import { ok } from "node:assert/strict";
import { loadedLibraries, machineKey } from "../lib/backends/cpu/matrix/choice.ts";
import { cpuFlags, type LibraryKind } from "../lib/backends/cpu/matrix/libraries.ts";
import {
  matrixLibrary,
  registerCpuBackend,
  useMatrixLibrary,
} from "../lib/backends/cpu/cpu_backend.ts";
import { ignoredBecause, tempDir } from "./_helpers.ts";

const { libs } = loadedLibraries();
const opts = { sanitizeResources: false, sanitizeOps: false };

/** Writes a cache in which each library has the given GFLOP/s (fp32, bf16-mixed), points GPT_MATMUL_CACHE at it. */
function writeCache(dir: string, speeds: Partial<Record<LibraryKind, [number, number]>>): string {
  const entry = { measured: "2026-12-01T00:00:00.000Z", speeds: {} as Record<string, unknown> };
  for (const [kind, lib] of libs) {
    const [fp32, bf16] = speeds[kind] ?? [1, 1];
    entry.speeds[kind] = { describe: lib.describe(), fp32, "bf16-mixed": bf16 };
  }
  const path = `${dir}/matrix-libraries.json`;
  Deno.writeTextFileSync(path, JSON.stringify({ [machineKey([...libs.values()])]: entry }));
  Deno.env.set("GPT_MATMUL_CACHE", path);
  return path;
}

/** Runs `f` with GPT_BLAS unset and GPT_MATMUL_CACHE restored afterwards. */
function withCacheEnv(f: () => void): void {
  const saved = [Deno.env.get("GPT_BLAS"), Deno.env.get("GPT_MATMUL_CACHE")];
  Deno.env.delete("GPT_BLAS");
  try {
    f();
  } finally {
    for (const [k, v] of [["GPT_BLAS", saved[0]], ["GPT_MATMUL_CACHE", saved[1]]] as const) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
    useMatrixLibrary("auto");
  }
}

Deno.test({
  name: "auto takes the library the cache measured fastest for the precision, and says so",
  ...opts,
  ignore: libs.size < 2,
  fn: () =>
    withCacheEnv(() => {
      registerCpuBackend();
      const kinds = [...libs.keys()];
      // The slowest-by-preference library is made fastest in fp32, the first one fastest in bf16-mixed.
      const fast32 = kinds[kinds.length - 1], fast16 = kinds[0];
      writeCache(tempDir(), { [fast32]: [500, 1], [fast16]: [2, 900] });
      const r32 = useMatrixLibrary("auto", "fp32");
      ok(
        r32.ok && r32.name === fast32,
        `fp32 took ${r32.ok ? r32.name : r32.reason}, not ${fast32}`,
      );
      const header = matrixLibrary()!.describe();
      ok(
        header.includes("fastest measured") && header.includes(" 500") && header.includes("cached"),
        header,
      );
      const r16 = useMatrixLibrary("auto", "bf16-mixed");
      ok(
        r16.ok && r16.name === fast16,
        `bf16-mixed took ${r16.ok ? r16.name : r16.reason}, not ${fast16}`,
      );
      ok(matrixLibrary()!.describe().includes("900"), matrixLibrary()!.describe());
    }),
});

Deno.test({
  name:
    "auto measures every library where the cache has no entry for this machine, and caches the result",
  ...opts,
  fn: () =>
    withCacheEnv(() => {
      const path = `${tempDir()}/matrix-libraries.json`;
      Deno.writeTextFileSync(
        path,
        JSON.stringify({ "another machine": { measured: "x", speeds: {} } }),
      );
      Deno.env.set("GPT_MATMUL_CACHE", path);
      const r = useMatrixLibrary("auto");
      ok(r.ok);
      ok(matrixLibrary()!.describe().includes("measured now"), matrixLibrary()!.describe());
      const cache = JSON.parse(Deno.readTextFileSync(path));
      const mine = cache[machineKey([...libs.values()])];
      ok(cache["another machine"], "the other machine's entry is kept");
      for (const kind of libs.keys()) ok(mine.speeds[kind].fp32 > 0, `${kind} measured`);
      const fastest = [...libs.keys()].reduce((
        a,
        b,
      ) => (mine.speeds[b].fp32 > mine.speeds[a].fp32 ? b : a));
      ok(r.ok && r.name === fastest, `took ${r.ok ? r.name : ""}, measured fastest ${fastest}`);
    }),
});

Deno.test({
  name:
    "the first three runs measure again and keep each library's best figure; the fourth reads the cache",
  ...opts,
  ignore: libs.size < 2,
  fn: () =>
    withCacheEnv(() => {
      const path = `${tempDir()}/matrix-libraries.json`;
      Deno.env.set("GPT_MATMUL_CACHE", path);
      const first = useMatrixLibrary("auto");
      ok(first.ok);
      const cache = JSON.parse(Deno.readTextFileSync(path));
      const mine = cache[machineKey([...libs.values()])];
      ok(mine.samples === 1, JSON.stringify(mine));
      // A figure no run reaches stays, and decides.
      const fastest = first.name;
      const slowest = [...libs.keys()].find((k) => k !== fastest)!;
      mine.speeds[slowest].fp32 = 1e6;
      Deno.writeTextFileSync(path, JSON.stringify(cache));
      const again = useMatrixLibrary("auto");
      const merged = JSON.parse(Deno.readTextFileSync(path))[machineKey([...libs.values()])];
      ok(merged.samples === 2 && merged.speeds[slowest].fp32 === 1e6, JSON.stringify(merged));
      ok(again.ok && again.name === slowest, "the best figure decides");
      for (let run = 3; run <= 4; run++) useMatrixLibrary("auto");
      const done = JSON.parse(Deno.readTextFileSync(path))[machineKey([...libs.values()])];
      ok(done.samples === 3, `measured ${done.samples} times, not 3, then no more`);
      ok(matrixLibrary()!.describe().includes("cached"), matrixLibrary()!.describe());
    }),
});

const avx512 = cpuFlags().has("avx512f");
const openblas = libs.get("native")?.core !== undefined;
Deno.test({
  name: `an OpenBLAS on a generic core is named with the core type that fixes it${
    ignoredBecause(
      !openblas ? "OpenBLAS not loadable here" : !avx512 ? "this CPU has no AVX-512" : null,
    )
  }`,
  ...opts,
  ignore: !openblas || !avx512,
  fn: async () => {
    const code = `import { loadNativeBlas } from "${new URL(
      "../lib/backends/cpu/matrix/libraries.ts",
      import.meta.url,
    )}";
      const r = loadNativeBlas(); console.log(r.ok ? r.lib.describe() + " | " + r.lib.warning : r.reason);`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      env: { OPENBLAS_CORETYPE: "Prescott" },
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    ok(text.includes("(Prescott)") && /OPENBLAS_CORETYPE=(Cooperlake|SkylakeX)/.test(text), text);
  },
});
