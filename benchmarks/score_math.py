"""Speed and agreement of our math grader against the ``math-verify`` package, in one run.

    python benchmarks/score_math.py --data ../shared/data [--limit N]

Two row sets, both read by path from the shared evaluation data:
  * ``math_problems.jsonl``: each reference solution (GSM8K, MATH-500, AIME, ...) graded against
    its own gold answer; the right verdict is always "equal";
  * ``math_equiv.jsonl``: labelled (pred, gold) pairs; the right verdict is the label.
Both graders run in this process, one row at a time, with their default settings and the usual
call pattern (math-verify: ``verify(parse(gold), parse(pred))``). Our grader's caches are cleared
before each timed pass so the numbers are cold-cache. Also timed: ``rlvr score`` through the
process pool (``--workers 2``), which adds the per-row hard timeout and process IPC.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from environments.math import extract, latex, normalize, numeric, units
from environments.math import grader as ours
from rlvr.scoring.job import score_file


def load_rows(data: Path, limit: int | None) -> dict[str, list[tuple[str, str, bool]]]:
    problems = [json.loads(x) for x in (data / "math_problems.jsonl").read_text().splitlines()]
    equiv = [json.loads(x) for x in (data / "math_equiv.jsonl").read_text().splitlines()]
    sets = {
        "reference_solutions": [(r["solution"], r["answer"], True) for r in problems if r.get("solution")],
        "labelled_pairs": [(r["pred"], r["gold"], r["equivalent"]) for r in equiv],
    }
    return {k: v[:limit] if limit else v for k, v in sets.items()}


def run_ours(rows) -> tuple[float, int]:
    for module in (ours, extract, latex, normalize, numeric, units):  # every memo the grader keeps
        for fn in vars(module).values():
            if hasattr(fn, "cache_clear"):
                fn.cache_clear()
    start = time.perf_counter()
    agree = sum(ours.grade(pred, gold).equal == label for pred, gold, label in rows)
    return time.perf_counter() - start, agree


def run_math_verify(rows) -> tuple[float, int]:
    from math_verify import parse, verify

    start = time.perf_counter()
    agree = 0
    for pred, gold, label in rows:
        try:
            verdict = bool(verify(parse(gold), parse(pred)))
        except Exception:  # math-verify raises on some inputs; count as "not equal"
            verdict = False
        agree += verdict == label
    return time.perf_counter() - start, agree


def run_pool(rows, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps({"response": p, "answer": g}) + "\n" for p, g, _ in rows))
        summary = score_file("math", src, out, workers=workers, timeout=10, progress=False)
    return summary.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder holding math_problems.jsonl and math_equiv.jsonl")
    ap.add_argument("--limit", type=int, help="rows per set (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="pool workers for the rlvr score timing")
    args = ap.parse_args()
    result = {"cpus": os.cpu_count(), "sets": {}}
    for name, rows in load_rows(args.data, args.limit).items():
        t_ours, a_ours = run_ours(rows)
        t_mv, a_mv = run_math_verify(rows)
        t_pool = run_pool(rows, args.workers)
        n = len(rows)
        result["sets"][name] = {
            "rows": n,
            "ours_rows_per_s": round(n / t_ours, 1),
            "math_verify_rows_per_s": round(n / t_mv, 1),
            "speedup": round(t_mv / t_ours, 2),
            "ours_agreement": round(a_ours / n, 4),
            "math_verify_agreement": round(a_mv / n, 4),
            f"rlvr_score_{args.workers}_workers_rows_per_s": round(n / t_pool, 1),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
