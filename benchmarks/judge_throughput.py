"""Judged pairs per second through the HTTP judge, against a local OpenAI-compatible endpoint that
answers every request after a fixed latency (``reward_models/genrm/scripted_server.py``, a real
HTTP server; the real GenRM cannot run here).

    python benchmarks/judge_throughput.py [--latency 0.2] [--limits 4 16 64] [--pairs 50]

For each concurrency limit L, two measurements: ``HttpJudge.compare_many`` over ``--pairs`` x L
comparisons in this process, and ``rlvr score --env judge --workers 1`` over as many rows of
(response_1, response_2) in a fresh process (the whole offline path: rows read, scoring process,
verdicts parsed, rows written). The ceiling is L / latency pairs per second; the target is at
least 0.8 of it, which holds only if L requests really are in flight at once (the server's peak
is reported). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reward_models.genrm.judge import Comparison, HttpJudge
from reward_models.genrm.scripted_server import ScriptedJudgeServer

CONV = ({"role": "user", "content": "Write a one-sentence greeting for Ada."},)


def in_process(server: ScriptedJudgeServer, limit: int, pairs: int) -> dict:
    judge = HttpJudge(server.base_url, "genrm", max_concurrency=limit)
    items = [Comparison(CONV, f"Hello Ada, nice to see you ({i})!", "Hi.") for i in range(pairs)]
    judge.compare_many(items[:limit])  # warm-up: connections opened
    server.stats["peak_in_flight"] = 0
    start = time.perf_counter()
    verdicts = judge.compare_many(items)
    seconds = time.perf_counter() - start
    judge.close()
    assert not any(v.fallback for v in verdicts)
    return {"pairs": pairs, "seconds": round(seconds, 3), "pairs_per_s": round(pairs / seconds, 1),
            "server_peak_in_flight": server.stats["peak_in_flight"]}


def through_rlvr_score(server: ScriptedJudgeServer, limit: int, pairs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "pairs.jsonl", Path(tmp) / "scored.jsonl"
        src.write_text("".join(json.dumps({"prompt": CONV[0]["content"], "response_1": f"Hello Ada ({i})!",
                                           "response_2": "Hi."}) + "\n" for i in range(pairs)))
        server.stats["peak_in_flight"] = 0
        done = subprocess.run(
            [str(Path(sys.executable).parent / "rlvr"), "score", "--env", "judge", "--input", str(src), "--output",
             str(out), "--workers", "1", "--no-progress", "--env-arg", f'base_url="{server.base_url}"',
             "--env-arg", f"max_concurrency={limit}"], capture_output=True, text=True, check=True)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"pairs": pairs, "seconds": summary["seconds"], "pairs_per_s": summary["rows_per_s"],
            "server_peak_in_flight": server.stats["peak_in_flight"], "errors": summary["errors"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2, help="the endpoint's seconds per answer")
    ap.add_argument("--limits", type=int, nargs="+", default=[4, 16, 64], help="max_concurrency values")
    ap.add_argument("--pairs", type=int, default=50, help="comparisons per unit of the limit (pairs = this x L)")
    args = ap.parse_args()
    result = {"latency_s": args.latency, "runs": []}
    with ScriptedJudgeServer(latency=args.latency) as server:
        for limit in args.limits:
            ceiling = limit / args.latency
            run = {"max_concurrency": limit, "ceiling_pairs_per_s": round(ceiling, 1)}
            for name, measure in (("compare_many", in_process), ("rlvr_score_workers_1", through_rlvr_score)):
                got = measure(server, limit, args.pairs * limit)
                got["share_of_ceiling"] = round(got["pairs_per_s"] / ceiling, 3)
                run[name] = got
            result["runs"].append(run)
    result["target_met"] = all(r[k]["share_of_ceiling"] >= 0.8 for r in result["runs"]
                               for k in ("compare_many", "rlvr_score_workers_1"))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
