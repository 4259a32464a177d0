"""Short Python functions the project generates itself: the code experiment's task family.

A problem states, in a comment, a chain of arithmetic steps on ``x`` ("add 13, then multiply by
4, then subtract 2") and the model completes ``return ...``; unit tests call ``f`` on a few
inputs. Every chain starts with an addition or subtraction that a multiplication follows, so the
correct code needs parentheses: ``(x + 13) * 4 - 2``. The demonstrations for the warm start come
from a careless teacher that forgets them with probability ``forget_parens`` (standing in for
distilled data from a weaker model), so the warm-started model often writes ``x + 13 * 4 - 2``,
which the tests reject and GRPO learns to avoid.
"""

from __future__ import annotations

import random

from rlvr.env import in_split

TEST_INPUTS = (0, 1, 2, 5, -3, 10)


def _chain(rng: random.Random) -> tuple[list[tuple[str, int]], str, str]:
    """-> (steps, correct expression, expression without the parentheses)."""
    steps = [(rng.choice(["add", "subtract"]), rng.randint(1, 20)), ("multiply", rng.randint(2, 9))]
    if rng.random() < 0.75:
        steps.append((rng.choice(["add", "subtract"]), rng.randint(1, 9)))
    (op1, a), (_, b) = steps[:2]
    sign = "+" if op1 == "add" else "-"
    tail = "".join(f"{'+' if op == 'add' else '-'}{k}" for op, k in steps[2:])
    return steps, f"(x{sign}{a})*{b}{tail}", f"x{sign}{a}*{b}{tail}"


def _spec(steps: list[tuple[str, int]]) -> str:
    words = {"add": "add {}", "subtract": "subtract {}", "multiply": "multiply by {}"}
    return ", then ".join(words[op].format(k) for op, k in steps)


def held_out(spec: str) -> bool:
    """A fixed, pseudo-random tenth of all problems, never trained on: the evaluation problems."""
    return random.Random(f"code:{spec}").random() < 0.1


def function_rows(n: int, seed: int = 0, forget_parens: float | None = None, holdout: str | None = None) -> list[dict]:
    """Write-a-function problems as HumanEval-style rows (prompt, test, entry_point).

    ``forget_parens``: add a ``response`` from the careless teacher (the SFT demonstrations);
    ``holdout``: "exclude" draws only training problems, "only" only the held-out ones."""
    in_split(False, holdout)  # checks the option before any work
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        steps, correct, careless = _chain(rng)
        spec = _spec(steps)
        if not in_split(held_out(spec), holdout):
            continue
        expected = [eval(correct, {"x": x}) for x in TEST_INPUTS]  # noqa: S307 - our own expression
        test = "def check(candidate):\n" + "".join(f"    assert candidate({x}) == {y}\n"
                                                  for x, y in zip(TEST_INPUTS, expected))
        row = {"prompt": f"def f(x):\n    # {spec}\n    return ", "test": test, "entry_point": "f"}
        if forget_parens is not None:
            row["response"] = careless if rng.random() < forget_parens else correct
        rows.append(row)
    return rows
