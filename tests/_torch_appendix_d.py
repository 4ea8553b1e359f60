"""PyTorch replay of an appendix-D run for tests/appendix_d_test.ts: the book's GPTModel (bench/torch_parity.py)
built after torch.manual_seed(seed), dropout off, AdamW, and the book's appendix-D loop written out here from the
book: lr warmup from initial_lr to peak, cosine decay to min_lr, clip_grad_norm_ once global_step >= warmup_steps,
and k micro-batches per step (each loss / k). Reads the run's batches from argv[1], prints one JSON list: per
evaluation {step, lr, grad_norm, train_loss, val_loss}."""
import json, math, os, sys
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_parity import GPT  # the book's GPTModel in plain PyTorch

torch.set_num_threads(1)
d = json.load(open(sys.argv[1]))
c = dict(d["model"]); c["drop_rate"] = 0.0
t = d["training"]; T = c["context_length"]
torch.manual_seed(t["seed"]); model = GPT(c); model.train()
peak, warmup, total = t["lr"], d["warmup_steps"], len(d["steps"])
optimizer = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=t["weight_decay"])


def tensors(b):
    return torch.tensor(b["inputs"]).view(-1, T), torch.tensor(b["targets"]).view(-1, T)


def loss_of(b):
    x, y = tensors(b)
    return torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


def calc_loss_loader(batches):
    with torch.no_grad():
        return sum(loss_of(b).item() for b in batches) / len(batches)


out = []
for global_step, micro in enumerate(d["steps"]):
    optimizer.zero_grad()
    if global_step < warmup:
        lr = t["initial_lr"] + global_step * (peak - t["initial_lr"]) / warmup
    else:
        progress = (global_step - warmup) / (total - warmup)
        lr = t["min_lr"] + (peak - t["min_lr"]) * 0.5 * (1 + math.cos(math.pi * progress))
    for g in optimizer.param_groups: g["lr"] = lr
    for b in micro: (loss_of(b) / len(micro)).backward()
    grad_norm = None
    if global_step >= warmup:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t["max_grad_norm"]).item()
    optimizer.step()
    if (global_step + 1) % t["eval_freq"] == 0:
        model.eval()
        out.append({"step": global_step + 1, "lr": lr, "grad_norm": grad_norm,
                    "train_loss": calc_loss_loader(d["eval_train"]), "val_loss": calc_loss_loader(d["eval_val"])})
        model.train()
print(json.dumps(out))
