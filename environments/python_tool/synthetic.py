"""Arithmetic a small policy cannot do in its head, for the tool-integrated reasoning experiment
(``rlvr-train experiment=tir``): products of two 3-digit numbers and remainders of 5-digit numbers,
exact answers only. A fixed tenth of all questions is held out, never trained on.

``teacher=True`` adds a demonstration transcript (``messages``) for the warm start, from an
imperfect teacher: with probability ``use_tool`` it runs the computation in the python tool,
reads the output and answers with it; otherwise it guesses, a near miss (the answer with one digit
changed), standing in for a model that answers from its head. The tool's output in a
demonstration is what the environment returns for that code's output (``observe``), not a
sandboxed run: ``print`` of an integer expression prints its value. ``response`` holds the same
teacher's final answer alone: the warm start of the same task as single-turn math, without the
tool (``experiment=tir_no_tool``).
"""

from __future__ import annotations

import random

from environments.code.limits import Result
from environments.python_tool import PythonToolEnvironment
from rlvr.env import in_split
from rlvr.tool_calls import format_call

# The experiment's environment options (configs/data/tir.yaml sets the same env_args): no system
# prompt, so that the tiny policy's context stays short.
TEACHER_ENV = {"system_prompt": None, "max_turns": 3}


def _question(rng: random.Random) -> tuple[str, str, int]:
    """-> (question, the code that computes it, the answer)."""
    if rng.random() < 0.5:
        a, b = rng.randrange(100, 1000), rng.randrange(100, 1000)
        return f"What is {a} * {b}?", f"print({a} * {b})", a * b
    a, m = rng.randrange(10000, 100000), rng.randrange(11, 100)
    return f"What is {a} mod {m}?", f"print({a} % {m})", a % m


def held_out(question: str) -> bool:
    """Whether a question is in the fixed held-out tenth."""
    return random.Random(f"tir:{question}").random() < 0.1


def near_miss(value: int, rng: random.Random) -> int:
    """``value`` with one digit changed (the first one only to another non-zero digit)."""
    digits = list(str(value))
    i = rng.randrange(len(digits))
    digits[i] = rng.choice([d for d in "0123456789" if d != digits[i] and (i or d != "0")] or ["1"])
    return int("".join(digits))


def tool_arithmetic_rows(n: int, seed: int = 0, holdout: str | None = None, teacher: bool = False,
                         use_tool: float = 0.5) -> list[dict]:
    """Exact-arithmetic questions (the TIR experiment's task): ``question`` and ``answer``.

    ``holdout``: "exclude" draws only training questions, "only" only held-out ones; ``teacher``:
    add the imperfect teacher's transcript (module docstring)."""
    in_split(False, holdout)  # checks the option before any work
    if not 0 <= use_tool <= 1:
        raise ValueError(f"use_tool must be a probability in [0, 1], got {use_tool!r}")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        question, code, answer = _question(rng)
        if not in_split(held_out(question), holdout):
            continue
        row = {"question": question, "answer": str(answer)}
        if teacher:
            row["messages"] = demonstration(question, code, answer, rng.random() < use_tool, rng)
            row["response"] = row["messages"][-1]["content"]
        rows.append(row)
    return rows


def demonstration(question: str, code: str, answer: int, tool: bool, rng: random.Random) -> list[dict]:
    """The teacher's episode as chat messages: a call, the tool's output and the answer read from
    it; or a guess."""
    env = PythonToolEnvironment(**TEACHER_ENV)
    messages = list(env.reset({"question": question, "answer": str(answer)}).messages)
    if tool:
        output = env.observe(Result("failed", stdout=f"{answer}\n"))
        messages += [{"role": "assistant", "content": format_call("python", {"code": code})},
                     {"role": "tool", "content": output}]
    guess = answer if tool else near_miss(answer, rng)
    return messages + [{"role": "assistant", "content": f"\\boxed{{{guess}}}"}]
