"""Forward throughput and peak memory: our hybrid model vs transformers' NemotronH, on CPU.

    python benchmarks/model_forward.py [--preset tiny] [--batch 8] [--seqlen 512] [--repeats 5]

Both models are the same checkpoint (ours saved, transformers loads it), same batch, fp32,
inference mode. Each runs in its own child process so peak memory (RSS high-water mark above the
level after loading) is not shared; the children run one after the other, never together.
Prints one JSON object with tokens/s, peak MiB and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(which: str, path: str, batch: int, seqlen: int, repeats: int, queue) -> None:
    import torch

    torch.manual_seed(0)
    if which == "rlvr":
        import rlvr.model as M

        model = M.load(path).eval()
        run = lambda ids: model(ids)  # noqa: E731
    else:
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        run = lambda ids: model(ids, use_cache=False).logits  # noqa: E731
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen))
    with torch.inference_mode():
        run(ids)  # warm-up
        base = _rss_mib()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(ids)
            times.append(time.perf_counter() - start)
    times.sort()
    queue.put({"seconds_median": times[len(times) // 2], "peak_mib_above_loaded": _peak_mib() - base,
               "threads": torch.get_num_threads()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--pattern", default="MEM*EM-ME", help="layer pattern (default: mostly Mamba/MoE)")
    ap.add_argument("--experts", type=int, help="override n_routed_experts")
    ap.add_argument("--top-k", type=int, help="override num_experts_per_tok")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import rlvr.model as M

    overrides = {k: v for k, v in (("n_routed_experts", args.experts), ("num_experts_per_tok", args.top_k))
                 if v is not None}
    model = M.from_preset(args.preset, pattern=args.pattern, initializer_range=0.1, **overrides)
    ctx = mp.get_context("spawn")
    result = {"preset": args.preset, "pattern": args.pattern, "overrides": overrides, "batch": args.batch, "seqlen": args.seqlen,
              "parameters": model.num_parameters(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        for which in ("rlvr", "transformers"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(which, tmp, args.batch, args.seqlen, args.repeats, queue))
            proc.start()
            stats = queue.get()
            proc.join()
            stats["tokens_per_s"] = round(args.batch * args.seqlen / stats["seconds_median"], 1)
            stats["peak_mib_above_loaded"] = round(stats["peak_mib_above_loaded"], 1)
            result[which] = stats
    result["speedup"] = round(result["rlvr"]["tokens_per_s"] / result["transformers"]["tokens_per_s"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
