/**
 * scaleout/torch/train_ddp.py on gloo ranks started by hand, as the hand-off tests run it (Debian's torchrun fails
 * on Python 3.11): MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK per rank.
 */

/** The Python with torch the hand-off tests use (Debian's python3-torch). */
export const PY = "/usr/bin/python3";

/** Whether {@link PY} imports torch.distributed (the hand-off tests are ignored otherwise). */
export const HAS_TORCH_DDP = (() => {
  try {
    return new Deno.Command(PY, { args: ["-c", "import torch.distributed"], stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

/**
 * A port for the ranks' TCPStore that nothing listens on, below Linux's ephemeral range (32768 up), so no outgoing
 * connection holds it either. A port in use makes rank 0 fail at once while the others wait for it for PyTorch's
 * 30 minutes: a CI run once hung so.
 */
function freePort(): number {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch (e) {
      if (!(e instanceof Deno.errors.AddrInUse)) throw e;
    }
  }
}

/**
 * Runs train_ddp.py on `world` ranks over hand-off directory `dir`, `args` after it; each rank's exit and output.
 * A rank that fails takes the others down with it (as torchrun does), so its error is reported instead of a hang.
 * `port` is the rendezvous port (a free one unless given).
 */
export async function ddp(dir: string, world: number, args: string[] = [], port = freePort()) {
  const ranks = [...Array(world).keys()].map((r) =>
    new Deno.Command(PY, {
      args: ["scaleout/torch/train_ddp.py", dir, ...args],
      env: {
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        RANK: String(r),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(r),
      },
      stdout: "piped",
      stderr: "piped",
    }).spawn()
  );
  for (const rank of ranks) {
    rank.status.then((s) => {
      if (s.success) return;
      for (const other of ranks) {
        try {
          other.kill("SIGKILL");
        } catch { /* already exited */ }
      }
    });
  }
  const text = new TextDecoder();
  return (await Promise.all(ranks.map((r) => r.output()))).map((o) => ({
    code: o.code,
    stdout: text.decode(o.stdout),
    stderr: text.decode(o.stderr),
  }));
}

/** Asserts that every rank exited 0; the message gives each rank's exit and error output. */
export function assertRanksOk(ranks: { code: number; stderr: string }[]) {
  if (ranks.every((r) => r.code === 0)) return;
  throw new Error(ranks.map((r, i) => `rank ${i}: exit ${r.code}\n${r.stderr}`).join("\n"));
}
