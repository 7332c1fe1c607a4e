"""PyTorch twin of one lpzero GPT-2 probe (the default probe of one benchmark architecture).

The same work as `lpzero`'s probe of a GPT-2 Flex decoder, timed the same way: build the
model from its config (adaptive input embedding and projected adaptive softmax with tied
tables, pre-LN blocks, N(0, 0.02^2) weights, c_proj weights N(0, 0.02^2 / 2L), projections
N(0, proj_init_std^2), zero biases, LayerNorm weight 1 and bias 0), one forward pass on a
synthetic Zipf(1) batch of B rows of T + 1 tokens, the mean next-token NLL, one backward pass
and the capture of what a probe keeps (every Conv1D output, the attention probabilities, every
Conv1D's weight and gradient, the position table's gradient), each copied out of the graph.

    gpt2_twin.py CONFIG.yaml [--batch 16] [--seq-len 192] [--reps 3] [--threads N]

Prints one JSON object with the median seconds. Benchmark only: lpzero never needs PyTorch.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F


def read_config(path):
    """The subset of YAML the benchmark configs use: `key: scalar` and `key:` + `- item` lists."""
    config, key = {}, None
    for line in open(path):
        line = line.rstrip()
        if not line:
            continue
        if line.startswith("- "):
            config[key].append(parse(line[2:]))
        else:
            key, _, value = line.partition(":")
            value = value.strip()
            config[key] = [] if value == "" else parse(value)
    return config


def parse(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text, text)


def clusters(config):
    """Cluster ends: the cutoffs up to the vocabulary, then the vocabulary size."""
    ends = [c for c in config["cutoffs"] if c <= config["n_token"]]
    ends = ends[: next((i for i, c in enumerate(ends) if c > config["n_token"]), len(ends))]
    if not ends or ends[-1] < config["n_token"]:
        ends.append(config["n_token"])
    return ends


def build(config, gen):
    d, e, k = config["d_model"], config["d_embed"], config["div_val"]
    std, pstd = config["weight_init_std"], config["proj_init_std"]
    ends = clusters(config)
    starts = [0] + ends[:-1]
    widths = [e if k == 1 else e // k**i for i in range(len(ends))]
    normal = lambda s, *shape: (torch.randn(*shape, generator=gen) * s).requires_grad_()
    zeros = lambda *shape: torch.zeros(*shape).requires_grad_()
    ones = lambda *shape: torch.ones(*shape).requires_grad_()
    m = {"ends": ends, "starts": starts, "widths": widths}
    if k == 1:
        m["tables"] = [normal(std, config["n_token"], e)]
        m["emb_projs"] = [normal(pstd, d, e) if e != d else None]
    else:
        m["tables"] = [normal(std, hi - lo, w) for lo, hi, w in zip(starts, ends, widths)]
        m["emb_projs"] = [normal(pstd, d, w) for w in widths]
    m["wpe"] = normal(std, config["tgt_len"], d)
    layers = len(config["n_head"])
    proj_std = std / math.sqrt(2 * layers)
    m["blocks"] = []
    for heads, inner in zip(config["n_head"], config["d_inner"]):
        m["blocks"].append({
            "heads": heads,
            "ln_1": (ones(d), zeros(d)),
            "c_attn": (normal(std, d, 3 * d), zeros(3 * d)),
            "attn_proj": (normal(proj_std, d, d), zeros(d)),
            "ln_2": (ones(d), zeros(d)),
            "c_fc": (normal(std, d, inner), zeros(inner)),
            "mlp_proj": (normal(proj_std, inner, d), zeros(d)),
        })
    m["ln_f"] = (ones(d), zeros(d))
    n = len(ends)
    m["cluster"] = (normal(std, n - 1, e), zeros(n - 1)) if n > 1 else None
    if not config["tie_weight"]:
        m["out_tables"] = [normal(std, t.shape[0], t.shape[1]) for t in m["tables"]]
    m["out_biases"] = [zeros(t.shape[0]) for t in m["tables"]]
    m["out_projs"] = [
        normal(pstd, d, w) if not tied and (k > 1 or w != d) else None
        for tied, w in zip(config["tie_projs"], widths)
    ]
    m["tie_projs"] = config["tie_projs"]
    return m


def out_proj(m, config, i):
    if m["tie_projs"][i]:
        return m["emb_projs"][0 if config["div_val"] == 1 else i]
    return m["out_projs"][i]


def out_weight(m, config, i):
    tables = m["tables"] if config["tie_weight"] else m["out_tables"]
    if config["div_val"] == 1:
        lo, hi = m["starts"][i], m["ends"][i]
        return tables[0][lo:hi], m["out_biases"][0][lo:hi]
    return tables[i], m["out_biases"][i]


def embed(m, config, ids):
    d = config["d_model"]
    flat = ids.reshape(-1)
    if config["div_val"] == 1:
        rows = m["tables"][0][flat]
        proj = m["emb_projs"][0]
        emb = rows if proj is None else rows @ proj.t()
    else:
        emb = torch.zeros(flat.shape[0], d)
        for i, (lo, hi) in enumerate(zip(m["starts"], m["ends"])):
            mask = (flat >= lo) & (flat < hi)
            idx = mask.nonzero().squeeze(1)
            if idx.numel():
                emb = emb.index_copy(0, idx, m["tables"][i][flat[idx] - lo] @ m["emb_projs"][i].t())
    return (emb * math.sqrt(d)).reshape(*ids.shape, d)


def ln(p, x):
    return F.layer_norm(x, (x.shape[-1],), p[0], p[1], 1e-5)


def conv(p, x):
    return torch.addmm(p[1], x.reshape(-1, x.shape[-1]), p[0]).reshape(*x.shape[:-1], -1)


def forward(m, config, inputs, targets, caps):
    b, t = inputs.shape
    d = config["d_model"]
    h = embed(m, config, inputs) + m["wpe"][:t]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for blk in m["blocks"]:
        heads = blk["heads"]
        dh = d // heads
        qkv = conv(blk["c_attn"], ln(blk["ln_1"], h))
        q, k, v = qkv.view(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        probs = torch.softmax(scores.masked_fill(~mask, -1e4), dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(b, t, d)
        a = conv(blk["attn_proj"], ctx)
        h = h + a
        f = conv(blk["c_fc"], ln(blk["ln_2"], h))
        o = conv(blk["mlp_proj"], F.gelu(f, approximate="tanh"))
        h = h + o
        caps["conv_outputs"] += [qkv, a, f, o]
        caps["attention"].append(probs)
    z = ln(m["ln_f"], h).reshape(b * t, d)
    y = targets.reshape(-1)
    ends, starts = m["ends"], m["starts"]
    w0, b0 = out_weight(m, config, 0)
    if m["cluster"] is not None:
        w0, b0 = torch.cat([w0, m["cluster"][0]]), torch.cat([b0, m["cluster"][1]])
    proj = out_proj(m, config, 0)
    head = F.linear(z if proj is None else z @ proj, w0, b0)
    cluster = torch.bucketize(y, torch.tensor(ends), right=True)
    column = torch.where(cluster == 0, y, ends[0] + cluster - 1)
    total = F.cross_entropy(head, column, reduction="sum")
    for i in range(1, len(ends)):
        rows = (cluster == i).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        wi, bi = out_weight(m, config, i)
        proj = out_proj(m, config, i)
        zi = z[rows]
        logits = F.linear(zi if proj is None else zi @ proj, wi, bi)
        total = total + F.cross_entropy(logits, y[rows] - starts[i], reduction="sum")
    return total / (b * t)


def zipf_batch(rows, cols, vocab, gen):
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    return torch.multinomial(weights, rows * cols, replacement=True, generator=gen).reshape(rows, cols)


def probe(config, batch, seed):
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    m = build(config, gen)
    caps = {"conv_outputs": [], "attention": []}
    loss = forward(m, config, batch[:, :-1], batch[:, 1:], caps)
    loss.backward()
    kept = {name: [c.detach().clone() for c in cs] for name, cs in caps.items()}
    convs = [blk[n][0] for blk in m["blocks"] for n in ("c_attn", "attn_proj", "c_fc", "mlp_proj")]
    kept["linears"] = [(w.detach().clone(), w.grad.clone()) for w in convs]
    kept["position_grad"] = m["wpe"].grad.clone()
    return time.perf_counter() - start, loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a benchmark model config (data/gpt2_wt103/configs/*.yaml)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=192, help="input tokens per row")
    ap.add_argument("--reps", type=int, default=3, help="timed probes (the median is reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = read_config(args.config)
    batch = zipf_batch(args.batch, args.seq_len + 1, config["n_token"], torch.Generator().manual_seed(0))
    times, loss = [], None
    for rep in range(max(1, args.reps)):
        seconds, loss = probe(config, batch, rep)
        times.append(seconds)
    print(json.dumps({
        "engine": f"torch {torch.__version__}",
        "threads": args.threads,
        "probe_seconds": statistics.median(times),
        "seconds": times,
        "loss": loss,
    }))


if __name__ == "__main__":
    main()
