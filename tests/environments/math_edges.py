"""Edge cases of the math verifier, written for this project by class, in both directions: a wrong
or uncommitted answer must score 0, a correct answer in another form must score 1. Used by
test_math_edges.py (each class) and benchmarks/math_edges.py (rlvr against math-verify).

Each case: (response, gold, expected reward). Held-out probes of the same classes exist outside
the repository; these are not tuned to them."""

from __future__ import annotations

W, R = 0.0, 1.0  # wrong (must not be paid), right (must be paid)

CASES: dict[str, list[tuple[str, str, float]]] = {
    # ------------------------------------------------------------ which statement is the final answer
    "final answer": [
        ("\\boxed{7}\n#### 9", "9", W), ("\\boxed{7}\n#### 9", "7", W),  # two final answers that disagree
        ("#### Step 1: add the apples\n3 + 4 = 7\n#### Step 2: done\nSo \\boxed{7}", "7", R),  # headings
        ("#### Step 1: count\nThere are 9.\n\\boxed{9}", "1", W),
        ("```python\nprint(9)  # the answer is 9\n```\nSo the answer is 7.", "7", R),
        ("```python\nprint(9)  # the answer is 9\n```\nSo the answer is 7.", "9", W),
        ("> The answer is 9\nThat quote is wrong; the answer is 7.", "7", R),
        ("> The answer is 9\nThat quote is wrong; the answer is 7.", "9", W),
        ("\\boxed{7}. The answer is definitely not 9.", "9", W),
        ("The answer is 7. This is 2 more than 5.", "5", W), ("The answer is 7. This is 2 more than 5.", "7", R),
        ("The answer is 18 because 9 eggs cost 2 dollars each.", "18", R),
        ("The answer is 18 because 9 eggs cost 2 dollars each.", "2", W),
        ("\\boxed{9}. This answer is 100% correct.", "9", R), ("\\boxed{9}. This answer is 100% correct.", "100", W),
        ("The final answer is 12.\nFinal answer: 12", "12", R), ("\\boxed{\\frac12} so the answer is 0.5", "1/2", R),
        ("First I thought \\boxed{5}, but it is \\boxed{7}.", "7", W),
        ("The answer is 42", "42", R), ("Thus, the final answer is $\\boxed{42}$.", "42", R),
        ("Answer: 36", "36", R), ("**Answer:** 36", "36", R), ("The answer is: 36 apples.", "36", R),
        ("So she pays 3 * 4 = 12 dollars.\n#### 12", "12", R), ("#### 12\nwhich is 3 times 4", "4", W),
        ("The answer is \\boxed{15} (three fives).", "15", R),
        ("The total is 30. Half of it is 15. The answer is 15.", "30", W),
        ("Let me check: is the answer 3? No. The answer is 8.", "3", W),
        ("Let me check: is the answer 3? No. The answer is 8.", "8", R),
    ],
    # ------------------------------------------------------------ hedges: more than one value, a bound, a negation
    "hedge": [
        ("The answer is 7, not 9.", "9", W), ("The answer is 7, not 9.", "7", R), ("The answer is 7, not 9 or 8.", "7", W), ("The answer is between 7 and 9.", "9", W),
        ("The answer is at least 9.", "9", W), ("The answer is 9 or more.", "9", W),
        ("The answer is 7 (alternatively, 9).", "9", W), ("The answer is 7 | 9", "9", W),
        ("The answer is 7 vs 9", "9", W), ("The answer is 9 (maybe).", "9", W),
        ("The answer is at most 9.", "9", W), ("The answer is no more than 9.", "9", W),
        ("The answer is either 8 or 9.", "9", W), ("The answer is 9, or possibly 10.", "9", W),
        ("The answer is 8 to 10.", "9", W), ("The answer is around 9.", "9", W),
        ("The answer is 9 or 10", "10", W), ("Final answer: 9 or so", "9", W),
        ("\\boxed{9 \\text{ or more}}", "9", W), ("\\boxed{\\ge 9}", "9", W), ("\\boxed{\\text{not } 9}", "9", W),
        ("\\boxed{7} or \\boxed{9}", "9", W), ("\\boxed{8 \\text{ or } 9}", "9", W),
        ("The answer is 9.", "9", R), ("The answer is 9, since 3 times 3 is 9.", "9", R),
        ("The answer is 9 (three squared).", "9", R), ("The answer is 9 apples, one for each child.", "9", R),
        ("The answer is 9; the other choice, 7, does not work.", "9", R),
        # conditions that lead to another value, modals, a box governed by a negation or a modal
        ("The answer is 3 for even n and 9 if n is odd.", "9", W), ("The answer is 9 if n is odd, 3 if it is even.", "9", W),
        ("The answer is 9, unless n is prime, in which case it is 3.", "9", W),
        ("\\boxed{9} when the die is fair, otherwise 3", "9", W), ("The count might be 9.", "9", W),
        ("Perhaps \\boxed{9}.", "9", W), ("It could be $\\boxed{9}$.", "9", W), ("The total is not \\boxed{9}.", "9", W),
        ("The remainder is $\\boxed{2}$ when 17 is divided by 5.", "2", R), ("So she can keep at most $\\boxed{4}$ marbles.", "4", R),
        ("The balance is $1000 \\cdot 1.05^2 \\approx \\boxed{1102.50}$ dollars.", "1102.50", R),
        ("The smallest such number is $\\boxed{11}$.", "11", R), ("The two of them could share $\\boxed{6}$ stickers each.", "6", R),
        ("Only $\\boxed{35}$ leaves a remainder of 3 when divided by 4, 8, or 16.", "35", R),
    ],
    # ------------------------------------------------------------ words and units in an answer
    "units and words": [
        ("\\boxed{9 \\text{ is wrong}}", "9", W), ("\\boxed{9 \\text{ (or 7)}}", "9", W),
        ("\\boxed{1 \\text{ million}}", "1", W), ("\\boxed{1 \\text{ million}}", "1000000", R),
        ("\\boxed{7\\text{ cm}}", "7\\text{ m}", W), ("\\boxed{7\\text{ m}}", "7\\text{ m}", R),
        ("\\boxed{7\\text{ cm}}", "7", R), ("\\boxed{7}", "7\\text{ cm}", R),
        ("\\boxed{50 \\text{ dollars}}", "50 \\text{ cents}", W), ("\\boxed{\\$50}", "50", R),
        ("\\boxed{90}", "\\frac{\\pi}{2}", W), ("\\boxed{90^\\circ}", "90", R),
        ("\\boxed{7 \\text{ eggs}}", "7", R), ("\\boxed{9.8\\text{ m/s}^2}", "9.8", R),
        ("\\boxed{15 \\text{ cm}^2}", "15\\mbox{ cm}^2", R), ("\\boxed{15 \\text{ cm}^2}", "15", R),
        ("\\boxed{15 \\text{ m}^2}", "15\\mbox{ cm}^2", W), ("\\boxed{3 \\text{ hours}}", "3 \\text{ minutes}", W),
        ("\\boxed{3\\text{ hours}}", "3", R), ("\\boxed{12 \\text{ kg}}", "12 \\text{ g}", W),
        ("The answer is 7 cm.", "7", R), ("The answer is 7 km.", "7\\text{ m}", W),
        ("The answer is 45 kilometers per hour.", "45\\text{ km/h}", R), ("The answer is 45 miles per hour.", "45\\text{ km/h}", W),
        ("The answer is fifteen.", "15", R), ("\\boxed{\\text{forty-two}}", "42", R), ("The answer is sixteen.", "15", W),
        ("\\boxed{\\text{9 marbles}}", "9", R), ("\\boxed{\\text{9 or 10 marbles}}", "9", W),
    ],
    # ------------------------------------------------------------ exact where the gold is exact
    "exactness": [
        ("\\boxed{0.0000004}", "0", W), ("\\boxed{18446744073709551615.0}", "2^{64}", W),
        ("\\boxed{18446744073709551616}", "2^{64}", R), ("\\boxed{11111111105.0}", "11,\\!111,\\!111,\\!100", W),
        ("\\boxed{11111111100.0}", "11,\\!111,\\!111,\\!100", R), ("\\boxed{100!+1.0}", "100!", W),
        ("\\boxed{100!+x}", "100!", W), ("\\boxed{\\pi+10^{-50}}", "\\pi", W), ("\\boxed{|x|}", "x", W),
        ("\\boxed{\\sqrt{x^2}}", "x", W), ("\\boxed{\\sqrt{x^2}}", "|x|", R),
        ("\\boxed{7+(x-1)(x-2)(x-3)(x-4)(x-5)}", "7", W), ("\\boxed{x^2-1}", "(x-1)(x+1)", R),
        ("\\boxed{\\frac{\\sin(2x)}{2}}", "\\sin x\\cos x", R), ("\\boxed{0.5}", "\\frac{1}{2}", R),
        ("\\boxed{0.333}", "\\frac{1}{3}", W), ("\\boxed{3.14159}", "3.14", R), ("\\boxed{3.1}", "3.14", W),
        ("\\boxed{1.414}", "\\sqrt{2}", W), ("\\boxed{2.50}", "2.5", R), ("\\boxed{1e-9}", "0", W),
        ("\\boxed{10^{100}+1}", "10^{100}", W), ("\\boxed{e^{i\\pi}}", "-1", R),
    ],
    # ------------------------------------------------------------ sets, tuples, intervals, relations
    "structures": [
        ("\\boxed{\\{1,2\\}}", "[1,2]", W), ("\\boxed{\\{1,2\\}}", "(1,2]", W), ("\\boxed{2, 1}", "(1,2)", W),
        ("\\boxed{15, -29}", "(15,-29)", R), ("\\boxed{1, 2}", "\\{2, 1\\}", R), ("\\boxed{2, 1}", "1, 2", R),
        ("\\boxed{9 = 7}", "7", W), ("\\boxed{x = 7}", "7", R), ("\\boxed{7 = x}", "7", R),
        ("\\boxed{-2\\le x\\le 7}", "[-2,7]", R), ("\\boxed{[-2, 7]}", "-2 \\le x \\le 7", R),
        ("\\boxed{-2 < x \\le 7}", "[-2,7]", W), ("\\boxed{x > 3}", "(3, \\infty)", R),
        ("\\boxed{2x + 1 = y}", "y = 2x + 1", R), ("\\boxed{y = 2x + 2}", "y = 2x + 1", W),
        ("\\boxed{(2, 1)}", "(1, 2)", W), ("\\boxed{[1, 2)}", "[1, 2]", W), ("\\boxed{\\{1, 2, 3\\}}", "\\{1, 2\\}", W),
        ("\\boxed{x = 2, y = 3}", "(2, 3)", R),
        ("\\boxed{\\mathbb{R} \\setminus \\{0\\}}", "(-\\infty, 0) \\cup (0, \\infty)", R),
        ("\\boxed{\\mathbb{R} \\setminus \\{1\\}}", "(-\\infty, 0) \\cup (0, \\infty)", W),
        ("\\boxed{[1,2]\\cup[2,3]}", "[1,3]", R), ("\\boxed{[1,2)\\cup(2,3]}", "[1,3]", W),
        ("\\boxed{(-\\infty, \\infty)}", "\\mathbb{R}", R), ("\\boxed{(3,4)\\cup(1,2)}", "(1,2)\\cup(3,4)", R),
    ],
    # ------------------------------------------------------------ formats a careful grader accepts
    "formats": [
        ("\\boxed{7e3}", "7000", R), ("\\boxed{7 \\times 10^3}", "7000", R), ("\\boxed{1.000.000}", "1000000", R),
        ("\\boxed{1,000,000}", "1000000", R), ("\\boxed{1\\,000\\,000}", "1000000", R), ("\\boxed{3 1/2}", "\\frac72", R),
        ("\\boxed{4\\frac23}", "\\frac{14}{3}", R), ("\\boxed{7{,}9}", "7.9", R), ("\\boxed{7{,}9}", "79", W),
        ("\\boxed{－7}", "-7", R), ("\\boxed{−7}", "-7", R), ("\\boxed{7²}", "49", R), ("\\boxed{７}", "7", R),
        ("\\boxed{\\color{red}{9}}", "9", R), ("\\boxed{\\textcolor{blue}{9}}", "9", R), ("\\boxed{\\mathbf{9}}", "9", R),
        ("\\boxed{\\sqrt{-4}}", "2i", R), ("\\boxed{2i}", "\\sqrt{-4}", R), ("\\boxed{3+4i}", "3+4i", R),
        ("\\boxed{\\frac{\\pi}{2}}", "90^\\circ", R), ("\\boxed{0.25}", "25\\%", R), ("\\boxed{25}", "25\\%", R),
        ("\\boxed{25\\%}", "0.25", R), ("\\boxed{25}", "0.25", W),
        ("The final answer is:\n$$\n7\n$$", "7", R), ("The final answer is:\n\\[\n7\n\\]", "7", R),
        ("The answer is $\\dfrac{3}{4}$.", "0.75", R), ("\\boxed{\\displaystyle \\frac{3}{4}}", "3/4", R),
        ('The final answer is "$12$ and $13$".', "12\\text{ and }13", R), ("The answer is “7”.", "7", R),
        ("The answer is '7'.", "7", R), ("The answer is 'not 7'.", "7", W), ("between $\\boxed{12 $ and $13}$", "12, 13", R),
        ("$\\boxed{$5$}$", "5", R), ("\\boxed{$x$ or $y$}", "x", W),
        ("The answer is ¾.", "0.75", R), ("The answer is 2¼.", "\\frac94", R), ("The answer is π/3.", "\\frac{\\pi}{3}", R),
        ("The answer is 5π.", "5\\pi", R), ("The answer is 4π.", "5\\pi", W), ("The answer is $4! \\cdot 2! = \\boxed{48}$.", "48", R),
        ("The answer is $4! \\cdot 2! = 48$.", "48", R), ("\\boxed{2 + 3 = 6}", "6", W), ("\\boxed{2 + 4 = 6}", "6", R),
        ("Therefore, the answer is\n$40 + 2 = \\boxed{42}$.", "42", R),
    ],
}


def all_cases() -> list[tuple[str, str, str, float]]:
    """(class, response, gold, expected) for every case."""
    return [(kind, response, gold, expected) for kind, cases in CASES.items() for response, gold, expected in cases]
