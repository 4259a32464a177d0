"""Tokens/s of ``rlvr generate`` (the file-to-file command) vs the rollout benchmark's builtin
engine, on the same workload: what the CLI adds.

    python benchmarks/generate_throughput.py [--prompts 64] [--samples 8] [--new-tokens 128] [--repeats 3]

The workload is ``rollout_throughput.py``'s: the same tiny hybrid checkpoint (M*-EM, head size 16),
the same prompts, 8 samples each at temperature 1, 128 tokens per sample (eos ignored:
``--ignore-eos``), all 512 sequences decoded together (``--max-batch 512``). Each repeat runs the
engine in this process (``rollout_throughput.builtin_runner``) and then the command in a fresh
process, writing a fresh output; runs are interleaved so a slow phase of a shared machine hits
both. Reported for the command: its own tokens/s (the generation loop: reading rows, prompts to
the engine, JSON lines written), and the whole command's wall time, start-up and model load
included. ``--workers 2`` (two Ray rollout actors of one thread each) runs once, for information.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import rlvr.model as M
from rollout_throughput import builtin_runner, prompts


def generate_command(checkpoint: str, src: Path, out: Path, args, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "rlvr"), "generate", "--model", checkpoint, "--input", str(src),
            "--output", str(out), "-n", str(args.samples), "--max-tokens", str(args.new_tokens), "--temperature", "1",
            "--ignore-eos", "--max-batch", str(args.max_batch), "--no-progress", *extra]


def run_command(command: list[str], out: Path) -> dict:
    """One run of the command onto a fresh output -> its summary and wall time."""
    for old in (out, out.with_name(out.name + ".rlvr.json")):
        old.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"tokens": summary["tokens"], "seconds": summary["seconds"], "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-ray", action="store_true", help="leave out the --workers 2 run")
    args = ap.parse_args()
    texts = prompts(args.prompts)
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "prompts": args.prompts,
              "samples": args.samples, "new_tokens": args.new_tokens, "max_batch": args.max_batch}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, src, out = str(Path(tmp) / "ckpt"), Path(tmp) / "prompts.jsonl", Path(tmp) / "out.jsonl"
        torch.manual_seed(0)
        M.from_preset("tiny", pattern="M*-EM", head_dim=16, initializer_range=0.1).save(checkpoint)
        src.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
        engine_run = builtin_runner(checkpoint, texts, args)
        command = generate_command(checkpoint, src, out, args)
        engine, cli = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = engine_run()
            engine.append((tokens, time.perf_counter() - start))
            cli.append(run_command(command, out))
        if len({t for t, _ in engine} | {r["tokens"] for r in cli}) != 1:
            raise RuntimeError("the engine and the command generated different numbers of tokens")
        tokens = engine[0][0]
        best_engine = tokens / min(s for _, s in engine)
        best_cli = tokens / min(r["seconds"] for r in cli)
        result["engine"] = {"tokens": tokens, "tokens_per_s": round(best_engine, 1),
                            "tokens_per_s_median": round(tokens / statistics.median(s for _, s in engine), 1)}
        result["rlvr_generate"] = {
            "tokens_per_s": round(best_cli, 1),
            "tokens_per_s_median": round(tokens / statistics.median(r["seconds"] for r in cli), 1),
            "wall_seconds_best": round(min(r["wall_seconds"] for r in cli), 2),
            "tokens_per_wall_s": round(tokens / min(r["wall_seconds"] for r in cli), 1)}
        result["generate_vs_engine"] = round(best_cli / best_engine, 3)
        result["generate_wall_vs_engine"] = round(result["rlvr_generate"]["tokens_per_wall_s"] / best_engine, 3)
        if not args.skip_ray:
            ray_run = run_command(generate_command(checkpoint, src, out, args, "--workers", "2"), out)
            result["rlvr_generate_2_ray_workers"] = {
                "tokens_per_s": round(tokens / ray_run["seconds"], 1), "wall_seconds": round(ray_run["wall_seconds"], 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
