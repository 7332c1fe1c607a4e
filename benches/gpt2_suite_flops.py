#!/usr/bin/env python3
"""A lower bound on the arithmetic of `lpzero baselines --bench gpt2`, and the time it needs.

Counts the matrix-multiply FLOPs of every probe of the 200 GPT-2 decoders (data/gpt2_wt103)
at a batch of B x T tokens: per decoder block the Conv1D layers (2 x tokens x (3D^2 + D^2 +
2 D d_inner)) and the attention (4 x B x T^2 x D: scores and the weighted sum), and in the
head the shortlist's logits (2 x tokens x E x (shortlist + tail clusters), with the D x E
projection when there is one). The tail clusters' logits, element-wise work, layer norms and
the proxies' own maths are left out, so the true work is larger.

A probe is one forward and its backward plus, by blocks, every decoder block's forward once
more. The blocks' backward is twice their forward (input and weight gradients); the head's is
once (its input's gradient only: no probe reads the embedding and softmax tables' gradients,
so lpzero does not compute them). The GraSP pass (part of `baselines`) is as much again.
Prints the total and how long it takes at the FLOP rates given (GFLOP/s for the whole
machine, e.g. what PyTorch reaches on the calibration encoder: 84 GFLOP / its seconds).

Usage: python3 benches/gpt2_suite_flops.py [--batch 16] [--seq-len 192] [--rate 150 ...]
No third-party package is needed.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "gpt2_wt103", "configs")


def read_config(path):
    """The fields this count needs from one config file (a flat YAML of scalars and lists)."""
    fields, key = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("- ") and key is not None:
                fields.setdefault(key, []).append(line[2:].strip())
            elif ":" in line and not line.startswith(" "):
                key, value = (s.strip() for s in line.split(":", 1))
                if value:
                    fields[key] = value
    try:
        return {
            "n_layer": int(fields["n_layer"]),
            "d_model": int(fields["d_model"]),
            "d_embed": int(fields["d_embed"]),
            "d_inner": [int(v) for v in fields["d_inner"]],
            "cutoffs": [int(v) for v in fields["cutoffs"]],
            "n_token": int(fields["n_token"]),
            "div_val": int(fields["div_val"]),
        }
    except (KeyError, ValueError) as e:
        sys.exit(f"{path}: field {e} missing or not a number")


def forward_flops(cfg, batch, seq_len):
    """(decoder blocks, head) matrix-multiply FLOPs of one forward pass."""
    tokens = batch * seq_len
    d = cfg["d_model"]
    blocks = 0
    for inner in cfg["d_inner"][: cfg["n_layer"]]:
        blocks += 2 * tokens * (4 * d * d + 2 * d * inner) + 4 * batch * seq_len**2 * d
    cutoffs = [c for c in cfg["cutoffs"] if c < cfg["n_token"]]
    shortlist, tails = cutoffs[0], len(cutoffs)
    e = cfg["d_embed"]
    head = 2 * tokens * e * (shortlist + tails)
    if cfg["div_val"] > 1 or e != d:
        head += 2 * tokens * d * e
    return blocks, head


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--rate", type=float, nargs="*", default=[150.0, 200.0],
                   help="machine FLOP rates in GFLOP/s to convert the total into minutes")
    a = p.parse_args()
    names = sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml"))
    if not names:
        sys.exit(f"{CONFIGS}: no config files")
    probe = grasp = 0.0
    largest = (0.0, "")
    for name in names:
        blocks, head = forward_flops(read_config(os.path.join(CONFIGS, name)), a.batch, a.seq_len)
        one = 3 * blocks + 2 * head + blocks  # forward, backward, blocks again
        probe += one
        grasp += one
        largest = max(largest, (one, name[: -len(".yaml")]))
    total = probe + grasp
    print(f"{len(names)} decoders at {a.batch} x {a.seq_len} tokens")
    print(f"probes: {probe / 1e12:.1f} TFLOP, GraSP passes: {grasp / 1e12:.1f} TFLOP, "
          f"total {total / 1e12:.1f} TFLOP (matrix products only: a lower bound)")
    print(f"largest probe: {largest[1]}, {largest[0] / 1e9:.0f} GFLOP")
    for rate in a.rate:
        print(f"at {rate:.0f} GFLOP/s: {total / rate / 1e9 / 60:.1f} min")


if __name__ == "__main__":
    main()
