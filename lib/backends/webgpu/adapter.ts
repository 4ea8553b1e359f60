/**
 * The `webgpu` backend: Deno's `navigator.gpu` (stable in Deno 2.9, no `--unstable-webgpu` needed) under
 * `@tensorflow/tfjs-backend-webgpu`. We request the adapter and device ourselves instead of using the package's
 * factory: to see whether the adapter is a software fallback (Mesa lavapipe, SwiftShader) before choosing it, to
 * ask for the adapter's full buffer limits (the spec's 128 MiB binding default is smaller than GPT-2's 154 MB token
 * embedding), and to avoid the factory's `requiredFeatures.push(['bgra8unorm-storage'])`, which Deno rejects on
 * adapters that have the feature.
 */
import * as tf from "@tensorflow/tfjs-core";
import { firstLine } from "../../errors.ts";

/** Env variable that lets an explicit `backend: webgpu` run on a software (fallback) adapter; `auto` never does. */
export const ALLOW_FALLBACK_ENV = "GPT_WEBGPU_ALLOW_FALLBACK";

/** An adapter found by {@link probeWebGPU}, with a one-line description for the run header. */
export interface WebGPUAdapter {
  adapter: GPUAdapter;
  /** True for software adapters (the WebGPU fallback flag, or a known CPU rasteriser's name). */
  fallback: boolean;
  /** vendor, architecture, device and description from the adapter info, in one line. */
  description: string;
}

const SOFTWARE_NAMES = /llvmpipe|lavapipe|swiftshader|softpipe|microsoft basic render/i;

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: treated as unset
  }
}

/** Whether {@link ALLOW_FALLBACK_ENV} is set to 1 (or true). */
export function fallbackAllowed(): boolean {
  return /^(1|true)$/i.test(env(ALLOW_FALLBACK_ENV) ?? "");
}

/**
 * Whether a hardware adapter can exist here. On Linux a GPU shows up as a device node (`/dev/dri/renderD*`, or
 * `/dev/nvidia0` for NVIDIA's driver); without one only a software adapter could answer, so `auto` skips the probe
 * (it costs a Vulkan instance, ~0.2 s, on every run). Elsewhere, and when /dev cannot be read: true.
 */
export function hardwareGpuPossible(): boolean {
  if (Deno.build.os !== "linux") return true;
  try {
    for (const e of Deno.readDirSync("/dev/dri")) if (e.name.startsWith("renderD")) return true;
  } catch { /* no /dev/dri */ }
  try {
    Deno.statSync("/dev/nvidia0");
    return true;
  } catch (err) {
    return !(err instanceof Deno.errors.NotFound);
  }
}

/**
 * Asks `navigator.gpu` for a high-performance adapter. Returns the adapter or a one-line reason why there is none.
 * On Linux, sets XDG_RUNTIME_DIR to a private temporary folder when it is unset: otherwise libwayland, loaded by
 * the Vulkan driver, prints "XDG_RUNTIME_DIR is invalid or not set" to stderr on every probe.
 */
export async function probeWebGPU(): Promise<WebGPUAdapter | string> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) return "navigator.gpu is missing in this runtime";
  try {
    if (Deno.build.os === "linux" && !env("XDG_RUNTIME_DIR")) {
      Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync({ prefix: "gpt-xdg-" }));
    }
  } catch { /* no permission: the driver's warning stays */ }
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (err) {
    return `requestAdapter failed: ${firstLine(err)}`;
  }
  if (!adapter) return "no WebGPU adapter (no Vulkan/Metal/DX12 driver found)";
  // deno-lint-ignore no-explicit-any
  const info = (adapter.info ?? {}) as any;
  // deno-lint-ignore no-explicit-any
  const flagged = info.isFallbackAdapter ?? (adapter as any).isFallbackAdapter ?? false;
  const fallback = Boolean(flagged) || SOFTWARE_NAMES.test(String(info.description ?? ""));
  const field = (v: unknown) => (v === undefined || v === "" ? "-" : String(v));
  const description = `${field(info.description)} (vendor ${field(info.vendor)}, architecture ${
    field(info.architecture)
  }, device ${field(info.device)}${fallback ? ", software fallback" : ""})`;
  return { adapter, fallback, description };
}

let registered = false; // our factory is in place: later calls in this process reuse its device

/**
 * Registers TF.js's WebGPU backend under the name `webgpu` on `found`'s adapter, with a device that has the
 * adapter's largest buffer and workgroup limits, and makes it the active backend. Returns null, or the first line
 * of why the device or backend did not start.
 */
export async function activateWebGPU(found: WebGPUAdapter): Promise<string | null> {
  try {
    if (!registered) await register(found);
    registered = true;
    return (await tf.setBackend("webgpu")) ? null : "tf.setBackend('webgpu') returned false";
  } catch (err) {
    return firstLine(err);
  }
}

async function register(found: WebGPUAdapter): Promise<void> {
  const { adapter } = found;
  const { WebGPUBackend } = await import("@tensorflow/tfjs-backend-webgpu"); // registers its own factory too
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredLimits: {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    },
  });
  if (tf.findBackendFactory("webgpu")) tf.removeBackend("webgpu");
  // deno-lint-ignore no-explicit-any
  tf.registerBackend("webgpu", () => new WebGPUBackend(device, adapter.info as any), 0);
}
