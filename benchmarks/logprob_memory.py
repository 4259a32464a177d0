"""Peak memory of the learner's log-probability stage (lm-head projection, log-softmax, target
gather, entropy; forward and backward) with the whole logits vs ``LinearLogprob``'s chunks.

    python benchmarks/logprob_memory.py [--tokens 8192] [--hidden 2688] [--vocab 131072]
                                        [--full-tokens 1024 2048] [--budget-mib 256]

Nano's shape by default: 8,192 tokens a micro-batch, hidden 2,688, vocabulary 131,072, fp32 (the
CPU learner's dtype). Each measurement runs in a fresh process: inputs made, the peak resident
set reset (``/proc/self/clear_refs``), the stage run once with a backward, the peak read back
(``VmHWM``) minus the resident set before it. The whole-logits path at 8,192 tokens needs more
memory than this 24 GiB machine has to spare (4.3 GB per fp32 copy, several copies), so it is
measured at ``--full-tokens`` and extrapolated linearly to ``--tokens`` (the stage is linear in
tokens). Both paths hold the lm-head weight's gradient (vocab x hidden, 1.3 GiB at Nano's shape
in fp32), which the learner keeps whatever the stage does; the ratio is given with and without it.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(mode: str, tokens: int, hidden: int, vocab: int, budget_mib: int) -> dict:
    """In this process: the stage's peak bytes above the resident set before it."""
    import torch

    import rlvr.kernels as K
    from rlvr.kernels.logprob import linear_target_logprobs_ref

    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) / hidden**0.5).requires_grad_()
    t = torch.randint(0, vocab, (tokens,))
    K.LOGITS_BUDGET_BYTES = budget_mib * 1024**2
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before, start = _status("VmRSS"), time.perf_counter()
    if mode == "full":
        logp, entropy = linear_target_logprobs_ref(h, w, t)
    else:
        logp, entropy = K.linear_target_logprobs(h, w, t)
    logp.sum().backward()
    seconds, peak = time.perf_counter() - start, _status("VmHWM") - before
    return {"mode": mode, "tokens": tokens, "peak_bytes": peak, "peak_gib": round(peak / 1024**3, 3),
            "seconds": round(seconds, 2)}


def _child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=2688)
    ap.add_argument("--vocab", type=int, default=131072)
    ap.add_argument("--full-tokens", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--budget-mib", type=int, default=256, help="rlvr.kernels.LOGITS_BUDGET_BYTES for the chunks")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, *nums = args.child
        print(json.dumps(measure(mode, *map(int, nums))))
        return
    shape = (args.hidden, args.vocab, args.budget_mib)
    chunked = _child("chunked", args.tokens, *shape)
    full = [_child("full", n, *shape) for n in args.full_tokens]
    same = _child("chunked", args.full_tokens[-1], *shape)  # time against the full path at its size
    (n1, p1), (n2, p2) = [(r["tokens"], r["peak_bytes"]) for r in full[:2]]
    slope = (p2 - p1) / (n2 - n1)
    full_at = p2 + slope * (args.tokens - n2)
    logits_copy = args.tokens * args.vocab * 4
    weight_grad = args.vocab * args.hidden * 4
    print(json.dumps({
        "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "budget_mib": args.budget_mib,
        "chunk_tokens": args.budget_mib * 1024**2 // (4 * args.vocab),
        "fp32_logits_one_copy_gib": round(logits_copy / 1024**3, 3),
        "chunked_peak_gib": chunked["peak_gib"], "chunked_seconds": chunked["seconds"], "full_measured": full,
        "chunked_at_full_tokens": same,
        "full_peak_gib_extrapolated": round(full_at / 1024**3, 3),
        "full_copies_of_logits": round(full_at / logits_copy, 2),
        "ratio_chunked_to_full": round(chunked["peak_bytes"] / full_at, 4),
        "weight_grad_gib": round(weight_grad / 1024**3, 3),
        "ratio_without_the_weight_grad": round((chunked["peak_bytes"] - weight_grad) / (full_at - weight_grad), 4)}))


if __name__ == "__main__":
    main()
