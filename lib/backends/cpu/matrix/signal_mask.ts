/**
 * oneDNN calls with the calling thread's signals held back. oneDNN 2.x's fp32 GEMM kernels point the stack pointer
 * at their heap workspace while they run when K > 2048 (oneDNN issue 4845, fixed in 3.11): a signal handled on that
 * thread meanwhile writes its frame into the heap below the workspace, and the process aborts later in malloc
 * ("corrupted size vs. prev_size"). Ctrl-C during training is such a signal (GPT-124M's MLP products have K = 3072),
 * and so is each child process's SIGCHLD.
 *
 * {@link withoutSignals} blocks the asynchronous signals (`pthread_sigmask`) for the length of the call and restores
 * the mask after it: a signal that arrives meanwhile is taken by another thread, or by this one once the call returns.
 * OpenMP's threads, which libgomp starts inside the first call, inherit the blocked mask and keep it (they run only
 * oneDNN). Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) stay unblocked: V8's WebAssembly bounds checks
 * need them. Linux with glibc only; elsewhere calls run as they are.
 */

const SIGSET_BYTES = 128; // glibc's sigset_t
const SIG_BLOCK = 0, SIG_SETMASK = 2;
const FAULTS = [4, 5, 7, 8, 11, 31]; // SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSYS

interface Mask {
  sigmask(how: number, set: Uint8Array, old: Uint8Array): number;
  blocked: Uint8Array;
  /** The thread's mask before the outermost call. */
  saved: Uint8Array;
  scratch: Uint8Array;
}

let mask: Mask | null | undefined;
/** Calls in progress on this thread (a wrapped call may make another). */
let depth = 0;

function openMask(): Mask | null {
  if (Deno.build.os !== "linux") return null;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      pthread_sigmask: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    });
    const blocked = new Uint8Array(SIGSET_BYTES).fill(0xff); // signal n is bit n - 1
    for (const n of FAULTS) blocked[(n - 1) >> 3] &= ~(1 << ((n - 1) & 7));
    const sigmask = libc.symbols.pthread_sigmask as Mask["sigmask"];
    const saved = new Uint8Array(SIGSET_BYTES), scratch = new Uint8Array(SIGSET_BYTES);
    return { sigmask, blocked, saved, scratch };
  } catch {
    return null; // no glibc
  }
}

/** `f` run with this thread's asynchronous signals blocked, the thread's mask restored after. */
export function withoutSignals<A extends unknown[], R>(f: (...args: A) => R): (...args: A) => R {
  return (...args) => {
    if (mask === undefined) mask = openMask();
    if (!mask || depth > 0 || mask.sigmask(SIG_BLOCK, mask.blocked, mask.saved) !== 0) {
      return f(...args);
    }
    depth++;
    try {
      return f(...args);
    } finally {
      depth--;
      mask.sigmask(SIG_SETMASK, mask.saved, mask.scratch);
    }
  };
}
