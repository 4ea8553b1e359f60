/**
 * WebGPU for tests: whether an adapter exists here (software ones included, e.g. Mesa lavapipe in CI), so that
 * webgpu tests run where they can and are ignored, not failed, elsewhere.
 */
import { ALLOW_FALLBACK_ENV, probeWebGPU } from "../lib/backends/webgpu/adapter.ts";

/** What {@link webgpuForTests} found. */
export interface WebGPUForTests {
  ok: boolean;
  /** The adapter, or why there is none. */
  detail: string;
  /** A suffix for test names on `backend`: the adapter used, or why the test is skipped. */
  note(backend: string): string;
}

/**
 * Probes for a WebGPU adapter once and, when only a software one exists, allows it for this process (sets
 * {@link ALLOW_FALLBACK_ENV}): tests check correctness, not speed.
 */
export async function webgpuForTests(): Promise<WebGPUForTests> {
  const found = await probeWebGPU();
  const ok = typeof found !== "string";
  const detail = ok ? found.description : found;
  if (ok && found.fallback) Deno.env.set(ALLOW_FALLBACK_ENV, "1");
  return {
    ok,
    detail,
    note: (backend) => backend !== "webgpu" ? "" : ok ? "" : ` (skipped: ${detail})`,
  };
}
