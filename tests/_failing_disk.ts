/**
 * Runs `tasks/train.ts` on a disk that fills up: every rename of a checkpoint's temporary file fails with the
 * error a full disk gives (ENOSPC), so a run meets an internal error mid-run, after its first writes. With
 * `FAILING_DISK=full`, the disk has not a byte left from the start: every write to an open file fails so.
 * Usage: deno run <the train task's flags> tests/_failing_disk.ts <train args…>
 */
const NO_SPACE = "No space left on device (os error 28)";
if (Deno.env.get("FAILING_DISK") === "full") {
  Object.defineProperty(Deno.FsFile.prototype, "writeSync", {
    value: () => {
      throw new Error(NO_SPACE);
    },
  });
}
const rename = Deno.rename;
Object.defineProperty(Deno, "rename", {
  value: (from: string | URL, to: string | URL) => {
    if (String(from).includes("checkpoint.safetensors.tmp-")) {
      return Promise.reject(new Error(NO_SPACE));
    }
    return rename(from, to);
  },
});
await import("../tasks/train.ts");
