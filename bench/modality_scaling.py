#!/usr/bin/env python3
"""Why MGSD's modality term vanishes: its value and gradients at PyTorch's default
initialisation, for several U-Net widths and patches, and how they scale with the attention
weights (the PyTorch model of `crates/mgsd-distill/fixtures/gen_mgsd.py`, written from
MGSD-SPEC; float64).

    python3 bench/modality_scaling.py [--threads 2] [--reference-patch]

For each (variant, c, patch): L_mod at default init (gain 1) and with every attention weight
(`layers.0.0.*.weight`) multiplied by 2, and the log2 ratio (the term's degree in the attention
scale); ‖∂L_mod/∂θ‖ for the U-Net and the MMD groups; the RMS of the style map, of the
conv_down output, of the modality tokens and of the blocks B_i. Input: uniform noise in [0, 1]
(min-max-normalised scale), mask r = (1, 0, 1, 0) (T1, FLAIR present).
"""

import argparse
import importlib.util
import math
import os

import torch

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "gen_mgsd", os.path.join(here, "..", "crates", "mgsd-distill", "fixtures", "gen_mgsd.py")
)
g = importlib.util.module_from_spec(spec)
spec.loader.exec_module(g)


def rms(t):
    return float(t.pow(2).mean().sqrt())


def group(name):
    if name.startswith("unet."):
        return "unet"
    if ".layers.0.0." in name:
        return "attn"
    if ".layers.0.1." in name:
        return "ff"
    if name.startswith("MMD.extra_fea."):
        return "extractor"
    if name.startswith("MMD.conv_down."):
        return "conv_down"
    return None


def measure(c, patch, variant, gain, seed=0, unet_grad=True):
    g.VARIANT = variant
    torch.manual_seed(seed)
    m = g.MGSDModel(c, patch).double().eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".layers.0.0." in n and n.endswith("weight"):
                p.mul_(gain)
    x = torch.rand(1, 4, *patch, dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    if unet_grad:
        _, style_f, *_ = m.unet(x)
        _, style_m, *_ = m.unet(x * r.reshape(1, 4, 1, 1, 1))
    else:
        # Large patches: the U-Net in float32 without a graph (no U-Net gradient reported).
        with torch.no_grad():
            u = m.unet.float()
            style_f = u(x.float())[1].double()
            style_m = u((x * r.reshape(1, 4, 1, 1, 1)).float())[1].double()
    loss = m.MMD(style_f, style_m, x, r)
    loss.backward()
    norms = {}
    for n, p in m.named_parameters():
        k = group(n)
        if k and p.grad is not None:
            norms[k] = norms.get(k, 0.0) + float(p.grad.pow(2).sum())
    with torch.no_grad():
        down = m.MMD.conv_down(style_f)
        tok = [m.MMD.extra_fea(x[:, i : i + 1]) for i in range(4)]
        blocks = m.MMD.get_modality_tokens(down, tok)
    scales = {
        "style": rms(style_f),
        "conv_down": rms(down),
        "tokens": rms(torch.stack(tok)),
        "tokens_vary": float(torch.stack(tok).std(dim=0).mean()),
        "B": rms(torch.stack(blocks)),
    }
    return float(loss), {k: math.sqrt(v) for k, v in norms.items()}, scales


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-patch", action="store_true", help="also c = 16 at 160×192×128 (slow; no U-Net gradient)")
    ap.add_argument("--only-reference-patch", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| variant | c | patch | G | L_mod | L_mod (attn ×2) | log2 ratio | ‖∇U-Net‖ | ‖∇attn‖ | ‖∇extractor‖ | ‖∇ff‖ | rms style | rms conv_down | rms tokens | token spread over modalities | rms B |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in ["reference", "prenorm"]:
        sizes = [(8, (32, 32, 32)), (8, (64, 64, 32)), (8, (64, 64, 64)), (16, (64, 64, 64)), (16, (96, 96, 96))]
        if args.only_reference_patch:
            sizes = []
        if args.reference_patch or args.only_reference_patch:
            sizes.append((16, (160, 192, 128)))
        for c, patch in sizes:
            big = patch == (160, 192, 128)
            try:
                l1, n1, s = measure(c, patch, variant, 1.0, unet_grad=not big)
            except ValueError as e:
                # A 1 × 1 × 1 token grid: PyTorch's GroupNorm refuses a single value per group.
                print(f"| {variant} | {c} | {'×'.join(map(str, patch))} | 1×1×1 | PyTorch: {e} |", flush=True)
                continue
            l2, _, _ = measure(c, patch, variant, 2.0, unet_grad=not big)
            ratio = math.log2(l2 / l1) if l1 > 0 and l2 > 0 else float("nan")
            grid = "×".join(str(max(1, p // 32)) for p in patch)
            print(
                f"| {variant} | {c} | {'×'.join(map(str, patch))} | {grid} | {l1:.2e} | {l2:.2e} | {ratio:.1f} | "
                f"{n1.get('unet', 0):.1e} | {n1.get('attn', 0):.1e} | {n1.get('extractor', 0):.1e} | {n1.get('ff', 0):.1e} | "
                f"{s['style']:.2e} | {s['conv_down']:.2e} | {s['tokens']:.2e} | {s['tokens_vary']:.1e} | {s['B']:.2e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
