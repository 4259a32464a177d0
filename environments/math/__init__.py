"""Math environment: reward 1.0 when the response's final answer equals the gold answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from decimal import Decimal

from environments.math.grader import Options, grade
from rlvr.env import Environment, Reward, TaskError


def gold_text(gold: str | int | float) -> str:
    """A gold number as the exact decimal it holds: 1e16 -> "10000000000000000" (not "1e+16",
    which reads as another answer), 0.1 -> "0.1" (the shortest text that round-trips)."""
    if isinstance(gold, str):
        return gold
    if isinstance(gold, float):
        return format(Decimal(repr(gold)), "f")
    return str(gold)


class MathEnvironment(Environment):
    """Single-turn math answers graded with sympy.

    Row fields: ``answer`` (gold; a number, LaTeX, or a full reference solution whose last
    ``\\boxed{}`` is the answer). The response's final answer follows the final-answer rule of
    ``extract.py``; the comparison the rules of ``grader.py`` (exact unless the gold is a rounded
    decimal or ``precision`` is set).
    """

    name = "math"
    task_fields: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"answer": (str, int, float)}

    def __init__(self, precision: int | None = None, allow_set_relation: bool = True):
        self.options = Options(precision=precision, allow_set_relation=allow_set_relation)

    def check_task(self, task: Mapping[str, Any]) -> None:
        super().check_task(task)
        if isinstance(task["answer"], bool):  # JSON true/false: not a number, though Python says so
            raise TaskError("field 'answer' must be a string or a number, got a boolean")

    def score(self, task: Mapping[str, Any], response: str) -> Reward:
        verdict = grade(response, gold_text(task["answer"]), self.options)
        return Reward(
            1.0 if verdict.equal else 0.0,
            {"extracted": verdict.pred, "gold": verdict.gold, "reason": verdict.reason},
        )
