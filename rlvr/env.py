"""Environment plugin API: the base classes every reward environment implements, and the registry.

An environment turns a model's output into a programmatic reward. Single-turn environments
implement one method, ``score(task, response) -> Reward``. Multi-turn (tool-use) environments
implement ``reset(task) -> Observation`` and ``step(action) -> Step`` and keep their episode
state on the instance (one instance per episode).

Environments are found through the entry-point group ``rlvr.environments``; the built-in ones
register through that same group in ``pyproject.toml``, so a third-party package adds one with::

    [project.entry-points."rlvr.environments"]
    my_env = "my_package.module:MyEnvironment"

Training and offline scoring (``rlvr score``) call the very same ``score`` method. An environment
whose reward compares the responses to one prompt (a pairwise judge) also implements
``score_group(task, responses) -> [Reward]``, which training calls with the whole GRPO group.

Task generators (synthetic data sets, for ``data.train[i].generator`` and ``rlvr example``) are
found the same way, in the group ``rlvr.generators``: a function ``f(n, seed, **args) -> rows``::

    [project.entry-points."rlvr.generators"]
    my_tasks = "my_package.module:make_rows"
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, ClassVar

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rlvr.environments"
GENERATOR_GROUP = "rlvr.generators"


@dataclasses.dataclass(frozen=True)
class Reward:
    """A scalar reward and a JSON-serialisable explanation of how it was reached."""

    value: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the environment shows the model: the first prompt at ``reset``, a tool result later.
    ``messages``, when given, are chat messages ({"role", "content"}: system/user at ``reset``,
    tool after a step) that the episode driver renders with the tokenizer's chat template
    (``rlvr.chat``); otherwise ``text`` is given to the model as it is."""

    text: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages: tuple[dict[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Step:
    """The outcome of one multi-turn ``step``: the next observation, its reward and whether the
    episode ended (``reward`` is the episode's final reward when ``done``)."""

    observation: Observation
    reward: float = 0.0
    done: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class TaskError(ValueError):
    """A dataset row is unusable for this environment (missing field, wrong type). Scoring reports
    the row and moves on; it is a user's data problem, not a crash."""


class Environment:
    """Base class of single-turn environments.

    Subclasses set ``task_fields``: the row fields ``score`` reads besides the response, with the
    Python type each must have. The runner checks them before calling ``score`` so that a bad row
    is reported by field name instead of failing inside the environment.
    """

    name: ClassVar[str] = ""
    task_fields: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    # Numeric keys of a reward's info that training averages into the metric reward/<env>/<key>
    # (e.g. a judge's share of unparsable verdicts).
    info_metrics: ClassVar[tuple[str, ...]] = ()

    def score(self, task: Mapping[str, Any], response: str) -> Reward:
        raise NotImplementedError(f"{type(self).__name__} must implement score(task, response)")

    def score_group(self, task: Mapping[str, Any], responses: Sequence[str]) -> list[Reward]:
        """Rewards of the responses to one task (a GRPO group), in order. By default each is
        scored alone; an environment whose reward compares responses (a pairwise judge)
        overrides it, and its groups are then scored whole (``scores_groups``)."""
        return [self.score(task, r) for r in responses]

    def score_groups(self, groups: Sequence[tuple[Mapping[str, Any], Sequence[str]]]) -> list[list[Reward]]:
        """``score_group`` of several groups; override to overlap slow work (a judge's requests)."""
        return [self.score_group(task, responses) for task, responses in groups]

    def check_task(self, task: Mapping[str, Any]) -> None:
        """Raise ``TaskError`` naming the first missing or mistyped field of ``task``."""
        for field, kind in self.task_fields.items():
            if field not in task or task[field] is None:
                raise TaskError(f"missing field {field!r}")
            if not isinstance(task[field], kind):
                want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
                raise TaskError(f"field {field!r} must be {want}, got {type(task[field]).__name__}")


def scores_groups(cls: type[Environment]) -> bool:
    """Whether the environment scores a group of responses together (overrides ``score_group``
    or ``score_groups``): its responses are then sent to a scorer a group at a time, where the
    others' are sent one by one, each under its own deadline."""
    return cls.score_group is not Environment.score_group or cls.score_groups is not Environment.score_groups


class MultiTurnEnvironment(Environment):
    """Base class of multi-turn environments: the model acts, the environment answers, until
    ``done`` or ``max_turns``. One instance holds one episode."""

    max_turns: ClassVar[int] = 8
    # Limits the episode driver applies, in tokens (None: none): each observation is cut to
    # max_observation_tokens, and an episode ends when prompt + turns reach max_total_tokens.
    max_observation_tokens: int | None = None
    max_total_tokens: int | None = None
    # Seconds one step may take before the driver ends that episode (its other episodes go on).
    step_timeout: float = 30.0

    def reset(self, task: Mapping[str, Any]) -> Observation:
        raise NotImplementedError(f"{type(self).__name__} must implement reset(task)")

    def step(self, action: str) -> Step:
        raise NotImplementedError(f"{type(self).__name__} must implement step(action)")


_registered: dict[str, dict[str, Any]] = {ENTRY_POINT_GROUP: {}, GENERATOR_GROUP: {}}


@functools.lru_cache(maxsize=None)
def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """An entry-point group, read once per process: reading it opens every installed package's
    metadata (~9 ms, and the trainer asks every step)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):  # (in sys.path order: the first wins, as an import would)
        if ep.name in found and found[ep.name].value != ep.value:
            log.warning("%s: %r is registered by two packages: %s (used, first on sys.path) and %s", group, ep.name,
                        found[ep.name].value, ep.value)
        found.setdefault(ep.name, ep)
    return found


def _available(group: str) -> dict[str, Any]:
    """Names of an entry-point group, overridden by in-process registrations."""
    return _entry_points(group) | _registered[group]


def _resolve(group: str, kind: str, name: str):
    found = _available(group)
    if name not in found:
        raise KeyError(f"unknown {kind} {name!r} (registered: {', '.join(sorted(found)) or 'none'})")
    target = found[name]
    return target.load() if isinstance(target, metadata.EntryPoint) else target


def register(name: str, cls: type[Environment]) -> type[Environment]:
    """Register ``cls`` under ``name`` in this process (entry points are the durable way)."""
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise TypeError(f"environment {name!r} must be a subclass of rlvr.env.Environment")
    _registered[ENTRY_POINT_GROUP][name] = cls
    return cls


def available() -> dict[str, metadata.EntryPoint | type[Environment]]:
    """All environment names: entry points of the group, overridden by in-process registrations."""
    return _available(ENTRY_POINT_GROUP)


def get_environment_class(name: str) -> type[Environment]:
    """Resolve an environment name to its class, with an error that lists the known names."""
    cls = _resolve(ENTRY_POINT_GROUP, "environment", name)
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise TypeError(f"entry point {name!r} -> {cls!r} is not an rlvr.env.Environment subclass")
    return cls


def make_environment(name: str, **kwargs: Any) -> Environment:
    """Instantiate the environment registered as ``name``."""
    return get_environment_class(name)(**kwargs)


def register_generator(name: str, fn: Callable[..., list[dict]]) -> Callable[..., list[dict]]:
    """Register a task generator ``fn(n, seed, **args) -> rows`` in this process."""
    if not callable(fn):
        raise TypeError(f"generator {name!r} must be callable")
    _registered[GENERATOR_GROUP][name] = fn
    return fn


def available_generators() -> dict[str, Any]:
    return _available(GENERATOR_GROUP)


def get_generator(name: str) -> Callable[..., list[dict]]:
    """Resolve a generator name, with an error that lists the known names."""
    fn = _resolve(GENERATOR_GROUP, "generator", name)
    if not callable(fn):
        raise TypeError(f"entry point {name!r} -> {fn!r} is not callable")
    return fn


def in_split(held_out: bool, holdout: str | None) -> bool:
    """For a generator whose problems have a fixed held-out share: keep a problem that is (or is
    not) ``held_out`` under ``holdout`` = None (all), "exclude" (training) or "only" (evaluation)."""
    if holdout not in (None, "exclude", "only"):
        raise ValueError(f"holdout must be 'exclude' or 'only', not {holdout!r}")
    return holdout is None or held_out == (holdout == "only")
