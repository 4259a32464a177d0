"""Code environment: reward from running the response's program against unit tests, sandboxed.

Rows, HumanEval style: ``prompt`` (a signature and docstring), ``test`` (defines ``check``),
``entry_point``; MBPP style: ``test_list`` (assert lines), optional ``test_setup_code``. The
response is the model's output: the code in its last fenced block (or the whole text); when it
only holds a function body, it completes the HumanEval ``prompt``.

The tests run in a trusted process beside the program (``harness.py``): exiting early, patching
asserts, always-equal objects and forged markers cannot pass, and the tests take from the program
only the function under test: the prompt's helpers are defined beside the tests from the row
(``prelude``), builtins are the real ones. Reward 1.0 iff every test case passes; with
``partial_credit`` the fraction of cases that pass.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from environments.code.container import DEFAULT_IMAGE
from environments.code.sandbox import BACKENDS, Limits, Result, Sandbox
from rlvr.env import Environment, Reward, TaskError

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_code(response: str) -> str:
    """The last fenced code block of a response (an unclosed last fence counts: stop strings cut
    the closing one), else the response itself."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body)


def program_and_tests(task: Mapping[str, Any], response: str) -> tuple[str, dict]:
    """-> (the program P runs, the tests H runs) for a HumanEval- or MBPP-style row. MBPP's
    ``test_setup_code`` runs after the program, in P: it builds values from the program's own
    classes (a tree of the solution's ``Node``s)."""
    code = extract_code(response)
    if "test_list" in task:
        program = code + "\n" + (task.get("test_setup_code") or "") + "\n"
        tests = {"code": "\n".join(task["test_list"])}
        if isinstance(task.get("entry_point"), str):
            tests["entry_point"] = task["entry_point"]
        return program, tests
    if not _defines(code, task["entry_point"]):
        code = task["prompt"] + code  # a completion of the prompt's function body
    elif task["prompt"] and not code.lstrip().startswith(("import", "from")):
        code = _prompt_preamble(task["prompt"]) + code  # keep the prompt's imports and helpers
    return code, {"code": task["test"], "call": "check", "entry_point": task["entry_point"],
                  "prelude": prelude(task["prompt"], task["entry_point"])}


@functools.lru_cache(maxsize=1024)
def prelude(prompt: str, entry_point: str) -> str:
    """The prompt's own code but the function to write: its imports, constants and helpers
    (HumanEval/32's ``poly``, /38's ``encode_cyclic``), which the tests call. Defined beside the
    tests from the row, never taken from the program. "" when the prompt is not Python."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    tree.body = [node for node in tree.body if not (
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point)]
    return ast.unparse(tree)


def _prompt_preamble(prompt: str) -> str:
    """The prompt's import lines (a full solution often omits ``from typing import List``)."""
    return "".join(line + "\n" for line in prompt.splitlines() if line.startswith(("import ", "from ")))


class CodeEnvironment(Environment):
    """Python programs run against unit tests in a sandbox (HumanEval and MBPP rows)."""

    name = "code"
    task_fields: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}

    def __init__(self, partial_credit: bool = False, timeout: float = 10.0, memory_mb: int = 1024,
                 backend: str = "auto", image: str = DEFAULT_IMAGE, packages: list[str] | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if not (isinstance(packages, list) and all(isinstance(p, str) for p in packages)) and packages is not None:
            raise ValueError(f"packages {packages!r}: expected a list of installed package names")
        self.partial_credit = partial_credit
        self.limits = Limits(wall_s=timeout, cpu_s=max(1, int(timeout)), memory_mb=memory_mb)
        self.backend, self.image = backend, image  # image: the docker backend's
        self.packages = tuple(packages or ())  # installed packages programs may import (default: stdlib only)
        self._runner = None  # started on the first score (the parent process only checks rows)

    def check_task(self, task: Mapping[str, Any]) -> None:
        if "test_list" in task:
            if not (isinstance(task["test_list"], list) and task["test_list"]
                    and all(isinstance(t, str) for t in task["test_list"])):
                raise TaskError("field 'test_list' must be a non-empty list of strings")
            if not isinstance(task.get("test_setup_code") or "", str):
                raise TaskError("field 'test_setup_code' must be a string")
            return
        for field in ("prompt", "test", "entry_point"):
            if not isinstance(task.get(field), str):
                raise TaskError(f"missing field {field!r} (HumanEval rows need prompt, test, entry_point; "
                                "MBPP rows need test_list)")

    def run(self, task: Mapping[str, Any], response: str) -> Result:
        if self._runner is None:
            self._runner = Sandbox(self.backend, image=self.image, packages=self.packages).runner(self.limits)
        program, tests = program_and_tests(task, response)
        return self._runner.check(program, tests)

    def score(self, task: Mapping[str, Any], response: str) -> Reward:
        result = self.run(task, response)
        fraction = result.passed_cases / result.cases if result.cases else 0.0
        value = fraction if self.partial_credit else float(result.status == "passed")
        return Reward(value, {"status": result.status, "passed_cases": result.passed_cases, "cases": result.cases,
                              "error": result.error, "stderr": result.stderr[-2000:], "wall_s": result.wall_s})
