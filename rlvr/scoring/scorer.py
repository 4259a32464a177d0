"""What a scoring worker runs, and how a row becomes a task: (task, response) pairs ->
environment rewards through the same ``Environment.score`` that training calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from rlvr.env import Environment, TaskError, get_environment_class
from rlvr.rows import UsageError

RESPONSE_FIELD = "response"


# ---------------------------------------------------------------- turning rows into tasks

def build_task(row: Mapping[str, Any], field_map: Mapping[str, str], env: Environment) -> tuple[dict, str]:
    """The environment's view of ``row``: fields renamed by ``field_map`` (env name -> column),
    validated; returns (task, response). Raises ``TaskError`` naming the field."""
    task = dict(row)
    for name, column in field_map.items():
        if column not in row:
            raise TaskError(f"missing column {column!r} (mapped to field {name!r})")
        task[name] = row[column]
    if RESPONSE_FIELD not in task or task[RESPONSE_FIELD] is None:
        raise TaskError(f"missing field {RESPONSE_FIELD!r}")
    if not isinstance(task[RESPONSE_FIELD], str):
        raise TaskError(f"field {RESPONSE_FIELD!r} must be str, got {type(task[RESPONSE_FIELD]).__name__}")
    env.check_task(task)
    return task, task[RESPONSE_FIELD]


def make_environment_checked(env_name: str, env_kwargs: dict, option: str = "--env-arg ") -> Environment:
    """The environment, its keyword arguments checked against its signature first (an unknown
    name or a value of the wrong type is a ``UsageError`` naming it, not a per-row failure).
    ``option``: how the message names an argument (``--env-arg `` on the command line,
    ``data.train[0].env_args.`` in a config)."""
    try:
        cls = get_environment_class(env_name)
    except (KeyError, TypeError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    for key, value in env_kwargs.items():
        if key not in params:
            raise UsageError(f"{option}{key}: {env_name} takes no such argument "
                             f"(its arguments: {', '.join(params) or 'none'})")
        want = params[key].annotation
        want = {"int": int, "float": float, "bool": bool, "str": str}.get(want, want)
        ok = (want in (inspect.Parameter.empty, Any) or not isinstance(want, type)
              or (isinstance(value, want) and not (want is int and isinstance(value, bool)))
              or (want is float and isinstance(value, int) and not isinstance(value, bool)))
        if not ok:
            raise UsageError(f"{option}{key}: expected {want.__name__}, got {json_type(value)} {value!r}")
    try:
        return cls(**env_kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{option.rstrip('. ')}: {env_name}: {exc}") from None


def json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


class _Scorer:
    """What a pool worker runs: one environment instance, many ``score`` calls."""

    def __init__(self, env_name: str, env_kwargs: dict):
        self.env = get_environment_class(env_name)(**env_kwargs)

    def __call__(self, payload: tuple[dict, str]) -> tuple[float, dict]:
        task, response = payload
        reward = self.env.score(task, response)
        return float(reward.value), dict(reward.info)


def make_scorer(env_name: str, env_kwargs: dict) -> _Scorer:
    """A pool worker's handler (module-level, so it pickles under spawn)."""
    return _Scorer(env_name, env_kwargs)
