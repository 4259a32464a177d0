"""The tool protocol: Hermes/Qwen-style calls in, tool messages out, and the one rule for what
a model turn answers.

A model turn calls one tool as chat models already do::

    <tool_call>{"name": "sql", "arguments": {"query": "SELECT COUNT(*) FROM orders"}}</tool_call>

Tools: ``sql`` (run a query, see its result), ``schema`` (the CREATE TABLE statements) and
``answer`` (the final query; the episode ends). A turn's first tool call is its action, the rest
of its text is not read; a turn without any tool call whose text holds fenced SQL blocks
(```sql ... ```) answers with its last block. Parsing forgives what generation leaves: a missing
closing tag (stop strings are cut from the text), the JSON inside a code fence, text after the
call, JSON-encoded arguments. Nothing else is guessed at: anything that is not a call of a known
tool with the arguments it needs is a ``malformed`` action (nested too deep, a number too long,
bad JSON: all the same), which the environment answers with an error message, never a crash.
Parsing is linear in the turn's length (``str.find``, no backtracking patterns).
"""

from __future__ import annotations

import dataclasses
import json

TOOLS = ("sql", "schema", "answer")
CALL_OPEN, CALL_CLOSE, FENCE = "<tool_call>", "</tool_call>", "```"


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


def _call_body(text: str, start: int) -> str:
    """What a call opened at ``start`` holds: up to its closing tag or the end, a code fence
    (```json) around it removed."""
    end = text.find(CALL_CLOSE, start)
    body = text[start + len(CALL_OPEN):end if end >= 0 else len(text)].strip()
    if body.startswith(FENCE):
        newline = body.find("\n")
        body = body[newline + 1:] if newline >= 0 else body[len(FENCE):]
        if body.rstrip().endswith(FENCE):
            body = body.rstrip()[:-len(FENCE)]
    return body.strip()


def _decode(text: str):
    """A JSON value, or ValueError (bad JSON, a number too long, nesting too deep)."""
    try:
        return json.JSONDecoder().raw_decode(text)[0]  # text after the object is ignored
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_action(text: str) -> Action:
    """The action of one model turn: its first tool call, else its last fenced SQL block."""
    start = text.find(CALL_OPEN)
    if start < 0:
        block = last_sql_block(text)
        if block:
            return Action("answer", block)
        return Action("malformed", error="no tool call: call a tool as <tool_call>{\"name\": ..., \"arguments\": "
                                         "{...}}</tool_call>")
    body = _call_body(text, start)
    brace = body.find("{")
    if brace < 0:
        return Action("malformed", error="the tool call holds no JSON object")
    try:
        payload = _decode(body[brace:])
    except ValueError as err:
        return Action("malformed", error=f"the tool call is not valid JSON ({_short(err)})")
    if not isinstance(payload, dict):
        return Action("malformed", error="the tool call must be a JSON object")
    name, arguments = payload.get("name"), payload.get("arguments", {})
    if isinstance(arguments, str):  # some models send the arguments JSON-encoded
        try:
            arguments = _decode(arguments.strip())
        except ValueError:
            return Action("malformed", error="\"arguments\" must be a JSON object")
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


def _short(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at character {err.pos}"
    return cap(str(err), 80)


def cap(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[:limit] + f" ...({len(text) - limit} characters cut)"


def format_call(tool: str, query: str | None = None) -> str:
    """A turn that calls ``tool`` (how demonstrations and examples are written)."""
    arguments = {} if query is None else {"query": query}
    return "<tool_call>" + json.dumps({"name": tool, "arguments": arguments}) + "</tool_call>"


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
