#!/usr/bin/env python3
"""Summarises the JSON Lines of the `term-gradients` example (mgsd-train) as Markdown tables.

    python3 bench/term_gradients_table.py runs/findings/demo-reference.jsonl [--steps 0,100,200] \
        [--table2-every 80]

Table 1: per term, its weight, its value and the L2 norm of its (unweighted) gradient on the
U-Net, on the MMD heads (all modality-level groups together) and on the Mutiaxis heads, at
the chosen steps (default: the first, a quarter, half, and the last measured step), and
the maximum over all measured steps. Table 2: the modality term over the whole run, with the
L2 norm of the modality level's attention weights.
"""

import json
import math
import sys

MMD = ["mmd_extractor", "mmd_conv_down", "mmd_attention", "mmd_feed_forward"]


def mmd_norm(n):
    return math.sqrt(sum(n.get(g, 0.0) ** 2 for g in MMD))


def main():
    path = sys.argv[1]
    rows = [json.loads(l) for l in open(path) if l.strip()]
    steps = [r["step"] for r in rows]
    if "--steps" in sys.argv:
        want = [int(s) for s in sys.argv[sys.argv.index("--steps") + 1].split(",")]
    else:
        want = sorted({steps[0], steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]})
    pick = [r for r in rows if r["step"] in want]
    terms = [t for t in ["sup_full", "sup_miss", "image", "feature", "modality", "adv_gen", "total", "disc"] if t in rows[0]["values"]]
    print(f"{path}: {len(rows)} measurements, steps {steps[0]}..{steps[-1]}\n")
    head = "| term | weight | " + " | ".join(f"step {r['step']}: value / ‖∇U-Net‖ / ‖∇MMD‖ / ‖∇Mutiaxis‖" for r in pick) + " | max over run: max abs value / ‖∇U-Net‖ / ‖∇MMD‖ |"
    print(head)
    print("|" + "---|" * (3 + len(pick)))
    for t in terms:
        cells = []
        for r in pick:
            n = r["grad_norms"][t]
            cells.append(f"{r['values'][t]:.2e} / {n['unet']:.1e} / {mmd_norm(n):.1e} / {n['mutiaxis']:.1e}")
        mv = max(abs(r["values"][t]) for r in rows)
        mu = max(r["grad_norms"][t]["unet"] for r in rows)
        mm = max(mmd_norm(r["grad_norms"][t]) for r in rows)
        tail = f"{mv:.2e} / {mu:.1e} / {mm:.1e}"
        if t == "disc":
            cells = [f"{r['values'][t]:.2e} / ‖∇D‖ {r['grad_norms'][t]['discriminator']:.1e}" for r in pick]
            tail = f"{mv:.2e} / ‖∇D‖ {max(r['grad_norms'][t]['discriminator'] for r in rows):.1e}"
        print(f"| {t} | {rows[0]['weights'][t]:g} | " + " | ".join(cells) + f" | {tail} |")
    print("\nModality term over the run (weighted share of the U-Net gradient: "
          "150·‖∇U-Net L_mod‖ / ‖∇U-Net total‖):\n")
    print("| step | subset | L_mod | ‖∇U-Net‖ | ‖∇attn‖ | ‖∇extractor‖ | ‖∇conv_down‖ | ‖∇ff‖ | share | ‖attention weights‖ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    every = int(sys.argv[sys.argv.index("--table2-every") + 1]) if "--table2-every" in sys.argv else 1
    for r in rows:
        if r["step"] % every != 0 and r is not rows[-1]:
            continue
        n = r["grad_norms"]["modality"]
        w = r["weights"]["modality"]
        share = w * n["unet"] / max(r["grad_norms"]["total"]["unet"], 1e-300)
        print(f"| {r['step']} | {r['subset']} | {r['values']['modality']:.2e} | {n['unet']:.1e} | {n['mmd_attention']:.1e} | "
              f"{n['mmd_extractor']:.1e} | {n['mmd_conv_down']:.1e} | {n['mmd_feed_forward']:.1e} | {share:.1e} | "
              f"{r.get('param_norms', {}).get('mmd_attention', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
