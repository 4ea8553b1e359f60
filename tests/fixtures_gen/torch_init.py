"""Writes tests/fixtures/torch-init-small.json: every parameter, bit for bit, of the book's GPTModel
(bench/torch_parity.py) built right after torch.manual_seed(seed), for small configs that reach each path of
PyTorch's normal_ (blocks of 16 with a tail, and the small-tensor path below 16 values) and of kaiming_uniform_.
Run from the repository root: /usr/bin/python3 tests/fixtures_gen/torch_init.py (CPU, Debian's torch 1.13).
Each parameter: name, shape (Linear weights [out, in]) and its float32 bytes, little-endian, in base64."""
import base64, json, os, sys
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from torch_parity import GPT  # the book's GPTModel in plain PyTorch

CONFIGS = [  # (seed, config)
    (123, {"vocab_size": 37, "context_length": 5, "emb_dim": 20, "n_heads": 2, "n_layers": 1, "drop_rate": 0.1,
           "qkv_bias": True}),
    (7, {"vocab_size": 3, "context_length": 2, "emb_dim": 4, "n_heads": 1, "n_layers": 1, "drop_rate": 0.0,
         "qkv_bias": False}),
]
out = {"torch": torch.__version__, "models": []}
for seed, cfg in CONFIGS:
    torch.manual_seed(seed)
    m = GPT(cfg)
    params = [{"name": n, "shape": list(p.shape),
               "f32le": base64.b64encode(p.detach().contiguous().numpy().astype("<f4").tobytes()).decode()}
              for n, p in m.named_parameters()]
    out["models"].append({"seed": seed, "config": cfg, "params": params})
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "torch-init-small.json")
with open(path + ".tmp", "w") as f: json.dump(out, f, separators=(",", ":"))
os.replace(path + ".tmp", path)
print(path, os.path.getsize(path), "bytes")
