"""The tool protocol: Hermes/Qwen-style calls in, tool messages out, and the one rule for what
a model turn answers.

A model turn calls one tool as chat models already do::

    <tool_call>{"name": "sql", "arguments": {"query": "SELECT COUNT(*) FROM orders"}}</tool_call>

Tools: ``sql`` (run a query, see its result), ``schema`` (the CREATE TABLE statements) and
``answer`` (the final query; the episode ends). A turn's first tool call is its action, the rest
of its text is not read; a turn without any tool call whose text holds fenced SQL blocks
(```sql ... ```) answers with its last block. Calls are read as every tool-using environment reads
them (``rlvr.tool_calls``: what generation leaves is forgiven, nothing else guessed at); anything
that is not a call of a known tool with the arguments it needs is a ``malformed`` action, which the
environment answers with an error message, never a crash.
"""

from __future__ import annotations

import dataclasses

from rlvr.tool_calls import CALL_OPEN, FENCE, cap, read_call
from rlvr.tool_calls import format_call as _format_call

TOOLS = ("sql", "schema", "answer")


@dataclasses.dataclass(frozen=True)
class Action:
    tool: str  # one of TOOLS, or "malformed"
    query: str = ""
    error: str = ""  # why it is malformed


def last_sql_block(text: str) -> str:
    """The last non-empty fenced ```sql block of ``text`` (an unclosed last fence counts), or ""."""
    lowered, found, at = text.lower(), "", 0
    while (start := lowered.find(FENCE + "sql", at)) >= 0:
        body_start = start + len(FENCE) + 3
        end = text.find(FENCE, body_start)
        body = text[body_start:end if end >= 0 else len(text)].strip()
        found = body or found
        at = len(text) if end < 0 else end + len(FENCE)
    return found


def parse_action(text: str) -> Action:
    """The action of one model turn: its first tool call, else its last fenced SQL block."""
    call = read_call(text)
    if call is None:
        block = last_sql_block(text)
        if block:
            return Action("answer", block)
        return Action("malformed", error="no tool call: call a tool as <tool_call>{\"name\": ..., \"arguments\": "
                                         "{...}}</tool_call>")
    if isinstance(call, str):
        return Action("malformed", error=call)
    name, arguments = call
    if not isinstance(name, str) or name not in TOOLS:
        return Action("malformed", error=f"unknown tool {cap(repr(name), 60)}: the tools are {', '.join(TOOLS)}")
    if not isinstance(arguments, dict):
        return Action("malformed", error="\"arguments\" must be a JSON object")
    if name == "schema":
        return Action("schema")
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        return Action("malformed", error=f"the {name} tool needs a non-empty string argument \"query\"")
    return Action(name, query.strip())


def format_call(tool: str, query: str | None = None) -> str:
    """A turn that calls ``tool`` (how demonstrations and examples are written)."""
    return _format_call(tool, {} if query is None else {"query": query})


def _one_line(value) -> str:
    return "NULL" if value is None else str(value).replace("\r", " ").replace("\n", " ")


def format_table(columns: list[str], rows: list[tuple], max_rows: int, max_chars: int) -> str:
    """A result as the model reads it: a header and ``|``-separated rows, one line each (line
    breaks in names and values become spaces), cut at ``max_rows`` rows or ``max_chars``
    characters with a note of what was left out."""
    lines = [" | ".join(map(_one_line, columns))]
    for row in rows[:max_rows]:
        lines.append(" | ".join(map(_one_line, row)))
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = text[:max_chars] + " ..."
    hidden = len(rows) - min(len(rows), max_rows)
    if hidden:
        text += f"\n({hidden} more rows)"
    return text if rows else text + "\n(no rows)"
