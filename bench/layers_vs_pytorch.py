"""Times mgsd-nn's layer ops against PyTorch on the CPU, both on the same thread count, in one
run, and prints the ratio ours / PyTorch (< 1 means we are faster).

    python bench/layers_vs_pytorch.py [--threads 2] [--reps 10] [--workspace .] [--only conv_,gn]

Ours: `cargo run --release -p mgsd-nn --example layers_bench` (RAYON_NUM_THREADS=threads).
PyTorch: the same cases, forward and forward + backward of sum(y * r), median of `reps` runs.
"""

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(reps, f):
    f()
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        f()
        t.append((time.perf_counter() - s) * 1e3)
    return statistics.median(t)


ONLY = []  # substrings of the case names to run (--only); empty: all


def case(name, reps, inputs, op, out):
    if ONLY and not any(o in name for o in ONLY):
        return
    y = op(*inputs)
    r = torch.rand_like(y) * 2 - 1

    def fwd():
        with torch.no_grad():
            op(*inputs)

    def fwdbwd():
        for t in inputs:
            t.grad = None
        (op(*inputs) * r).sum().backward()

    out[f"{name}.fwd"] = timed(reps, fwd)
    out[f"{name}.fwdbwd"] = timed(reps, fwdbwd)


def attention(q, k, v, scale, softmax):
    # The reference's einsum attention (MGSD-SPEC §5).
    dots = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    attn = dots.softmax(dim=-1) if softmax else dots
    return torch.einsum("bhij,bhjd->bhid", attn, v)


def pytorch(reps):
    out = {}
    rnd = lambda *s: (torch.rand(*s) * 2 - 1).requires_grad_(True)
    x = rnd(1, 32, 64, 64, 64)
    # The bookkeeping of sum(y * r) alone: subtract it from the fwd+bwd of the other cases.
    case("baseline_identity", reps, [x], lambda x: x, out)
    g = torch.ones(32, requires_grad=True)
    b = torch.zeros(32, requires_grad=True)
    gn_relu = lambda x, g, b: F.relu(F.group_norm(x, 8, g, b, 1e-5), inplace=True)
    case("group_norm_relu", reps, [x, g, b], gn_relu, out)
    case("group_norm", reps, [x, g, b], lambda x, g, b: F.group_norm(x, 8, g, b, 1e-5), out)
    case("max_pool3d", reps, [x], lambda x: F.max_pool3d(x, 2), out)
    small = rnd(1, 32, 32, 32, 32)
    up_add = lambda a, s: F.interpolate(a, scale_factor=2, mode="nearest") + s
    case("upsample2x_add", reps, [small, x], up_add, out)
    case("adaptive_pool_2x2x2", reps, [x], lambda x: F.adaptive_avg_pool3d(x, (2, 2, 2)), out)
    case("adaptive_pool_1x1xW", reps, [x], lambda x: F.adaptive_avg_pool3d(x, (1, 1, 64)), out)
    case("leaky_relu", reps, [x], lambda x: F.leaky_relu(x, 0.2), out)
    # The convolutions of one MGSD step (c = 16, 64x64x32 patch, batch 2), as layers_bench.rs.
    convs = [
        ("conv_k3_4to16_64x64x32", 4, 16, 3, 1, 1, (64, 64, 32)),
        ("conv_k3_16to16_64x64x32", 16, 16, 3, 1, 1, (64, 64, 32)),
        ("conv_k3s2_16to32_64x64x32", 16, 32, 3, 2, 1, (64, 64, 32)),
        ("conv_k3_32to32_32x32x16", 32, 32, 3, 1, 1, (32, 32, 16)),
        ("conv_k3_64to64_16x16x8", 64, 64, 3, 1, 1, (16, 16, 8)),
        ("conv_k3_128to128_8x8x4", 128, 128, 3, 1, 1, (8, 8, 4)),
        ("conv_k1_16to3_64x64x32", 16, 3, 1, 1, 0, (64, 64, 32)),
        ("conv_k4s2_3to64_64x64x32", 3, 64, 4, 2, 1, (64, 64, 32)),
        ("conv_k4s2_64to128_32x32x16", 64, 128, 4, 2, 1, (32, 32, 16)),
        ("conv_k4s2_128to256_16x16x8", 128, 256, 4, 2, 1, (16, 16, 8)),
    ]
    for name, cin, cout, k, stride, padding, dhw in convs:
        conv = lambda x, w, b, s=stride, p=padding: F.conv3d(x, w, b, stride=s, padding=p)
        case(name, reps, [rnd(2, cin, *dhw), rnd(cout, cin, k, k, k), rnd(cout)], conv, out)
    q, k, v = rnd(1, 16, 7680, 32), rnd(1, 16, 120, 32), rnd(1, 16, 120, 32)
    s = 32**-0.5
    case("attention_nosoftmax", reps, [q, k, v], lambda q, k, v: attention(q, k, v, s, False), out)
    case("attention_softmax", reps, [q, k, v], lambda q, k, v: attention(q, k, v, s, True), out)
    return out


def ours(workspace, threads, reps, only):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "run", "--quiet", "--release", "-p", "mgsd-nn", "--example", "layers_bench", "--", str(reps), only]
    text = subprocess.run(cmd, cwd=workspace, env=env, check=True, capture_output=True, text=True).stdout
    return {k: float(v) for k, v in (line.split("\t") for line in text.splitlines() if "\t" in line)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--workspace", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--only", default="", help="comma-separated substrings of the case names to run")
    a = p.parse_args()
    ONLY.extend(o for o in a.only.split(",") if o)
    torch.set_num_threads(a.threads)
    mine = ours(a.workspace, a.threads, a.reps, a.only)
    theirs = pytorch(a.reps)
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.reps}")
    print(f"{'case':32} {'mgsd-nn ms':>11} {'pytorch ms':>11} {'ratio':>7}")
    for name, t in theirs.items():
        m = mine.get(name, float("nan"))
        print(f"{name:32} {m:11.2f} {t:11.2f} {m / t:7.2f}")


if __name__ == "__main__":
    main()
