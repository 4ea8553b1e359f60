"""Continues a gpt-ts run under PyTorch DistributedDataParallel (torchrun, srun, or ranks started by hand).

    torchrun --standalone --nproc_per_node=N scaleout/torch/train_ddp.py <handoff dir> [--max-steps n]
        [--shards dir] [--precision fp32|bf16-mixed] [--window-log file]

<handoff dir> comes from `deno task handoff`: checkpoint.safetensors (our checkpoint: model.<name>, optim.m/v.<name>,
metadata), handoff.json (config, position, schedule, and the data: prepared shards by path and index hash, or a
text file's token ids). gpt_loader.py, beside this script, memory-maps the shards and replays gpt-ts's loader:
the same windows in the same order from the same position; each rank reads only its rows of a micro-batch.
--shards dir: the shards are at dir on this node (a copy; its index.json must hash as the hand-off's).
--precision: the products' precision here, whatever the run trained in (default: the config's).
--window-log file: each rank appends a line per micro-batch (epoch, batch, SHA-256 of its inputs and targets)
to file.<rank> (rank 0 also one per evaluation batch), to check the order against gpt-ts's loaders.
The run continues to training.epochs; log.jsonl gets a header (engine "torch-ddp") and eval lines in gpt-ts's
schema (tokens_per_s for the job; per rank rank_tokens_per_s and peak_mem_bytes: CUDA's max allocated, or the
process's peak RSS on CPU), checkpoint.safetensors is replaced (atomically) after each epoch and at the end, so
`deno task compare|eval|sample|train --resume` read the directory as one of their own runs.
The config's `precision` (absent: fp32): bf16-mixed runs every forward pass and its loss, training and evaluation,
under torch.autocast(device type, dtype=torch.bfloat16) (matrix products in bf16, weights, gradients and AdamW
state in fp32), on CPU and CUDA; the header records it.
Python >= 3.10, torch >= 1.13, nothing else. Bad input: one line on stderr, exit 2.
"""
import datetime, json, math, os, resource, socket, struct, sys, time
import torch, torch.nn as nn, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from gpt_loader import DataError, checksum, open_data, remaining

HANDOFF_FORMAT, CHECKPOINT_FORMAT, RUN_LOG_SCHEMA = "gpt-ts-handoff/2", "gpt-ts-checkpoint/1", 1
PRECISIONS = ("fp32", "bf16-mixed")  # lib/config.ts's precision


class UserError(Exception):
    pass


# ---- the book's GPTModel (chapter 4), parameter names as gpt-ts's ----
class LayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.eps, self.scale, self.shift = 1e-5, nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class MultiHeadAttention(nn.Module):
    def __init__(self, d, ctx, n_heads, drop, qkv_bias):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.W_query, self.W_key, self.W_value = (nn.Linear(d, d, bias=qkv_bias) for _ in range(3))
        self.out_proj, self.dropout = nn.Linear(d, d), nn.Dropout(drop)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx), diagonal=1), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        w = self.dropout(torch.softmax(scores / self.head_dim**0.5, dim=-1))
        return self.out_proj((w @ v).transpose(1, 2).contiguous().view(b, t, d))  # (B, T, C)


class FeedForward(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d, 4 * d), GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["emb_dim"]
        self.att = MultiHeadAttention(d, c["context_length"], c["n_heads"], c["drop_rate"], c["qkv_bias"])
        self.ff, self.norm1, self.norm2 = FeedForward(d), LayerNorm(d), LayerNorm(d)
        self.drop_shortcut = nn.Dropout(c["drop_rate"])

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(c["vocab_size"], c["emb_dim"]), nn.Embedding(c["context_length"], c["emb_dim"])
        self.drop_emb = nn.Dropout(c["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(c) for _ in range(c["n_layers"])])
        self.final_norm = LayerNorm(c["emb_dim"])
        self.out_head = nn.Linear(c["emb_dim"], c["vocab_size"], bias=False)

    def forward(self, idx):  # (B, T) -> (B, T, vocab)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device)))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


# ---- files: safetensors (8-byte header length, JSON header, raw little-endian bytes) ----
def read_safetensors(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})")
    if len(raw) < 8 or 8 + struct.unpack("<Q", raw[:8])[0] > len(raw):
        raise UserError(f"{path}: truncated safetensors file ({len(raw)} bytes)")
    n = struct.unpack("<Q", raw[:8])[0]
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError:
        raise UserError(f"{path}: damaged safetensors header")
    meta, body, tensors = header.pop("__metadata__", {}), memoryview(raw)[8 + n :], {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        if t["dtype"] != "F32" or b > len(body) or b - a != 4 * math.prod(t["shape"]):
            raise UserError(f"{path}: tensor {name} is truncated or not F32")
        tensors[name] = torch.frombuffer(bytearray(body[a:b]), dtype=torch.float32).view(t["shape"])
    return meta, tensors


def write_safetensors(path, tensors, meta):
    header, offset = {"__metadata__": meta}, 0
    blobs = []
    for name, t in tensors:
        blob = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def learning_rate(step, s, lr):
    """lib/train/schedule.ts's learningRate (appendix D); constant lr without a schedule."""
    if s is None:
        return lr
    if step < s["warmupSteps"]:
        return s["initialLr"] + step * (s["peakLr"] - s["initialLr"]) / s["warmupSteps"]
    if not s["cosine"]:
        return s["peakLr"]
    progress = (step - s["warmupSteps"]) / max(1, s["totalSteps"] - s["warmupSteps"])
    return s["minLr"] + (s["peakLr"] - s["minLr"]) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- the run ----
def load_handoff(d, world, precision=None):
    try:
        m = json.load(open(f"{d}/handoff.json"))
    except (OSError, ValueError) as e:
        raise UserError(f"{d}/handoff.json: missing or not JSON ({e})")
    if m.get("format") != HANDOFF_FORMAT:
        raise UserError(f"{d}/handoff.json: not a gpt-ts hand-off (format {m.get('format')})")
    meta, tensors = read_safetensors(f"{d}/checkpoint.safetensors")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{d}/checkpoint.safetensors: not a gpt-ts checkpoint")
    ck = json.loads(meta["meta"])
    for key in ("model", "data"):
        if ck["config"][key] != m["config"][key]:
            raise UserError(f"{d}/checkpoint.safetensors: from another config ({key} differs from handoff.json)")
    if precision:  # --precision: this run's products, whatever the run trained in
        m["config"]["precision"] = precision
    p = m["config"].get("precision", "fp32")
    if p not in PRECISIONS:
        raise UserError(f"{d}/handoff.json: precision {p!r} is not one of {', '.join(PRECISIONS)}")
    b = m["data"]["batch_size"]
    if b % world:
        raise UserError(f"{d}: WORLD_SIZE {world} does not divide data.batch_size {b}; use a divisor of {b}")
    return m, ck, tensors


# Dense peak FLOP/s of known GPUs (datasheets; bf16 tensor cores, and fp32 without TF32, PyTorch's default for
# matmuls), matched by the device name; any other device is measured (peak_flops).
GPU_PEAKS = [("H100 PCIe", 756e12, 51e12), ("H100", 989e12, 67e12), ("H200", 989e12, 67e12), ("A100", 312e12, 19.5e12),
             ("L40S", 362e12, 91.6e12), ("L4", 121e12, 30.3e12), ("A10", 125e12, 31.2e12)]


def peak_flops(device, precision):
    """MFU's 100 % on this rank: a known GPU's datasheet figure, else the best of two passes of products measured
    here (large ones on a GPU; on a CPU the three products at 512 tokens that the gpt-ts side measures)."""
    bf16 = precision == "bf16-mixed"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, p16, p32 in GPU_PEAKS:
            if key in name:
                return (p16 if bf16 else p32), f"{name} (datasheet, {'bf16' if bf16 else 'fp32'})"
        shapes = [(8192, 8192, 8192, False, False)]
    else:
        name = "cpu"
        shapes = [(512, 768, 768, False, True), (512, 3072, 768, False, False), (768, 3072, 512, True, False)]
    ops = [(torch.rand((K, M) if ta else (M, K), device=device), torch.rand((N, K) if tb else (K, N), device=device), ta, tb)
           for M, N, K, ta, tb in shapes]
    best = math.inf
    for rep in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.time()
        with autocast(device, precision):
            for a, b, ta, tb in ops:
                (a.T if ta else a) @ (b.T if tb else b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if rep > 0:
            best = min(best, time.time() - t0)
    return sum(2 * M * N * K for M, N, K, _, _ in shapes) / best, f"{name} (measured, {precision})"


def flops_per_token(model, c, T):
    """Training FLOPs of a token: 6·N + 12·L·C·T, N the weights products read (all but the embeddings, the output
    head included: the token embedding where it is tied), as lib/train/mfu.ts counts."""
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()
    if model.out_head.weight is not model.tok_emb.weight:
        n -= model.tok_emb.weight.numel()
    return 6 * n + 12 * c["n_layers"] * c["emb_dim"] * T


def build(m, tensors, device):
    c = m["config"]["model"]
    model = GPTModel(c)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if "out_head.weight" not in state:
        model.out_head.weight = model.tok_emb.weight  # a tied head (GPT-2 weights)
    missing = set(n for n, _ in model.named_parameters()) - set(state)
    if missing:
        raise UserError(f"checkpoint.safetensors: no tensor model.{sorted(missing)[0]}")
    model.load_state_dict(state, strict=False)
    model.to(device)
    t = m["config"]["training"]
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    step = m["state"]["step"]
    for name, p in model.named_parameters():
        opt.state[p] = {
            "step": torch.tensor(float(step)),
            "exp_avg": tensors[f"optim.m.{name}"].clone().to(device),
            "exp_avg_sq": tensors[f"optim.v.{name}"].clone().to(device),
        }
    return model, opt


def autocast(device, precision):
    """The context of every forward pass and loss: torch.autocast to bf16 for bf16-mixed, nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def evaluate(model, batches, device, precision):
    """calcLossLoader: the mean of per-batch mean losses, dropout off, under the run's precision."""
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        losses = [nn.functional.cross_entropy(model(x.to(device)).flatten(0, 1), y.to(device).flatten()).item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def peak_memory(device):
    """This rank's peak memory in bytes: CUDA's most allocated on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def gather_speed(world, tokens_per_s, device):
    """Every rank's own tokens/s and peak memory, gathered (each rank calls it at the same step)."""
    rates, mems = [None] * world, [None] * world
    dist.all_gather_object(rates, tokens_per_s)
    dist.all_gather_object(mems, peak_memory(device))
    return rates, mems


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    d = args[0].rstrip("/")
    opt_arg = lambda name: args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None
    max_steps = int(opt_arg("--max-steps")) if opt_arg("--max-steps") else None
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if opt_arg("--precision") not in (None,) + PRECISIONS:
        raise UserError(f"--precision {opt_arg('--precision')}: expected one of {', '.join(PRECISIONS)}")
    m, ck, tensors = load_handoff(d, world, opt_arg("--precision"))
    try:  # every data check (index hash, shard files and sizes) before any rank trains
        train_data, val_data = open_data(d, m["data"], opt_arg("--shards"))
    except DataError as e:
        raise UserError(str(e))
    window_log = open(f"{opt_arg('--window-log')}.{rank}", "a") if opt_arg("--window-log") else None
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    precision = m["config"].get("precision", "fp32")
    if cuda:
        torch.cuda.set_device(device)
        if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            raise UserError(f"precision bf16-mixed: {torch.cuda.get_device_name(device)} has no bfloat16; use precision fp32")
    else:
        torch.set_num_threads(int(os.environ.get("TORCH_THREADS", 1)))
    dist.init_process_group("nccl" if cuda else "gloo")
    cfg, t = m["config"], m["config"]["training"]
    T, k, B = m["data"]["context"], t["grad_accum_steps"], m["data"]["batch_size"]
    ev_train, ev_val = ([split.tensors(rows) for rows in split.ordered(t["eval_iter"])] if rank == 0 else []
                        for split in (train_data, val_data))
    train = remaining(train_data, m["state"]["epoch"], m["state"]["batch"], t["epochs"], k)
    for name, batches in (("train", ev_train), ("val", ev_val)) if window_log else ():
        for i, (x, y) in enumerate(batches):
            window_log.write(json.dumps({"eval": name, "index": i, "sha256": checksum(x, y)}) + "\n")
    torch.manual_seed(t["seed"] + 1000 * rank + m["state"]["step"])  # dropout masks: PyTorch's generator, per rank
    model, opt = build(m, tensors, device)
    ddp = DDP(model, device_ids=[local] if cuda else None)
    devices = [None] * world
    dist.all_gather_object(devices, f"{socket.gethostname()}:{torch.cuda.get_device_name(device) if cuda else 'cpu'}")
    log = open(f"{d}/log.jsonl", "a") if rank == 0 else None
    write = lambda rec: (log.write(json.dumps(rec) + "\n"), log.flush()) if log else None
    peak, peak_device = peak_flops(device, precision)
    peaks = [None] * world
    dist.all_gather_object(peaks, peak)
    fpt = flops_per_token(model, cfg["model"], T)
    s = dict(m["state"])
    start_step, start_tokens, t0 = s["step"], s["tokensSeen"], time.time()
    # Every rank's tokens over every rank's peak: the job's tokens/s count all ranks' tokens.
    mfu = lambda tok_s: tok_s * fpt / sum(peaks)
    write({"type": "header", "schema_version": RUN_LOG_SCHEMA, "engine": "torch-ddp", "experiment": cfg["name"],
           "run": cfg["name"], "config": cfg, "config_hash": m["config_hash"], "seed": t["seed"],
           "backend": "nccl" if cuda else "gloo", "backend_reason": f"torch {torch.__version__} DDP", "precision": precision,
           "precision_detail": f"bf16-mixed (torch.autocast({device.type}, bfloat16))" if precision == "bf16-mixed" else "fp32",
           "params": sum(p.numel() for p in model.parameters()), "versions": {"torch": torch.__version__,
           "python": sys.version.split()[0]}, "git_commit": None, "start_time": datetime.datetime.now(
           datetime.timezone.utc).isoformat(), "resumed_from_step": s["step"], "world_size": world, "devices": devices,
           "flops_per_token": fpt, "peak_flops": sum(peaks), "peak_device": f"{world} × {peak_device}"})
    per_rank = B // world
    lr, grad_norm, stopped = t["lr"], None, False
    sched = m["schedule"]

    def save():
        if rank != 0:
            return
        names = [n for n in tensors if n.startswith("model.")]
        params = dict(model.named_parameters())
        out = [(n, params[n[6:]]) for n in names]
        out += [(f"optim.{w}.{n[6:]}", opt.state[params[n[6:]]]["exp_avg" if w == "m" else "exp_avg_sq"]) for w in "mv" for n in names]
        meta = dict(ck, config=cfg, configHash=m["config_hash"], state=dict(s), optimizer={"step": s["step"], "lr": lr},
                    savedAt=datetime.datetime.now(datetime.timezone.utc).isoformat())
        if ck.get("data"):
            meta["data"] = dict(ck["data"], epoch=s["epoch"], batch=s["batch"])
        write_safetensors(f"{d}/checkpoint.safetensors", out, {"format": CHECKPOINT_FORMAT, "meta": json.dumps(meta)})

    elapsed = lambda: time.time() - t0
    while s["epoch"] < t["epochs"] and not stopped:
        while s["batch"] + k <= m["steps_per_epoch"] * k:
            if max_steps is not None and s["step"] - start_step >= max_steps:
                stopped = True
                break
            lr = learning_rate(s["step"], sched, t["lr"])
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            for i in range(k):
                x, y = train_data.tensors(next(train)[rank * per_rank : (rank + 1) * per_rank])  # this rank's rows only
                if window_log:
                    window_log.write(json.dumps({"epoch": s["epoch"], "batch": s["batch"] + i, "sha256": checksum(x, y)}) + "\n")
                x, y = x.to(device), y.to(device)
                with autocast(device, precision):
                    loss = nn.functional.cross_entropy(ddp(x).flatten(0, 1), y.flatten()) / k
                if i < k - 1:
                    with ddp.no_sync():
                        loss.backward()
                else:
                    loss.backward()
            if t["max_grad_norm"] is not None and s["step"] >= (sched["warmupSteps"] if sched else 0):
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t["max_grad_norm"]).item()
            opt.step()
            s["batch"] += k
            s["step"] += 1
            s["tokensSeen"] += k * B * T
            if s["step"] % t["eval_freq"] == 0:
                rank_rates, peak_mem = gather_speed(world, (s["step"] - start_step) * k * per_rank * T / elapsed(), device)
                if rank == 0:
                    tl, vl = evaluate(model, ev_train, device, precision), evaluate(model, ev_val, device, precision)
                    print(f"Ep {s['epoch'] + 1} (Step {s['step']:06d}): Train loss {tl:.3f}, Val loss {vl:.3f}", flush=True)
                    now = elapsed()
                    rate = (s["tokensSeen"] - start_tokens) / now
                    write({"type": "eval", "epoch": s["epoch"] + 1, "step": s["step"], "tokens_seen": s["tokensSeen"],
                           "train_loss": tl, "val_loss": vl, "lr": lr, "grad_norm": grad_norm, "elapsed_s": now,
                           "tokens_per_s": rate, "mfu": mfu(rate), "rank_tokens_per_s": rank_rates,
                           "peak_mem_bytes": peak_mem})
                dist.barrier()
        if not stopped:
            s["epoch"], s["batch"] = s["epoch"] + 1, 0
            write({"type": "epoch", "epoch": s["epoch"], "step": s["step"], "tokens_seen": s["tokensSeen"], "elapsed_s": elapsed()})
            save()
    steps = s["step"] - start_step
    if stopped:
        save()
        write({"type": "interrupted", "step": s["step"], "reason": "step limit"})
    else:
        tl, vl = (evaluate(model, ev_train, device, precision), evaluate(model, ev_val, device, precision)) if rank == 0 else (0, 0)
        write({"type": "summary", "status": "finished", "steps": s["step"], "tokens_seen": s["tokensSeen"],
               "final_train_loss": tl, "final_val_loss": vl, "best_val_loss": vl, "elapsed_s": elapsed(),
               "tokens_per_s": (s["tokensSeen"] - start_tokens) / elapsed()})
    if window_log:
        window_log.close()
    if rank == 0:
        print(json.dumps({"steps": steps, "world_size": world, "s_per_step": elapsed() / max(1, steps)}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    leave(log)


def leave(log):
    """Exits 0 without tearing DDP down. torch 1.13 can deadlock there: ~Reducer joins a gloo worker thread while
    holding the GIL, and that thread may be freeing a tensor, which needs the GIL (seen: rank 1 at 99 % CPU for
    minutes after a finished run, its main thread in ~ProcessGroupGloo's join). Everything is written by now."""
    if log:
        log.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
