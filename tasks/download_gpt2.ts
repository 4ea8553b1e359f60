/**
 * `deno task download-gpt2 <124m|355m|774m|1558m>`: fetches OpenAI's GPT-2 weights (Hugging Face `model.safetensors`)
 * to models/gpt2-<size>/, with a progress line, resuming a partial download (HTTP Range), a SHA-256 check and a check
 * that the file is a complete safetensors file before it is moved into place. Offline, it says where to put the file
 * by hand; a file already in place is checked instead of downloaded again.
 *
 * The expected SHA-256 is, in order: `--sha256`, the one pinned below, or the hub's `X-Linked-Etag` header (the
 * Git LFS object id, which is the SHA-256 of the file). `HF_ENDPOINT` points at a mirror, as with huggingface_hub.
 */
import { createHash } from "node:crypto";
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { formatDuration } from "../lib/progress.ts";
import { readSafetensorsHeader } from "../lib/weights/safetensors.ts";

interface Source {
  repo: string;
  /** A commit of the repo, so the pinned checksum names one file; "main" where none is pinned. */
  revision: string;
  sha256?: string;
}

const SOURCES: Record<string, Source> = {
  "124m": {
    repo: "openai-community/gpt2",
    revision: "607a30d783dfa663caf39e06633721c8d4cfcd7e",
    sha256: "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
  },
  "355m": { repo: "openai-community/gpt2-medium", revision: "main" },
  "774m": { repo: "openai-community/gpt2-large", revision: "main" },
  "1558m": { repo: "openai-community/gpt2-xl", revision: "main" },
};

const USAGE = `usage: deno task download-gpt2 <${
  Object.keys(SOURCES).join("|")
}> [--out path] [--sha256 hex]

Downloads model.safetensors of that GPT-2 size to models/gpt2-<size>/model.safetensors (the path the
experiments/gpt2-<size>.yaml files use), checks its SHA-256 and that it is a complete safetensors file.
An interrupted download resumes where it stopped; a file already in place is checked, not downloaded.
HF_ENDPOINT=<url> downloads from a mirror of huggingface.co.`;

const mb = (n: number) => `${(n / 1e6).toFixed(0)} MB`;

/** SHA-256 of a file as lowercase hex, read in 8 MiB chunks (a 6 GB file never sits in memory). */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  const file = await Deno.open(path);
  try {
    const buf = new Uint8Array(8 << 20);
    for (let n; (n = await file.read(buf)) !== null;) hash.update(buf.subarray(0, n));
  } finally {
    file.close();
  }
  return hash.digest("hex");
}

/** The hub's SHA-256 for `url` from a HEAD request that does not follow the redirect to the CDN; null if none. */
async function publishedSha256(url: string): Promise<string | null> {
  try {
    const res = await fetch(url, { method: "HEAD", redirect: "manual" });
    await res.body?.cancel();
    const etag = (res.headers.get("x-linked-etag") ?? "").replace(/^W\//, "").replaceAll('"', "");
    return /^[0-9a-f]{64}$/.test(etag) ? etag : null;
  } catch {
    return null; // the GET below reports an unreachable hub
  }
}

/** Throws (naming the file) unless `path` has SHA-256 `want` and is a complete safetensors file. */
async function verify(path: string, want: string | null): Promise<string> {
  const got = await sha256File(path);
  if (want && got !== want) {
    throw new UserError(
      `${path}: SHA-256 ${got} does not match the published ${want}: the file is damaged or another version`,
    );
  }
  await readSafetensorsHeader(path); // a truncated or foreign file fails here, naming the cause
  return got;
}

await runTask(async () => {
  const parsed = parseTaskArgs("download-gpt2", USAGE, {
    out: { type: "string" },
    sha256: { type: "string" },
  });
  if (!parsed) return;
  const size = parsed.positionals[0]?.toLowerCase();
  const src = size ? SOURCES[size] : undefined;
  if (!size || !src) {
    throw new UserError(
      `download-gpt2: size must be one of ${Object.keys(SOURCES).join(", ")} (see --help)`,
    );
  }
  const given = parsed.values.sha256?.toLowerCase();
  if (given !== undefined && !/^[0-9a-f]{64}$/.test(given)) {
    throw new UserError(`download-gpt2: --sha256 ${given}: not 64 hex digits`);
  }
  const out = parsed.values.out ?? `models/gpt2-${size}/model.safetensors`;
  const endpoint = (Deno.env.get("HF_ENDPOINT") ?? "https://huggingface.co").replace(/\/+$/, "");
  const url = `${endpoint}/${src.repo}/resolve/${src.revision}/model.safetensors`;

  // Already there (downloaded before, or put there by hand): check it instead.
  try {
    if ((await Deno.stat(out)).isDirectory) {
      throw new UserError(
        `download-gpt2: --out ${out}: a directory, where the model file belongs; name a file (…/model.safetensors)`,
      );
    }
    const want = given ?? src.sha256 ?? null;
    const got = await verify(out, want).catch((err) => {
      throw err instanceof UserError
        ? new UserError(`${err.message}; delete it to download again`)
        : err;
    });
    console.log(`${out} is already in place (SHA-256 ${got}${want ? ", matches" : ""})`);
    return;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }

  const part = `${out}.part`;
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/")) || ".", { recursive: true });
  const want = given ?? src.sha256 ?? await publishedSha256(url);
  let have = 0;
  try {
    have = (await Deno.stat(part)).size;
  } catch { /* fresh download */ }
  let res: Response;
  try {
    res = await fetch(url, { headers: have ? { Range: `bytes=${have}-` } : {} });
  } catch (err) {
    throw new UserError(
      `download-gpt2: cannot reach ${url} (${
        err instanceof Error ? err.message : err
      }); offline, ` +
        `download model.safetensors of ${src.repo} elsewhere and put it at ${out}`,
    );
  }
  if (res.status === 416 && have > 0) { // the .part is already whole
    await res.body?.cancel();
  } else {
    if (!res.ok) {
      await res.body?.cancel();
      throw new UserError(`download-gpt2: ${url}: HTTP ${res.status}`);
    }
    if (res.status !== 206) have = 0; // the server ignored the range: start over
    const total = have + Number(res.headers.get("content-length") ?? 0);
    const file = await Deno.open(part, {
      write: true,
      create: true,
      append: have > 0,
      truncate: have === 0,
    });
    const t0 = performance.now();
    let got = have, last = 0;
    try {
      for await (const chunk of res.body!) {
        for (let off = 0; off < chunk.length;) off += await file.write(chunk.subarray(off));
        got += chunk.length;
        const now = performance.now();
        if (now - last > 500) {
          const rate = (got - have) / ((now - t0) / 1000);
          const pct = total ? ` ${(100 * got / total).toFixed(1)}%` : "";
          Deno.stderr.writeSync(new TextEncoder().encode(
            `\r${mb(got)}${pct} | ${(rate / 1e6).toFixed(1)} MB/s | ETA ${
              formatDuration(total ? (total - got) / rate : NaN)
            }   `,
          ));
          last = now;
        }
      }
    } catch (err) {
      throw new UserError(
        `download-gpt2: the download stopped at ${mb(got)} (${
          err instanceof Error ? err.message : err
        }); run the same command again to resume from ${part}`,
      );
    } finally {
      file.close();
      console.error("");
    }
  }
  try {
    await verify(part, want);
  } catch (err) {
    // A damaged .part would be resumed forever: move it aside so the next run starts afresh.
    await Deno.rename(part, `${part}.bad`).catch(() => {});
    if (!(err instanceof UserError)) throw err;
    throw new UserError(`${err.message}; moved it to ${part}.bad, run again to download afresh`);
  }
  await Deno.rename(part, out);
  const size_ = (await Deno.stat(out)).size;
  console.log(
    `wrote ${out} (${mb(size_)}, SHA-256 ${
      want ? "verified" : "not published: checked the format only"
    })`,
  );
});
