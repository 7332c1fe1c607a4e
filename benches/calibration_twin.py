"""PyTorch twin of lpzero's calibration probe (`lpzero bench --calibration`).

The same work as one FlexiBERT probe of the calibration encoder, timed the same way: build
the model (N(0, 0.02^2) weights, zero biases, padding row of the word table zero, LayerNorm
gamma = 1, beta = 0), one forward pass on a synthetic batch (ids uniform in [999, 30521],
[CLS] first and [SEP] last), the projection backward signal sum(last_hidden * r) with a
Gaussian r, one backward pass, and the capture of what a probe keeps (every GELU output, the
query outputs as `head`, the attention probabilities, the q/k/v outputs, every linear's weight
and gradient, the position table's gradient), each copied out of the autograd graph.

Shapes: 4 SA-SDP layers with 4 heads, B = 32, T = 128, hidden 256, FFN 1024, embeddings 128
projected to 256, vocabulary 30 522. Prints one JSON object with the median seconds.
Benchmark only: lpzero never needs PyTorch to build or test.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

VOCAB, EMB, HIDDEN, FFN, HEADS, LAYERS = 30522, 128, 256, 1024, 4, 4
POSITIONS, TYPES, EPS, STD = 512, 2, 1e-12, 0.02


def normal(gen, *shape):
    return (torch.randn(*shape, generator=gen) * STD).requires_grad_()


def zeros(*shape):
    return torch.zeros(*shape).requires_grad_()


def ones(*shape):
    return torch.ones(*shape).requires_grad_()


def linear(gen, i, o):
    return {"weight": normal(gen, o, i), "bias": zeros(o)}


def build(gen):
    """The calibration encoder's parameters (nested dicts of leaf tensors)."""
    word = torch.randn(VOCAB, EMB, generator=gen) * STD
    word[0] = 0.0
    model = {
        "word": word.requires_grad_(),
        "position": normal(gen, POSITIONS, EMB),
        "type": normal(gen, TYPES, EMB),
        "emb_ln": (ones(EMB), zeros(EMB)),
        "project": linear(gen, EMB, HIDDEN),
        "layers": [],
    }
    for _ in range(LAYERS):
        model["layers"].append(
            {
                "q": linear(gen, HIDDEN, HIDDEN),
                "k": linear(gen, HIDDEN, HIDDEN),
                "v": linear(gen, HIDDEN, HIDDEN),
                "out": linear(gen, HIDDEN, HIDDEN),
                "out_ln": (ones(HIDDEN), zeros(HIDDEN)),
                "ffn": linear(gen, HIDDEN, FFN),
                "ffn_out": linear(gen, FFN, HIDDEN),
                "ffn_ln": (ones(HIDDEN), zeros(HIDDEN)),
            }
        )
    return model


def lin(p, x):
    return F.linear(x, p["weight"], p["bias"])


def ln(p, x):
    return F.layer_norm(x, (x.shape[-1],), p[0], p[1], EPS)


def forward(model, ids, caps):
    b, t = ids.shape
    e = model["word"][ids] + model["position"][:t] + model["type"][0]
    x = lin(model["project"], ln(model["emb_ln"], e))
    d = HIDDEN // HEADS
    for layer in model["layers"]:
        q, k, v = (lin(layer[n], x) for n in ("q", "k", "v"))
        caps["head"].append(q)
        caps["mixer_outputs"] += [q, k, v]
        split = lambda z: z.view(b, t, HEADS, d).transpose(1, 2)
        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
        probs = torch.softmax(scores, dim=-1)
        caps["softmax"].append(probs)
        ctx = (probs @ split(v)).transpose(1, 2).reshape(b, t, HIDDEN)
        a = ln(layer["out_ln"], lin(layer["out"], ctx) + x)
        z = F.gelu(lin(layer["ffn"], a))
        caps["act"].append(z)
        x = ln(layer["ffn_ln"], lin(layer["ffn_out"], z) + a)
    return x


def linears(model):
    yield model["project"]
    for layer in model["layers"]:
        for n in ("q", "k", "v", "out", "ffn", "ffn_out"):
            yield layer[n]


def probe(batch, seed):
    """One timed probe; returns its seconds and the loss."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    model = build(gen)
    caps = {"act": [], "head": [], "softmax": [], "mixer_outputs": []}
    last = forward(model, batch, caps)
    r = torch.randn(last.shape, generator=gen)
    loss = (last * r).sum()
    loss.backward()
    kept = {name: [c.detach().clone() for c in cs] for name, cs in caps.items()}
    kept["linears"] = [(p["weight"].detach().clone(), p["weight"].grad.clone()) for p in linears(model)]
    kept["position_grad"] = model["position"].grad.clone()
    seconds = time.perf_counter() - start
    return seconds, float(loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="timed probes (the median is reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(999, VOCAB, (args.batch, args.seq_len), generator=gen)
    ids[:, 0], ids[:, -1] = 101, 102
    times = []
    for rep in range(max(1, args.reps)):
        seconds, _ = probe(ids, rep)
        times.append(seconds)
    print(json.dumps({
        "engine": f"torch {torch.__version__}",
        "threads": args.threads,
        "calibration_forward_backward_seconds": statistics.median(times),
        "seconds": times,
    }))


if __name__ == "__main__":
    main()
