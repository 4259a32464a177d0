"""The Triton backend on a CUDA GPU: the chunked SSD scan and the whole Mamba mixer, forward and
forward + backward, vs the torch reference on the same GPU and vs ``mamba-ssm``'s Triton scan
(``mamba_chunk_scan_combined``) when it is installed; max and relative errors vs the fp32
reference.

    python benchmarks/triton_kernels.py [--seqlen 8192] [--batch 1] [--dtype bfloat16] [--repeats 10]

Shapes: Nemotron-H-like mixer (64 heads x 64, 8 groups, dstate 128). Without a GPU the kernels
run under ``TRITON_INTERPRET=1`` at a small size (``--seqlen 192 --heads 4``): correctness only, no
speed (the interpreter is numpy). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from rlvr.kernels.mamba import MambaDims, MambaWeights, mamba_chunk_ref  # noqa: E402
from rlvr.kernels.ssd import ssd_chunk_scan  # noqa: E402


def inputs(args, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    h, p, ng, n = args.heads, 64, min(8, args.heads), 128
    dims = MambaDims(d_inner=h * p, nheads=h, headdim=p, ngroups=ng, dstate=n, kernel=4, chunk_size=128, eps=1e-5,
                     dt_limit=(0.0, float("inf")))
    w = [torch.randn(dims.conv_dim, 1, 4, generator=g) * 0.3, torch.randn(dims.conv_dim, generator=g) * 0.1,
         torch.rand(h, generator=g) - 4, torch.rand(h, generator=g) + 0.5, torch.randn(h, generator=g),
         1 + 0.1 * torch.randn(dims.d_inner, generator=g)]
    zxbcdt = torch.randn(args.batch, args.seqlen, dims.d_inner + dims.conv_dim + h, generator=g)
    to = lambda t: t.to(device, dtype).requires_grad_()  # noqa: E731
    return dims, to(zxbcdt), MambaWeights(*(to(t) for t in w))


def timed(fn, repeats: int) -> float:
    fn()  # compile / warm up
    if CUDA:
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if CUDA:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def mixer_case(args, fn, device, dtype):
    dims, zxbcdt, w = inputs(args, device, dtype)
    probe = torch.linspace(-1, 1, dims.d_inner, device=device)

    def forward():
        with torch.no_grad():
            return fn(zxbcdt, w, dims)

    def train():
        for t in (zxbcdt, *w):
            t.grad = None
        y, state = fn(zxbcdt, w, dims)
        ((y * probe).sum() + state.sum()).backward()
        return [y.detach(), state.detach()] + [t.grad for t in (zxbcdt, *w)]
    return forward, train


def errors(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    pairs = [(r.float().cpu(), g.float().cpu()) for r, g in zip(ref, got)]
    return {"max_abs": max(float((r - g).abs().max()) for r, g in pairs),
            "max_rel_l2": max(float((r - g).norm() / r.norm().clamp(min=1e-30)) for r, g in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seqlen", type=int, default=8192 if CUDA else 192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=64 if CUDA else 4)
    parser.add_argument("--dtype", default="bfloat16" if CUDA else "float32", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    from rlvr.kernels.triton_scan import ssd_chunk_scan_triton
    from rlvr.kernels.triton_ssd import mamba_chunk_triton

    device, dtype = ("cuda" if CUDA else "cpu"), getattr(torch, args.dtype)
    result = {"device": torch.cuda.get_device_name() if CUDA else "cpu (TRITON_INTERPRET=1: correctness only)",
              "seqlen": args.seqlen, "batch": args.batch, "heads": args.heads, "dtype": args.dtype}
    ref = mixer_case(args, mamba_chunk_ref, "cpu" if not CUDA else device, torch.float32)[1]()
    tri_fwd, tri_train = mixer_case(args, mamba_chunk_triton, device, dtype)
    result["mixer_vs_fp32_reference"] = errors(ref, tri_train())
    if CUDA:
        ref_fwd, ref_train = mixer_case(args, mamba_chunk_ref, device, dtype)
        result["mixer_seconds"] = {
            "torch_forward": timed(ref_fwd, args.repeats), "triton_forward": timed(tri_fwd, args.repeats),
            "torch_train": timed(ref_train, args.repeats), "triton_train": timed(tri_train, args.repeats)}
        result["scan_seconds"] = scan_timings(args, ssd_chunk_scan, ssd_chunk_scan_triton, dtype)
    else:
        result["speed"] = "not measured: needs a CUDA GPU"
    print(json.dumps(result, indent=1))


def scan_timings(args, ssd_ref, ssd_triton, dtype) -> dict:
    """The SSD scan alone, forward + backward: reference, ours, and mamba-ssm's when installed."""
    g = torch.Generator().manual_seed(1)
    b, L, h, p, n, ng = args.batch, args.seqlen, args.heads, 64, 128, min(8, args.heads)
    make = [lambda: torch.randn(b, L, h, p, generator=g), lambda: torch.rand(b, L, h, generator=g) * 0.1,
            lambda: -torch.rand(h, generator=g) - 0.5, lambda: torch.randn(b, L, ng, n, generator=g),
            lambda: torch.randn(b, L, ng, n, generator=g), lambda: torch.randn(h, generator=g)]
    x, dt, A, B, C, D = (m().cuda().requires_grad_() for m in make)
    xs, Bs, Cs = (t.detach().to(dtype).requires_grad_() for t in (x, B, C))

    def run(fn):
        def step():
            y = fn()
            y = y[0] if isinstance(y, tuple) else y
            y.float().sum().backward()
        return step
    out = {"torch": timed(run(lambda: ssd_ref(xs, dt, A, Bs, Cs, D, 128)), args.repeats),
           "triton": timed(run(lambda: ssd_triton(xs, dt, A, Bs, Cs, D, 128)), args.repeats)}
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as e:
        out["mamba_ssm"] = f"not installed ({e.__class__.__name__})"
    else:
        out["mamba_ssm"] = timed(run(lambda: mamba_chunk_scan_combined(xs, dt, A, Bs, Cs, 128, D=D)), args.repeats)
    return out


if __name__ == "__main__":
    main()
