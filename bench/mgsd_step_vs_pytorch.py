#!/usr/bin/env python3
"""One full MGSD training step in PyTorch (CPU or CUDA, eager): the twin of
`crates/mgsd-distill/examples/step-bench.rs`. Uses the reference-equivalent modules of
`crates/mgsd-distill/fixtures/gen_mgsd.py` (written from MGSD-SPEC).

Step = EMA teacher forward (no grad) + two student passes + MMD + Mutiaxis_fuse heads + style
discriminator generator term, backward, Adam step, EMA update, discriminator loss, backward,
Adam step. Prints one JSON object with the median step time (and, on CUDA, the peak memory
PyTorch's allocator held). On CUDA, PyTorch's defaults stay: cuDNN heuristics (benchmark off),
TF32 allowed in convolutions. `--amp bf16` runs the step under `torch.autocast(dtype=bfloat16)`
(the twin of `step-bench --precision bf16`); `--channels-last` converts the model and the input
to `torch.channels_last_3d`; `--cudnn-benchmark` sets `torch.backends.cudnn.benchmark`.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "mgsd-distill", "fixtures"))
import gen_mgsd as g  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--patch", default="64,64,32")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", default="off", choices=["off", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    if a.amp != "off" and a.device != "cuda":
        ap.error("--amp bf16 needs --device cuda")
    torch.set_num_threads(a.threads)
    patch = tuple(int(s) for s in a.patch.split(","))
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = g.MGSDModel(a.width, patch).train().to(dev)
    disc = g.style_discriminator().train().to(dev)
    student = [p for n, p in model.named_parameters() if not n.startswith("ema_model.")]
    for p in model.ema_model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(student, lr=1e-4, weight_decay=1e-5)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99))
    x = torch.rand(1, 4, *patch, device=dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        disc = disc.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = (torch.rand(1, 3, *patch, device=dev) > 0.8).float()
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16"):
            t = g.terms(model, disc, x, y, r)
        opt.zero_grad(set_to_none=True)
        t["total"].backward()
        opt.step()
        alpha = min(1 - 1 / (step + 1), 0.99)
        with torch.no_grad():
            for pe, ps in zip(model.ema_model.parameters(), model.unet.parameters()):
                pe.mul_(alpha).add_(ps, alpha=1 - alpha)
        opt_d.zero_grad(set_to_none=True)
        t["disc"].backward()
        opt_d.step()
        sync()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
    med = sorted(times)[len(times) // 2]
    out = {"impl": "pytorch", "torch": torch.__version__, "device": a.device, "threads": a.threads,
           "width": a.width, "patch": list(patch), "amp": a.amp, "channels_last": a.channels_last,
           "cudnn_benchmark": a.cudnn_benchmark,
           "median_s": round(med, 4), "steps_s": times}
    if dev.type == "cuda":
        out["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        out["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
