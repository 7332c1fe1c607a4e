"""Rank statistics shared by the analysis scripts (standard library only).

Ranks average ties; Spearman ρ is the Pearson correlation of ranks; Kendall τ is τ-b. They
match lpzero's `stats` module on the same values.
"""

import math


def ranks(values):
    """Ranks from 0, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def spearman(a, b):
    return pearson(ranks(a), ranks(b))


def kendall(a, b):
    """Kendall τ-b."""
    concordant = discordant = only_a = only_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            x = (a[i] > a[j]) - (a[i] < a[j])
            y = (b[i] > b[j]) - (b[i] < b[j])
            if x == 0 and y == 0:
                continue
            if x == 0:
                only_b += 1
            elif y == 0:
                only_a += 1
            elif x == y:
                concordant += 1
            else:
                discordant += 1
    n_a = concordant + discordant + only_a
    n_b = concordant + discordant + only_b
    return (concordant - discordant) / math.sqrt(n_a * n_b) if n_a and n_b else float("nan")
