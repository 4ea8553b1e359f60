/**
 * `deno task download-gpt2` against a local stand-in for the Hugging Face hub (HF_ENDPOINT) serving the shared tiny
 * GPT-2: a cut connection resumes with an HTTP Range request, the SHA-256 is checked against the hub's
 * X-Linked-Etag, a mismatch or an unreachable hub is one error line with exit 2, a file in place is checked.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { taskArgs, tempDir } from "./_helpers.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIXTURE = `${ROOT}../shared/fixtures/gpt2-tiny.safetensors`;
const PATH = "/openai-community/gpt2-medium/resolve/main/model.safetensors";

/** Runs the task the way `deno task download-gpt2` does, from `cwd`. */
async function download(cwd: string, endpoint: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: taskArgs("download-gpt2", args),
    cwd,
    env: { HF_ENDPOINT: endpoint, NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  const err = dec.decode(out.stderr).split(/[\r\n]/).filter((l) => l.startsWith("error"));
  return { code: out.code, stdout: dec.decode(out.stdout), err };
}

Deno.test("download-gpt2: resumes a cut download, checks the SHA-256, refuses a mismatch, says where to put it offline", async () => {
  const bytes = await Deno.readFile(FIXTURE);
  const sha = createHash("sha256").update(bytes).digest("hex");
  let etag = sha, cutAt: number | null = Math.floor(bytes.length * 0.4);
  const ranges: (string | null)[] = [];
  const dir = tempDir();
  const out = `${dir}/models/gpt2-355m/model.safetensors`;
  /** Resolves when the client's .part file holds `n` bytes (polled; after 5 minutes it is a hang). */
  const untilPartHas = async (n: number) => {
    for (
      let waited = 0;
      (await Deno.stat(`${out}.part`).catch(() => null))?.size !== n;
      waited += 10
    ) {
      if (waited > 300_000) throw new Error(`hang: the client never wrote ${n} bytes`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    if (new URL(req.url).pathname !== PATH) return new Response("not found", { status: 404 });
    if (req.method === "HEAD") {
      return new Response(null, {
        status: 302,
        headers: { "x-linked-etag": `"${etag}"`, location: "/cdn" },
      });
    }
    const range = req.headers.get("range");
    ranges.push(range);
    const from = range ? Number(range.match(/^bytes=(\d+)-$/)![1]) : 0;
    const body = bytes.subarray(from);
    const headers: Record<string, string> = { "content-length": String(body.length) };
    if (range) headers["content-range"] = `bytes ${from}-${bytes.length - 1}/${bytes.length}`;
    const cut = cutAt;
    cutAt = null; // only the first GET is cut
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        if (cut === null) {
          c.enqueue(body);
          c.close();
        } else {
          c.enqueue(body.subarray(0, cut));
          // The connection drops once the client has those bytes on disk (waiting for that, not for a time).
          untilPartHas(cut).then(() => c.error(new Error("connection reset")));
        }
      },
    });
    return new Response(stream, { status: range ? 206 : 200, headers });
  });
  const endpoint = `http://127.0.0.1:${server.addr.port}`;
  try {
    // 1. The connection drops at 40%: one error line, the part file kept, nothing at the final path.
    const first = await download(dir, endpoint, "355m");
    assertEquals(first.code, 2, first.err.join("\n"));
    assertEquals(first.err.length, 1, first.err.join("\n"));
    ok(first.err[0].includes("run the same command again to resume"), first.err[0]);
    const partSize = (await Deno.stat(`${out}.part`)).size;
    ok(partSize > 0 && partSize < bytes.length, String(partSize));
    await rejects(Deno.stat(out));

    // 2. Again: a Range request from where it stopped; the finished file is the fixture, byte for byte.
    const second = await download(dir, endpoint, "355m");
    assertEquals(second.code, 0, second.err.join("\n"));
    assertEquals(ranges, [null, `bytes=${partSize}-`]);
    assertEquals(await Deno.readFile(out), bytes);
    ok(second.stdout.includes("SHA-256 verified"), second.stdout);
    await rejects(Deno.stat(`${out}.part`));

    // 3. A file in place is checked, not downloaded again.
    const third = await download(dir, endpoint, "355m");
    assertEquals(third.code, 0, third.err.join("\n"));
    ok(third.stdout.includes("already in place") && third.stdout.includes(sha), third.stdout);
    assertEquals(ranges.length, 2);

    // 4. The hub publishes another checksum: refused, the bytes moved aside, nothing at the final path.
    etag = "0".repeat(64);
    const bad = await download(dir, endpoint, "355m", "--out", "other/model.safetensors");
    assertEquals([bad.code, bad.err.length], [2, 1], bad.err.join("\n"));
    ok(bad.err[0].includes(`SHA-256 ${sha} does not match the published ${etag}`), bad.err[0]);
    await rejects(Deno.stat(`${dir}/other/model.safetensors`));
    assertEquals((await Deno.stat(`${dir}/other/model.safetensors.part.bad`)).size, bytes.length);

    // 5. --sha256 overrides the hub; a malformed one is refused before any request.
    const before = ranges.length;
    const flag = await download(dir, endpoint, "355m", "--sha256", "xyz");
    assertEquals([flag.code, flag.err], [2, [
      "error: download-gpt2: --sha256 xyz: not 64 hex digits",
    ]]);
    const pinned = await download(
      dir,
      endpoint,
      "355m",
      "--out",
      "third/model.safetensors",
      "--sha256",
      sha,
    );
    assertEquals(pinned.code, 0, pinned.err.join("\n"));
    assertEquals(ranges.length, before + 1);
  } finally {
    await server.shutdown();
  }

  // 6. No hub: one line that says where to put the file by hand.
  const offline = await download(dir, "http://127.0.0.1:9", "774m");
  assertEquals([offline.code, offline.err.length], [2, 1], offline.err.join("\n"));
  ok(
    offline.err[0].includes("put it at models/gpt2-774m/model.safetensors") &&
      offline.err[0].includes("openai-community/gpt2-large"),
    offline.err[0],
  );
  await Deno.remove(dir, { recursive: true });
});
