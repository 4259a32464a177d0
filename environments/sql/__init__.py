"""The mock-SQL tool-use environment (entry point ``sql``): a question about a database, tools to
query it, and a reward for a final query that returns what the gold query returns.

Rows: ``question``, ``gold_sql``, and the database: ``db_path`` (a ``.sqlite`` file under the
``db_root`` option) or ``schema`` (CREATE TABLE statements) with ``rows`` ({table:
[[values...]]}); optional ``order_matters``. As an episode (``reset``/``step``) the model calls
``sql``, ``schema`` and finally ``answer`` (tools.py).

The answer rule, the same online and offline: the answer is the query of the call that ends the
episode, the first ``answer`` call among the model's own turns (a turn with no tool call answers
with its last fenced ```sql block), within ``max_turns``; observations are never read for it.
Offline (``score``), a transcript (``response`` as chat messages, as an episode has them) is
replayed through ``reset``/``step``, so it scores exactly as the episode did; a string is one
model turn (with neither a call nor a fenced block, the string itself is the query).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from environments.sql import executor
from environments.sql.database import QueryError, QueryLimits
from environments.sql.reward import degenerate, has_top_level_order_by, results_match
from environments.sql.tools import CALL_OPEN, cap, format_table, parse_action
from rlvr import chat
from rlvr.env import MultiTurnEnvironment, Observation, Reward, Step, TaskError

SYSTEM_PROMPT = (
    "Answer the question with one SQLite query. Tools: sql (run a query and see its result), schema (the "
    "tables), answer (your final query). Call one per turn as "
    '<tool_call>{"name": "sql", "arguments": {"query": "..."}}</tool_call>; '
    "a turn with no call but a final ```sql ...``` block also answers.")


class SqlEnvironment(MultiTurnEnvironment):
    """Tool use against a private, read-only, in-memory copy of a task's database."""

    name = "sql"

    def __init__(self, db_root: str | None = None, max_turns: int = 6, max_rows: int = 20, max_chars: int = 2000,
                 max_observation_tokens: int | None = None, max_total_tokens: int | None = None,
                 timeout: float = 2.0, format_penalty: float = 0.0, schema_in_prompt: bool = True,
                 system_prompt: str | None = SYSTEM_PROMPT, allow_degenerate_gold: bool = False):
        for name, value in (("max_turns", max_turns), ("max_rows", max_rows), ("max_chars", max_chars)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.db_root, self.max_turns = db_root, max_turns
        self.max_observation_tokens, self.max_total_tokens = max_observation_tokens, max_total_tokens
        self.max_rows, self.max_chars = max_rows, max_chars
        self.limits = QueryLimits(timeout_s=timeout)
        self.format_penalty, self.schema_in_prompt, self.system_prompt = format_penalty, schema_in_prompt, system_prompt
        self.allow_degenerate_gold = allow_degenerate_gold
        self.db: int | None = None  # this episode's database, in the executor's process

    # ------------------------------------------------------------------ rows
    def check_task(self, task: Mapping[str, Any]) -> None:
        if not isinstance(task.get("gold_sql"), str) or not task["gold_sql"].strip():
            raise TaskError("missing field 'gold_sql' (a non-empty string)")
        if not isinstance(task.get("question", ""), str):  # episodes need it; offline scoring does not
            raise TaskError("field 'question' must be a string")
        if not isinstance(task.get("db_path"), str) and not isinstance(task.get("schema"), str):
            raise TaskError("missing field 'db_path' (a .sqlite file) or 'schema' (CREATE TABLE statements)")
        handle = self._open(task)
        try:
            self._gold(handle, task)
        finally:
            executor.shared().close(handle)

    def _open(self, task: Mapping[str, Any]) -> int:
        try:
            return executor.shared().open(task, self.db_root, self.limits)
        except QueryError as err:
            raise TaskError(f"database: {err}") from None

    def _gold(self, handle: int, task: Mapping[str, Any]):
        try:
            gold = executor.shared().query(handle, task["gold_sql"], self.limits)
        except QueryError as err:
            raise TaskError(f"field 'gold_sql' does not run: {err}") from None
        why = None if self.allow_degenerate_gold else degenerate(gold.rows)
        if why:
            raise TaskError(f"field 'gold_sql': {why}, so a guess or a query matching nothing by mistake "
                            "would score (set allow_degenerate_gold to score such rows)")
        return gold

    # ------------------------------------------------------------------ episodes
    def reset(self, task: Mapping[str, Any]) -> Observation:
        if not isinstance(task.get("question"), str):
            raise TaskError("missing field 'question' (an episode asks it)")
        self._begin(task)
        user = task["question"]
        if self.schema_in_prompt:
            user = f"{executor.shared().schema(self.db)}\n{user}"
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": user})
        return Observation(user, messages=tuple(messages))

    def _begin(self, task: Mapping[str, Any]) -> None:
        """A new episode's database, gold result and turn log."""
        self.close()
        self.task = task
        self.db = self._open(task)
        self.gold = self._gold(self.db, task)
        self.ordered = bool(task.get("order_matters")) or has_top_level_order_by(task["gold_sql"])
        self.turns: list[dict] = []

    def step(self, action: str) -> Step:
        parsed = parse_action(action)
        turn = {"turn": len(self.turns) + 1, "tool": parsed.tool, "query": parsed.query}
        self.turns.append(turn)
        if parsed.tool == "answer":
            return self._final(parsed.query, turn)
        if parsed.tool == "malformed":
            text = f"Error: {parsed.error}"
        elif parsed.tool == "schema":
            text = executor.shared().schema(self.db)
        else:
            text = self._observe(parsed.query)
        text = cap(text, self.max_chars)
        turn["observation"] = text
        turn["error"] = text.startswith("Error:")
        return Step(Observation(text, messages=({"role": "tool", "content": text},)), 0.0, False,
                    {"turns": self.turns, "tool_errors": sum(bool(t.get("error")) for t in self.turns)})

    def _observe(self, query: str) -> str:
        try:
            result = executor.shared().query(self.db, query, self.limits)
        except QueryError as err:
            return f"Error: {err}"
        return format_table(result.columns, result.rows, self.max_rows, self.max_chars)

    def _final(self, query: str, turn: dict) -> Step:
        try:
            result = executor.shared().query(self.db, query, self.limits)
            correct = results_match(self.gold.rows, result.rows, self.ordered)
            turn["observation"], turn["error"] = f"{len(result.rows)} rows", False
        except QueryError as err:
            correct = False
            turn["observation"], turn["error"] = cap(f"Error: {err}", self.max_chars), True
        malformed = sum(t["tool"] == "malformed" for t in self.turns)
        reward = float(correct) - self.format_penalty * malformed
        info = {"turns": self.turns, "success": correct, "malformed_calls": malformed, "answer": query,
                "tool_errors": sum(bool(t.get("error")) for t in self.turns)}
        self.close()
        return Step(Observation(""), reward, True, info)

    def close(self) -> None:
        if self.db is not None:
            executor.shared().close(self.db)
            self.db = None

    # ------------------------------------------------------------------ offline
    def score(self, task: Mapping[str, Any], response: str | list) -> Reward:
        """A transcript (chat messages) replayed as an episode, or one model turn (a string)."""
        if isinstance(response, list):
            return self._replay(task, response)
        action = parse_action(response)
        if action.tool != "answer" and CALL_OPEN in response:
            return Reward(0.0, {"error": f"no answer: the turn's call is {action.tool!r}", "query": None})
        query = action.query if action.tool == "answer" else response.strip()
        self._begin(task)
        self.turns.append({"turn": 1, "tool": "answer", "query": query})
        try:
            step = self._final(query, self.turns[-1])
        finally:
            self.close()
        turn = self.turns[-1]
        return Reward(step.reward, {"query": query, "success": step.info["success"], "gold_rows": len(self.gold.rows),
                                    "ordered": self.ordered, "error": turn["observation"] if turn["error"] else None})

    def _replay(self, task: Mapping[str, Any], messages: list) -> Reward:
        """The model's turns of a transcript, played through ``reset``/``step``: the tool results
        are the environment's own, never the transcript's."""
        if not chat.is_messages(messages):
            raise TaskError("field 'response': a transcript is a list of {\"role\", \"content\"} messages")
        turns = [m["content"] for m in messages if m["role"] == "assistant"]
        self._begin(task)
        step = None
        try:
            for turn in turns[:self.max_turns]:
                step = self.step(turn)
                if step.done:
                    break
        finally:
            self.close()
        if step is None or not step.done:
            return Reward(0.0, {"turns": len(turns), "success": False, "error": "no answer call within max_turns"})
        return Reward(step.reward, {k: step.info[k] for k in ("success", "answer", "malformed_calls", "tool_errors")}
                      | {"turns": len(step.info["turns"])})
