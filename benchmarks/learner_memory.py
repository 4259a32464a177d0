"""A learner's memory per rank at Nano's widths, measured, beside what ``rlvr plan`` reckons.

    python benchmarks/learner_memory.py [--preset nano-slice] [--ranks 2] [--zero-stage 3]
                                        [--bucket-elements 2e7] [--tokens 256] [--steps 1]

The ``nano-slice`` preset by default: Nano's widths (hidden 2,688, vocabulary 131,072, its head
dimensions, state and groups) with one layer of each kind and 8 routed experts, 0.87B parameters,
3.47 GB in fp32. Its checkpoint is written once (bf16, as Nano's is) under ``--work``; then
``LearnerGroup`` starts the ranks as the trainer does (Ray actors, DeepSpeed ZeRO, bf16, gloo),
each loads the checkpoint and trains ``--steps`` GRPO steps on a synthetic batch of ``--tokens``
tokens per rank. Each rank measures its own peak resident set (``VmHWM``) over the load (building
and loading the model) and over each step (DeepSpeed's initialize is counted with the first step);
the learner reports the worst rank's, as in ``metrics.jsonl`` (``learner/load_peak_rss_gib``,
``learner/peak_rss_gib``). The learner alone (the whole job, with a rollout engine, records the
same metrics: docs/results.md). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GiB = 1024**3


def _batch(rows: int, length: int):
    import torch

    from rlvr.training.learner import TrainBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (rows, length), generator=g)
    mask = torch.zeros(rows, length - 1)
    mask[:, length // 4:] = 1
    return TrainBatch(ids, mask, torch.randn(rows, generator=g), torch.zeros(rows, length - 1),
                      torch.full((rows,), length))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nano-slice")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--zero-stage", type=int, default=3, choices=[0, 1, 2, 3])
    ap.add_argument("--bucket-elements", type=float, default=2e7, help="learner.zero_bucket_elements")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per rank a step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rlvr-learner-memory"))
    args = ap.parse_args()

    import ray
    import torch

    import rlvr.model as M
    from rlvr.config import load_config
    from rlvr.training.learner import LearnerGroup
    from rlvr.training.plan import plan

    path = args.work / args.preset
    if not (path / "config.json").exists():
        M.from_preset(args.preset).save(path, dtype=torch.bfloat16)
    cfg = load_config({"data": {"train": [{"generator": "addition"}]}, "model": {"path": str(path)},
                       "algorithm": {"group_size": 2}, "prompts_per_step": args.ranks,
                       "learner": {"num_ranks": args.ranks, "zero_stage": args.zero_stage, "bf16": True, "threads": 1,
                                   "zero_bucket_elements": int(args.bucket_elements),
                                   "max_tokens_per_micro_batch": args.tokens}})
    reckoned = plan(cfg, M.HybridConfig.from_file(path / "config.json"), [24])
    ray.init(num_cpus=max(2, args.ranks), include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.monotonic()
    group = LearnerGroup(cfg, str(path))
    setup = time.monotonic() - start
    try:
        steps = [group.train(_batch(2 * args.ranks, args.tokens // 2)) for _ in range(args.steps)]
    finally:
        group.shutdown()
        ray.shutdown()
    verdict = reckoned["devices"]["24GiB"]
    load, step = steps[0]["learner/load_peak_rss_gib"], max(s["learner/peak_rss_gib"] for s in steps)
    print(json.dumps({
        "preset": args.preset, "parameters": reckoned["parameters"], "fp32_gib": round(4 * reckoned["parameters"] / GiB, 2),
        "ranks": args.ranks, "zero_stage": args.zero_stage, "bucket_elements": int(args.bucket_elements),
        "setup_seconds": round(setup, 1),
        "measured_load_peak_gib": round(load, 2), "measured_step_peak_gib": round(step, 2),
        "plan_load_gib": verdict["learner_load_gib"], "plan_step_gib": verdict["learner_step_gib"],
        "load_vs_plan": round(load / verdict["learner_load_gib"], 3),
        "step_vs_plan": round(step / verdict["learner_step_gib"], 3),
        "load_vs_fp32_model": round(load * GiB / (4 * reckoned["parameters"]), 3),
        "plan": reckoned["learner"]}))


if __name__ == "__main__":
    main()
