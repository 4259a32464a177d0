"""Tool calls as chat models write them (Hermes/Qwen style), for every tool-using environment::

    <tool_call>{"name": "sql", "arguments": {"query": "SELECT COUNT(*) FROM orders"}}</tool_call>

A turn's first call is read; the rest of its text is not. Reading forgives what generation
leaves: a missing closing tag (stop strings are cut from the text), the JSON inside a code
fence, text after the call, JSON-encoded arguments. Nothing else is guessed at: what is not a
JSON object with a name is an error message for the environment to answer with, never a crash
(nested too deep, a number too long, bad JSON: all the same). Linear in the turn's length
(``str.find``, no backtracking patterns).
"""

from __future__ import annotations

import json

CALL_OPEN, CALL_CLOSE, FENCE = "<tool_call>", "</tool_call>", "```"


def read_call(text: str) -> tuple[object, object] | str | None:
    """The first tool call of a turn: (name, arguments) as the JSON gave them (the caller checks
    their types), an error message when the call is malformed, or None when there is none."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return None
    body = _call_body(text, start)
    brace = body.find("{")
    if brace < 0:
        return "the tool call holds no JSON object"
    try:
        payload = _decode(body[brace:])
    except ValueError as err:
        return f"the tool call is not valid JSON ({_short(err)})"
    if not isinstance(payload, dict):
        return "the tool call must be a JSON object"
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models send the arguments JSON-encoded
        try:
            arguments = _decode(arguments.strip())
        except ValueError:
            return "\"arguments\" must be a JSON object"
    return payload.get("name"), arguments


def format_call(tool: str, arguments: dict) -> str:
    """A turn that calls ``tool`` (how demonstrations and examples are written)."""
    return CALL_OPEN + json.dumps({"name": tool, "arguments": arguments}) + CALL_CLOSE


def cap(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[:limit] + f" ...({len(text) - limit} characters cut)"


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


def _short(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at character {err.pos}"
    return cap(str(err), 80)
