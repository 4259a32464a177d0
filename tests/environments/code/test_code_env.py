"""The code environment: rows in HumanEval and MBPP shape (written here), responses as models
write them, partial credit, bad rows, and offline scoring through `rlvr score`."""

import json
import shutil
import subprocess
import sys

import pytest

from environments.code import CodeEnvironment, extract_code, program_and_tests
from rlvr.env import TaskError, make_environment

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="needs bubblewrap (`make setup` installs it as root; apt-get install bubblewrap)")

HUMANEVAL_ROW = {
    "prompt": "from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n    \"\"\"The even numbers of xs, in order.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate([1, 2, 3, 4]) == [2, 4]\n    assert candidate([]) == []\n"
            "    assert candidate([7]) == []\n",
    "entry_point": "evens",
}
MBPP_ROW = {"test_list": ["assert square(3) == 9", "assert square(-2) == 4", "assert square(0) == 0"],
            "test_setup_code": ""}


@pytest.fixture(scope="module")
def env():
    e = CodeEnvironment(timeout=5)
    yield e
    e._runner and e._runner.close()


def test_extract_code_takes_the_last_fence_even_unclosed():
    assert extract_code("text\n```python\na = 1\n```\nmore\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("```python\nc = 3\n") == "c = 3\n"  # the stop string cut the closing fence
    assert extract_code("d = 4") == "d = 4"


@pytest.mark.parametrize("response", [
    "    return [x for x in xs if x % 2 == 0]\n",  # a body completing the prompt
    "Here it is:\n```python\ndef evens(xs):\n    return [x for x in xs if x % 2 == 0]\n```\n",
    "```python\ndef evens(xs: List[int]) -> List[int]:\n    return list(filter(lambda x: x % 2 == 0, xs))\n```",
])
def test_humaneval_rows_pass_with_bodies_or_whole_functions(env, response):
    reward = env.score(HUMANEVAL_ROW, response)
    assert reward.value == 1.0, reward.info


def test_mbpp_rows_and_partial_credit(env):
    assert env.score(MBPP_ROW, "def square(x):\n    return x * x\n").value == 1.0
    half = "def square(x):\n    return x * x if x >= 0 else 0\n"
    assert env.score(MBPP_ROW, half).value == 0.0
    partial = CodeEnvironment(partial_credit=True, timeout=5)
    try:
        reward = partial.score(MBPP_ROW, half)
        assert reward.value == pytest.approx(2 / 3) and reward.info["cases"] == 3
    finally:
        partial._runner.close()


def test_programs_that_exit_early_or_lie_get_nothing(env):
    assert env.score(MBPP_ROW, "import sys\nsys.exit(0)\n").value == 0.0
    assert env.score(HUMANEVAL_ROW, "class A(list):\n    def __eq__(s, o): return True\n"
                                    "def evens(xs):\n    return A()\n").value == 0.0


def test_bad_rows_name_the_field():
    env = make_environment("code")
    with pytest.raises(TaskError, match="HumanEval rows need prompt, test, entry_point"):
        env.check_task({"prompt": "x"})
    with pytest.raises(TaskError, match="test_list"):
        env.check_task({"test_list": []})


def test_program_and_tests_keep_the_prompts_imports():
    program, tests = program_and_tests(HUMANEVAL_ROW, "def evens(xs: List[int]) -> List[int]:\n    return xs\n")
    assert program.startswith("from typing import List\n") and tests["call"] == "check"


def test_rlvr_score_with_the_code_environment(tmp_path):
    rows = [dict(MBPP_ROW, response="def square(x):\n    return x * x\n"),
            dict(MBPP_ROW, response="def square(x):\n    return x + x\n"),
            dict(HUMANEVAL_ROW, response="    return [x for x in xs if not x % 2]\n")]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, "-m", "rlvr", "score", "--env", "code", "--input", str(src), "--output",
                           str(out), "--workers", "2", "--no-progress", "--env-arg", "partial_credit=true"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reward"] for r in scored] == [1.0, pytest.approx(1 / 3), 1.0]


def test_generated_function_tasks_grade_the_teacher_and_the_truth(env):
    from environments.code.synthetic import function_rows, held_out

    rows = function_rows(40, seed=3, forget_parens=0.5)
    assert rows == function_rows(40, seed=3, forget_parens=0.5)
    careless = [r for r in rows if not r["response"].startswith("(")]
    assert 5 < len(careless) < 35
    for row in rows[:12]:
        spec = row["prompt"].split("# ")[1].split("\n")[0]
        assert not held_out(spec)
        right = row["response"] if row["response"].startswith("(") else None
        got = env.score(row, row["response"]).value
        assert got == (1.0 if right else 0.0), row
    assert all(held_out(r["prompt"].split("# ")[1].split("\n")[0]) for r in function_rows(10, holdout="only"))


def test_the_tests_take_from_the_program_only_what_they_call():
    from environments.code.harness import plan_tests
    _, _, names, modules = plan_tests({"code": "assert set(common([1, 2], [2])) == set([2])\n"
                                               "assert math.isclose(area(2), 12.56, rel_tol=0.01)\n"})
    assert names == {"common", "area", "math"} and modules == {"math"}  # math: P's only if P defines one
    _, _, names, _ = plan_tests({"code": "assert sum(10, 15) == 6\nassert abs(sum(4, 6)) == 3\n"})
    assert names == {"sum"}  # a task that names its function after a builtin (MBPP/126)
    _, _, names, _ = plan_tests({"code": "def check(candidate):\n    xs = [1, 2]\n    assert abs(poly(xs, candidate(xs))) < 1e-4\n",
                                 "call": "check", "entry_point": "find_zero",
                                 "prelude": "def poly(xs, x):\n    return sum(xs)\n"})
    assert names == {"find_zero"}


def test_a_task_named_after_a_builtin_still_scores(env):
    row = {"test_list": ["assert sum(10, 15) == 6", "assert sum(4, 6) == 3"]}
    gcd_sum = "def sum(a, b):\n    total = 0\n    for i in range(1, min(a, b)):\n        if a % i == 0 and b % i == 0:\n" \
              "            total += i\n    return total\n"
    assert env.score(row, gcd_sum).value == 1.0
    assert env.score(row, "def sum(a, b):\n    return 0\n").value == 0.0


def test_setup_code_builds_values_from_the_programs_classes(env):
    row = {"test_list": ["assert depth(root) == 3"],
           "test_setup_code": "root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)\n"}
    tree = "class Node:\n    def __init__(self, v):\n        self.v, self.left, self.right = v, None, None\n" \
           "def depth(n):\n    return 0 if n is None else 1 + max(depth(n.left), depth(n.right))\n"
    assert env.score(row, tree).value == 1.0


def test_packages_option_is_checked():
    with pytest.raises(ValueError, match="packages"):
        CodeEnvironment(packages="numpy")
