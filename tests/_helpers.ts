/** Shared test helpers. */

/** Copies The Verdict from ../shared/data into data/ when missing; returns its path. */
export async function ensureVerdict(): Promise<string> {
  const dest = "data/the-verdict.txt";
  try {
    await Deno.stat(dest);
    return dest;
  } catch {
    const src = new URL("../../shared/data/the-verdict.txt", import.meta.url);
    await Deno.mkdir("data", { recursive: true });
    await Deno.copyFile(src, dest);
    return dest;
  }
}
