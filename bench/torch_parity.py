"""Replays batches through the book's GPTModel in plain PyTorch (seed, AdamW as in the experiment, dropout off).
Used by bench/parity.ts; prints a JSON list of per-step losses. Not a project dependency."""
import json, torch, torch.nn as nn, sys
torch.set_num_threads(1)
class LayerNorm(nn.Module):
    def __init__(s, d): super().__init__(); s.eps=1e-5; s.scale=nn.Parameter(torch.ones(d)); s.shift=nn.Parameter(torch.zeros(d))
    def forward(s, x):
        m=x.mean(-1,keepdim=True); v=x.var(-1,keepdim=True,unbiased=False); return s.scale*(x-m)/torch.sqrt(v+s.eps)+s.shift
class GELU(nn.Module):
    def forward(s,x): return 0.5*x*(1+torch.tanh(torch.sqrt(torch.tensor(2.0/torch.pi))*(x+0.044715*torch.pow(x,3))))
class MHA(nn.Module):
    def __init__(s, d, ctx, nh, drop, bias=False):
        super().__init__(); s.nh=nh; s.hd=d//nh
        s.W_query=nn.Linear(d,d,bias=bias); s.W_key=nn.Linear(d,d,bias=bias); s.W_value=nn.Linear(d,d,bias=bias)
        s.out_proj=nn.Linear(d,d); s.dropout=nn.Dropout(drop); s.register_buffer("mask", torch.triu(torch.ones(ctx,ctx),diagonal=1))
    def forward(s,x):
        b,t,d=x.shape
        k=s.W_key(x).view(b,t,s.nh,s.hd).transpose(1,2); q=s.W_query(x).view(b,t,s.nh,s.hd).transpose(1,2); v=s.W_value(x).view(b,t,s.nh,s.hd).transpose(1,2)
        a=q@k.transpose(2,3); a.masked_fill_(s.mask.bool()[:t,:t], -torch.inf); w=torch.softmax(a/k.shape[-1]**0.5,dim=-1); w=s.dropout(w)
        return s.out_proj((w@v).transpose(1,2).contiguous().view(b,t,d))
class FF(nn.Module):
    def __init__(s,d): super().__init__(); s.layers=nn.Sequential(nn.Linear(d,4*d),GELU(),nn.Linear(4*d,d))
    def forward(s,x): return s.layers(x)
class Block(nn.Module):
    def __init__(s,c):
        super().__init__(); s.att=MHA(c['emb_dim'],c['context_length'],c['n_heads'],c['drop_rate'],c['qkv_bias']); s.ff=FF(c['emb_dim'])
        s.norm1=LayerNorm(c['emb_dim']); s.norm2=LayerNorm(c['emb_dim']); s.drop_shortcut=nn.Dropout(c['drop_rate'])
    def forward(s,x):
        x=x+s.drop_shortcut(s.att(s.norm1(x))); return x+s.drop_shortcut(s.ff(s.norm2(x)))
class GPT(nn.Module):
    def __init__(s,c):
        super().__init__(); s.tok_emb=nn.Embedding(c['vocab_size'],c['emb_dim']); s.pos_emb=nn.Embedding(c['context_length'],c['emb_dim'])
        s.drop_emb=nn.Dropout(c['drop_rate']); s.trf_blocks=nn.Sequential(*[Block(c) for _ in range(c['n_layers'])])
        s.final_norm=LayerNorm(c['emb_dim']); s.out_head=nn.Linear(c['emb_dim'],c['vocab_size'],bias=False)
    def forward(s,idx):
        b,t=idx.shape; x=s.drop_emb(s.tok_emb(idx)+s.pos_emb(torch.arange(t,device=idx.device))); return s.out_head(s.final_norm(s.trf_blocks(x)))
if __name__ == '__main__':
  d=json.load(open(sys.argv[1])); cfg=d['config']; c=dict(cfg['model']); c['drop_rate']=0.0
  torch.manual_seed(cfg['training']['seed']); m=GPT(c); m.train()
  opt=torch.optim.AdamW(m.parameters(),lr=cfg['training']['lr'],weight_decay=cfg['training']['weight_decay'])
  T=c['context_length']; losses=[]
  for b in d['batches']:
    x=torch.tensor(b['inputs']).view(-1,T); y=torch.tensor(b['targets']).view(-1,T)
    opt.zero_grad(); loss=torch.nn.functional.cross_entropy(m(x).flatten(0,1),y.flatten()); loss.backward(); opt.step()
    losses.append(loss.item())
  print(json.dumps(losses))
