"""One learner forward+backward of the ``nano-slice`` model (Nano's widths, one layer of each
kind, 8 experts) on one device: the load's peak memory and, per kernel backend, tokens/s and
the step's peak memory at ``--tokens`` packed tokens (8 documents), log-probs through the chunked
lm head as the learner reads them.

    python benchmarks/nano_slice_step.py [--device cuda] [--tokens 8192] [--backends triton torch]

For the GPU check (``benchmarks/gpu_check.sh``): bf16 weights with the SSM's A_log, D and
dt_bias in fp32, as the learner keeps them; the checkpoint is written once (bf16) and loaded the
way every rank loads (``rlvr.model.load``: built on the meta device, tensors streamed from the
files). Needs only torch (and triton for that backend): no Ray, DeepSpeed or pydantic. Each
backend runs in a fresh process (the backend is chosen at import). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[1]


def _peak(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / GiB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GiB
    return 0.0


def _reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def child(path: Path, device: str, tokens: int, repeats: int) -> dict:
    import torch

    import rlvr.model as M
    from rlvr.kernels import backend

    _reset(device)
    start = time.perf_counter()
    model = M.load(path, dtype=torch.bfloat16, device=device)
    model.gradient_checkpointing_enable(True)
    load = {"load_seconds": round(time.perf_counter() - start, 2), "load_peak_gib": round(_peak(device), 3)}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens + 1), generator=g).to(device)
    seq_idx = (torch.arange(tokens) * 8 // tokens)[None].to(device)  # 8 packed documents
    keep = torch.ones(1, tokens, dtype=torch.bool, device=device)
    model.train()
    times = []
    _reset(device)
    for _ in range(repeats + 1):  # (the first: compilation and autotuning)
        t = time.perf_counter()
        logp, _ = model(ids[:, :-1], seq_idx=seq_idx, keep=keep, targets=ids[0, 1:])
        logp.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    best = min(times[1:])
    return load | {"backend": backend(), "tokens": tokens, "step_seconds": round(best, 4),
                   "tokens_per_s": round(tokens / best), "step_peak_gib": round(_peak(device), 3),
                   "finite": bool(torch.isfinite(logp).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--backends", nargs="+", default=["triton", "torch"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rlvr-nano-slice"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.work, args.device, args.tokens, args.repeats)))
        return
    import torch

    import rlvr.model as M

    if not (args.work / "config.json").exists():
        M.from_preset("nano-slice").save(args.work, dtype=torch.bfloat16)
    runs = {}
    for name in args.backends:
        env = dict(os.environ, RLVR_KERNELS=name, PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, __file__, "--child", "1", "--device", args.device, "--tokens",
                               str(args.tokens), "--repeats", str(args.repeats), "--work", str(args.work)],
                              capture_output=True, text=True, env=env)
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    print(json.dumps({"preset": "nano-slice", "device": args.device, "runs": runs}))


if __name__ == "__main__":
    main()
