"""The ``judge`` environment: open-ended tasks rewarded by a GenRM-style pairwise judge.

A row holds the task as ``prompt`` (one user turn) or ``conversation`` (chat messages), and
optionally ``principle`` (what to judge by) and ``reference`` (an answer to judge a lone response
against). In training, the G responses to a prompt are compared in pairs (``comparisons``:
circular or all, ``both_orders``) and the verdicts become one reward each
(``reward_models.genrm.aggregate``). Every comparison of a batch of groups goes to the judge at
once, so an HTTP judge keeps ``max_concurrency`` requests in flight even from one scoring process.

The judge is an endpoint (``base_url`` and ``model``: an OpenAI-compatible server such as
``vllm serve``) or a checkpoint run here (``checkpoint``). Each response's ``info`` holds the
verdicts of the comparisons it took part in (``score_1``, ``score_2``, ``ranking``, and
``fallback: true`` where the judge's answer could not be parsed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlvr import chat
from rlvr.env import Environment, Reward, TaskError
from reward_models.genrm.aggregate import comparison_pairs, group_rewards, reference_reward
from reward_models.genrm.judge import Comparison, HttpJudge, LocalJudge
from reward_models.genrm.verdict import conversation_of


class JudgeEnvironment(Environment):
    """Open-ended tasks scored by a GenRM-style pairwise judge (HTTP endpoint or local checkpoint)."""

    name = "judge"
    # training logs reward/judge/<key>: the share of verdicts that fell back, of lone responses skipped
    info_metrics = ("fallback_share", "skipped")

    def __init__(self, base_url: str | None = None, model: str = "genrm", checkpoint: str | None = None,
                 tokenizer: str = "byte", engine: str = "builtin", api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 16, timeout: float = 120.0, retries: int = 3, parse_retries: int = 2,
                 temperature: float = 0.0, max_tokens: int = 4096, native_roles: bool = False,
                 comparisons: str = "circular", both_orders: bool = False, ranking_weight: float = 0.1,
                 length_penalty: float = 0.0, principle: str | None = None):
        if (base_url is None) == (checkpoint is None):
            raise ValueError("give exactly one of base_url (an OpenAI-compatible endpoint) and checkpoint "
                             "(a judge model run here); experiment=mixture reads them from RLVR_JUDGE_URL and "
                             "RLVR_JUDGE_CHECKPOINT")
        comparison_pairs(2, comparisons)  # a mistyped mode fails here, not at the first group
        self.mode, self.both_orders = comparisons, both_orders
        self.ranking_weight, self.length_penalty, self.principle = ranking_weight, length_penalty, principle
        if base_url is not None:
            self.judge = HttpJudge(base_url, model, api_key_env=api_key_env, max_concurrency=max_concurrency,
                                   timeout=timeout, retries=retries, parse_retries=parse_retries,
                                   temperature=temperature, max_tokens=max_tokens, native_roles=native_roles)
        else:
            self.judge = LocalJudge(checkpoint, tokenizer=tokenizer, engine=engine, parse_retries=parse_retries,
                                    temperature=temperature, max_tokens=max_tokens, native_roles=native_roles)

    def check_task(self, task: Mapping[str, Any]) -> None:
        conversation = task.get("conversation")
        if conversation is not None:
            if not (conversation and chat.is_messages(conversation)):
                raise TaskError("field 'conversation' must be a non-empty list of {role, content} messages")
        elif not isinstance(task.get("prompt"), str):
            raise TaskError("missing field 'prompt' (or 'conversation')")
        for field in ("principle", "reference"):
            if task.get(field) is not None and not isinstance(task[field], str):
                raise TaskError(f"field {field!r} must be str, got {type(task[field]).__name__}")

    def score(self, task: Mapping[str, Any], response: str) -> Reward:
        """A lone response: judged against the row's ``reference``, else skipped (reward 0,
        ``info["skipped"]`` 1, counted)."""
        return self.score_group(task, [response])[0]

    def score_group(self, task: Mapping[str, Any], responses: Sequence[str]) -> list[Reward]:
        return self.score_groups([(task, responses)])[0]

    def score_groups(self, groups: Sequence[tuple[Mapping[str, Any], Sequence[str]]]) -> list[list[Reward]]:
        plans, asked = [], []
        for task, responses in groups:
            pairs = self._pairs(task, responses)
            plans.append(pairs)
            asked += [self._comparison(task, responses, i, j) for i, j in pairs]
        verdicts = iter(self.judge.compare_many(asked))
        return [self._rewards(task, responses, [(pair, next(verdicts)) for pair in pairs])
                for (task, responses), pairs in zip(groups, plans)]

    def _pairs(self, task, responses) -> list[tuple[int, int]]:
        if len(responses) > 1:
            return comparison_pairs(len(responses), self.mode, self.both_orders)
        if task.get("reference") is None:
            return []
        return [(0, 1), (1, 0)] if self.both_orders else [(0, 1)]  # index 1: the reference

    def _comparison(self, task, responses, i: int, j: int) -> Comparison:
        texts = list(responses) + ([task["reference"]] if len(responses) == 1 else [])
        return Comparison(tuple(conversation_of(dict(task))), texts[i], texts[j],
                          task.get("principle") or self.principle)

    def _rewards(self, task, responses, judged) -> list[Reward]:
        if len(responses) == 1:
            if not judged:
                return [Reward(0.0, {"skipped": 1, "why": "a lone response and no reference answer to judge it against"})]
            sides = [(1 if i == 0 else 2, v) for (i, _), v in judged]
            info = {**_shown(judged), "against": "reference"}
            return [Reward(reference_reward(sides, self.ranking_weight), info)]
        values = group_rewards(len(responses), judged, self.ranking_weight, self.length_penalty,
                               [len(r) for r in responses])
        return [Reward(value, _shown([(pair, v) for pair, v in judged if k in pair])) for k, value in enumerate(values)]


def _shown(judged: list) -> dict:
    """A response's info: the verdicts of its comparisons, and the share of them that fell back."""
    return {"verdicts": [{"response_1": i, "response_2": j, **v.as_dict()} for (i, j), v in judged],
            "fallback_share": sum(v.fallback for _, v in judged) / len(judged), "skipped": 0}
