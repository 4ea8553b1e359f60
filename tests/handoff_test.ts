/**
 * Hand-off to PyTorch DDP and back: one epoch here, one epoch on 2 gloo ranks (started as torchrun starts them:
 * Debian's torch 1.13 torchrun crashes on Python 3.11), compared with two epochs here; then a third epoch here,
 * `compare` over both runs, and bad input (another config, missing or truncated state, a world size that does not
 * divide the batch); and a bf16-mixed hand-off (torch.autocast) beside an fp32 one.
 */
import { deepStrictEqual as assertEquals, ok, rejects } from "node:assert/strict";
import { loadExperiment } from "../lib/config.ts";
import { UserError } from "../lib/errors.ts";
import { loadCheckpoint } from "../lib/train/checkpoint.ts";
import { handoffRun } from "../lib/runs/handoff.ts";
import { runTraining } from "../lib/runs/run.ts";
import { readRunLog } from "../lib/runs/runlog.ts";
import { ensureVerdict, ignoredBecause, NO_TORCH, taskArgs, tempDir } from "./_helpers.ts";
import { assertRanksOk, ddp, HAS_TORCH_DDP, PY } from "./_ddp.ts";

const IGNORE = !HAS_TORCH_DDP;
/** The name suffix of every test here: why it is ignored, if it is. */
const WHY = ignoredBecause(HAS_TORCH_DDP ? null : NO_TORCH);

const TINY = [
  "model.context_length=32",
  "model.emb_dim=32",
  "model.n_heads=2",
  "model.n_layers=1",
  "model.drop_rate=0",
  "data.batch_size=16",
  "training.lr=0.004",
  "training.eval_freq=2",
  "training.eval_iter=2",
];
/**
 * Appendix D's keys on TINY: 9 batches of 16 make 4 steps of 2 micro-batches an epoch; warmup covers epoch 1 (so
 * the 1-epoch run's steps have the 2-epoch run's lrs), and epoch 2, on the DDP ranks, starts clipping and decays.
 */
const APPENDIX_D = [
  "training.warmup=4",
  "training.initial_lr=0.0004",
  "training.lr_schedule=cosine",
  "training.min_lr=0.0004",
  "training.max_grad_norm=0.2", // below the norm at the warmup's end (0.27), so the first DDP step clips
  "training.grad_accum_steps=2",
  "training.eval_freq=1",
];
const quiet = { print: () => {}, progress: false };
const config = async (name: string, epochs: number, extra: string[] = []) => {
  await ensureVerdict();
  return await loadExperiment("experiments/verdict-small.yaml", [
    ...TINY,
    ...extra,
    `name=${name}`,
    `training.epochs=${epochs}`,
  ]);
};

/** `p` trained for 1 epoch here and handed off for its epoch 2: the checkpoints and hand-off directories. */
async function handedOff() {
  const dir = `${tempDir()}/checkpoints`;
  await runTraining(await config("p", 1), { ...quiet, checkpointsDir: dir });
  const out = `${dir}/p.ddp`;
  await handoffRun(await config("p", 2), out, { ...quiet, checkpointsDir: dir });
  return { dir, out };
}

/**
 * Trains `local` for 2 epochs here, and `part` for 1 epoch here then 1 on 2 DDP ranks; checks that epoch 2's
 * evaluations (steps, tokens, losses, lr, grad_norm) and the final checkpoints agree. Returns both logs' epoch-2
 * evaluations and the checkpoints directory.
 */
async function handOffEpoch2(root: string, extra: string[] = []) {
  const dir = `${root}/checkpoints`;
  await runTraining(await config("local", 2, extra), { ...quiet, checkpointsDir: dir });
  await runTraining(await config("part", 1, extra), { ...quiet, checkpointsDir: dir });
  const out = `${dir}/part.ddp`;
  await handoffRun(await config("part", 2, extra), out, { ...quiet, checkpointsDir: dir });
  const ranks = await ddp(out, 2);
  assertRanksOk(ranks);

  const local = readRunLog(`${dir}/local/log.jsonl`), moved = readRunLog(`${out}/log.jsonl`);
  assertEquals(moved.headers.at(-1)!.engine, "torch-ddp");
  assertEquals(moved.headers.at(-1)!.world_size, 2);
  // MFU on the PyTorch side: both ranks' tokens over both ranks' measured peaks, the same FLOPs a token as ours.
  const [ours, theirs] = [local.headers[0], moved.headers.at(-1)!];
  assertEquals(theirs.flops_per_token, ours.flops_per_token);
  ok(Number(theirs.peak_flops) > 0 && String(theirs.peak_device).startsWith("2 × cpu (measured"));
  for (const e of moved.evals.filter((e) => e.epoch === 2)) {
    const want = Number(e.tokens_per_s) * Number(theirs.flops_per_token) /
      Number(theirs.peak_flops);
    ok(Math.abs(Number(e.mfu) / want - 1) < 1e-9, `step ${e.step} mfu ${e.mfu} vs ${want}`);
  }
  const want = local.evals.filter((e) => e.epoch === 2),
    got = moved.evals.filter((e) => e.epoch === 2);
  ok(want.length > 0);
  assertEquals(got.map((e) => [e.step, e.tokens_seen]), want.map((e) => [e.step, e.tokens_seen]));
  for (const [i, e] of got.entries()) {
    for (const k of ["train_loss", "val_loss"] as const) {
      ok(
        Math.abs(Number(e[k]) - Number(want[i][k])) <= 1e-3,
        `step ${e.step} ${k}: ${e[k]} vs ${want[i][k]}`,
      );
    }
    ok(
      Math.abs(Number(e.lr) / Number(want[i].lr) - 1) < 1e-9,
      `step ${e.step} lr: ${e.lr} vs ${want[i].lr}`,
    );
    assertEquals(
      e.grad_norm === null,
      want[i].grad_norm === null,
      `step ${e.step}: clipped on one side only`,
    );
    if (e.grad_norm !== null) {
      ok(
        Math.abs(Number(e.grad_norm) / Number(want[i].grad_norm) - 1) < 1e-3,
        `step ${e.step} grad_norm: ${e.grad_norm} vs ${want[i].grad_norm}`,
      );
    }
  }
  const a = await loadCheckpoint(`${dir}/local/checkpoint.safetensors`);
  const b = await loadCheckpoint(`${out}/checkpoint.safetensors`);
  assertEquals(b.meta.state, a.meta.state);
  let worst = 0;
  for (const p of a.params) {
    const q = b.params.find((x) => x.name === p.name)!.data;
    for (let i = 0; i < p.data.length; i++) worst = Math.max(worst, Math.abs(p.data[i] - q[i]));
  }
  ok(worst <= 1e-4, `largest parameter difference ${worst}`); // golden_test.ts's CPU tolerance
  const lossDiff = Math.max(
    ...got.map((e, i) => Math.abs(Number(e.val_loss) - Number(want[i].val_loss))),
  );
  console.log(
    JSON.stringify({ evals: got.length, max_val_loss_diff: lossDiff, max_param_diff: worst }),
  );
  return { dir, out, got, want };
}

Deno.test({
  name:
    `handoff: epoch 2 on 2 DDP ranks matches epoch 2 here; the run comes back for epoch 3 and compare${WHY}`,
  ignore: IGNORE,
  async fn() {
    const root = tempDir();
    const { dir, out } = await handOffEpoch2(root);

    const sets = [...TINY, "name=part", "training.epochs=2"].flatMap((s) => ["--set", s]);
    const ckptArgs = [
      "experiments/verdict-small.yaml",
      "--checkpoint",
      `${out}/checkpoint.safetensors`,
      ...sets,
    ];
    const checks: [string, string[]][] = [
      ["sample", ["--max-new-tokens", "5"]],
      ["eval", ["--json", "--no-report"]],
    ];
    for (const [task, extra] of checks) {
      const o = new Deno.Command(Deno.execPath(), {
        args: taskArgs(task, [...ckptArgs, ...extra]),
        stdout: "piped",
        stderr: "piped",
      })
        .outputSync();
      assertEquals(o.code, 0, `${task}: ${new TextDecoder().decode(o.stderr)}`);
      ok(new TextDecoder().decode(o.stdout).trim().length > 0, task);
    }

    const back = await runTraining(await config("part.ddp", 3), {
      ...quiet,
      checkpointsDir: dir,
      resume: true,
    });
    assertEquals(back.status, "finished");
    assertEquals(back.state.epoch, 3);
    const samples = readRunLog(`${out}/log.jsonl`).samples;
    ok(String(samples.at(-1)!.text).length > "Every effort moves you".length);

    const cmp = new Deno.Command(Deno.execPath(), {
      args: taskArgs("compare", ["local", "part.ddp", "--out", "both.svg"]),
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    const table = new TextDecoder().decode(cmp.stdout);
    assertEquals(cmp.code, 0, new TextDecoder().decode(cmp.stderr));
    ok(table.includes("local") && table.includes("part.ddp"), table);
    const svg = await Deno.readTextFile(`${root}/both.svg`);
    ok(svg.includes("local") && svg.includes("part.ddp"));
  },
});

Deno.test({
  name:
    `handoff: another config, a missing or truncated state, a world size not dividing the batch, an unknown precision: exit 2${WHY}`,
  ignore: IGNORE,
  async fn() {
    const { dir, out } = await handedOff();
    const other = await config("p", 2);
    other.training.lr = 0.001;
    await rejects(
      handoffRun(other, out, { ...quiet, checkpointsDir: dir }),
      (e: Error) => e instanceof UserError && /another config.*training\.lr/.test(e.message),
    );
    const three = await ddpWorld(out, 3);
    assertEquals(three.code, 2);
    ok(/WORLD_SIZE 3 does not divide data.batch_size 16/.test(three.stderr), three.stderr);
    const manifest = await Deno.readTextFile(`${out}/handoff.json`);
    const fp16Manifest = JSON.parse(manifest);
    fp16Manifest.config.precision = "fp16";
    await Deno.writeTextFile(`${out}/handoff.json`, JSON.stringify(fp16Manifest));
    const fp16 = await ddpWorld(out, 1);
    assertEquals([fp16.code, fp16.stderr.trim().split("\n").length], [2, 1]);
    ok(/precision 'fp16' is not one of fp32, bf16-mixed/.test(fp16.stderr), fp16.stderr);
    await Deno.writeTextFile(`${out}/handoff.json`, manifest);
    const ckpt = `${out}/checkpoint.safetensors`;
    const bytes = await Deno.readFile(ckpt);
    await Deno.writeFile(ckpt, bytes.subarray(0, bytes.length - 100));
    const cut = await ddpWorld(out, 1);
    assertEquals([cut.code, cut.stderr.trim().split("\n").length], [2, 1]);
    ok(/checkpoint.safetensors: tensor .* truncated/.test(cut.stderr), cut.stderr);
    await Deno.remove(ckpt);
    const gone = await ddpWorld(out, 1);
    assertEquals(gone.code, 2);
    ok(/checkpoint.safetensors: cannot read/.test(gone.stderr), gone.stderr);
  },
});

Deno.test({
  name:
    `handoff with appendix D's warmup, cosine, max_grad_norm and grad_accum_steps: epoch 2 on 2 DDP ranks ` +
    `matches epoch 2 here, lr and grad_norm included${WHY}`,
  ignore: IGNORE,
  async fn() {
    const { got } = await handOffEpoch2(tempDir(), APPENDIX_D);
    assertEquals(got.map((e) => e.step), [5, 6, 7, 8]);
    // Clipping starts at the warmup's end, the first DDP step, and clips there.
    ok(got.every((e) => e.grad_norm !== null), JSON.stringify(got));
    ok(
      Number(got[0].grad_norm) > 0.2,
      `norm ${got[0].grad_norm} at the warmup's end is not clipped`,
    );
    ok(Number(got[0].lr) > Number(got[3].lr), "the cosine decays over epoch 2");
  },
});

Deno.test({
  name:
    `handoff with precision bf16-mixed: train_ddp.py trains and evaluates under torch.autocast to bf16 (its header ` +
    `says so; its losses move off the fp32 hand-off's of the same batches, within 1%)${WHY}`,
  ignore: IGNORE,
  async fn() {
    const dir = `${tempDir()}/checkpoints`;
    await runTraining(await config("p", 1), { ...quiet, checkpointsDir: dir });
    const fp32 = `${dir}/p.fp32`, bf16 = `${dir}/p.bf16`;
    await handoffRun(await config("p", 2), fp32, { ...quiet, checkpointsDir: dir });
    // The same hand-off with the config's precision (a top-level key beside backend) set in handoff.json.
    await Deno.mkdir(bf16);
    for await (const e of Deno.readDir(fp32)) {
      await Deno.copyFile(`${fp32}/${e.name}`, `${bf16}/${e.name}`);
    }
    const manifest = JSON.parse(await Deno.readTextFile(`${bf16}/handoff.json`));
    manifest.config.precision = "bf16-mixed";
    await Deno.writeTextFile(`${bf16}/handoff.json`, JSON.stringify(manifest));
    const runs = await Promise.all([ddp(fp32, 1), ddp(bf16, 1)]); // one rank each, side by side
    assertRanksOk(runs.flat());

    const field = (o: object, k: string) => (o as Record<string, unknown>)[k];
    const [a, b] = [readRunLog(`${fp32}/log.jsonl`), readRunLog(`${bf16}/log.jsonl`)];
    assertEquals(field(a.headers.at(-1)!, "precision"), "fp32");
    assertEquals(field(b.headers.at(-1)!, "precision"), "bf16-mixed");
    ok(
      /autocast\((cpu|cuda), bfloat16\)/.test(String(field(b.headers.at(-1)!, "precision_detail"))),
    );
    const want = a.evals.filter((e) => e.epoch === 2), got = b.evals.filter((e) => e.epoch === 2);
    ok(want.length > 0);
    assertEquals(got.map((e) => e.step), want.map((e) => e.step));
    let moved = 0;
    for (const [i, e] of got.entries()) {
      for (const k of ["train_loss", "val_loss"] as const) {
        const rel = Math.abs(Number(e[k]) / Number(want[i][k]) - 1);
        ok(rel < 0.01, `step ${e.step} ${k}: bf16-mixed ${e[k]} vs fp32 ${want[i][k]}`);
        if (rel > 0) moved++;
      }
    }
    // bf16 products change every evaluation's losses (fp32 on both sides would repeat them to the last bit).
    assertEquals(moved, 2 * got.length, JSON.stringify({ got, want }));
    // The checkpoint it hands back says bf16-mixed, so a resumed run here keeps that precision.
    const back = await loadCheckpoint(`${bf16}/checkpoint.safetensors`);
    assertEquals(field(back.meta.config, "precision"), "bf16-mixed");
    console.log(JSON.stringify({
      evals: got.length,
      max_rel_loss_diff: Math.max(
        ...got.flatMap((e, i) =>
          (["train_loss", "val_loss"] as const).map((k) =>
            Math.abs(Number(e[k]) / Number(want[i][k]) - 1)
          )
        ),
      ),
    }));
  },
});

Deno.test({
  name:
    `the hand-off tests' launcher: a rank that fails (its rendezvous port taken) takes the other rank down, ` +
    `so the test reports rank 0's error instead of waiting PyTorch's 30 minutes${WHY}`,
  ignore: IGNORE,
  async fn() {
    const { out } = await handedOff();
    using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const [r0, r1] = await ddp(out, 2, [], (taken.addr as Deno.NetAddr).port);
    assertEquals(r0.code, 1, r0.stderr);
    ok(/Address already in use/.test(r0.stderr), r0.stderr);
    assertEquals(r1.code, 137, "rank 1 was killed, not left waiting for rank 0"); // 128 + SIGKILL
    ok(
      readRunLog(`${out}/log.jsonl`).headers.every((h) => h.engine !== "torch-ddp"),
      "nothing trained",
    );
  },
});

/** One process with WORLD_SIZE `world`: bad input is refused before the rendezvous. */
async function ddpWorld(dir: string, world: number) {
  const o = await new Deno.Command(PY, {
    args: ["scaleout/torch/train_ddp.py", dir],
    env: { MASTER_ADDR: "127.0.0.1", MASTER_PORT: "1", RANK: "0", WORLD_SIZE: String(world) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: o.code, stderr: new TextDecoder().decode(o.stderr) };
}
