"""The mock-SQL tool-use environment (entry point ``sql``): a question about a database, tools to
query it, and a reward for a final query that returns what the gold query returns.

Rows: ``question``, ``gold_sql``, and the database: ``db_path`` (a ``.sqlite`` file, relative to
the ``db_root`` option when relative) or ``schema`` (CREATE TABLE statements) with ``rows``
({table: [[values...]]}); optional ``order_matters``. As an episode (``reset``/``step``) the model
calls ``sql``, ``schema`` and finally ``answer`` (tools.py); offline (``score``), ``response`` is
a final SQL query or a whole transcript (its last answer counts).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from typing import Any

from environments.sql.database import QueryError, QueryLimits, open_database, run_query, schema_text
from environments.sql.reward import has_top_level_order_by, results_match
from environments.sql.tools import SQL_BLOCK, format_table, parse_action
from rlvr.env import MultiTurnEnvironment, Observation, Reward, Step, TaskError

SYSTEM_PROMPT = (
    "Answer the question with one SQLite query. Tools: sql (run a query and see its result), schema (the "
    "tables), answer (your final query). Call one per turn as "
    '<tool_call>{"name": "sql", "arguments": {"query": "..."}}</tool_call>; '
    "a final ```sql ...``` block also answers.")


class SqlEnvironment(MultiTurnEnvironment):
    """Tool use against a private, read-only, in-memory copy of a task's database."""

    name = "sql"

    def __init__(self, db_root: str | None = None, max_turns: int = 6, max_rows: int = 20, max_chars: int = 2000,
                 max_observation_tokens: int | None = None, max_total_tokens: int | None = None,
                 timeout: float = 2.0, format_penalty: float = 0.0, schema_in_prompt: bool = True,
                 system_prompt: str | None = SYSTEM_PROMPT):
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
        self.conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ rows
    def check_task(self, task: Mapping[str, Any]) -> None:
        if not isinstance(task.get("gold_sql"), str) or not task["gold_sql"].strip():
            raise TaskError("missing field 'gold_sql' (a non-empty string)")
        if not isinstance(task.get("question", ""), str):  # episodes need it; offline scoring does not
            raise TaskError("field 'question' must be a string")
        if not task.get("db_path") and not isinstance(task.get("schema"), str):
            raise TaskError("missing field 'db_path' (a .sqlite file) or 'schema' (CREATE TABLE statements)")
        try:
            conn = open_database(task, self.db_root)
        except (OSError, sqlite3.Error, KeyError, TypeError, ValueError) as err:
            raise TaskError(f"database: {err}") from None
        try:
            run_query(conn, task["gold_sql"], self.limits)
        except QueryError as err:
            raise TaskError(f"field 'gold_sql' does not run: {err}") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ episodes
    def reset(self, task: Mapping[str, Any]) -> Observation:
        self.close()
        self.task = task
        self.conn = open_database(task, self.db_root)
        self.gold = run_query(self.conn, task["gold_sql"], self.limits)
        self.ordered = bool(task.get("order_matters")) or has_top_level_order_by(task["gold_sql"])
        self.turns: list[dict] = []
        if not isinstance(task.get("question"), str):
            raise TaskError("missing field 'question' (an episode asks it)")
        user = task["question"]
        if self.schema_in_prompt:
            user = f"{schema_text(self.conn)}\n{user}"
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": user})
        return Observation(user, messages=tuple(messages))

    def step(self, action: str) -> Step:
        parsed = parse_action(action)
        turn = {"turn": len(self.turns) + 1, "tool": parsed.tool, "query": parsed.query}
        self.turns.append(turn)
        if parsed.tool == "answer":
            return self._final(parsed.query, turn)
        if parsed.tool == "malformed":
            text = f"Error: {parsed.error}"
        elif parsed.tool == "schema":
            text = schema_text(self.conn)
        else:
            text = self._observe(parsed.query)
        turn["observation"] = text
        turn["error"] = text.startswith("Error:")
        return Step(Observation(text, messages=({"role": "tool", "content": text},)), 0.0, False,
                    {"turns": self.turns, "tool_errors": sum(bool(t.get("error")) for t in self.turns)})

    def _observe(self, query: str) -> str:
        try:
            result = run_query(self.conn, query, self.limits)
        except QueryError as err:
            return f"Error: {err}"
        return format_table(result.columns, result.rows, self.max_rows, self.max_chars)

    def _final(self, query: str, turn: dict) -> Step:
        try:
            result = run_query(self.conn, query, self.limits)
            correct = results_match(self.gold.rows, result.rows, self.ordered)
            turn["observation"], turn["error"] = f"{len(result.rows)} rows", False
        except QueryError as err:
            correct = False
            turn["observation"], turn["error"] = f"Error: {err}", True
        malformed = sum(t["tool"] == "malformed" for t in self.turns)
        reward = float(correct) - self.format_penalty * malformed
        info = {"turns": self.turns, "success": correct, "malformed_calls": malformed,
                "tool_errors": sum(bool(t.get("error")) for t in self.turns)}
        self.close()
        return Step(Observation(""), reward, True, info)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ------------------------------------------------------------------ offline
    def score(self, task: Mapping[str, Any], response: str) -> Reward:
        """A final SQL query, or a transcript whose last ``answer`` call (or fenced SQL block) is
        the final query."""
        query = final_query(response)
        conn = open_database(task, self.db_root)
        try:
            gold = run_query(conn, task["gold_sql"], self.limits)
            ordered = bool(task.get("order_matters")) or has_top_level_order_by(task["gold_sql"])
            try:
                got = run_query(conn, query, self.limits)
            except QueryError as err:
                return Reward(0.0, {"query": query, "error": str(err)})
            correct = results_match(gold.rows, got.rows, ordered)
            return Reward(float(correct), {"query": query, "rows": len(got.rows), "gold_rows": len(gold.rows),
                                           "ordered": ordered})
        finally:
            conn.close()


_ANSWER_CALLS = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.S)


def final_query(response: str) -> str:
    """The last answer of a transcript (an ``answer`` call or a fenced SQL block), else the
    response itself as SQL."""
    answers = [a.query for a in map(parse_action, _ANSWER_CALLS.findall(response)) if a.tool == "answer"]
    blocks = [b.strip() for b in SQL_BLOCK.findall(response) if b.strip()]
    candidates = answers + blocks
    if candidates:
        # whichever comes last in the text
        return max(candidates, key=lambda q: response.rfind(q))
    return response.strip()
