#!/usr/bin/env python3
"""Held-out comparison of a study's searched proxies with the baselines, from a score table.

`lpzero study` judges each split's searched proxy at the probe the study ran. This script
judges them again from any `lpzero score --out FILE` table (for example at another probe)
whose columns are proxies named as lpzero names them: for each split of STUDY_DIR (its
`split_S/summary.json` names the 50 fitness architectures and the searched proxy, `best`),
on the split's held-out architectures, the Spearman ρ and Kendall τ-b of the searched proxy,
of the best single baseline, and of the pair ensemble chosen on the fitness set exactly as
`lpzero study` chooses it (the two oriented baselines whose rank sum has the highest ρ there;
ties keep the first pair in column order). Every column that is not a hall-of-fame entry of
some split is a baseline. When the table holds a split's whole hall of fame
(`split_S/hall_of_fame.json`), the hall-of-fame ensemble (entries taken greedily on the
fitness set, at most 5, as lpzero does) and the combined ensemble (its members and the pair's
two baselines) are judged too. The complement ensemble (the searched proxy and the pair's two
baselines, ranks summed) is judged always.

Usage: python3 scripts/heldout_from_scores.py SCORES.csv STUDY_DIR [--lower NAME ...]
  --lower: baselines where a lower value is better (default: lpzero_gpt2 grasp).
Prints a Markdown table. No third-party package is needed.
"""

import argparse
import csv
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rankstats import kendall, ranks, spearman  # noqa: E402


def oriented(values, lower):
    """Higher is better; NaN and ±Inf rank last."""
    sign = -1.0 if lower else 1.0
    return [sign * v if math.isfinite(v) else -math.inf for v in values]


def rank_sum(columns):
    """Sum of each column's ranks."""
    return [sum(t) for t in zip(*(ranks(c) for c in columns))]


def greedy(truth, columns, max_k):
    """lpzero's greedy rank-sum ensemble: add the column that raises ρ most while it rises."""
    chosen, best = [], -math.inf
    while len(chosen) < max_k:
        step = None
        for c in range(len(columns)):
            if c in chosen:
                continue
            rho = spearman(rank_sum([columns[i] for i in chosen] + [columns[c]]), truth)
            if math.isfinite(rho) and (step is None or rho > step[1]):
                step = (c, rho)
        if step is None or step[1] <= best:
            break
        chosen.append(step[0])
        best = step[1]
    return chosen


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scores")
    p.add_argument("study_dir")
    p.add_argument("--lower", nargs="*", default=["lpzero_gpt2", "grasp"])
    a = p.parse_args()
    with open(a.scores, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "truth" not in rows[0]:
        sys.exit(f"{a.scores}: expected a score table with an `id` and a `truth` column")
    ids = [r["id"] for r in rows]
    truth = [float(r["truth"]) for r in rows]
    values = {c: [float(r[c]) for r in rows] for c in rows[0] if c not in ("id", "truth")}
    splits = sorted(
        int(d[len("split_"):])
        for d in os.listdir(a.study_dir)
        if d.startswith("split_") and d[len("split_"):].isdigit()
    )
    studies = {}
    for s in splits:
        folder = os.path.join(a.study_dir, f"split_{s}")
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        with open(os.path.join(folder, "hall_of_fame.json"), encoding="utf-8") as f:
            hall = [h["expr"] for h in json.load(f)]
        if summary["best"] not in values:
            sys.exit(f"{a.scores}: no column for split {s}'s searched proxy {summary['best']}")
        studies[s] = (set(summary["fitness_archs"]), summary["best"], hall)
    searched_names = {n for _, best, hall in studies.values() for n in [best, *hall]}
    baselines = {c: oriented(v, c in a.lower) for c, v in values.items() if c not in searched_names}
    names = list(baselines)
    pick = lambda v, idx: [v[i] for i in idx]  # noqa: E731
    print("| split | searched ρ / τ | best single baseline ρ | pair ensemble (members) | its ρ / τ "
          "| hall-of-fame ensemble ρ / τ | combined ρ / τ | complement ρ / τ |")
    print("|---|---|---|---|---|---|---|---|")
    sums = {}
    for s in splits:
        fitness, best_expr, hall = studies[s]
        fit = [i for i, key in enumerate(ids) if key in fitness]
        held = [i for i, key in enumerate(ids) if key not in fitness]
        if len(fit) != len(fitness):
            sys.exit(f"split {s}: fitness_archs names architectures missing from {a.scores}")
        best = None
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                summed = rank_sum([pick(baselines[names[i]], fit), pick(baselines[names[j]], fit)])
                rho = spearman(summed, pick(truth, fit))
                if not math.isnan(rho) and (best is None or rho > best[0]):
                    best = (rho, names[i], names[j])
        _, m1, m2 = best
        t = pick(truth, held)
        judged = {
            "searched": pick(values[best_expr], held),
            "pair": rank_sum([pick(baselines[m1], held), pick(baselines[m2], held)]),
            "complement": rank_sum([oriented(pick(values[best_expr], held), False),
                                    pick(baselines[m1], held), pick(baselines[m2], held)]),
        }
        if all(h in values for h in hall):
            hall_cols = [oriented(values[h], False) for h in hall]
            members = greedy(pick(truth, fit), [pick(c, fit) for c in hall_cols], 5)
            chosen = [pick(hall_cols[m], held) for m in members]
            judged["hall"] = rank_sum(chosen)
            judged["combined"] = rank_sum(chosen + [pick(baselines[m1], held),
                                                    pick(baselines[m2], held)])
        corr = {k: (spearman(v, t), kendall(v, t)) for k, v in judged.items()}
        single, single_name = max((spearman(pick(v, held), t), n) for n, v in baselines.items())
        corr["single"] = (single, math.nan)
        for k, (rho, tau) in corr.items():
            sums.setdefault(k, []).append((rho, tau))
        show = lambda k: "–" if k not in corr else f"{corr[k][0]:.4f} / {corr[k][1]:.4f}"  # noqa: E731
        print(f"| {s} | {show('searched')} | {single:.4f} ({single_name}) | {m1} + {m2} | "
              f"{show('pair')} | {show('hall')} | {show('combined')} | {show('complement')} |")
    print()
    pair = [r for r, _ in sums["pair"]]
    single = [r for r, _ in sums["single"]]
    for k, label in [("searched", "searched proxy"), ("hall", "hall-of-fame ensemble"),
                     ("combined", "combined ensemble"), ("complement", "complement ensemble"),
                     ("pair", "pair ensemble"),
                     ("single", "best single baseline")]:
        if len(sums.get(k, [])) != len(splits):
            continue
        rhos = [r for r, _ in sums[k]]
        taus = [t for _, t in sums[k]]
        line = f"- {label}: mean ρ {sum(rhos) / len(rhos):.4f}"
        if k != "single":
            line += f", τ {sum(taus) / len(taus):.4f}"
        if k not in ("pair", "single"):
            above = sum(r > p for r, p in zip(rhos, pair))
            both = sum(r > max(p, b) for r, p, b in zip(rhos, pair, single))
            line += (f"; above the pair ensemble on {above} of {len(splits)}, above it and the "
                     f"best single baseline on {both} of {len(splits)}")
        print(line)


if __name__ == "__main__":
    main()
