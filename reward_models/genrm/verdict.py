"""The GenRM conversation a judge reads, and the verdict it writes.

A GenRM-style judge (Nemotron 3's Qwen3-Nemotron-235B-A22B-GenRM) is given the user's
conversation and two candidate responses, reasons, and ends with a JSON object::

    {"score_1": 4, "score_2": 2, "ranking": 2}

``score_1``/``score_2`` rate each response's helpfulness from 1 (poor) to 5 (excellent);
``ranking`` from 1 to 6 says which is better and by how much: 1 = response 1 much better,
2 = better, 3 = slightly better, 4 = response 2 slightly better, 5 = better, 6 = much better.

The conversation goes to the judge as chat messages: the user turns, then the candidates as turns
of the roles ``response_1`` and ``response_2`` (and an optional ``principle`` to judge by), which
the GenRM's own chat template knows. A template that lacks those roles (most do) gets the same
content as one user message with the candidates and the instructions written out
(``native_roles=False``).

Parsing takes the last JSON object in the answer (after any reasoning, inside a code fence or not,
trailing text allowed) and checks each field; a field that is missing or out of range is derived
from the others where it can be (``ranking`` from the scores; equal neutral scores from a
``ranking``), and an answer with nothing usable raises ``VerdictError``: the judge asks again,
and after its retries falls back to ``NEUTRAL``, counted as a fallback.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

SCORES = (1, 5)
RANKINGS = (1, 6)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One comparison: helpfulness of each response (1-5), the ranking (1-6; 3.5 when a tie is
    all that can be said), and how it was reached."""

    score_1: float
    score_2: float
    ranking: float
    fallback: bool = False  # the judge's answer could not be parsed: the neutral verdict
    derived: tuple[str, ...] = ()  # fields not given (or out of range) and derived from the others

    def as_dict(self) -> dict:
        out = {"score_1": self.score_1, "score_2": self.score_2, "ranking": self.ranking}
        if self.fallback:
            out["fallback"] = True
        if self.derived:
            out["derived"] = list(self.derived)
        return out

    def swapped(self) -> Verdict:
        """The same judgement with the responses' places exchanged."""
        return dataclasses.replace(self, score_1=self.score_2, score_2=self.score_1, ranking=7 - self.ranking)


NEUTRAL = Verdict(3.0, 3.0, 3.5, fallback=True)


class VerdictError(ValueError):
    """The judge's answer holds no usable verdict."""


# ---------------------------------------------------------------- the conversation

INSTRUCTIONS = (
    "You are judging two responses to the conversation above. Reason about how helpful each is, then end "
    "with a JSON object: {\"score_1\": <1-5>, \"score_2\": <1-5>, \"ranking\": <1-6>}. score_1 and score_2 "
    "rate the helpfulness of response 1 and response 2 (1 = poor, 5 = excellent). ranking: 1 = response 1 is "
    "much better, 2 = better, 3 = slightly better, 4 = response 2 is slightly better, 5 = better, "
    "6 = much better."
)


def conversation_of(task: dict) -> list[dict]:
    """The conversation being answered: the row's ``conversation`` (chat messages), or its
    ``prompt`` as one user turn."""
    if task.get("conversation"):
        return [{"role": m["role"], "content": m["content"]} for m in task["conversation"]]
    return [{"role": "user", "content": task["prompt"]}]


def judge_messages(conversation: Sequence[dict], response_1: str, response_2: str, principle: str | None = None,
                   native_roles: bool = False) -> list[dict]:
    """The chat messages a judge reads for one comparison."""
    if native_roles:
        extra = [{"role": "principle", "content": principle}] if principle else []
        return [*conversation, *extra, {"role": "response_1", "content": response_1},
                {"role": "response_2", "content": response_2}]
    shown = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in conversation)
    text = (f"Conversation:\n{shown}\n\n[response 1]\n{response_1}\n\n[response 2]\n{response_2}\n\n"
            + (f"Judge by this principle: {principle}\n\n" if principle else "") + INSTRUCTIONS)
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- parsing

_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S)
_THINK_END = "</think>"


def parse_verdict(text: str) -> Verdict:
    """The verdict in a judge's answer (see the module's docstring), or ``VerdictError``."""
    if _THINK_END in text:  # the JSON comes after the reasoning
        text = text.rsplit(_THINK_END, 1)[1]
    found = _last_object(text)
    if found is None:
        raise VerdictError("no JSON object in the answer")
    scores = [_in_range(found.get(key), SCORES) for key in ("score_1", "score_2")]
    ranking = _in_range(found.get("ranking"), RANKINGS)
    derived = tuple(k for k, v in zip(("score_1", "score_2", "ranking"), (*scores, ranking)) if v is None)
    if None not in scores and ranking is None:
        ranking = ranking_from_scores(scores[0], scores[1])
    elif ranking is not None and None in scores:
        scores = [3.0, 3.0]  # the ranking alone orders the pair; the scores say nothing more
    elif None in scores:
        raise VerdictError(f"no usable score_1/score_2/ranking in {json.dumps(found)[:200]}")
    return Verdict(float(scores[0]), float(scores[1]), float(ranking), derived=derived)


def ranking_from_scores(score_1: float, score_2: float) -> float:
    """The ranking two scores imply: a difference of 2 or more is "much better", 1 "better", less
    "slightly better"; equal scores are a tie (3.5)."""
    d = score_1 - score_2
    if d == 0:
        return 3.5
    step = 1 if abs(d) >= 2 else 2 if abs(d) >= 1 else 3
    return float(step if d > 0 else 7 - step)


def _last_object(text: str) -> dict | None:
    """The last JSON object in ``text``: a fenced block's, else the last balanced {...} that parses."""
    fenced = _FENCE.findall(text)
    for candidate in reversed(fenced):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"\{", text)]
    for start in reversed(starts):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and any(k in value for k in ("score_1", "score_2", "ranking")):
            return value
    return None


def _in_range(value, bounds: tuple[int, int]) -> float | None:
    """``value`` as a number within ``bounds``, or None (missing, not a number, out of range)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if bounds[0] <= value <= bounds[1] else None
