"""Tool-integrated reasoning (entry point ``python_tool``): a math question, a ``python`` tool that
runs the model's code in the code sandbox, and the math verifier's reward for the final answer.

Rows are math rows: ``question`` (what the episode asks) and ``answer`` (the gold, as the math
environment reads it). A model turn either calls the tool as chat models do::

    <tool_call>{"name": "python", "arguments": {"code": "print(347 * 829)"}}</tool_call>

or answers: a turn without a tool call is the final answer, graded by the math environment
exactly as a single-turn row with that text (its final-answer rule, its equivalence); the
episode ends there. Calls are read by ``rlvr.tool_calls`` (a malformed one is answered with an
error message and counted).

The code runs in the code environment's sandbox (``environments/code``: the same isolation,
limits and warm runners), in a fresh program process per call: nothing persists from one call to
the next, within an episode or across episodes (a script recomputes what it needs). What comes
back, as a ``tool`` message capped at ``max_chars``: its stdout, its stderr, and its exception
(``Error: ZeroDivisionError: ...``) or ``Error: timed out``; a call that printed nothing is told
so. Tool errors (exceptions, timeouts, memory, malformed calls) are observations, counted in the
final info (``tool_errors``), as are ``tool_calls`` and whether the answer came without any call.

Offline (``score``), a transcript (chat messages) is replayed through ``reset``/``step``: its
calls run again, so the tool results are the environment's own; a string is one model turn.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from environments.code.sandbox import BACKENDS, Limits, Result, Sandbox, WarmRunner
from environments.math import MathEnvironment
from rlvr import chat
from rlvr.env import MultiTurnEnvironment, Observation, Reward, Step, TaskError
from rlvr.tool_calls import cap, read_call

SYSTEM_PROMPT = (
    "Solve the problem. You may run Python: call the tool as "
    '<tool_call>{"name": "python", "arguments": {"code": "print(...)"}}</tool_call> and read its output. '
    "Give the final answer in a turn without a tool call, as \\boxed{...}.")
# What a tool call's result reports for each way a run can end (the sandbox's statuses).
_ENDINGS = {"timeout": "Error: timed out", "memory_limit": "Error: out of memory",
            "sandbox_error": "Error: the sandbox failed"}


class _Runners:
    """Warm sandbox runners shared by a process's episodes (an environment holds one episode,
    and a rollout worker steps many at once): at most ``size`` sandboxes, each serving one call
    at a time; one is made when every other is busy."""

    def __init__(self):
        self.lock, self.free = threading.Condition(), {}
        self.made: dict[tuple, int] = {}

    def run(self, key: tuple, size: int, code: str) -> Result:
        runner = self._take(key, size)
        try:
            return runner.check(code, {"code": ""})  # (no tests: the program's own run is the result)
        finally:
            with self.lock:
                self.free.setdefault(key, []).append(runner)
                self.lock.notify()

    def _take(self, key: tuple, size: int) -> WarmRunner:
        with self.lock:
            while not self.free.get(key) and self.made.get(key, 0) >= size:
                self.lock.wait()
            if self.free.get(key):
                return self.free[key].pop()
            self.made[key] = self.made.get(key, 0) + 1
        backend, limits = key
        return Sandbox(backend).runner(limits)


_RUNNERS = _Runners()


class PythonToolEnvironment(MultiTurnEnvironment):
    """Math episodes with a Python tool (module docstring)."""

    name = "python_tool"
    # (an episode also needs ``question``, checked by ``reset``; offline scoring does not)
    task_fields: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"answer": (str, int, float)}

    def __init__(self, max_turns: int = 4, max_chars: int = 400, timeout: float = 5.0, memory_mb: int = 512,
                 backend: str = "auto", sandboxes: int | None = None, system_prompt: str | None = SYSTEM_PROMPT,
                 max_observation_tokens: int | None = None, max_total_tokens: int | None = None):
        for name, value in (("max_turns", max_turns), ("max_chars", max_chars)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.max_turns, self.max_chars, self.system_prompt = max_turns, max_chars, system_prompt
        self.max_observation_tokens, self.max_total_tokens = max_observation_tokens, max_total_tokens
        self.limits = Limits(wall_s=timeout, cpu_s=max(1, int(timeout)), memory_mb=memory_mb)
        self.backend = backend
        self.sandboxes = sandboxes or min(4, os.cpu_count() or 1)
        self.math = MathEnvironment()
        self.task: Mapping[str, Any] | None = None
        self.turns: list[dict] = []

    def check_task(self, task: Mapping[str, Any]) -> None:
        self.math.check_task(task)

    # ------------------------------------------------------------------ episodes
    def reset(self, task: Mapping[str, Any]) -> Observation:
        if not isinstance(task.get("question"), str):
            raise TaskError("missing field 'question' (an episode asks it)")
        self.task, self.turns = task, []
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": task["question"]})
        return Observation(task["question"], messages=tuple(messages))

    def step(self, action: str) -> Step:
        call = read_call(action)
        if call is None:
            return self._final(action)
        turn = {"turn": len(self.turns) + 1, "tool": "python"}
        code, error = _code_of(call)
        if error is not None:
            turn.update(tool="malformed", error=True)
            text = f"Error: {error}"
        else:
            result = _RUNNERS.run((self.backend, self.limits), self.sandboxes, code)
            turn.update(code=code, status=result.status, error=result.status not in ("passed", "failed"))
            text = self.observe(result)
        turn["observation"] = text
        self.turns.append(turn)
        return Step(Observation(text, messages=({"role": "tool", "content": text},)), 0.0, False, self._info())

    def observe(self, result: Result) -> str:
        """A run as the model reads it: stdout, stderr, the exception or how it ended."""
        parts = [result.stdout.rstrip("\n")] if result.stdout.strip() else []
        if result.stderr.strip():
            parts.append("stderr: " + result.stderr.rstrip("\n"))
        if result.status == "runtime_error":
            parts.append(f"Error: {result.error}")
        elif result.status in _ENDINGS:
            parts.append(_ENDINGS[result.status])
        return cap("\n".join(parts) or "(no output: print what you need)", self.max_chars)

    def _final(self, text: str) -> Step:
        reward = self.math.score(self.task, text)
        info = self._info() | {"success": reward.value > 0, "extracted": reward.info.get("extracted"),
                               "answered_without_tool": not any(t["tool"] == "python" for t in self.turns)}
        return Step(Observation(""), reward.value, True, info)

    def _info(self) -> dict:
        return {"turns": self.turns, "tool_calls": len(self.turns),
                "tool_errors": sum(bool(t["error"]) for t in self.turns)}

    # ------------------------------------------------------------------ offline
    def score(self, task: Mapping[str, Any], response: str | list) -> Reward:
        """A transcript (chat messages) replayed as an episode, or one model turn (a string)."""
        if isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        if not chat.is_messages(response):
            raise TaskError("field 'response': a string, or a transcript: a list of {\"role\", \"content\"} messages")
        self.reset({"question": ""} | dict(task))
        step = None
        for turn in [m["content"] for m in response if m["role"] == "assistant"][:self.max_turns]:
            step = self.step(turn)
            if step.done:
                break
        if step is None or not step.done:
            return Reward(0.0, {"success": False, "tool_calls": len(self.turns),
                                "error": "no final answer (a turn without a tool call) within max_turns"})
        return Reward(step.reward, {k: step.info[k] for k in ("success", "extracted", "tool_calls", "tool_errors",
                                                              "answered_without_tool")})


def _code_of(call) -> tuple[str | None, str | None]:
    """A read call -> (its code, None) or (None, why it is malformed)."""
    if isinstance(call, str):
        return None, call
    name, arguments = call
    if name != "python":
        return None, f"unknown tool {cap(repr(name), 60)}: the tool is python"
    if not isinstance(arguments, dict) or not isinstance(arguments.get("code"), str) or not arguments["code"].strip():
        return None, "the python tool needs a non-empty string argument \"code\""
    return arguments["code"], None
