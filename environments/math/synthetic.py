"""Arithmetic word problems the project generates itself (no third-party data needed).

Used by ``rlvr example`` (an offline-scoring demo whose responses imitate a model's: right and
wrong answers in the formats models use) and as the task family of the default training job.
"""

from __future__ import annotations

import random
from fractions import Fraction

from rlvr.env import in_split

_NAMES = ["Ava", "Ben", "Chen", "Dina", "Eli", "Fatima", "Goro", "Hana"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "shells"]


def arithmetic_problem(rng: random.Random) -> dict:
    """One two-step word problem with an integer answer."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(2, 40), rng.randint(2, 9), rng.randint(1, 30)
    kind = rng.randrange(3)
    if kind == 0:
        text = f"{name} has {a} {item}, buys {b} bags of {c} {item} each. How many {item} now?"
        answer = a + b * c
    elif kind == 1:
        total = a * b + c
        text = f"{name} shares {total} {item} among {b} friends equally and keeps the {c} left over. How many does each friend get?"
        answer = a
    else:
        text = f"{name} had {a + c} {item}, gave away {c}, then doubled the rest. How many {item}?"
        answer = 2 * a
    return {"problem": text, "answer": str(answer)}


def imitation_response(rng: random.Random, answer: str) -> str:
    """A response in one of the styles models produce; about a third are wrong."""
    value = int(answer)
    if rng.random() < 0.35:
        value += rng.choice([-10, -1, 1, 2, 7])
    styles = [
        f"Let me compute step by step. The result is $\\boxed{{{value}}}$.",
        f"... so the answer is {value}.",
        f"Final Answer: The final answer is ${value}$. I hope it is correct.",
        f"We get {value:,} in total.",
        f"\\[ \\boxed{{{Fraction(value * 2, 2)}}} \\]",
        f"That makes {value}.0",
    ]
    return rng.choice(styles)


def word_problem_rows(n: int, seed: int = 0) -> list[dict]:
    """Two-step arithmetic word problems as prompt/answer rows."""
    rng = random.Random(seed)
    return [{"prompt": p["problem"], "answer": p["answer"]} for p in (arithmetic_problem(rng) for _ in range(n))]


def example_dataset(n: int, seed: int = 0) -> list[dict]:
    """Word problems with imitated model responses, right and wrong (what `rlvr example` scores)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = arithmetic_problem(rng)
        row.update(id=i, response=imitation_response(rng, row["answer"]))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the default training task

def teacher_sum(a: int, b: int, rng: random.Random, forget_carry: float) -> int:
    """a + b as a careless teacher writes it: column by column, dropping each carry with
    probability ``forget_carry``. Stands in for distilled data from a weaker model."""
    out, carry, place = 0, 0, 1
    while a or b or carry:
        s = a % 10 + b % 10 + carry
        out += (s % 10) * place
        carry = 1 if s >= 10 and rng.random() >= forget_carry else 0
        a, b, place = a // 10, b // 10, place * 10
    return out


def held_out(a: int, b: int) -> bool:
    """A fixed, pseudo-random tenth of all (a, b) pairs, never used for training: the evaluation
    problems. (A linear hash of a and b would select by a + b and bias the held-out answers.)"""
    return random.Random(f"{a}+{b}").random() < 0.1


def addition_rows(n: int, seed: int = 0, digits: int = 2, forget_carry: float | None = None,
                  holdout: str | None = None) -> list[dict]:
    """Addition problems "a+b=" (the default training task).

    ``n`` rows, a and b of up to ``digits`` digits. Each row has the prompt, the true ``answer``
    (what the math environment grades against) and, when ``forget_carry`` is given, a
    ``response`` written by the careless teacher (the SFT demonstrations).
    ``holdout``: "exclude" draws only training pairs, "only" only the held-out ones."""
    in_split(False, holdout)  # checks the option before any work
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        a, b = rng.randrange(10 ** digits), rng.randrange(10 ** digits)
        if not in_split(held_out(a, b), holdout):
            continue
        row = {"prompt": f"{a}+{b}=", "answer": str(a + b)}
        if forget_carry is not None:
            row["response"] = str(teacher_sum(a, b, rng, forget_carry))
        rows.append(row)
    return rows
