"""Agreement of the math grader with third-party labelled equivalence cases, per convention.

    python benchmarks/conformance.py --data ../shared/data/math_equiv.jsonl [--show-disagreements]

Each row carries the convention (Math-Verify, lighteval, hendrycks, simple-evals) whose label it
is; the grader implements the Math-Verify convention, so that is the number that matters. Per-row
grader settings that Math-Verify's own tests vary (``precision``, ``allow_set_relation_comp``)
are passed through. Labels we consider mathematically wrong are listed in KNOWN_WRONG, and rows
where the final-answer rule (README, "Math verifier") deliberately refuses what Math-Verify pays are
listed in BY_RULE, each with its reason; both still count as disagreements. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from environments.math.grader import Options, grade

# Labels that contradict mathematics; we keep the mathematically right verdict.
KNOWN_WRONG = {
    "mv-0265": "1 - 1/e and 1 + 1/e differ by 2/e; the label says equivalent",
    "mv-0255": "f(x) vs f(y) equivalent only in Math-Verify's strict=False mode, which renames "
               "variables; we never rename",
    "se-0004": "3245/5 = 649 exactly; simple-evals forbids non-trivial simplification",
    "hm-0001": "hendrycks compares comma lists as ordered; we grade answer lists as sets",
    "hm-0008": "hendrycks compares comma lists as ordered; we grade answer lists as sets",
}

# Rows the final-answer rule refuses on purpose: paying them would pay a class of wrong answers.
BY_RULE = {
    "mv-0035": "'1/2 = 10/9' is an equation whose left side is no name: a false statement, not an answer",
    "mv-0173": "an intermediate \\boxed{255} disagrees with the final answer 10,455: two final answers",
    "mv-0219": "W(x) vs W(n): we never rename variables",
    "le-0011": "French prose with the value before '$ a payer': we read English answer statements only",
    "le-0022": "'just about 1$': an approximate answer is no committed answer",
}


def options_for(row: dict) -> Options:
    cfg = row.get("grader_config") or {}
    return Options(
        precision=int(cfg.get("precision", 6)),
        allow_set_relation=bool(cfg.get("allow_set_relation_comp", False)),
        plain_numbers="expr" in cfg.get("match_types", ["expr"]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="path to math_equiv.jsonl")
    ap.add_argument("--show-disagreements", action="store_true", help="print each disagreement to stderr")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    per = collections.defaultdict(lambda: {"rows": 0, "agree": 0})
    disagreements = []
    start = time.perf_counter()
    for row in rows:
        verdict = grade(row["pred"], row["gold"], options_for(row))
        stats = per[row["convention"]]
        stats["rows"] += 1
        if verdict.equal == row["equivalent"]:
            stats["agree"] += 1
        else:
            disagreements.append({
                "id": row["id"], "label": row["equivalent"], "ours": verdict.equal,
                "extracted": verdict.pred, "gold": verdict.gold, "reason": verdict.reason,
                "why": KNOWN_WRONG.get(row["id"]) or BY_RULE.get(row["id"]),
            })
    elapsed = time.perf_counter() - start
    for stats in per.values():
        stats["agreement"] = round(stats["agree"] / stats["rows"], 4)
    if args.show_disagreements:
        for d in disagreements:
            print(json.dumps(d, ensure_ascii=False)[:400], file=sys.stderr)
    print(json.dumps({
        "rows": len(rows),
        "per_convention": per,
        "disagreements": [{"id": d["id"], "label": d["label"], "why": d["why"]}
                          for d in disagreements],
        "seconds": round(elapsed, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
