#!/usr/bin/env python3
"""PyTorch side of bench/unet_vs_pytorch.sh: the same UNet3D (MGSD-SPEC §2) on CPU.

usage: unet_vs_pytorch.py <fwdbwd|fwd> D H W [width] [iters]
Prints `mode=.. size=.. width=.. secs=<median> cpu_secs=<per iteration> peak_rss_mb=..` like
the Rust example.
"""

import importlib.util
import os
import resource
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "gen", os.path.join(HERE, "..", "crates", "mgsd-nn", "fixtures", "gen_conv_unet.py"))
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def main():
    mode, d, h, w = sys.argv[1], *map(int, sys.argv[2:5])
    width = int(sys.argv[5]) if len(sys.argv) > 5 else 16
    iters = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    net = gen.UNet3D(c=width)
    x = torch.rand(1, 4, d, h, w)
    times = []
    cpu0 = 0.0
    if mode == "fwdbwd":
        net.train()
        r = torch.rand(1, 3, d, h, w) * 2 - 1
        for i in range(iters + 1):
            t = time.perf_counter()
            out = net(x)[0]
            (out * r).sum().backward()
            net.zero_grad(set_to_none=True)
            if i > 0:
                times.append(time.perf_counter() - t)
            else:
                cpu0 = time.process_time()
    elif mode == "fwd":
        net.eval()
        with torch.no_grad():
            for i in range(iters + 1):
                t = time.perf_counter()
                out = net(x)
                del out
                if i > 0:
                    times.append(time.perf_counter() - t)
                else:
                    cpu0 = time.process_time()
    else:
        sys.exit(f"unknown mode {mode}")
    cpu = (time.process_time() - cpu0) / iters
    times.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mode={mode} size={d}x{h}x{w} width={width} secs={times[len(times) // 2]:.4f} "
          f"cpu_secs={cpu:.4f} "
          f"peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
