#!/usr/bin/env python3
"""Agreement of proxy values computed from bf16-stored probes with the f32 ones.

Reads two `lpzero score --out` tables of the same architectures and proxies, one made with
`--probe-storage f32` and one with `--probe-storage bf16`, and prints per proxy the Spearman
correlation between the two value columns, the largest relative difference, and each
column's Spearman against the ground truth. Standard library only.

    python3 benches/storage_agreement.py F32.csv BF16.csv [--json OUT.json]
"""
import csv
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from rankstats import spearman as rank_spearman  # noqa: E402


def spearman(a, b):
    """Spearman ρ over the items where both values are finite (NaN below three)."""
    keep = [i for i in range(len(a)) if math.isfinite(a[i]) and math.isfinite(b[i])]
    if len(keep) < 3:
        return float("nan")
    return rank_spearman([a[i] for i in keep], [b[i] for i in keep])


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no rows")
    return rows


def num(s):
    try:
        return float(s)
    except ValueError:
        return float("nan")


def main():
    args = sys.argv[1:]
    out = None
    if "--json" in args:
        k = args.index("--json")
        out = args[k + 1]
        del args[k : k + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    full, half = read(args[0]), read(args[1])
    if [r["id"] for r in full] != [r["id"] for r in half]:
        sys.exit("the two tables list different architectures")
    names = [c for c in full[0].keys() if c not in ("id", "truth")]
    missing = [n for n in names if n not in half[0]]
    if missing:
        sys.exit(f"{args[1]}: missing columns {missing}")
    truth = [num(r["truth"]) for r in full]
    report = []
    for n in names:
        a = [num(r[n]) for r in full]
        b = [num(r[n]) for r in half]
        rel = max(
            (abs(x - y) / max(abs(x), 1e-300) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)),
            default=float("nan"),
        )
        report.append(
            {
                "proxy": n,
                "agreement_spearman": spearman(a, b),
                "max_relative_difference": rel,
                "nan_f32": sum(not math.isfinite(x) for x in a),
                "nan_bf16": sum(not math.isfinite(y) for y in b),
                "truth_spearman_f32": spearman(a, truth),
                "truth_spearman_bf16": spearman(b, truth),
            }
        )
    w = max(len(r["proxy"]) for r in report)
    w = min(w, 60)
    print(f"{'proxy':<{w}}  agree ρ  max rel diff  ρ truth f32  ρ truth bf16  non-finite f32/bf16")
    for r in report:
        name = r["proxy"] if len(r["proxy"]) <= w else r["proxy"][: w - 1] + "…"
        print(
            f"{name:<{w}}  {r['agreement_spearman']:.5f}  {r['max_relative_difference']:.2e}"
            f"      {r['truth_spearman_f32']:+.4f}      {r['truth_spearman_bf16']:+.4f}"
            f"  {r['nan_f32']}/{r['nan_bf16']}"
        )
    finite = [r["agreement_spearman"] for r in report if math.isfinite(r["agreement_spearman"])]
    print(f"minimum agreement ρ over {len(finite)} proxies: {min(finite):.5f}")
    if out:
        with open(out + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        import os

        os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
