"""The math verifier's rules, one test per class, both directions (math_edges.py holds the cases):
which statement is the final answer, hedges, units and words, exactness, structures, formats.
Each class failed on the verifier before these rules (a wrong answer paid, or a right one refused)."""

import pytest

from environments.math import MathEnvironment
from math_edges import CASES

ENV = MathEnvironment()


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_class_in_both_directions(kind):
    wrong = [(r, g) for r, g, e in CASES[kind] if e == 0 and ENV.score({"answer": g}, r).value != 0.0]
    refused = [(r, g) for r, g, e in CASES[kind] if e == 1 and ENV.score({"answer": g}, r).value != 1.0]
    assert (wrong, refused) == ([], []), f"{kind}: wrong answers paid {wrong}; right answers refused {refused}"


def test_reasons_name_the_rule():
    def reason(response, gold="9"):
        return ENV.score({"answer": gold}, response).info["reason"]

    assert reason("\\boxed{7}\n#### 9").startswith("final answers disagree")
    assert reason("The answer is not 9.").startswith("hedged final answer") and "'not'" in reason("The answer is not 9.")
    assert reason("The answer is 7, not 9.") == "not equivalent"  # 7 is stated; 9 is ruled out
    assert reason("The answer is 9 apples, 7 pears").endswith("(another value)")
    assert reason("\\boxed{9 \\text{ is wrong}}").startswith("hedged final answer")
    assert reason("\\boxed{7\\text{ cm}}", "7\\text{ m}") == "units differ: cm against m"
    assert reason("\\boxed{9 = 7}", "7") == "not equivalent"
