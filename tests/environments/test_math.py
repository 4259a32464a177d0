"""The math grader on cases written for this project (the third-party labelled set is measured by
benchmarks/conformance.py, not here)."""

import pytest

from environments.math import MathEnvironment
from environments.math.normalize import normalize
from environments.math.grader import Options, final_answer, grade, simple_number
from environments.math.units import split_unit
from environments.math.latex import ParseError, Rel, Seq, parse_answer

EQUAL = [
    # numbers
    ("42", "42"), ("1,234,567", "1234567"), ("1 000", "1000"), ("3.50", "3.5"), (".5", "1/2"),
    ("\\frac{3}{4}", "0.75"), ("\\dfrac{6}{8}", "3/4"), ("\\tfrac34", "\\frac{3}{4}"), ("-\\frac12", "-0.5"),
    ("2,75", "2.75"), ("12.5\\%", "12.5"), ("45^\\circ", "45"), ("\\$18.00", "18"), ("7 \\text{ cm}", "7"),
    ("15\\frac{1}{2}", "31/2"), ("3.14159", "3.14"),
    # a gold written as a rounded decimal takes what rounds to it at its places
    ("\\sqrt{2}", "1.41"), ("2\\pi", "6.28"), ("\\frac{1}{3}", "0.33"),
    # expressions
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\sqrt[3]{27}", "3"), ("\\frac{\\pi}{2}", "\\pi/2"), ("2x+3", "3+2x"),
    ("(x+1)^2", "x^2+2x+1"), ("\\sin^2 x + \\cos^2 x", "1"), ("e^{2}", "\\exp(2)"), ("\\binom{5}{2}", "10"),
    ("5!", "120"), ("\\log_2 8", "3"), ("|-3|", "3"), ("\\frac{1+\\sqrt{5}}{2}", "\\frac{\\sqrt5+1}{2}"),
    # structures
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"), ("3, 1, 2", "1,2,3"), ("(1, 2)", "(1,2)"), ("[0, 1)", "[0,1)"),
    ("(-\\infty, 2] \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2]"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    ("1 \\pm \\sqrt{2}", "\\{1+\\sqrt2, 1-\\sqrt2\\}"),
    # equations and inequalities
    ("x = 3", "3"), ("3", "y=3"), ("y = 2x + 1", "2x - y + 1 = 0"), ("x \\ge 2", "2 \\le x"),
    ("x \\in [1, 5]", "[1,5]"), ("(a, b) = (1, 2)", "(1,2)"), ("a=1, b=2", "(1, 2)"),
    # text answers
    ("\\text{(B)}", "B"), ("\\text{Monday}", "monday"),
]
DIFFERENT = [
    ("41", "42"), ("0.33", "1/3"), ("0.333333", "1/3"), ("1,2", "1.2"), ("(1, 2)", "(2, 1)"), ("[0,1]", "[0,1)"),
    ("\\{1,2\\}", "\\{1,2,3\\}"), ("2x+3", "2y+3"), ("x > 2", "x \\ge 2"), ("x < 2", "x > 2"),
    ("\\sqrt{2}", "1.42"), ("x^2", "x^3"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
    ("3", "x + 3 = 0"), ("\\text{A}", "\\text{B}"), ("12:00", "1:00"), ("2\\pi", "6.29"),
    ("\\frac{12}{5}", "2.5"), ("3", "3.1"),
]


@pytest.mark.parametrize("pred,gold", EQUAL)
def test_equal(pred, gold):
    verdict = grade(f"So the answer is $\\boxed{{{pred}}}$.", gold)
    assert verdict.equal, verdict


@pytest.mark.parametrize("pred,gold", DIFFERENT)
def test_different(pred, gold):
    verdict = grade(f"\\boxed{{{pred}}}", gold)
    assert not verdict.equal, verdict


@pytest.mark.parametrize("response,expected", [
    ("We get \\boxed{\\frac{a}{b}} here", "\\frac{a}{b}"),
    ("Thus the answer is 17.", "17"),
    ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
    ("Adding gives $3+4=7$ apples.", "3+4=7"),
    ("She has 12 apples and eats 5, leaving 7", "7"),
    ("Steps...\n#### 1,250", "1,250"),
    ("\\boxed{3} and \\boxed{5}", "3, 5"),
])
def test_extraction(response, expected):
    assert normalize(final_answer(response)[0]) == normalize(expected)


def test_boxes_separated_by_prose_are_two_statements_that_must_agree():
    answer, _, why = final_answer("\\boxed{1} we tried many other ideas here \\boxed{2}")
    assert answer is None and why.startswith("final answers disagree")
    assert final_answer("\\boxed{2} we tried many other ideas here \\boxed{2}")[0] == "2"


def test_a_box_and_a_later_final_answer_that_disagree_score_zero():
    text = "first try \\boxed{200}. Later: Final Answer: The final answer is $255$."
    assert not grade(text, "255").equal and not grade(text, "200").equal
    assert grade("first try \\boxed{255}. Final Answer: The final answer is $255$.", "255").equal


def test_no_answer_is_a_zero_with_a_reason():
    verdict = grade("I do not know.", "4")
    assert not verdict.equal and verdict.reason
    assert grade("", "4").reason == "no answer found in response"


def test_normalize_strips_units_and_separators():
    assert normalize("$1{,}000{,}000$") == "1000000"
    assert normalize("\\left( 1, 2 \\right)") == "( 1, 2 )"
    assert split_unit("5\\text{ meters}") == ("5", "m")
    assert normalize("32, 349") == "32, 349"  # comma + space is a list, not thousands


def test_simple_number_fast_path():
    assert simple_number("-3/4") == simple_number("\\frac{-3}{4}".replace("{-3}", "{3}")) * -1
    assert simple_number("x") is None


def test_parser_structures():
    assert parse_answer("(0, 1]") == Seq((0, 1), "(", "]")
    rel = parse_answer("1 < x \\le 2")
    assert isinstance(rel, Rel) and rel.ops == ("<", "<=")
    with pytest.raises(ParseError):
        parse_answer("\\frac{1}{")


def test_power_tower_is_not_evaluated_while_parsing():
    value = parse_answer("10^{10^{10}}")
    assert value.is_Pow  # kept symbolic: 10**(10**10) would need gigabytes


def test_precision_option():
    assert not grade("\\boxed{0.3333}", "1/3").equal
    assert grade("\\boxed{0.3333}", "1/3", Options(precision=4)).equal


def test_environment_reward_and_info():
    env = MathEnvironment()
    reward = env.score({"answer": "12"}, "Twelve is \\boxed{12}.")
    assert reward.value == 1.0 and reward.info["extracted"] == "12"
    assert env.score({"answer": 12}, "\\boxed{13}").value == 0.0


def test_options_reach_comparisons_inside_relations():
    """Relation comparisons used a fresh Options(): a caller's precision was lost inside them."""
    assert grade(r"\boxed{x = 0.33}", "x = 1/3", Options(precision=2)).equal
    assert not grade(r"\boxed{x = 0.33}", "x = 1/3").equal  # default: 6 places
    assert grade(r"\boxed{0 < x < 0.33}", "0 < x < 1/3", Options(precision=2)).equal
    assert not grade(r"\boxed{0 < x < 0.33}", "0 < x < 1/3").equal
