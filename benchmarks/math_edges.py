"""The math verifier on edge cases in both directions, against math-verify on the same rows: wrong
or uncommitted answers paid, correct answers in other forms refused, per class.

    .venv/bin/python benchmarks/math_edges.py [--data cases.jsonl]

Rows: ``response``, ``answer`` (gold), ``expected`` (1 right, 0 wrong), ``class``. Without
``--data``, the project's own edge set (tests/environments/math_edges.py) is written to a
temporary file. rlvr's rewards come from ``rlvr score --env math`` (the command line, as a
user scores a file); math-verify's from ``verify(parse(gold), parse(response))`` in the
project's deadline pool (10 s a row; a row it does not decide counts as not paid). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rlvr.scoring.pool import DeadlinePool

ROOT = Path(__file__).resolve().parents[1]


def own_rows() -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests" / "environments"))
    from math_edges import all_cases  # noqa: PLC0415 - the tests' module, by path

    return [{"class": k, "response": r, "answer": g, "expected": e} for k, r, g, e in all_cases()]


def rlvr_rewards(rows: list[dict], folder: Path) -> tuple[list[float], float]:
    source, out = folder / "rows.jsonl", folder / "scored.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlvr", "score", "--env", "math", "--input", str(source), "--output",
                    str(out), "--no-progress"], check=True, capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    return [json.loads(line)["reward"] for line in out.read_text().splitlines()], seconds


def _math_verify_judge():
    from math_verify import parse, verify

    return lambda row: float(bool(verify(parse(row["answer"]), parse(row["response"]))))


def math_verify_rewards(rows: list[dict]) -> list[float]:
    with DeadlinePool(_math_verify_judge, workers=1, timeout=10.0) as pool:
        return [o.value if o.status == "ok" else 0.0 for o in pool.map(rows)]


def tally(rows: list[dict], rewards: list[float]) -> dict:
    out = Counter()
    for row, reward in zip(rows, rewards):
        if row["expected"] == 1:
            out["right"] += 1
            out["right_refused"] += reward != 1.0
        else:
            out["wrong"] += 1
            out["wrong_paid"] += reward == 1.0
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="rows (response, answer, expected, class); default: the project's set")
    ap.add_argument("--show", action="store_true", help="list the rows each verifier gets wrong")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.open() if line.strip()] if args.data else own_rows()
    with tempfile.TemporaryDirectory() as folder:
        ours, seconds = rlvr_rewards(rows, Path(folder))
    theirs = math_verify_rewards(rows)
    report = {"rows": len(rows), "rlvr": tally(rows, ours), "math_verify": tally(rows, theirs),
              "rlvr_rows_per_s": round(len(rows) / seconds, 1), "by_class": {}}
    for kind in sorted({r["class"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["class"] == kind]
        report["by_class"][kind] = {"rlvr": tally([rows[i] for i in idx], [ours[i] for i in idx]),
                                    "math_verify": tally([rows[i] for i in idx], [theirs[i] for i in idx])}
    if args.show:
        report["rlvr_misses"] = [(r["class"], r["response"], r["answer"], r["expected"])
                                 for r, v in zip(rows, ours) if v != r["expected"]]
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
