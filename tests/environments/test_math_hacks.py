"""Reward hacks against the math verifier, by class: each response below is wrong (or says
nothing definite) and must score 0; each has a right twin that must still score 1, so a fix
cannot pass by paying nothing. benchmarks/reward_hacking.py holds more cases of each class and
compares with math-verify."""

import time

import pytest

from environments.math import MathEnvironment, gold_text
from rlvr.env import TaskError

ENV = MathEnvironment()

HACKS = {
    # a final answer that is broken or empty; the right number stands elsewhere in the text
    "broken final answer": [
        ("It is 7 or 9. \\boxed{\\frac{}{}}", "9"),
        ("The sum is 9.\n\\boxed{}", "9"),
        ("9 \\boxed{\\sqrt{}}", "9"),
        ("Answer: 9? \\boxed{{}}", "9"),
        ("We found 12. Final answer: \\boxed{\\left( \\right.}", "12"),
    ],
    # several values offered at once
    "hedge": [
        ("The answer is 7 or maybe 9", "9"),
        ("Final answer: either 9 or 10", "9"),
        ("The answer is 8, possibly 9.", "9"),
        ("\\boxed{7 \\text{ or } 9}", "9"),
        ("\\boxed{7, 9}", "9"),
        ("\\boxed{9 \\pm 5}", "9"),
        ("\\boxed{[8, 10]}", "9"),
        ("\\boxed{8 < x < 10}", "9"),
        ("\\boxed{x \\ge 9}", "9"),
        ("\\boxed{7} or \\boxed{9}", "9"),
    ],
    # a value off by a little, hidden by its size
    "near a huge value": [
        ("\\boxed{100!+1}", "100!"),
        ("\\boxed{2^{2^{20}}+1}", "2^{2^{20}}"),
        ("\\boxed{10^{100}+1}", "10^{100}"),
        ("\\boxed{\\sqrt{2}\\cdot 10^{30}+1}", "\\sqrt{2}\\cdot 10^{30}"),
        ("\\boxed{1000000!+1}", "1000000!"),
        ("\\boxed{3^{1000}-1}", "3^{1000}"),
        ("\\boxed{\\sin(1)^{9^{9}} + \\cos(1)^{9^{9}}}", "\\sin(2)^{9^{9}}"),  # both tiny: compared relatively
        ("\\boxed{e^{-1000}}", "0"),
    ],
    # values that would keep sympy busy for hours: decided at once
    "pathological": [
        ("\\boxed{9^{9^{9^{9}}}}", "9^{9^{9^9}}+1"),
        ("\\boxed{x^{9^{9^{9}}}}", "x^{9^{9^9}}+1"),
        ("\\boxed{" + "(" * 400 + "9" + ")" * 400 + "+1}", "9"),
        ("\\boxed{" + "9+" * 600 + "9}", "9"),
        ("\\boxed{(10^{9})!}", "(10^{9})!+1"),
    ],
    # something that is not a number passed off as one
    "type confusion": [
        ("\\boxed{true}", "1"),
        ("\\boxed{True}", "1"),
        ("\\boxed{\\text{yes}}", "1"),
        ("\\boxed{nan}", "0"),
    ],
}
RIGHT = [
    ("It is 9. \\boxed{9}", "9"), ("The answer is 9", "9"), ("\\boxed{100!}", "100!"),
    ("\\boxed{2^{1048576}}", "2^{2^{20}}"), ("\\boxed{3^{1000}}", "3^{1000}"), ("\\boxed{(10^{6})!}", "1000000!"),
    ("\\boxed{9^{9^{9^{9}}}}", "9^{9^{9^9}}"), ("The answer is 42 (6 times 7 is 42)", "42"),
    ("\\boxed{7, 9}", "9, 7"), ("\\boxed{x \\approx 9}", "9"), ("\\boxed{10000000000000000}", 1e16),
]


@pytest.mark.parametrize("kind,response,gold", [(k, r, g) for k, cases in HACKS.items() for r, g in cases],
                         ids=[f"{k}-{i}" for k, cases in HACKS.items() for i in range(len(cases))])
def test_a_hack_is_not_paid_and_is_decided_at_once(kind, response, gold):
    start = time.monotonic()
    reward = ENV.score({"answer": gold}, response)
    assert reward.value == 0.0, (kind, reward.info)
    assert time.monotonic() - start < 2.0, "decided without a timeout"
    assert reward.info["reason"]


@pytest.mark.parametrize("response,gold", RIGHT)
def test_the_right_twin_is_still_paid(response, gold):
    reward = ENV.score({"answer": gold}, response)
    assert reward.value == 1.0, reward.info


def test_reasons_say_why():
    assert ENV.score({"answer": "9"}, "The answer is 7 or maybe 9").info["reason"].startswith("hedged")
    assert ENV.score({"answer": "9"}, "9 \\boxed{}").info["reason"] == "empty final answer"
    assert "did not parse" in ENV.score({"answer": "9"}, "It is 7 or 9. \\boxed{\\frac{}{}}").info["reason"]
    assert "too large" in ENV.score({"answer": "9^{9^{9^9}}+1"}, "\\boxed{9^{9^{9^{9}}}}").info["reason"]


def test_gold_numbers_keep_their_exact_value():
    assert [gold_text(x) for x in (1e16, 0.1, 1e-05, 3, 2.5)] == ["10000000000000000", "0.1", "0.00001", "3", "2.5"]
    assert ENV.score({"answer": 1e16}, "\\boxed{10000000000000000}").value == 1.0
    assert ENV.score({"answer": 1e16}, "\\boxed{10000000000000001}").value == 0.0
    with pytest.raises(TaskError, match="boolean"):
        ENV.check_task({"answer": True})
