"""Reading a turn's tool call: what generation leaves is forgiven, nothing else guessed at."""

import pytest

from rlvr.tool_calls import cap, format_call, read_call


@pytest.mark.parametrize("text,want", [
    (format_call("python", {"code": "print(1)"}), ("python", {"code": "print(1)"})),
    ('<tool_call>{"name": "python", "arguments": {"code": "x"}}', ("python", {"code": "x"})),  # the stop cut the tag
    ('<tool_call>\n```json\n{"name": "sql", "arguments": {}}\n```\n</tool_call> more', ("sql", {})),
    ('<tool_call>{"name": "sql", "arguments": "{\\"query\\": \\"q\\"}"}</tool_call>', ("sql", {"query": "q"})),
    ('text first <tool_call>{"name": "a"}</tool_call><tool_call>{"name": "b"}</tool_call>', ("a", {})),
    ("no call at all", None),
    ("<tool_call>no json</tool_call>", "the tool call holds no JSON object"),
    ("<tool_call>[1, 2]</tool_call>", "the tool call holds no JSON object"),
    ('<tool_call>{"name": 1, "arguments": "not json"}', '"arguments" must be a JSON object'),
    ("<tool_call>" + "{\"a\": " * 5000 + "1" + "}" * 5000, "the tool call is not valid JSON (nested too deeply)"),
])
def test_read_call(text, want):
    assert read_call(text) == want


def test_bad_json_says_where_and_cap_says_what_was_cut():
    assert read_call('<tool_call>{"name": }').startswith("the tool call is not valid JSON (Expecting value at")
    assert cap("abcdef", 4) == "abcd ...(2 characters cut)" and cap("abc", 4) == "abc"
