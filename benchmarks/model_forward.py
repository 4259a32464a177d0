"""Forward throughput and peak memory: our hybrid model vs transformers' NemotronH, on CPU.

    python benchmarks/model_forward.py [--preset tiny] [--batch 8] [--seqlen 512] [--repeats 11]

Both models are the same checkpoint (ours saved, transformers loads it), same batch, fp32,
inference mode, same torch thread count.

* Speed: both models live in this process and their forwards alternate (ours, theirs, ours, ...),
  so a slow phase of this shared machine (timings here drift by tens of percent from minute to
  minute) hits both alike. The ratio uses each model's best time; medians are printed too.
* Memory: each model runs alone in a child process; peak RSS above the level after loading.

``RLVR_KERNELS=torch`` measures our torch reference path instead of the CPU kernels.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not getrusage's ru_maxrss: Linux carries that
    across fork + exec, so a child would start with its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _load(which: str, path: str):
    """-> a function input_ids -> logits."""
    import torch

    if which == "rlvr":
        import rlvr.model as M

        model = M.load(path).eval()
        return lambda ids: model(ids)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return lambda ids: model(ids, use_cache=False).logits


def _peak_memory(which: str, path: str, batch: int, seqlen: int, vocab: int, queue) -> None:
    import torch

    run = _load(which, path)
    ids = torch.randint(0, vocab, (batch, seqlen))
    with torch.inference_mode():
        run(ids)
        base = _status_mib("VmRSS")
        run(ids)
    queue.put(_status_mib("VmHWM") - base)


def _speed(path: str, batch: int, seqlen: int, vocab: int, repeats: int) -> dict[str, list[float]]:
    import torch

    runs = {which: _load(which, path) for which in ("rlvr", "transformers")}
    ids = torch.randint(0, vocab, (batch, seqlen))
    times = {which: [] for which in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(ids)  # warm-up
        for _ in range(repeats):
            for which, run in runs.items():
                start = time.perf_counter()
                run(ids)
                times[which].append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--pattern", default="MEM*EM-ME", help="layer pattern (default: mostly Mamba/MoE)")
    ap.add_argument("--experts", type=int, help="override n_routed_experts")
    ap.add_argument("--top-k", type=int, help="override num_experts_per_tok")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()

    import torch

    import rlvr.model as M

    overrides = {k: v for k, v in (("n_routed_experts", args.experts), ("num_experts_per_tok", args.top_k))
                 if v is not None}
    torch.manual_seed(0)
    model = M.from_preset(args.preset, pattern=args.pattern, initializer_range=0.1, **overrides)
    vocab, tokens = model.config.vocab_size, args.batch * args.seqlen
    result = {"preset": args.preset, "pattern": args.pattern, "overrides": overrides, "batch": args.batch,
              "seqlen": args.seqlen, "parameters": model.num_parameters(), "cpus": os.cpu_count(),
              "threads": torch.get_num_threads(), "kernels": os.environ.get("RLVR_KERNELS", "auto")}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        times = _speed(tmp, args.batch, args.seqlen, vocab, args.repeats)
        for which, ts in times.items():
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak_memory, args=(which, tmp, args.batch, args.seqlen, vocab, queue))
            proc.start()
            peak = queue.get()
            proc.join()
            result[which] = {"tokens_per_s": round(tokens / min(ts), 1),
                             "tokens_per_s_median": round(tokens / statistics.median(ts), 1),
                             "peak_mib_above_loaded": round(peak, 1)}
    result["speedup"] = round(result["rlvr"]["tokens_per_s"] / result["transformers"]["tokens_per_s"], 2)
    result["speedup_median"] = round(
        result["rlvr"]["tokens_per_s_median"] / result["transformers"]["tokens_per_s_median"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
