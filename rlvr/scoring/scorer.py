"""What a scoring worker runs, and how a row becomes a task: (task, response) pairs ->
environment rewards through the same ``Environment.score`` that training calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rlvr import chat
from rlvr.env import Environment, MultiTurnEnvironment, TaskError, get_environment_class
from rlvr.rows import mapped
from rlvr.scoring.pool import Outcome

RESPONSE_FIELD = "response"
GROUPS_PER_PAYLOAD = 256  # groups sent together to an environment that scores groups (its requests overlap)


# ---------------------------------------------------------------- turning rows into tasks

def build_task(row: Mapping[str, Any], field_map: Mapping[str, str], env: Environment) -> tuple[dict, str]:
    """The environment's view of ``row``: fields renamed by ``field_map`` (env name -> column),
    validated; returns (task, response). Raises ``TaskError`` naming the field."""
    task = mapped(row, field_map)
    if RESPONSE_FIELD not in task or task[RESPONSE_FIELD] is None:
        raise TaskError(f"missing field {RESPONSE_FIELD!r}")
    response = task[RESPONSE_FIELD]
    if isinstance(env, MultiTurnEnvironment) and isinstance(response, list):  # an episode's transcript
        if not chat.is_messages(response):
            raise TaskError(f"field {RESPONSE_FIELD!r}: a transcript is a list of {{\"role\", \"content\"}} messages")
    elif not isinstance(response, str):
        raise TaskError(f"field {RESPONSE_FIELD!r} must be str"
                        f"{' or a transcript (a list of messages)' if isinstance(env, MultiTurnEnvironment) else ''}"
                        f", got {type(response).__name__}")
    env.check_task(task)
    return task, response


def build_group_task(row: Mapping[str, Any], field_map: Mapping[str, str], env: Environment) -> tuple[dict, list[str]]:
    """For an environment that scores groups: the task and its responses, from ``responses`` (a
    list), ``response_1`` and ``response_2`` (a pair), or ``response`` (alone)."""
    task = mapped(row, field_map)
    if task.get("responses") is not None:
        responses = task["responses"]
        if not (isinstance(responses, list) and responses and all(isinstance(r, str) for r in responses)):
            raise TaskError("field 'responses' must be a non-empty list of strings")
    elif task.get("response_1") is not None or task.get("response_2") is not None:
        responses = [task.get("response_1"), task.get("response_2")]
        if not all(isinstance(r, str) for r in responses):
            raise TaskError("fields 'response_1' and 'response_2' must both be strings")
    elif isinstance(task.get(RESPONSE_FIELD), str):
        responses = [task[RESPONSE_FIELD]]
    else:
        raise TaskError("missing field 'responses' (a list), 'response_1'/'response_2' or 'response'")
    env.check_task(task)
    return task, list(responses)


def map_groups(scorer, groups: list[tuple[dict, list[str]]]) -> Iterator[Outcome]:
    """Score (task, responses) groups with ``scorer``, ``GROUPS_PER_PAYLOAD`` to a payload (so
    one process overlaps their slow work), each payload under a deadline of the scorer's timeout
    per response it holds -> an ``Outcome`` per group, in order (value: [(reward, info)] per
    response); a failed payload fails each of its groups."""
    batches = [groups[k:k + GROUPS_PER_PAYLOAD] for k in range(0, len(groups), GROUPS_PER_PAYLOAD)]
    if not batches:
        return
    deadline = scorer.timeout * max(sum(len(r) for _, r in batch) for batch in batches)
    start = 0
    for batch, outcome in zip(batches, scorer.map(batches, deadline)):
        for k in range(len(batch)):
            value = outcome.value[k] if outcome.status == "ok" else None
            yield Outcome(start + k, outcome.status, value, outcome.error, outcome.seconds)
        start += len(batch)


class _Scorer:
    """What a pool worker runs: one environment instance, many calls. A payload is a (task,
    response) pair -> (reward, info), or a list of (task, responses) groups (an environment that
    ``scores_groups``) -> per group, a (reward, info) per response."""

    def __init__(self, env_name: str, env_kwargs: dict):
        self.env = get_environment_class(env_name)(**env_kwargs)

    def __call__(self, payload: tuple[dict, str] | list[tuple[dict, list[str]]]):
        if isinstance(payload, list):
            return [[(float(r.value), dict(r.info)) for r in rewards] for rewards in self.env.score_groups(payload)]
        task, response = payload
        reward = self.env.score(task, response)
        return float(reward.value), dict(reward.info)


def make_scorer(env_name: str, env_kwargs: dict) -> _Scorer:
    """A pool worker's handler (module-level, so it pickles under spawn)."""
    return _Scorer(env_name, env_kwargs)
