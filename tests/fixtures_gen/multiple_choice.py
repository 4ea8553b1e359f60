"""Writes tests/fixtures/multiple-choice-torch.json: PyTorch's scores of tests/fixtures/multiple-choice.jsonl on the
shared golden model (../shared/fixtures/gpt2-tiny.safetensors, tied head, eval mode), the way llm.c and Karpathy's
GPT-2 reproduction score HellaSwag. Run from the repository root:

    /usr/bin/python3 tests/fixtures_gen/multiple_choice.py

Per item, per ending: the row is the context's tokens then those of " " + ending (js-tiktoken, through
multiple_choice_ids.ts), cut to its last context_length tokens; the rows are right-padded with token 0 into one
batch; each ending token's cross-entropy under the shifted logits is masked in (a row's first token is never
scored); `sum_loss` is their sum, `mean_loss` their mean; `pick` = argmin sum_loss, `pick_norm` = argmin mean_loss;
`acc` and `acc_norm` the fractions of items whose pick is the label."""
import json, os, subprocess, sys
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_tiny import ROOT, SHARED, book_model, read_safetensors


def score(m, ctx, endings, T):
    rows = []
    for end in endings:
        ids = (ctx + end)[-T:]
        rows.append((ids, min(len(end), len(ids) - 1)))
    L = max(len(ids) for ids, _ in rows)
    tokens = torch.tensor([ids + [0] * (L - len(ids)) for ids, _ in rows])
    mask = torch.zeros(len(rows), L - 1)
    for b, (ids, n) in enumerate(rows):
        mask[b, len(ids) - 1 - n:len(ids) - 1] = 1  # shifted position t-1 predicts token t
    with torch.no_grad():
        logits = m(tokens)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(len(rows), L - 1)
    s = (losses * mask).sum(1)
    mean = s / mask.sum(1)
    return {"sum_loss": s.tolist(), "mean_loss": mean.tolist(), "pick": int(s.argmin()), "pick_norm": int(mean.argmin())}


def main():
    fx = json.load(open(os.path.join(SHARED, "fixtures", "gpt2-tiny.json")))
    cfg = dict(fx["config"]); cfg["drop_rate"] = 0.0
    m = book_model(cfg, read_safetensors(os.path.join(SHARED, "fixtures", "gpt2-tiny.safetensors")), tied=True)
    m.eval()
    items_path = os.path.join(ROOT, "tests", "fixtures", "multiple-choice.jsonl")
    lines = subprocess.run(["deno", "run", "--allow-read", os.path.join(ROOT, "tests/fixtures_gen/multiple_choice_ids.ts"),
                            items_path], check=True, capture_output=True, cwd=ROOT).stdout.decode().splitlines()
    items = [json.loads(l) for l in lines]
    scores = [score(m, it["ctx"], it["endings"], cfg["context_length"]) for it in items]
    res = {"torch": torch.__version__, "items": scores,
           "acc": sum(s["pick"] == it["label"] for s, it in zip(scores, items)) / len(items),
           "acc_norm": sum(s["pick_norm"] == it["label"] for s, it in zip(scores, items)) / len(items)}
    out = os.path.join(ROOT, "tests", "fixtures", "multiple-choice-torch.json")
    with open(out + ".tmp", "w") as f: json.dump(res, f, indent=1)
    os.replace(out + ".tmp", out)
    print(out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
