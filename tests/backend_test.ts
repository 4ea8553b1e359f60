/**
 * Backend choice: `tensorflow` says in one line which package is missing and why, `webgpu` refuses a software
 * adapter unless allowed, and `auto` never picks one.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { initBackend } from "../lib/backends/backend.ts";
import { ALLOW_FALLBACK_ENV, probeWebGPU } from "../lib/backends/webgpu/adapter.ts";
import { UserError } from "../lib/errors.ts";
import { ensureVerdict, ignoredBecause, taskArgs, tempDir } from "./_helpers.ts";

const tfNodeMapped = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"].some((p) => {
  try {
    import.meta.resolve(p);
    return true;
  } catch {
    return false;
  }
});

Deno.test({
  name:
    "backend tensorflow without tfjs-node(-gpu) installed: one-line UserError naming both packages" +
    ignoredBecause(tfNodeMapped ? "tfjs-node is installed here, so nothing is missing" : null),
  ignore: tfNodeMapped,
  fn: async () => {
    await rejects(initBackend("tensorflow"), (e) => {
      ok(e instanceof UserError);
      ok(!e.message.includes("\n"), e.message);
      ok(
        e.message.startsWith(
          "backend tensorflow: not available: @tensorflow/tfjs-node-gpu not installed",
        ),
      );
      ok(e.message.includes("@tensorflow/tfjs-node not installed"), e.message);
      return true;
    });
  },
});

const found = await probeWebGPU();
const software = typeof found !== "string" && found.fallback;

Deno.test({
  name: "a software WebGPU adapter: refused by webgpu unless allowed, never chosen by auto" +
    ignoredBecause(
      software
        ? null
        : typeof found === "string"
        ? found
        : "the WebGPU adapter here is a hardware one",
    ),
  ignore: !software,
  fn: async () => {
    const before = Deno.env.get(ALLOW_FALLBACK_ENV);
    Deno.env.delete(ALLOW_FALLBACK_ENV);
    try {
      await rejects(initBackend("webgpu"), (e) => {
        ok(e instanceof UserError && e.message.includes(`set ${ALLOW_FALLBACK_ENV}=1`), String(e));
        return true;
      });
      const auto = await initBackend("auto");
      ok(auto.name !== "webgpu", auto.reason);
      ok(/only the software adapter|no GPU device node/.test(auto.reason), auto.reason);
      Deno.env.set(ALLOW_FALLBACK_ENV, "1");
      const gpu = await initBackend("webgpu");
      ok(gpu.name === "webgpu" && gpu.reason.includes("software fallback"), gpu.reason);
    } finally {
      if (before === undefined) Deno.env.delete(ALLOW_FALLBACK_ENV);
      else Deno.env.set(ALLOW_FALLBACK_ENV, before);
      await initBackend("tfjs-cpu");
    }
  },
});

Deno.test({
  name:
    "training GPT-124M on TF.js's wasm backend is refused before anything is allocated: one line, exit 2",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = tempDir();
    const verdict = Deno.realPathSync(await ensureVerdict());
    Deno.writeTextFileSync(
      `${dir}/big.yaml`,
      `name: big\nbackend: wasm\ndata: {path: ${verdict}}\n`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: taskArgs("train", ["big.yaml"]),
      cwd: dir,
      env: { NO_COLOR: "1" },
    }).output();
    const err = new TextDecoder().decode(out.stderr).trim().split("\n");
    assertEquals([out.code, err.length], [2, 1], err.join("\n"));
    ok(
      /^error: backend wasm: training needs about [\d.]+ GiB, more than TF\.js's wasm backend fits in its 4 GiB heap; use backend cpu/
        .test(err[0]),
      err[0],
    );
    ok(!new TextDecoder().decode(out.stdout).includes("model:"), "the model was built");
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["big.yaml", "checkpoints"]);
    assertEquals([...Deno.readDirSync(`${dir}/checkpoints`)], [], "the run left files");
  },
});
