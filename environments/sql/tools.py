"""The tool protocol: Hermes/Qwen-style calls in, tool messages out.

A model turn calls one tool as chat models already do::

    <tool_call>{"name": "sql", "arguments": {"query": "SELECT COUNT(*) FROM orders"}}</tool_call>

Tools: ``sql`` (run a query, see its result), ``schema`` (the CREATE TABLE statements) and
``answer`` (the final query; the episode ends). A turn without a tool call whose text holds a
fenced SQL block (```sql ... ```) answers with that block. Parsing forgives what generation
leaves: a missing closing tag (stop strings are cut from the text), the JSON inside a code
fence, text after the call, JSON-encoded arguments. Nothing else is guessed at (single-quoted
or bare-string arguments): anything that is not a call of a known tool with the arguments it
needs is a ``malformed`` action, which the environment answers with an error message (never a
crash).
"""

from __future__ import annotations

import dataclasses
import json
import re

TOOLS = ("sql", "schema", "answer")
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*(?:```)?$", re.S)
SQL_BLOCK = re.compile(r"```sql\s*(.*?)\s*(?:```|$)", re.S | re.I)


@dataclasses.dataclass(frozen=True)
class Action:
    tool: str  # one of TOOLS, or "malformed"
    query: str = ""
    error: str = ""  # why it is malformed


def parse_action(text: str) -> Action:
    """The first tool call of a model turn (or its fenced SQL answer)."""
    call = _CALL.search(text)
    if call is None:
        block = SQL_BLOCK.search(text)
        if block and block.group(1).strip():
            return Action("answer", block.group(1).strip())
        return Action("malformed", error="no tool call: call a tool as <tool_call>{\"name\": ..., \"arguments\": "
                                         "{...}}</tool_call>")
    body = call.group(1)
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    start = body.find("{")
    if start < 0:
        return Action("malformed", error="the tool call holds no JSON object")
    try:
        payload, _ = json.JSONDecoder().raw_decode(body[start:])  # text after the object is ignored
    except json.JSONDecodeError as err:
        return Action("malformed", error=f"the tool call is not valid JSON ({err.msg} at character {err.pos})")
    if not isinstance(payload, dict):
        return Action("malformed", error="the tool call must be a JSON object")
    name, arguments = payload.get("name"), payload.get("arguments", {})
    if isinstance(arguments, str):  # some models send the arguments JSON-encoded
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return Action("malformed", error="\"arguments\" must be a JSON object")
    if name not in TOOLS:
        return Action("malformed", error=f"unknown tool {name!r}: the tools are {', '.join(TOOLS)}")
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
    arguments = {} if query is None else {"query": query}
    return "<tool_call>" + json.dumps({"name": tool, "arguments": arguments}) + "</tool_call>"


def format_table(columns: list[str], rows: list[tuple], max_rows: int, max_chars: int) -> str:
    """A result as the model reads it: a header and ``|``-separated rows, cut at ``max_rows`` rows
    or ``max_chars`` characters with a note of what was left out."""
    lines = [" | ".join(columns)]
    for row in rows[:max_rows]:
        lines.append(" | ".join("NULL" if v is None else str(v).replace("\n", " ") for v in row))
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = text[:max_chars] + " ..."
    hidden = len(rows) - min(len(rows), max_rows)
    if hidden:
        text += f"\n({hidden} more rows)"
    return text if rows else text + "\n(no rows)"
