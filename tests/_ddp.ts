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

/** Runs train_ddp.py on `world` ranks over hand-off directory `dir`, `args` after it; each rank's exit and output. */
export async function ddp(dir: string, world: number, args: string[] = []) {
  const port = String(20000 + Math.floor(Math.random() * 20000));
  const ranks = [...Array(world).keys()].map((r) =>
    new Deno.Command(PY, {
      args: ["scaleout/torch/train_ddp.py", dir, ...args],
      env: {
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: port,
        RANK: String(r),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(r),
      },
      stdout: "piped",
      stderr: "piped",
    }).output()
  );
  const text = new TextDecoder();
  return (await Promise.all(ranks)).map((o) => ({
    code: o.code,
    stdout: text.decode(o.stdout),
    stderr: text.decode(o.stderr),
  }));
}
