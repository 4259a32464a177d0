"""One learner step (forward, GRPO-style loss, backward, AdamW) of the fused kernel path vs the
torch reference (``RLVR_KERNELS=torch``), and where the reference's time goes.

    python benchmarks/learner_step.py [--repeats 3] [--cases tiny small] [--profile] [--malloc learner|default]

Cases: (a) ``tiny``: the default job's policy (configs/model/arith_cpu.yaml) on a batch like its
steps': 512 sequences of 12 tokens; (b) ``small``: the ``small-100m`` preset, 4 x 1024 tokens.
Each backend runs ``--repeats`` times, interleaved, after a warm-up; the best time is reported,
the median too, and the peak resident memory above the state before the step (polled every
2 ms). ``--profile``: each path of each case under ``torch.profiler``: time in matrix multiplies (mm,
bmm, addmm) vs everything else (the C kernels count there, as the ops that call them), and vs
everything but ``aten::mm`` (where the torch path's chunked-scan ``bmm``, work the fused path's
recurrence does not do, counts with the rest), how much each rest falls (``other_falls``), the
ten most expensive ops, and the forward time per layer kind (Mamba, attention, MoE, MLP; hooks).
``--malloc``: ``learner`` (default) keeps freed memory for reuse as the learner ranks do
(``rlvr.runtime``); ``default``: glibc's defaults, where every step maps and faults in its
buffers afresh (the torch path, with 10x the fused path's memory, loses the most: (b) 12.1 s
instead of 9.9). Torch threads reported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch

import rlvr.kernels as K
import rlvr.model as M
from rollout_throughput import resident_bytes

ARITH_CPU = dict(pattern="MEM*EM", hidden_size=128, head_dim=32, intermediate_size=256, mamba_num_heads=16,
                 mamba_head_dim=16, moe_intermediate_size=64, moe_shared_expert_intermediate_size=128,
                 max_position_embeddings=512, initializer_range=0.02)
CASES = {"tiny": (lambda: M.from_preset("tiny", **ARITH_CPU), 512, 12),
         "small": (lambda: M.from_preset("small-100m"), 4, 1024)}
MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_weight_int8pack_mm")


def make_step(model: torch.nn.Module, rows: int, length: int):
    """-> a function running one learner step on a fixed random batch."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=g)
    advantages = torch.randn(rows, 1, generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # as the learner makes it

    def step() -> None:
        logp, _ = K.token_logprobs(model(ids[:, :-1]), ids, consume_logits=True)  # as the learner calls it
        loss = -(logp * advantages).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def timed(step) -> tuple[float, float]:
    """(seconds, peak resident MiB above the start) of one call."""
    before, peak, done = resident_bytes(), [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], resident_bytes())

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    return seconds, max(peak[0] - before, 0) / 2**20


def compare(case: str, repeats: int) -> dict:
    build, rows, length = CASES[case]
    torch.manual_seed(0)
    model = build().train()
    step = make_step(model, rows, length)
    runs = {"fused": [], "torch": []}
    for backend in ("torch", "auto"):  # warm-up (and the C kernels' build)
        K.set_backend(backend)
        step()
    for _ in range(repeats):
        for name, backend in (("torch", "torch"), ("fused", "auto")):
            K.set_backend(backend)
            runs[name].append(timed(step))
    K.set_backend("auto")
    out = {"rows": rows, "length": length, "parameters": model.num_parameters()}
    for name, got in runs.items():
        out[name] = {"seconds_best": round(min(s for s, _ in got), 3),
                     "seconds_median": round(statistics.median(s for s, _ in got), 3),
                     "peak_mib": round(max(m for _, m in got), 1)}
    out["speedup"] = round(out["torch"]["seconds_best"] / out["fused"]["seconds_best"], 2)
    return out


def profile(case: str, backend: str) -> dict:
    """One path's step under torch.profiler, and forward time per layer kind."""
    build, rows, length = CASES[case]
    torch.manual_seed(0)
    model = build().train()
    step = make_step(model, rows, length)
    K.set_backend(backend)
    step()
    kinds: dict[str, float] = {}
    hooks = []
    for block in model.backbone.layers:
        kind = type(block.mixer).__name__
        starts = {}
        hooks.append(block.mixer.register_forward_pre_hook(lambda m, a, s=starts: s.__setitem__("t", time.perf_counter())))
        hooks.append(block.mixer.register_forward_hook(
            lambda m, a, o, s=starts, k=kind: kinds.__setitem__(k, kinds.get(k, 0.0) + time.perf_counter() - s["t"])))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    for h in hooks:
        h.remove()
    K.set_backend("auto")
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1e6
    aten_mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm") / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {"seconds_profiled": round(total, 3), "matmul_seconds": round(mm, 3),
            "other_seconds": round(total - mm, 3), "other_than_aten_mm_seconds": round(total - aten_mm, 3),
            "top_ops": {e.key: round(e.self_cpu_time_total / 1e6, 3) for e in top},
            "forward_seconds_by_layer_kind": {k: round(v, 3) for k, v in sorted(kinds.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--malloc", choices=("learner", "default"), default="learner")
    args = ap.parse_args()
    if args.malloc == "learner":
        from rlvr import runtime

        runtime.retain_freed_memory()
    result = {"threads": torch.get_num_threads(), "malloc": args.malloc}
    for case in args.cases:
        result[case] = compare(case, args.repeats)
        if args.profile:
            ref, fused = profile(case, "torch"), profile(case, "auto")
            result[case].update(profile_torch_path=ref, profile_fused_path=fused, other_falls={
                key: round(ref[key] / fused[key], 2) for key in ("other_seconds", "other_than_aten_mm_seconds")})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
