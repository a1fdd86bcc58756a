#!/usr/bin/env python3
"""Aggregates bench/ablation.sh's runs into the ablation table (Markdown on stdout).

    python3 bench/ablation_table.py runs/ablation

For each config (a folder of `seed<N>/eval.json`, `mgsd-train`'s 15-subset table on the
held-out cases): the mean Dice over the 15 subsets per seed, then mean ± sample std over
seeds, for WT, TC and ET; the full-set row likewise. Each config is compared with
`a-dropout` on the seeds both have: the mean paired difference, a paired t-test over seeds
(n = seeds) and a Wilcoxon signed-rank test over the (seed, subset) pairs (n = 15 × seeds;
the subsets of one seed are not independent, so read it as descriptive). p-values need
scipy; without it they are left out. Standard library otherwise.
"""

import json
import math
import os
import re
import sys

REGIONS = ["WT", "TC", "ET"]
BASELINE = "a-dropout"
FULL = "FLAIR+T1ce+T1+T2"


def epochs_of(run_dir):
    """The epochs of a run (its resolved config.toml), or '?'."""
    try:
        with open(os.path.join(run_dir, "config.toml")) as f:
            m = re.search(r"^epochs = (\d+)$", f.read(), re.M)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def load(root):
    runs, budgets = {}, {}
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        for s in sorted(os.listdir(d)):
            p = os.path.join(d, s, "eval.json")
            if s.startswith("seed") and os.path.isfile(p):
                with open(p) as f:
                    rep = json.load(f)
                rows = {r["subset"]: [100.0 * v for v in r["dice"]] for r in rep["rows"]}
                runs.setdefault(name, {})[int(s[4:])] = rows
                budgets.setdefault(name, set()).add(epochs_of(os.path.join(d, s)))
    return runs, budgets


def mean(v):
    return sum(v) / len(v)


def std(v):
    if len(v) < 2:
        return float("nan")
    m = mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def subset_mean(rows, k):
    return mean([r[k] for r in rows.values()])


def full_row(rows, k):
    for name, r in rows.items():
        if sorted(name.split("+")) == sorted(FULL.split("+")):
            return r[k]
    return float("nan")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "runs/ablation"
    runs, budgets = load(root)
    if not runs:
        print(f"no finished run under {root}")
        return
    try:
        from scipy import stats
    except ImportError:  # p-values need scipy
        stats = None
    print(f"Dice (%) on the held-out synthetic cases, last checkpoint; mean over seeds ± std.\n")
    print("| config | epochs | seeds | mean WT | mean TC | mean ET | full WT | full TC | full ET |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seeds in runs.items():
        cells = []
        for f in (subset_mean, full_row):
            for k in range(3):
                v = [f(rows, k) for rows in seeds.values()]
                cells.append(f"{mean(v):.1f} ± {std(v):.1f}")
        ep = ",".join(sorted(budgets[name]))
        print(f"| {name} | {ep} | {','.join(map(str, sorted(seeds)))} | " + " | ".join(cells) + " |")
    base = runs.get(BASELINE)
    if not base:
        return
    print(f"\nPaired against {BASELINE} (Δ = config − {BASELINE}, 15-subset mean, same seeds):\n")
    print("| config | seeds | Δ WT | Δ TC | Δ ET | p (t, seeds) WT/TC/ET | p (Wilcoxon, seed×subset) WT/TC/ET |")
    print("|---|---|---|---|---|---|---|")
    for name, seeds in runs.items():
        if name == BASELINE:
            continue
        common = sorted(set(seeds) & set(base))
        if not common:
            continue
        deltas, pt, pw = [], [], []
        for k in range(3):
            d = [subset_mean(seeds[s], k) - subset_mean(base[s], k) for s in common]
            deltas.append(f"{mean(d):+.1f} ± {std(d):.1f}")
            pairs = [
                (seeds[s][sub][k], base[s][sub][k]) for s in common for sub in seeds[s] if sub in base[s]
            ]
            if stats is not None and len(common) >= 2:
                pt.append(f"{stats.ttest_rel([subset_mean(seeds[s], k) for s in common], [subset_mean(base[s], k) for s in common]).pvalue:.3f}")
            else:
                pt.append("–")
            if stats is not None and any(a != b for a, b in pairs):
                pw.append(f"{stats.wilcoxon([a for a, _ in pairs], [b for _, b in pairs]).pvalue:.2g}")
            else:
                pw.append("–")
        print(f"| {name} | {','.join(map(str, common))} | " + " | ".join(deltas) + f" | {' / '.join(pt)} | {' / '.join(pw)} |")


if __name__ == "__main__":
    main()
