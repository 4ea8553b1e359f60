"""PyTorch reference of the chapter-5 training step for `deno task bench` (not a project dependency).
Usage: python3 bench/torch_step.py <experiment config JSON> <batch> <steps> <threads> [cpu|cuda] [fp32|bf16-mixed]
Prints one JSON line: median seconds per step over `steps` after one warm-up step. With `cuda` (bench/gpu.ts) the
step runs on the first CUDA device, synchronised before each clock read; `cuda` without one is an error.
`bf16-mixed` (default fp32) runs the forward pass and the loss under torch.autocast(device, dtype=torch.bfloat16),
the backward pass and AdamW outside it: weights, gradients and moments stay fp32 (PyTorch's mixed precision)."""
import json, resource, statistics, sys, time
import torch
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_parity import GPT  # the book's GPTModel in plain PyTorch

cfg = json.load(open(sys.argv[1])); batch = int(sys.argv[2]); steps = int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
precision = sys.argv[6] if len(sys.argv) > 6 else "fp32"
if device not in ("cpu", "cuda"): sys.exit(f"torch: device {device!r} is not cpu or cuda")
if precision not in ("fp32", "bf16-mixed"): sys.exit(f"torch: precision {precision!r} is not fp32 or bf16-mixed")
if device == "cuda" and not torch.cuda.is_available(): sys.exit("torch: no CUDA device")
autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
c = dict(cfg["model"]); T = cfg["data"].get("max_length") or c["context_length"]
torch.manual_seed(cfg["training"]["seed"]); m = GPT(c).to(device); m.train()
opt = torch.optim.AdamW(m.parameters(), lr=cfg["training"]["lr"], weight_decay=cfg["training"]["weight_decay"])
x = torch.randint(0, c["vocab_size"], (batch, T)).to(device); y = torch.randint(0, c["vocab_size"], (batch, T)).to(device)
times = []
for i in range(steps + 1):
    sync(); t0 = time.perf_counter()
    opt.zero_grad()
    with autocast(): loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten())
    loss.backward(); opt.step()
    sync()
    if i > 0: times.append(time.perf_counter() - t0)
s = statistics.median(times)
print(json.dumps({"case": "train_step", "impl": "pytorch", "torch": torch.__version__, "threads": int(sys.argv[4]), "device": device,
                  "precision": precision, "batch": batch, "tokens": batch * T, "median_s": s, "tokens_per_s": batch * T / s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
