/**
 * Runs `tasks/train.ts` on a disk that fills up: every rename of a checkpoint's temporary file fails with the
 * error a full disk gives (ENOSPC), so a run meets an internal error mid-run, after its first writes.
 * Usage: deno run <the train task's flags> tests/_failing_disk.ts <train args…>
 */
const rename = Deno.rename;
Object.defineProperty(Deno, "rename", {
  value: (from: string | URL, to: string | URL) => {
    if (String(from).includes("checkpoint.safetensors.tmp-")) {
      return Promise.reject(new Error("No space left on device (os error 28)"));
    }
    return rename(from, to);
  },
});
await import("../tasks/train.ts");
