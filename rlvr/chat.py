"""Chat rendering for multi-turn episodes: the tokenizer's chat template when it has one (a
Hugging Face tokenizer), else the plain template below.

Plain template (the byte tokenizer, and any tokenizer without a chat template): each message is
``<role>`` on a line of its own, then its content and a newline; the generation prompt is
``<assistant>`` and a newline::

    <system>
    Answer the question with one SQLite query. ...
    <user>
    How many customers live in Oslo?
    <assistant>
    <tool_call>{"name": "sql", "arguments": {"query": "SELECT ..."}}</tool_call>
    <tool>
    COUNT(*)
    4
    <assistant>

Episodes keep the token ids the engine generated; what follows a model turn (the end of that
turn, the observation, the next generation prompt) is rendered as text from the template and
appended, so a template is never asked to re-tokenise what the model wrote.

Message contents are data, never structure: in the plain template a content line that reads as
a role line (``<system>`` alone on a line) is escaped (``\\<system>``); with a tokenizer's
template, contents are encoded without reading special tokens in them (``encode_after_turn``),
so a tool result that prints ``<|im_end|>`` is text, not the end of a message. Where the
model's turn ends is found by a marker drawn afresh for every call, which no content can know.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

_ROLE_LINE = re.compile(r"^(\\*)(<[A-Za-z_][A-Za-z0-9_-]*>)$", re.M)


def _template(tokenizer):
    inner = getattr(tokenizer, "inner", None)
    return inner if getattr(inner, "chat_template", None) else None


def is_messages(value) -> bool:
    """Whether ``value`` is a list of chat messages ({"role": str, "content": str} each): what a
    transcript or a conversation in a data row must be."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` ({"role", "content"}) as the model's text."""
    template = _template(tokenizer)
    if template is not None:
        return template.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"<{m['role']}>\n{escape(m['content'])}\n" for m in messages)
    return text + ("<assistant>\n" if add_generation_prompt else "")


def escape(content: str) -> str:
    """Plain-template content with every line that reads as a role line escaped by one more
    backslash (``<tool>`` -> ``\\<tool>``, ``\\<tool>`` -> ``\\\\<tool>``): no content can
    open a turn."""
    return _ROLE_LINE.sub(lambda m: "\\" + m.group(1) + m.group(2), content)


def after_turn(tokenizer, history: Sequence[dict], observation: Sequence[dict]) -> str:
    """The text that follows a model turn: the turn's end (as the template closes it), the
    ``observation`` messages, and the next generation prompt. ``history``: the messages before
    the turn."""
    return "".join(text for text, _ in _after_turn_pieces(tokenizer, history, observation))


def _pieces(tokenizer, messages: Sequence[dict], data: Sequence[int]) -> tuple[str, list[tuple[str, bool]]]:
    """``render(messages)`` with the contents of the messages at positions ``data`` as
    (text, is_content) pieces, each content rendered as a slot no content can know. -> (the
    text before the first of them, the pieces from there on)."""
    slots = {i: f"\x1e{secrets.token_hex(16)}\x1e" for i in data}
    full = render(tokenizer, [{**m, "content": slots[i]} if i in slots else m for i, m in enumerate(messages)])
    plain = _template(tokenizer) is None
    head, pieces = None, []
    for i in data:
        before, found, full = full.partition(slots[i])
        if not found or slots[i] in full:
            raise ValueError("the chat template does not render a message's content once")
        if head is None:
            head = before
        else:
            pieces.append((before, False))
        pieces.append((escape(messages[i]["content"]) if plain else messages[i]["content"], True))
    pieces.append((full, False))
    return head or "", [(text, is_data) for text, is_data in pieces if text]


def _after_turn_pieces(tokenizer, history: Sequence[dict], observation: Sequence[dict]) -> list[tuple[str, bool]]:
    """``after_turn`` as (text, is_content) pieces: the template's own text, and the
    observation's contents (data)."""
    turn = len(history)  # the model's turn: an empty content, where its own tokens stand
    messages = [*history, {"role": "assistant", "content": ""}, *observation]
    return _pieces(tokenizer, messages, range(turn, len(messages)))[1]


def encode_chat(tokenizer, messages: Sequence[dict]) -> list[int]:
    """``render(messages)`` (with the generation prompt) as token ids, each content encoded as
    plain text: an episode's first prompt."""
    head, pieces = _pieces(tokenizer, messages, range(len(messages)))
    return tokenizer.encode(head) + [i for text, data in pieces
                                     for i in (encode_data(tokenizer, text) if data else tokenizer.encode(text))]


def encode_after_turn(tokenizer, history: Sequence[dict], observation: Sequence[dict],
                      turn_ids: Sequence[int] = ()) -> list[int]:
    """The token ids of ``after_turn``: the template's text with its special tokens, each
    content as plain text (a special token's text in it stays text). When the model's turn
    already ends with the token the template closes it with (the engine kept its stop token),
    that close is not added again."""
    pieces = _after_turn_pieces(tokenizer, history, observation)
    close = _closing_text(tokenizer, turn_ids)
    if close and pieces and not pieces[0][1] and pieces[0][0].startswith(close):
        pieces[0] = (pieces[0][0][len(close):], False)
    return [i for text, data in pieces for i in (encode_data(tokenizer, text) if data else tokenizer.encode(text))]


def encode_data(tokenizer, text: str) -> list[int]:
    """``text`` as plain text: with a tokenizer that has special tokens, their strings in
    ``text`` become ordinary tokens."""
    inner = getattr(tokenizer, "inner", None)
    if inner is None:
        return tokenizer.encode(text)
    return inner(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _closing_text(tokenizer, turn_ids: Sequence[int]) -> str:
    """The text of the special token that ends the model's turn (e.g. ``<|im_end|>``), or ""."""
    inner = getattr(tokenizer, "inner", None)
    if inner is None or not turn_ids or turn_ids[-1] not in set(inner.all_special_ids):
        return ""
    return inner.convert_ids_to_tokens(int(turn_ids[-1]))


def transcript_ids(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[tuple[list[int], bool]]]:
    """A finished chat (a demonstration) as token ids, exactly as an episode holds them: the
    first prompt (``encode_chat``), then each assistant turn (is_model_turn True) and what
    follows it (``encode_after_turn``). A warm start trains on the model turns only."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None or first == 0:
        raise ValueError("a transcript needs the first prompt's messages, then an assistant turn")
    prompt, pieces, i = encode_chat(tokenizer, messages[:first]), [], first
    while i < len(messages):
        if messages[i]["role"] != "assistant":
            raise ValueError(f"message {i}: expected an assistant turn, got {messages[i]['role']!r}")
        turn = tokenizer.encode(messages[i]["content"])
        pieces.append((turn, True))
        j = i + 1
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        if j < len(messages):  # observations, then the next turn
            pieces.append((encode_after_turn(tokenizer, messages[:i], messages[i + 1:j], turn), False))
        i = j
    return prompt, pieces
