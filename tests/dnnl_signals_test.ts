/**
 * Signals during oneDNN's products: oneDNN 2.x's fp32 GEMM points the stack pointer into its heap workspace when
 * K > 2048, so a signal handled meanwhile (Ctrl-C, a child's SIGCHLD) wrote its frame into the heap and the process
 * aborted later ("corrupted size vs. prev_size"); the products now run with the thread's signals blocked
 * (lib/backends/cpu/matrix/signal_mask.ts).
 */
import { deepStrictEqual as assertEquals, ok } from "node:assert/strict";
import { LIBRARIES } from "../lib/backends/cpu/matrix/libraries.ts";
import { ignoredBecause } from "./_helpers.ts";

const dnnl = LIBRARIES.dnnl();
const WANT = 200;
/** Only against a hang: the child needs about a second on 2 cores. */
const HANG_MS = 300_000;

Deno.test({
  name:
    `oneDNN products with K = 3072 under a stream of signals: every product right, the process ends cleanly` +
    ignoredBecause(dnnl.ok ? null : dnnl.reason),
  ignore: !dnnl.ok,
  fn: async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-env",
        "--allow-ffi",
        new URL("./_dnnl_under_signals.ts", import.meta.url).pathname,
        String(WANT),
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let ended = false;
    const output = child.output().finally(() => ended = true);
    // A heap the signals corrupted can also leave it waiting forever in an OpenMP barrier: a guard, not a clock.
    const guard = setTimeout(() => child.kill("SIGKILL"), HANG_MS);
    while (!ended) { // until it exits: the child counts the signals it handled
      try {
        child.kill("SIGWINCH");
      } catch { /* exited between the check and the kill */ }
      await new Promise((r) => setTimeout(r, 1));
    }
    clearTimeout(guard);
    const { code, signal, stdout, stderr } = await output;
    const err = new TextDecoder().decode(stderr);
    assertEquals({ code, signal }, { code: 0, signal: null }, err || "(killed: hung)");
    const got = JSON.parse(new TextDecoder().decode(stdout));
    ok(got.signals >= WANT && got.products > 0, JSON.stringify(got));
  },
});
