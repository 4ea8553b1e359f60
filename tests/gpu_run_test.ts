/**
 * bench/gpu-run.sh's `check`: what travels to the GPU machine (the working tree and the carry folder) must fit the
 * device tool's 64 MiB and its command 2,000 characters. On the carry `prepare` built, where there is one (building
 * it takes minutes: xz of the Deno binary); on a carry made here, to see the check refuse what it must.
 */
import { ok } from "node:assert/strict";

const LIMIT = 64 * 1024 * 1024;
const SCRIPT = new URL("../bench/gpu-run.sh", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
/** The packages the script carries, from its DEBS line. */
const DEBS = Deno.readTextFileSync(SCRIPT).match(/^DEBS="([^"]+)"/m)![1].split(" ");

async function check(carry?: string) {
  const out = await new Deno.Command("bash", {
    args: [SCRIPT, "check"],
    cwd: ROOT,
    env: carry ? { GPU_CARRY: carry } : {},
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

const inGit = await new Deno.Command("git", { args: ["rev-parse"], cwd: ROOT, stderr: "null" })
  .output().then((o) => o.success, () => false);
const built = await Deno.stat(`${ROOT}.gpu-carry/deno.xz`).then(() => true, () => false);

Deno.test({
  name:
    `gpu-run.sh check: the prepared carry and the working tree fit 64 MiB, the command 2,000 characters${
      !inGit
        ? " (skipped: not a git checkout)"
        : built
        ? ""
        : " (skipped: run bench/gpu-run.sh prepare first)"
    }`,
  ignore: !inGit || !built,
  fn: async () => {
    const r = await check();
    ok(r.code === 0, r.stderr);
    const line = JSON.parse(r.stdout.split("\n")[0]);
    ok(line.total_bytes <= LIMIT, `${line.total_bytes} bytes travel`);
    ok(line.carry_bytes > 20e6, "the carry holds the compressed Deno binary");
    ok(line.command_chars < 2000);
    ok(r.stdout.includes('command: bash bench/gpu-run.sh run\ncarry: [".gpu-carry"]'), r.stdout);
  },
});

Deno.test({
  name: `gpu-run.sh check refuses a carry that lacks a part or would take the total over 64 MiB${
    inGit ? "" : " (skipped: not a git checkout)"
  }`,
  ignore: !inGit,
  fn: async () => {
    const carry = "bench/out/gpu-carry-test"; // bench/out/ is ignored by git, as the carry must be
    const dir = `${ROOT}${carry}`;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(`${dir}/fixtures`, { recursive: true });
    await Deno.mkdir(`${dir}/debs`);
    const parts = ["deno.xz", "node_modules.tar.xz", "the-verdict.txt", "fixtures/gpt2-tiny.json"]
      .concat("fixtures/gpt2-tiny.safetensors")
      .concat(DEBS.map((p) => `debs/${p}_1_amd64.deb`));
    try {
      for (const p of parts) await Deno.writeTextFile(`${dir}/${p}`, "x");
      const fits = await check(carry);
      ok(fits.code === 0, fits.stderr);
      const { tree_bytes } = JSON.parse(fits.stdout.split("\n")[0]);

      // The tree plus a carry one byte over the limit: refused, naming the limit.
      await Deno.truncate(`${dir}/deno.xz`, LIMIT - tree_bytes - (parts.length - 1) + 1);
      const over = await check(carry);
      ok(
        over.code === 1 && over.stderr.includes(`over the device tool's limit of ${LIMIT}`),
        over.stderr,
      );
      await Deno.truncate(`${dir}/deno.xz`, LIMIT - tree_bytes - (parts.length - 1));
      ok((await check(carry)).code === 0, "exactly at the limit fits");

      await Deno.remove(`${dir}/debs/libvulkan1_1_amd64.deb`);
      const lacking = await check(carry);
      ok(lacking.code === 1 && lacking.stderr.includes("lacks debs/libvulkan1"), lacking.stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
