/**
 * `deno task download-gpt2 <124m|355m|774m|1558m>`: fetches OpenAI's GPT-2 weights (Hugging Face `model.safetensors`)
 * to models/gpt2-<size>/, with a progress line, resuming a partial download (HTTP Range), and a check that the file
 * is a complete safetensors file before it is moved into place. Offline, it says where to put the file by hand.
 */
import { parseTaskArgs } from "../lib/cli.ts";
import { runTask, UserError } from "../lib/errors.ts";
import { formatDuration } from "../lib/progress.ts";
import { readSafetensors } from "../lib/safetensors.ts";

const REPOS: Record<string, string> = {
  "124m": "openai-community/gpt2",
  "355m": "openai-community/gpt2-medium",
  "774m": "openai-community/gpt2-large",
  "1558m": "openai-community/gpt2-xl",
};

const USAGE = `usage: deno task download-gpt2 <${Object.keys(REPOS).join("|")}> [--out path]

Downloads model.safetensors of that GPT-2 size to models/gpt2-<size>/model.safetensors (the path the
experiments/gpt2-<size>.yaml files use). An interrupted download resumes where it stopped.`;

await runTask(async () => {
  const parsed = parseTaskArgs("download-gpt2", USAGE, { out: { type: "string" } });
  if (!parsed) return;
  const size = parsed.positionals[0]?.toLowerCase();
  if (!size || !REPOS[size]) {
    throw new UserError(
      `download-gpt2: size must be one of ${Object.keys(REPOS).join(", ")} (see --help)`,
    );
  }
  const out = parsed.values.out ?? `models/gpt2-${size}/model.safetensors`;
  const url = `https://huggingface.co/${REPOS[size]}/resolve/main/model.safetensors`;
  const part = `${out}.part`;
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/")) || ".", { recursive: true });
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
      }); offline, download ` +
        `model.safetensors of ${REPOS[size]} elsewhere and put it at ${out}`,
    );
  }
  if (!res.ok && res.status !== 206) {
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
  for await (const chunk of res.body!) {
    for (let off = 0; off < chunk.length;) off += await file.write(chunk.subarray(off));
    got += chunk.length;
    const now = performance.now();
    if (now - last > 500) {
      const rate = (got - have) / ((now - t0) / 1000);
      const pct = total ? ` ${(100 * got / total).toFixed(1)}%` : "";
      Deno.stderr.writeSync(new TextEncoder().encode(
        `\r${(got / 1e6).toFixed(0)} MB${pct} | ${(rate / 1e6).toFixed(1)} MB/s | ETA ${
          formatDuration(total ? (total - got) / rate : NaN)
        }   `,
      ));
      last = now;
    }
  }
  file.close();
  console.error("");
  await readSafetensors(part); // a truncated or foreign file fails here, naming the cause, and stays .part
  await Deno.rename(part, out);
  console.log(`wrote ${out} (${(got / 1e6).toFixed(0)} MB)`);
});
