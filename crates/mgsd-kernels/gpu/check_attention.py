#!/usr/bin/env python3
"""GPU check and benchmark of mgsd-kernels' fused cross-attention PTX against PyTorch.

Loads the PTX that the crate embeds (built here by `nvcc -ptx`, carried to the GPU machine),
launches every kernel through the CUDA driver API (ctypes, torch's primary context, torch
tensors' device pointers), compares forward and backward with float64 PyTorch autograd
references, then times them against the MGSD reference's einsum attention and
`scaled_dot_product_attention` (CUDA events, warm-up, median).

    python3 check_attention.py --ptx ptx/ --out $OUT          # on the GPU machine
    python3 check_attention.py --ptx ptx/ --dry-run           # here, no CUDA: checks the PTX
        # entry signatures and launch geometry, and runs the whole flow on a CPU emulation of
        # the kernels' algorithms (tiles, online base-2 softmax, split accumulations)

The launch geometry below mirrors `src/launch.rs`; keep them in step. Run by hand, never in CI.
"""

import argparse
import ctypes
import json
import math
import os
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
TOL = {"f32": 1e-4, "bf16": 2e-2}


def cdiv(a, b):
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Launch geometry (mirror of src/launch.rs)
# ---------------------------------------------------------------------------------------------

OUTER_ROWS_TILE = 32
SM_THREADS = 128
APPLY_THREADS = 256
PRE_THREADS = 256
CAST_THREADS = 256


def tpq(dh):
    return dh // 32


def key_tile(dh):
    return 128 if dh == 32 else 64


def kname(op, dt, dh):
    return f"mgsd_attn_{op}_{dt}_d{dh}"


def plan_outer(bh, n, dh, num_sms, rows=None):
    threads = (dh // 4) ** 2
    if rows is None:  # about 1024 threads per multiprocessor, at least 128 rows per block
        per_head = max(1, min(cdiv(num_sms * (1024 // threads), bh), cdiv(n, 128)))
        rows = cdiv(cdiv(n, per_head), OUTER_ROWS_TILE) * OUTER_ROWS_TILE
    return dict(grid=(cdiv(n, rows), bh, 1), block=(threads, 1, 1), rows_per_block=rows)


APPLY_BF16_MAX_TILES = 8  # tensor-core apply: up to this many row tiles per block


def plan_apply(bh, n, dh, dt, num_sms):
    rt = (APPLY_THREADS // (dh // 8)) * 2
    tiles = cdiv(n, rt)
    per_block = 1
    if dt == "bf16":  # the kernel takes ceil(tiles / grid.x) tiles per block
        per_block = min(max(cdiv(tiles, cdiv(num_sms * 8, bh)), 1), APPLY_BF16_MAX_TILES)
    return dict(grid=(cdiv(tiles, per_block), bh, 1), block=(APPLY_THREADS, 1, 1), rows_tile=rt)


def plan_query_parallel(bh, nq, dh):
    qb = SM_THREADS // tpq(dh)
    return dict(grid=(cdiv(nq, qb), bh, 1), block=(SM_THREADS, 1, 1), queries_per_block=qb)


def plan_pre(rows, dh):
    rpb = PRE_THREADS // (dh // 4)
    return dict(grid=(cdiv(rows, rpb), 1, 1), block=(PRE_THREADS, 1, 1))


def plan_dkdv(bh, nq, nk, dh, num_sms):
    kb = SM_THREADS // tpq(dh)
    qt = key_tile(dh)
    kblocks = cdiv(nk, kb)
    split = max(1, min(cdiv(2 * num_sms, kblocks * bh), cdiv(nq, qt)))
    qpb = cdiv(cdiv(nq, split), qt) * qt
    return dict(grid=(kblocks, bh, cdiv(nq, qpb)), block=(SM_THREADS, 1, 1), q_per_block=qpb)


def plan_cast(n):
    return dict(grid=(max(1, min(cdiv(n, CAST_THREADS), 1 << 16)), 1, 1), block=(CAST_THREADS, 1, 1))


def check_plan(p):
    gx, gy, gz = p["grid"]
    assert 1 <= gx < 2**31 and 1 <= gy <= 65535 and 1 <= gz <= 65535, p
    assert 1 <= p["block"][0] <= 1024, p


# ---------------------------------------------------------------------------------------------
# PTX entry signatures
# ---------------------------------------------------------------------------------------------

# Argument kinds of every entry point: p = pointer (.u64), i = int (.u32), f = float (.f32).
SIGNATURES = {
    "outer": "pppiif",
    "apply": "pppifi",
    "sm_fwd": "pppppiif",
    "sm_bwd_pre": "pppi",
    "sm_bwd_dq": "pppppppiif",
    "sm_bwd_dkdv": "ppppppppiifi",
}
PTX_TYPE = {"p": ".u64", "i": ".u32", "f": ".f32"}


def ptx_entries(ptx):
    """Maps each `.entry` name of a PTX text to its list of parameter types."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S):
        out[m.group(1)] = re.findall(r"\.param\s+(\.\w+)", m.group(2))
    return out


def expected_entries():
    exp = {"mgsd_attn_cast_f32_bf16": "ppi"}
    for dt in DTYPES:
        for dh in (32, 64):
            for op, sig in SIGNATURES.items():
                exp[kname(op, dt, dh)] = sig
    return exp


def check_ptx_signatures(ptx, log):
    ents = ptx_entries(ptx)
    bad = []
    for name, sig in expected_entries().items():
        want = [PTX_TYPE[c] for c in sig]
        if ents.get(name) != want:
            bad.append(f"{name}: ptx {ents.get(name)} != expected {want}")
    version = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    log(f"ptx: .version {version.group(1) if version else '?'}, .target "
        f"{target.group(1) if target else '?'}, {len(ents)} entries, "
        f"{'signatures OK' if not bad else 'SIGNATURE MISMATCH'}")
    for b in bad:
        log("  " + b)
    return not bad


# ---------------------------------------------------------------------------------------------
# CUDA driver through ctypes
# ---------------------------------------------------------------------------------------------


class Driver:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.check(self.lib.cuInit(0), "cuInit")
        torch.cuda.init()
        torch.empty(1, device="cuda")  # makes torch's primary context current on this thread
        ctx = ctypes.c_void_p()
        self.check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:
            dev = ctypes.c_int()
            self.check(self.lib.cuDeviceGet(ctypes.byref(dev), torch.cuda.current_device()), "cuDeviceGet")
            self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
            self.check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self.ctx = ctx
        ver = ctypes.c_int()
        self.check(self.lib.cuDriverGetVersion(ctypes.byref(ver)), "cuDriverGetVersion")
        self.driver_version = ver.value
        self.lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]

    def err(self, res):
        s = ctypes.c_char_p()
        self.lib.cuGetErrorName(res, ctypes.byref(s))
        name = s.value.decode() if s.value else "?"
        self.lib.cuGetErrorString(res, ctypes.byref(s))
        return f"{res} {name}: {s.value.decode() if s.value else '?'}"

    def check(self, res, what):
        if res != 0:
            raise RuntimeError(f"{what} failed: {self.err(res)}")

    def load(self, image):
        """Loads PTX text or a cubin; returns (module handle, JIT log)."""
        if isinstance(image, str):
            image = image.encode() + b"\0"
        size = 1 << 16
        err_buf = ctypes.create_string_buffer(size)
        opts = (ctypes.c_int * 2)(5, 6)  # CU_JIT_ERROR_LOG_BUFFER, ..._SIZE_BYTES
        vals = (ctypes.c_void_p * 2)(ctypes.cast(err_buf, ctypes.c_void_p), ctypes.c_void_p(size))
        mod = ctypes.c_void_p()
        res = self.lib.cuModuleLoadDataEx(ctypes.byref(mod), ctypes.c_char_p(image), 2, opts, vals)
        return (mod if res == 0 else None), res, err_buf.value.decode(errors="replace")

    def function(self, mod, name):
        f = ctypes.c_void_p()
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()), f"cuModuleGetFunction {name}")
        return f

    def launch(self, f, grid, block, args, stream):
        holders = []
        for kind, val in args:
            if kind == "p":
                holders.append(ctypes.c_void_p(val.data_ptr()))
            elif kind == "i":
                holders.append(ctypes.c_int(int(val)))
            else:
                holders.append(ctypes.c_float(float(val)))
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        res = self.lib.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], 0,
                                      ctypes.c_void_p(stream), params, None)
        self.check(res, "cuLaunchKernel")

    def sync(self, what):
        self.check(self.lib.cuCtxSynchronize(), f"after {what}")


# ---------------------------------------------------------------------------------------------
# The fused ops: CUDA kernels, or a CPU emulation of the same algorithm (for --dry-run)
# ---------------------------------------------------------------------------------------------


def heads(t):
    b, h, n, dh = t.shape
    assert t.is_contiguous()
    return b * h, n, dh


class Ops:
    """Fused attention through the mgsd-kernels entry points (or their CPU emulation)."""

    def __init__(self, num_sms, drv=None, mod=None, sync_each=False, poison=False):
        self.num_sms, self.drv, self.mod = num_sms, drv, mod
        self.sync_each, self.poison = sync_each, poison
        self.fns = {}
        self.launch_log = []

    # -- plumbing
    def _empty(self, shape, dtype, like):
        if self.poison:
            return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
        return torch.empty(shape, dtype=dtype, device=like.device)

    def _run(self, name, plan, sig, args, emulate):
        check_plan(plan)
        assert len(sig) == len(args) and all(k == a[0] for k, a in zip(sig, args)), (name, sig, args)
        if self.drv is None:
            self.launch_log.append((name, plan["grid"], plan["block"]))
            emulate()
            return
        f = self.fns.get(name)
        if f is None:
            f = self.fns[name] = self.drv.function(self.mod, name)
        self.drv.launch(f, plan["grid"], plan["block"], args, torch.cuda.current_stream().cuda_stream)
        if self.sync_each:
            self.drv.sync(name)

    @staticmethod
    def _dt(t):
        return "f32" if t.dtype == torch.float32 else "bf16"

    # -- (a) no softmax
    def outer(self, a, b, out, alpha, rows=None):
        bh, n, dh = heads(a)
        p = plan_outer(bh, n, dh, self.num_sms, rows)

        def emu():
            a3 = a.reshape(bh, n, dh).double()
            b3 = b.reshape(bh, n, dh).double()
            for c in range(p["grid"][0]):
                s = slice(c * p["rows_per_block"], min(n, (c + 1) * p["rows_per_block"]))
                out.add_((alpha * a3[:, s].transpose(1, 2) @ b3[:, s]).float())

        self._run(kname("outer", self._dt(a), dh), p, SIGNATURES["outer"],
                  [("p", a), ("p", b), ("p", out), ("i", n), ("i", p["rows_per_block"]), ("f", alpha)], emu)

    def apply(self, x, m, out, alpha, transpose):
        bh, n, dh = heads(x)
        p = plan_apply(bh, n, dh, self._dt(x), self.num_sms)

        def emu():
            mm = m.double().transpose(1, 2) if transpose else m.double()
            r = alpha * (x.reshape(bh, n, dh).double() @ mm)
            out.copy_(r.reshape(out.shape).to(out.dtype))

        self._run(kname("apply", self._dt(x), dh), p, SIGNATURES["apply"],
                  [("p", x), ("p", m), ("p", out), ("i", n), ("f", alpha), ("i", int(transpose))], emu)

    def nosm_forward(self, q, k, v, scale):
        bh, nq, dh = heads(q)
        m = torch.zeros(bh, dh, dh, dtype=torch.float32, device=q.device)
        self.outer(k, v, m, 1.0)
        out = self._empty(q.shape, q.dtype, q)
        self.apply(q, m, out, scale, False)
        return out, m

    def nosm_backward(self, q, k, v, m, dout, scale):
        bh, nq, dh = heads(q)
        dm = torch.zeros(bh, dh, dh, dtype=torch.float32, device=q.device)
        self.outer(q, dout, dm, scale)
        dq = self._empty(q.shape, q.dtype, q)
        dk = self._empty(k.shape, k.dtype, k)
        dv = self._empty(v.shape, v.dtype, v)
        self.apply(dout, m, dq, scale, True)
        self.apply(v, dm, dk, 1.0, True)
        self.apply(k, dm, dv, 1.0, False)
        return dq, dk, dv

    # -- (b) softmax
    def sm_forward(self, q, k, v, scale):
        bh, nq, dh = heads(q)
        _, nk, _ = heads(k)
        out = self._empty(q.shape, q.dtype, q)
        lse = self._empty((bh, nq), torch.float32, q)
        p = plan_query_parallel(bh, nq, dh)

        def emu():
            q3 = q.reshape(bh, nq, dh).float().double() * (scale * LOG2E)
            k3 = k.reshape(bh, nk, dh).float().double()
            v3 = v.reshape(bh, nk, dh).float().double()
            mx = torch.full((bh, nq, 1), -math.inf, dtype=torch.float64)
            l = torch.zeros((bh, nq, 1), dtype=torch.float64)
            acc = torch.zeros((bh, nq, dh), dtype=torch.float64)
            kt = key_tile(dh)
            for t0 in range(0, nk, kt):
                for j0 in range(t0, min(nk, t0 + kt), 8):
                    j1 = min(j0 + 8, t0 + kt, nk)
                    s = q3 @ k3[:, j0:j1].transpose(1, 2)
                    mnew = torch.maximum(mx, s.amax(-1, keepdim=True))
                    corr = torch.exp2(mx - mnew)
                    pr = torch.exp2(s - mnew)
                    l = l * corr + pr.sum(-1, keepdim=True)
                    acc = acc * corr + pr @ v3[:, j0:j1]
                    mx = mnew
            out.copy_((acc / l).reshape(out.shape).to(out.dtype))
            lse.copy_(((mx + torch.log2(l)) * LN2).reshape(bh, nq).float())

        self._run(kname("sm_fwd", self._dt(q), dh), p, SIGNATURES["sm_fwd"],
                  [("p", q), ("p", k), ("p", v), ("p", out), ("p", lse), ("i", nq), ("i", nk), ("f", scale)], emu)
        return out, lse

    def sm_backward(self, q, k, v, out, lse, dout, scale):
        bh, nq, dh = heads(q)
        _, nk, _ = heads(k)
        dt = self._dt(q)
        dsum = self._empty((bh * nq,), torch.float32, q)
        pp = plan_pre(bh * nq, dh)

        def emu_pre():
            dsum.copy_((out.float().double() * dout.float().double()).sum(-1).reshape(-1).float())

        self._run(kname("sm_bwd_pre", dt, dh), pp, SIGNATURES["sm_bwd_pre"],
                  [("p", out), ("p", dout), ("p", dsum), ("i", bh * nq)], emu_pre)

        def probs(qs, dos, lses, dss):
            s = (qs * (scale * LOG2E)) @ k3.transpose(1, 2)
            pr = torch.exp2(s - lses.double().unsqueeze(-1) * LOG2E)
            ds = pr * (dos @ v3.transpose(1, 2) - dss.double().unsqueeze(-1))
            return pr, ds

        q3 = q.reshape(bh, nq, dh).float().double()
        k3 = k.reshape(bh, nk, dh).float().double()
        v3 = v.reshape(bh, nk, dh).float().double()
        do3 = dout.reshape(bh, nq, dh).float().double()

        dq = self._empty(q.shape, q.dtype, q)
        pq = plan_query_parallel(bh, nq, dh)

        def emu_dq():
            _, ds = probs(q3, do3, lse, dsum.reshape(bh, nq))
            dq.copy_((scale * ds @ k3).reshape(dq.shape).to(dq.dtype))

        self._run(kname("sm_bwd_dq", dt, dh), pq, SIGNATURES["sm_bwd_dq"],
                  [("p", q), ("p", k), ("p", v), ("p", dout), ("p", lse), ("p", dsum), ("p", dq),
                   ("i", nq), ("i", nk), ("f", scale)], emu_dq)

        f32 = q.dtype == torch.float32
        dk_acc = torch.zeros((bh, nk, dh) if not f32 else k.shape, dtype=torch.float32, device=q.device)
        dv_acc = torch.zeros((bh, nk, dh) if not f32 else v.shape, dtype=torch.float32, device=q.device)
        pk = plan_dkdv(bh, nq, nk, dh, self.num_sms)

        def emu_dkdv():
            qpb = pk["q_per_block"]
            for z in range(pk["grid"][2]):
                s = slice(z * qpb, min(nq, (z + 1) * qpb))
                pr, ds = probs(q3[:, s], do3[:, s], lse[:, s], dsum.reshape(bh, nq)[:, s])
                dk_acc.add_((scale * ds.transpose(1, 2) @ q3[:, s]).reshape(dk_acc.shape).float())
                dv_acc.add_((pr.transpose(1, 2) @ do3[:, s]).reshape(dv_acc.shape).float())

        self._run(kname("sm_bwd_dkdv", dt, dh), pk, SIGNATURES["sm_bwd_dkdv"],
                  [("p", q), ("p", k), ("p", v), ("p", dout), ("p", lse), ("p", dsum), ("p", dk_acc),
                   ("p", dv_acc), ("i", nq), ("i", nk), ("f", scale), ("i", pk["q_per_block"])], emu_dkdv)
        if f32:
            return dq, dk_acc, dv_acc
        return dq, self.cast(dk_acc, k), self.cast(dv_acc, v)

    def cast(self, acc, like):
        out = self._empty(like.shape, torch.bfloat16, like)
        n = acc.numel()
        p = plan_cast(n)

        def emu():
            out.copy_(acc.reshape(out.shape).to(torch.bfloat16))

        self._run("mgsd_attn_cast_f32_bf16", p, "ppi", [("p", acc), ("p", out), ("i", n)], emu)
        return out


# ---------------------------------------------------------------------------------------------
# PyTorch references
# ---------------------------------------------------------------------------------------------


def ref_einsum(q, k, v, scale):
    """The MGSD reference's attention: no softmax, the (Nq, Nk) matrix formed."""
    attn = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    return attn @ v


def ref_linear(q, k, v, scale):
    """The same function computed as q (kᵀ v) scale in PyTorch (what mgsd-nn's CPU twin does)."""
    return (q @ (k.transpose(-1, -2) @ v)) * scale


def ref_softmax_manual(q, k, v, scale):
    s = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def ref_sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def rel(a, r):
    a = a.double()
    r = r.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - r).norm() / r.norm().clamp_min(1e-300)).item()


def f64_reference(variant, q, k, v, dout, scale, head_chunk):
    """float64 autograd reference, computed over chunks of heads to bound memory."""
    outs, lses, dqs, dks, dvs = [], [], [], [], []
    h = q.shape[1]
    for h0 in range(0, h, head_chunk):
        sl = slice(h0, min(h, h0 + head_chunk))
        q6, k6, v6 = (t[:, sl].double().detach().requires_grad_(True) for t in (q, k, v))
        if variant == "nosoftmax":
            o = ref_einsum(q6, k6, v6, scale)
        else:
            o, lse = ref_softmax_manual(q6, k6, v6, scale)
            lses.append(lse.detach())
        g = torch.autograd.grad(o, (q6, k6, v6), dout[:, sl].double())
        outs.append(o.detach())
        dqs.append(g[0])
        dks.append(g[1])
        dvs.append(g[2])
        del o, g, q6, k6, v6
    cat = lambda xs: torch.cat(xs, 1)  # noqa: E731
    return dict(out=cat(outs), lse=cat(lses) if lses else None, dq=cat(dqs), dk=cat(dks), dv=cat(dvs))


# ---------------------------------------------------------------------------------------------
# Checks and benchmarks
# ---------------------------------------------------------------------------------------------


def make_inputs(b, h, nq, nk, dh, dtype, device, gen):
    mk = lambda n: torch.randn(b, h, n, dh, generator=gen, device=device).to(dtype)  # noqa: E731
    return mk(nq), mk(nk), mk(nk), mk(nq)


def run_checks(ops, shapes, dtypes, device, log, results, head_chunk):
    ok_all = True
    gen = torch.Generator(device=device)
    gen.manual_seed(1234)
    for (label, b, h, nq, nk, dh) in shapes:
        scale = dh ** -0.5
        for dt in dtypes:
            q, k, v, dout = make_inputs(b, h, nq, nk, dh, DTYPES[dt], device, gen)
            for variant in ("nosoftmax", "softmax"):
                t0 = time.time()
                ref = f64_reference(variant, q, k, v, dout, scale, head_chunk)
                if variant == "nosoftmax":
                    out, m = ops.nosm_forward(q, k, v, scale)
                    dq, dk, dv = ops.nosm_backward(q, k, v, m, dout, scale)
                    got = dict(out=out, dq=dq, dk=dk, dv=dv)
                    tref = torch_grads(ref_einsum, q, k, v, dout, scale)
                else:
                    out, lse = ops.sm_forward(q, k, v, scale)
                    dq, dk, dv = ops.sm_backward(q, k, v, out, lse, dout, scale)
                    got = dict(out=out, lse=lse.reshape(ref["lse"].shape), dq=dq, dk=dk, dv=dv)
                    tref = torch_grads(ref_sdpa, q, k, v, dout, scale)
                if device != "cpu":
                    torch.cuda.synchronize()
                errs = {key: rel(val, ref[key]) for key, val in got.items()}
                terrs = {key: rel(val, ref[key]) for key, val in tref.items()}
                tol = TOL[dt]
                ok = all(e <= tol for e in errs.values())
                ok_all &= ok
                results["checks"].append(dict(shape=label, B=b, H=h, Nq=nq, Nk=nk, dh=dh, dtype=dt,
                                              variant=variant, errors=errs, torch_same_dtype_errors=terrs,
                                              tol=tol, ok=ok))
                log(f"check {label:<8} {dt:<4} {variant:<9} "
                    + " ".join(f"{kk}={e:.2e}" for kk, e in errs.items())
                    + f" | torch-{dt}: " + " ".join(f"{kk}={e:.2e}" for kk, e in terrs.items())
                    + f" | tol {tol:g} {'PASS' if ok else 'FAIL'} ({time.time() - t0:.1f}s)")
                del ref, got, tref
            del q, k, v, dout
            if device != "cpu":
                torch.cuda.empty_cache()
    return ok_all


def torch_grads(fn, q, k, v, dout, scale):
    q1, k1, v1 = (t.detach().requires_grad_(True) for t in (q, k, v))
    o = fn(q1, k1, v1, scale)
    g = torch.autograd.grad(o, (q1, k1, v1), dout)
    return dict(out=o.detach(), dq=g[0], dk=g[1], dv=g[2])


def timer(device):
    if device == "cpu":
        def run(fn, warmup, reps):
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
            return statistics.median(ts), ts
        return run

    def run(fn, warmup, reps):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for s, e in ev:
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        ts = [s.elapsed_time(e) for s, e in ev]
        return statistics.median(ts), ts
    return run


def peak_extra_bytes(fn, device):
    if device == "cpu":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def capture_graph(fn):
    """Captures fn into a CUDA graph (after a warm-up on a side stream, as torch requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def run_benchmarks(ops, shapes, dtypes, device, log, results, reps, warmup, deadline, graphs):
    bench = timer(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(99)
    for (label, b, h, nq, nk, dh) in shapes:
        scale = dh ** -0.5
        for dt in dtypes:
            if time.time() > deadline:
                log(f"bench {label} {dt}: skipped, time budget spent")
                continue
            # Rotate input sets when one set would sit in L2 (METHOD.md).
            one = b * h * (nq + 2 * nk) * dh * (4 if dt == "f32" else 2)
            nsets = 4 if one < 64 << 20 else 1
            sets = [make_inputs(b, h, nq, nk, dh, DTYPES[dt], device, gen) for _ in range(nsets)]
            gsets = [tuple(t.detach().requires_grad_(True) for t in s[:3]) + (s[3],) for s in sets]
            it = {"i": 0}

            def rotate(f):
                def g():
                    it["i"] = (it["i"] + 1) % nsets
                    f(it["i"])
                return g

            def torch_fwd(fn):
                def f(i):
                    q, k, v, _ = sets[i]
                    with torch.no_grad():
                        fn(q, k, v, scale)
                return f

            def torch_fwdbwd(fn):
                def f(i):
                    q, k, v, dout = gsets[i]
                    o = fn(q, k, v, scale)
                    torch.autograd.grad(o, (q, k, v), dout)
                return f

            def ours_nosm_fwd(i):
                q, k, v, _ = sets[i]
                ops.nosm_forward(q, k, v, scale)

            def ours_nosm_fwdbwd(i):
                q, k, v, dout = sets[i]
                _, m = ops.nosm_forward(q, k, v, scale)
                ops.nosm_backward(q, k, v, m, dout, scale)

            def ours_sm_fwd(i):
                q, k, v, _ = sets[i]
                ops.sm_forward(q, k, v, scale)

            def ours_sm_fwdbwd(i):
                q, k, v, dout = sets[i]
                out, lse = ops.sm_forward(q, k, v, scale)
                ops.sm_backward(q, k, v, out, lse, dout, scale)

            cases = [
                ("ours-nosoftmax", ours_nosm_fwd, ours_nosm_fwdbwd),
                ("torch-einsum", torch_fwd(ref_einsum), torch_fwdbwd(ref_einsum)),
                ("torch-linear", torch_fwd(ref_linear), torch_fwdbwd(ref_linear)),
                ("ours-softmax", ours_sm_fwd, ours_sm_fwdbwd),
                ("torch-sdpa", torch_fwd(ref_sdpa), torch_fwdbwd(ref_sdpa)),
            ]
            row = {}
            for name, fwd, fwdbwd in cases:
                try:
                    tf, _ = bench(rotate(fwd), warmup, reps)
                    tb, _ = bench(rotate(fwdbwd), warmup, reps)
                    mem = peak_extra_bytes(rotate(fwdbwd), device)
                    row[name] = dict(fwd_ms=tf, fwdbwd_ms=tb, peak_extra_bytes=mem)
                except RuntimeError as e:  # out of memory on the torch side, say
                    row[name] = dict(error=str(e).splitlines()[0])
                    if device != "cpu":
                        torch.cuda.empty_cache()
            if graphs and device != "cpu" and label == "mgsd":
                for name, fwd, fwdbwd in cases:
                    if "error" in row[name]:
                        continue
                    try:
                        gs = [capture_graph(lambda i=i: fwdbwd(i)) for i in range(nsets)]
                        tg, _ = bench(rotate(lambda i: gs[i].replay()), warmup, reps)
                        row[name]["fwdbwd_graph_ms"] = tg
                        del gs
                    except Exception as e:  # noqa: BLE001 - report and carry on
                        row[name]["graph_error"] = str(e).splitlines()[0][:200]
                    torch.cuda.synchronize()
            results["bench"].append(dict(shape=label, B=b, H=h, Nq=nq, Nk=nk, dh=dh, dtype=dt, reps=reps,
                                         input_sets=nsets, times=row))
            log(f"bench {label} {dt} (B{b} H{h} Nq{nq} Nk{nk} dh{dh}; median of {reps}, {nsets} input set(s))")
            for name, r in row.items():
                if "error" in r:
                    log(f"  {name:<15} ERROR {r['error']}")
                else:
                    g = r.get("fwdbwd_graph_ms")
                    gtxt = f"   graph fwd+bwd {g:9.4f} ms" if g is not None else (
                        f"   graph ERROR {r['graph_error']}" if "graph_error" in r else "")
                    log(f"  {name:<15} fwd {r['fwd_ms']:9.4f} ms   fwd+bwd {r['fwdbwd_ms']:9.4f} ms   "
                        f"peak extra {r['peak_extra_bytes'] / 2**20:9.1f} MiB{gtxt}")

            def ratio(a, b_, key):
                if "error" in row.get(a, {"error": 1}) or "error" in row.get(b_, {"error": 1}):
                    return float("nan")
                return row[b_][key] / row[a][key]

            for a, b_ in (("ours-nosoftmax", "torch-einsum"), ("ours-nosoftmax", "torch-linear"),
                          ("ours-softmax", "torch-sdpa")):
                gr = ratio(a, b_, "fwdbwd_graph_ms") if "fwdbwd_graph_ms" in row.get(a, {}) and \
                    "fwdbwd_graph_ms" in row.get(b_, {}) else float("nan")
                log(f"  speed-up {a} vs {b_}: fwd {ratio(a, b_, 'fwd_ms'):.2f}x, "
                    f"fwd+bwd {ratio(a, b_, 'fwdbwd_ms'):.2f}x, graph fwd+bwd {gr:.2f}x")
            del sets, gsets
            if device != "cpu":
                torch.cuda.empty_cache()


def graph_time_us(fn, inner=20, reps=10):
    """GPU time of one fn() in microseconds: a graph of `inner` calls, replayed `reps` times."""
    g = capture_graph(lambda: [fn() for _ in range(inner)])
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    g.replay()
    for s_, e_ in ev:
        s_.record()
        g.replay()
        e_.record()
    torch.cuda.synchronize()
    return statistics.median(s_.elapsed_time(e_) for s_, e_ in ev) * 1e3 / inner


def kernel_breakdown(ops, shapes, log, results, deadline):
    """Per-kernel GPU times (graphs of 20 launches) and a sweep of Outer's rows_per_block."""
    gen = torch.Generator(device="cuda")
    gen.manual_seed(7)
    for (label, b, h, nq, nk, dh), dt, sweep, with_sm in shapes:
        if time.time() > deadline:
            log(f"breakdown {label} {dt}: skipped, time budget spent")
            continue
        scale = dh ** -0.5
        bh = b * h
        q, k, v, dout = make_inputs(b, h, nq, nk, dh, DTYPES[dt], "cuda", gen)
        m = torch.zeros(bh, dh, dh, device="cuda")
        dm = torch.zeros_like(m)
        out, dq, dk, dv = (torch.empty_like(t) for t in (q, q, k, v))
        elt = 4 if dt == "f32" else 2
        rows_bytes = bh * nq * dh * elt
        items = [
            ("zeros M", lambda: torch.zeros(bh, dh, dh, device="cuda"), 0),
            ("outer k,v -> M", lambda: ops.outer(k, v, m, 1.0), 2 * bh * nk * dh * elt),
            ("apply q M", lambda: ops.apply(q, m, out, scale, False), 2 * rows_bytes),
            ("outer q,dout -> dM", lambda: ops.outer(q, dout, dm, scale), 2 * rows_bytes),
            ("apply dout M^T", lambda: ops.apply(dout, m, dq, scale, True), 2 * rows_bytes),
            ("apply v dM^T", lambda: ops.apply(v, dm, dk, 1.0, True), 2 * bh * nk * dh * elt),
            ("apply k dM", lambda: ops.apply(k, dm, dv, 1.0, False), 2 * bh * nk * dh * elt),
        ]
        if with_sm:
            o_sm, lse = ops.sm_forward(q, k, v, scale)
            items += [
                ("softmax forward", lambda: ops.sm_forward(q, k, v, scale), 0),
                ("softmax backward", lambda: ops.sm_backward(q, k, v, o_sm, lse, dout, scale), 0),
            ]
        for r in sweep:
            items.append((f"outer q,dout rows/block {r}", lambda r=r: ops.outer(q, dout, dm, scale, rows=r),
                          2 * rows_bytes))
        log(f"breakdown {label} {dt} (GPU time per launch, graph of 20; GB/s = bytes read+written / time)")
        rows = {}
        for name, fn, nbytes in items:
            try:
                us = graph_time_us(fn)
                rows[name] = us
                bw = f"{nbytes / us / 1e3:8.0f} GB/s" if nbytes else ""
                log(f"  {name:<30} {us:9.2f} us {bw}")
            except Exception as e:  # noqa: BLE001 - report and carry on
                rows[name] = str(e).splitlines()[0][:200]
                log(f"  {name:<30} ERROR {rows[name]}")
            torch.cuda.synchronize()
        results.setdefault("breakdown", []).append(dict(shape=label, dtype=dt, us=rows))
        del q, k, v, dout, m, dm, out, dq, dk, dv
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------


CHECK_SHAPES = [
    # label, B, H, Nq, Nk, dh
    ("odd32", 2, 3, 1000, 77, 32),
    ("odd64", 2, 3, 1000, 77, 64),
    ("tiles32", 1, 2, 3001, 300, 32),
    ("tiles64", 1, 2, 3001, 300, 64),
    ("mgsd", 1, 16, 7680, 120, 32),
    ("big", 1, 16, 100_000, 1024, 64),
]
# The big shape first: the CUDA-graph timings (MGSD shape only) run last, so a failed capture
# cannot disturb the other numbers.
BENCH_SHAPES = [s for s in CHECK_SHAPES if s[0] == "big"] + [s for s in CHECK_SHAPES if s[0] == "mgsd"]

DRY_CHECK_SHAPES = [
    ("odd32", 2, 3, 100, 77, 32),
    ("odd64", 2, 3, 100, 77, 64),
    ("tiles32", 1, 2, 301, 300, 32),
    ("tiles64", 1, 2, 301, 300, 64),
    ("mgsd/16", 1, 16, 480, 120, 32),
]
DRY_BENCH_SHAPES = [("mgsd/16", 1, 16, 480, 120, 32)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ptx", default="ptx/", help="folder holding attention.ptx")
    ap.add_argument("--compat", default=None, help="folder of extra images to try loading (other nvcc, cubin)")
    ap.add_argument("--out", default=None, help="folder for attention_check.txt / .json")
    ap.add_argument("--dry-run", action="store_true", help="no CUDA: signatures, geometry, CPU emulation")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph replay timings")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip benchmarks past this many seconds")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget_s

    lines = []
    out_txt = open(os.path.join(args.out, "attention_check.txt"), "w") if args.out else None

    def log(s):
        print(s, flush=True)
        lines.append(s)
        if out_txt:
            out_txt.write(s + "\n")
            out_txt.flush()

    results = dict(checks=[], bench=[], env={})
    ptx_path = os.path.join(args.ptx, "attention.ptx")
    ptx = open(ptx_path).read()
    sig_ok = check_ptx_signatures(ptx, log)

    if args.dry_run:
        device = "cpu"
        num_sms = 132
        for (label, b, h, nq, nk, dh) in CHECK_SHAPES:
            bh = b * h
            for p in (plan_outer(bh, nk, dh, num_sms), plan_outer(bh, nq, dh, num_sms), plan_apply(bh, nq, dh, "f32", num_sms),
                      plan_apply(bh, nk, dh, "f32", num_sms), plan_apply(bh, nq, dh, "bf16", num_sms),
                      plan_apply(bh, nk, dh, "bf16", num_sms),
                      plan_query_parallel(bh, nq, dh), plan_pre(bh * nq, dh),
                      plan_dkdv(bh, nq, nk, dh, num_sms), plan_cast(bh * nk * dh)):
                check_plan(p)
            po = plan_outer(bh, nq, dh, num_sms)
            pk = plan_dkdv(bh, nq, nk, dh, num_sms)
            assert po["grid"][0] * po["rows_per_block"] >= nq > (po["grid"][0] - 1) * po["rows_per_block"]
            assert pk["grid"][2] * pk["q_per_block"] >= nq > (pk["grid"][2] - 1) * pk["q_per_block"]
            log(f"plan {label}: outer(q) {po['grid']}x{po['block'][0]} rows {po['rows_per_block']}; "
                f"apply(q) {plan_apply(bh, nq, dh, 'f32', num_sms)['grid']} "
                f"(bf16 {plan_apply(bh, nq, dh, 'bf16', num_sms)['grid']}); sm {plan_query_parallel(bh, nq, dh)['grid']}; "
                f"dkdv {pk['grid']} q/block {pk['q_per_block']}")
        ops = Ops(num_sms)
        check_shapes, bench_shapes = DRY_CHECK_SHAPES, DRY_BENCH_SHAPES
        reps, warmup = 3, 1
    else:
        device = "cuda"
        drv = Driver()
        props = torch.cuda.get_device_properties(0)
        num_sms = props.multi_processor_count
        results["env"] = dict(device=props.name, sms=num_sms, driver_api=drv.driver_version,
                              torch=torch.__version__, torch_cuda=torch.version.cuda,
                              allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                              date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        log(f"device: {props.name}, {num_sms} SMs, {props.total_memory / 2**30:.1f} GiB; "
            f"driver API {drv.driver_version}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"tf32 matmul {torch.backends.cuda.matmul.allow_tf32}")
        t = time.time()
        mod, res, jlog = drv.load(ptx)
        log(f"load {ptx_path}: {'OK' if mod else 'FAILED ' + drv.err(res)} in {time.time() - t:.2f}s {jlog.strip()}")
        results["env"]["ptx_load"] = "ok" if mod else drv.err(res)
        if args.compat and os.path.isdir(args.compat):
            for fn in sorted(os.listdir(args.compat)):
                path = os.path.join(args.compat, fn)
                data = open(path, "rb").read()
                img = data.decode() if fn.endswith(".ptx") else data
                m2, r2, jl2 = drv.load(img)
                status = "OK" if m2 else "FAILED " + drv.err(r2)
                log(f"load {path}: {status} {jl2.strip()[:300]}")
                results["env"][f"load {fn}"] = status
                if mod is None and m2 is not None and fn.endswith(".cubin"):
                    log(f"  -> using {fn} for the checks, since attention.ptx did not load")
                    mod = m2
        if mod is None:
            log("no module loaded; stopping")
            sys.exit(2)
        ops = Ops(num_sms, drv, mod, sync_each=True, poison=True)
        check_shapes, bench_shapes = CHECK_SHAPES, BENCH_SHAPES
        reps, warmup = args.reps, args.warmup

    try:
        ok = run_checks(ops, check_shapes, list(DTYPES), device, log, results, head_chunk=4)
    except Exception as e:  # a launch or sync error poisons the context: report and stop
        log(f"checks: ERROR {type(e).__name__}: {e}")
        if args.out:
            with open(os.path.join(args.out, "attention_check.json"), "w") as f:
                json.dump(results, f, indent=1)
        raise
    log(f"checks: {'ALL PASS' if ok else 'SOME FAILED'} ({time.time() - start:.1f}s)")
    # Timing: no sync after each launch, no poisoning.
    ops.sync_each = False
    ops.poison = False
    run_benchmarks(ops, bench_shapes, list(DTYPES), device, log, results, reps, warmup, deadline,
                   graphs=not args.no_graphs)
    if device == "cuda" and not args.no_graphs:
        mg = next(x for x in CHECK_SHAPES if x[0] == "mgsd")
        bg = next(x for x in CHECK_SHAPES if x[0] == "big")
        kernel_breakdown(ops, [(mg, "f32", (64, 128, 256, 480, 1024, 7680), True),
                               (mg, "bf16", (64, 128, 256, 480, 1024, 7680), True),
                               (bg, "f32", (512, 1536, 3040, 5888, 12512), False),
                               (bg, "bf16", (512, 1536, 3040, 5888, 12512), False)],
                         log, results, deadline + 60)
    log(f"done in {time.time() - start:.1f}s; signatures {'OK' if sig_ok else 'MISMATCH'}; "
        f"checks {'ALL PASS' if ok else 'SOME FAILED'}")
    if args.out:
        with open(os.path.join(args.out, "attention_check.json"), "w") as f:
            json.dump(results, f, indent=1)
    sys.exit(0 if ok and sig_ok else 1)


if __name__ == "__main__":
    main()
