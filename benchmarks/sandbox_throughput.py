"""Code-sandbox throughput: executions per second, warm fork-server pool vs a fresh sandboxed
interpreter per run, isolation on (bubblewrap) for both.

    .venv/bin/python benchmarks/sandbox_throughput.py [--data ../shared/data/code_tasks.jsonl]

Workloads: a trivial program (one function, one assert), and the HumanEval reference solutions
with their tests (from ``--data``; without it, the trivial workload only). ``--workers`` runners
work at once (threads; the work happens in the sandboxes' processes), as scoring workers would.
"Fresh" starts a new sandbox (bwrap + interpreter + harness) for every run. Prints one JSON
object with runs/s, the warm/fresh ratio, and where a warm run's time goes (phases inside the
sandbox, milliseconds from the start of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

from environments.code import program_and_tests
from environments.code.sandbox import Limits, Sandbox

TRIVIAL = ("def add(a, b):\n    return a + b\n", {"code": "assert add(1, 2) == 3\n"})


def humaneval_jobs(path: str) -> list[tuple[str, dict]]:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [program_and_tests(r, r["canonical_solution"]) for r in rows if r["dataset"] == "humaneval"]


def in_threads(worker, workers: int) -> float:
    """worker(0..workers-1) at once; -> seconds until all are done."""
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def run_warm(sandbox: Sandbox, jobs: list, workers: int, repeat: int) -> dict:
    runners = [sandbox.runner(Limits()) for _ in range(workers)]
    for r in runners:
        r.check(*TRIVIAL)  # start the servers (not timed)
    results, phases = [], []
    work = [jobs[i % len(jobs)] for i in range(len(jobs) * repeat)]

    def worker(k: int) -> None:
        for program, tests in work[k::workers]:
            res = runners[k].check(program, tests)
            results.append(res.status)

    seconds = in_threads(worker, workers)
    phases = [runners[0].check(*jobs[i % len(jobs)]).wall_s * 1000 for i in range(20)]
    for r in runners:
        r.close()
    return {"runs": len(work), "seconds": round(seconds, 2), "runs_per_s": round(len(work) / seconds, 1),
            "passed": results.count("passed"), "median_run_ms_alone": round(statistics.median(phases), 2)}


def run_fresh(sandbox: Sandbox, jobs: list, workers: int, runs: int) -> dict:
    """A new sandboxed interpreter for every run."""
    done = []
    work = [jobs[i % len(jobs)] for i in range(runs)]

    def worker(k: int) -> None:
        for program, tests in work[k::workers]:
            runner = sandbox.runner(Limits())
            done.append(runner.check(program, tests).status)
            runner.close()

    seconds = in_threads(worker, workers)
    return {"runs": runs, "seconds": round(seconds, 2), "runs_per_s": round(runs / seconds, 1),
            "passed": done.count("passed")}


def phases(sandbox: Sandbox, jobs: list) -> dict:
    """Median milliseconds from a run's start to each phase's end, inside the sandbox."""
    runner = sandbox.runner(Limits())
    marks: dict[str, list[float]] = {}
    for program, tests in jobs[:50]:
        for k, v in runner.check(program, tests).phases_ms.items():
            marks.setdefault(k, []).append(v)
    runner.close()
    return {k: round(statistics.median(v), 2) for k, v in marks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="code_tasks.jsonl: adds the HumanEval workload")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=6, help="passes over each workload (warm)")
    ap.add_argument("--fresh-runs", type=int, default=100)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    sandbox = Sandbox(args.backend)
    workloads = {"trivial": [TRIVIAL] * 100}
    if args.data:
        workloads["humaneval"] = humaneval_jobs(args.data)
    result = {"cpus": os.cpu_count(), "workers": args.workers, "backend": sandbox.backend,
              "torch_threads": torch.get_num_threads()}
    for name, jobs in workloads.items():
        warm = run_warm(sandbox, jobs, args.workers, args.repeat)
        fresh = run_fresh(sandbox, jobs, args.workers, min(args.fresh_runs, len(jobs) * args.repeat))
        result[name] = {"warm": warm, "fresh": fresh, "warm_vs_fresh": round(warm["runs_per_s"] / fresh["runs_per_s"], 1),
                        "phases_ms": phases(sandbox, jobs)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
