"""Math environment: reward 1.0 when the response's final answer equals the gold answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from environments.math.grader import Options, grade
from rlvr.env import Environment, Reward


class MathEnvironment(Environment):
    """Single-turn math answers graded with sympy.

    Row fields: ``answer`` (gold; a number, LaTeX, or a full reference solution whose last
    ``\\boxed{}`` is the answer). The response's final answer is its last ``\\boxed{}``, else the
    text after "The answer is", else its last math span or number.
    """

    name = "math"
    task_fields: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"answer": (str, int, float)}

    def __init__(self, precision: int = 6, allow_set_relation: bool = False):
        self.options = Options(precision=precision, allow_set_relation=allow_set_relation)

    def score(self, task: Mapping[str, Any], response: str) -> Reward:
        gold = task["answer"]
        verdict = grade(response, gold if isinstance(gold, str) else repr(gold), self.options)
        return Reward(
            1.0 if verdict.equal else 0.0,
            {"extracted": verdict.pred, "gold": verdict.gold, "reason": verdict.reason},
        )
