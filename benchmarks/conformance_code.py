"""The code environment against real benchmark data: every reference solution must pass, and
mutants of them (a flipped comparison, a swapped operator, an off-by-one) must fail.

    .venv/bin/python benchmarks/conformance_code.py --data ../shared/data/code_tasks.jsonl

Mutants are made from each reference's syntax tree, one change each; a mutant that changes
nothing the tests can see (e.g. ``<`` -> ``<=`` on values never equal) survives, as in mutation
testing generally: the figure reported is the share killed, per kind. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from collections import Counter

from environments.code import CodeEnvironment

FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}


def reference_response(row: dict) -> str:
    return row["canonical_solution"]


def mutants(code: str) -> dict[str, str]:
    """One mutant per kind (the first place it applies), as source text."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    out = {}
    for kind, pick in (("flip_comparison", _flip), ("swap_operator", _swap), ("off_by_one", _off_by_one)):
        mutated = ast.parse(code)
        for node in ast.walk(mutated):
            if pick(node):
                out[kind] = ast.unparse(mutated)
                break
    del tree
    return out


def _flip(node) -> bool:
    if isinstance(node, ast.Compare) and type(node.ops[0]) in FLIP:
        node.ops[0] = FLIP[type(node.ops[0])]()
        return True
    return False


def _swap(node) -> bool:
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP:
        node.op = SWAP[type(node.op)]()
        return True
    return False


def _off_by_one(node) -> bool:
    if isinstance(node, ast.Constant) and type(node.value) is int and not isinstance(node.value, bool):
        node.value += 1
        return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="code_tasks.jsonl (HumanEval + MBPP rows with references)")
    ap.add_argument("--limit", type=int, default=None, help="first N rows only")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.data) if line.strip()][:args.limit]
    env = CodeEnvironment(timeout=10)
    start, failed, killed, made = time.perf_counter(), [], Counter(), Counter()
    for row in rows:
        reward = env.score(row, reference_response(row))
        if reward.value != 1.0:
            failed.append({"task_id": row["task_id"], "status": reward.info["status"], "error": reward.info["error"]})
        program = reference_response(row) if row["dataset"] == "mbpp" else row["prompt"] + reference_response(row)
        for kind, mutant in mutants(program).items():
            made[kind] += 1
            response = mutant if row["dataset"] == "mbpp" else f"```python\n{mutant}\n```"
            killed[kind] += env.score(row, response).value == 0.0
    by_set = Counter(r["dataset"] for r in rows)
    result = {
        "rows": len(rows), "by_dataset": dict(by_set), "references_passed": len(rows) - len(failed),
        "references_failed": failed,
        "mutants": {k: {"made": made[k], "killed": killed[k], "killed_share": round(killed[k] / made[k], 3)}
                    for k in made},
        "seconds": round(time.perf_counter() - start, 1), "backend": env._runner.sandbox.backend,
    }
    env._runner.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
