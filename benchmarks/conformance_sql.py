"""SQL environment conformance: every gold query scores 1.0 against itself, and perturbed gold
queries score 0.0 wherever the perturbation changes the result.

    .venv/bin/python benchmarks/conformance_sql.py --data ../shared/data/sql_tasks.jsonl

Perturbations: drop the (first) WHERE clause, change a constant (the first number + 1, or the
first string literal), swap an aggregate (MAX/MIN, SUM/AVG, COUNT -> SUM). A perturbation whose
result equals the gold result cannot be told apart and is counted as "unchanged"; one that does
not run counts as changed (it must score 0). ``db_path`` is resolved against the data file's
folder. Prints one JSON object, with the time per scored query.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from environments.sql import SqlEnvironment
from environments.sql.database import QueryError, open_database, run_query
from environments.sql.reward import has_top_level_order_by, results_match

_CLAUSE_END = r"(?=\bGROUP\s+BY\b|\bORDER\s+BY\b|\bLIMIT\b|\bHAVING\b|\bUNION\b|\bINTERSECT\b|\bEXCEPT\b|\)|$)"
SWAPS = {"MAX": "MIN", "MIN": "MAX", "SUM": "AVG", "AVG": "SUM", "COUNT": "SUM"}


def drop_where(sql: str) -> str | None:
    out = re.sub(r"\bWHERE\b.*?" + _CLAUSE_END, " ", sql, count=1, flags=re.I | re.S)
    return out if out != sql else None


def change_constant(sql: str) -> str | None:
    number = re.search(r"(?<![\w.])(\d+)(?![\w.])", sql)
    string = re.search(r"'((?:[^']|'')*)'", sql)
    if string and (not number or string.start() < number.start()):
        return sql[:string.start()] + "'" + string.group(1) + "_x'" + sql[string.end():]
    if number:
        return sql[:number.start()] + str(int(number.group(1)) + 1) + sql[number.end():]
    return None


def swap_aggregate(sql: str) -> str | None:
    found = re.search(r"\b(MAX|MIN|SUM|AVG|COUNT)\s*\(", sql, flags=re.I)
    if not found:
        return None
    return sql[:found.start(1)] + SWAPS[found.group(1).upper()] + sql[found.end(1):]


PERTURBATIONS = {"drop_where": drop_where, "change_constant": change_constant, "swap_aggregate": swap_aggregate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="sql_tasks.jsonl (question, gold_sql, db_path)")
    ap.add_argument("--db-root", help="folder db_path is relative to (default: the data file's folder)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    env = SqlEnvironment(db_root=args.db_root or str(Path(args.data).parent))
    seconds, gold_failures = [], []
    perturbed = {name: {"made": 0, "changed": 0, "changed_scored_0": 0, "unchanged": 0} for name in PERTURBATIONS}
    wrongly_rewarded = []
    for row in rows:
        start = time.perf_counter()
        if env.score(row, row["gold_sql"]).value != 1.0:
            gold_failures.append(row.get("id"))
        seconds.append(time.perf_counter() - start)
        conn = open_database(row, env.db_root)
        gold = run_query(conn, row["gold_sql"]).rows
        ordered = bool(row.get("order_matters")) or has_top_level_order_by(row["gold_sql"])
        for name, perturb in PERTURBATIONS.items():
            query = perturb(row["gold_sql"])
            if query is None:
                continue
            counts = perturbed[name]
            counts["made"] += 1
            try:
                same = results_match(gold, run_query(conn, query).rows, ordered)
            except QueryError:
                same = False
            if same:
                counts["unchanged"] += 1
                continue
            counts["changed"] += 1
            start = time.perf_counter()
            if env.score(row, query).value == 0.0:
                counts["changed_scored_0"] += 1
            else:
                wrongly_rewarded.append({"id": row.get("id"), "perturbation": name, "query": query})
            seconds.append(time.perf_counter() - start)
        conn.close()
    print(json.dumps({
        "rows": len(rows), "gold_scored_1": len(rows) - len(gold_failures), "gold_failures": gold_failures,
        "perturbations": perturbed, "changed_but_rewarded": wrongly_rewarded,
        "ms_per_scored_query": {"median": round(1000 * statistics.median(seconds), 3),
                                "mean": round(1000 * statistics.mean(seconds), 3), "queries": len(seconds)},
    }, indent=1))


if __name__ == "__main__":
    main()
