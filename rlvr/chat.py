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
"""

from __future__ import annotations

from collections.abc import Sequence

_TURN = "\x1eRLVR-MODEL-TURN\x1e"  # stands for the model's turn while the template renders around it


def _template(tokenizer):
    inner = getattr(tokenizer, "inner", None)
    return inner if getattr(inner, "chat_template", None) else None


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` ({"role", "content"}) as the model's text."""
    template = _template(tokenizer)
    if template is not None:
        return template.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
    return text + ("<assistant>\n" if add_generation_prompt else "")


def after_turn(tokenizer, history: Sequence[dict], observation: Sequence[dict]) -> str:
    """The text that follows a model turn: the turn's end (as the template closes it), the
    ``observation`` messages, and the next generation prompt. ``history``: the messages before
    the turn."""
    full = render(tokenizer, [*history, {"role": "assistant", "content": _TURN}, *observation])
    before, found, after = full.partition(_TURN)
    if not found:
        raise ValueError("the chat template does not render the assistant's message content")
    return after


def transcript_segments(tokenizer, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """A finished chat (a demonstration) as (text, is_model_turn) pieces, rendered exactly as an
    episode would be: the first prompt, then each assistant turn and what follows it. A warm
    start trains on the model turns only."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None or first == 0:
        raise ValueError("a transcript needs the first prompt's messages, then an assistant turn")
    pieces = [(render(tokenizer, messages[:first]), False)]
    i = first
    while i < len(messages):
        if messages[i]["role"] != "assistant":
            raise ValueError(f"message {i}: expected an assistant turn, got {messages[i]['role']!r}")
        pieces.append((messages[i]["content"], True))
        j = i + 1
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        if j < len(messages):  # observations, then the next turn
            pieces.append((after_turn(tokenizer, messages[:i], messages[i + 1:j]), False))
        i = j
    return pieces
