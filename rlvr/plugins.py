"""A plugin's arguments checked against its signature, before any work: an environment's
``env_args`` and a generator's ``generator_args`` (from a config or the command line). An unknown
name or a value of the wrong type is a ``UsageError`` naming the option, not a traceback from
inside the plugin after a run has started."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from rlvr.env import Environment, get_environment_class, get_generator
from rlvr.rows import UsageError

# What a generator is called with besides its own arguments (``f(n, seed, **args)``).
GENERATOR_POSITIONAL = ("n", "seed")


def make_environment_checked(env_name: str, env_kwargs: dict, option: str = "--env-arg ") -> Environment:
    """The environment, its keyword arguments checked against its signature first. ``option``:
    how the message names an argument (``--env-arg `` on the command line,
    ``data.train.0.env_args.`` in a config)."""
    try:
        cls = get_environment_class(env_name)
    except (KeyError, TypeError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    check_arguments(cls.__init__, env_kwargs, option, env_name)
    try:
        return cls(**env_kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{option.rstrip('. ')}: {env_name}: {exc}") from None


def generator_checked(name: str, kwargs: dict, option: str = "--generator-arg ") -> Callable[..., list[dict]]:
    """The generator ``name``, its keyword arguments checked against its signature (called with
    them, a ``ValueError`` of its own, e.g. ``holdout must be 'exclude' or 'only'``, is reported
    by ``generate_checked``)."""
    try:
        fn = get_generator(name)
    except (KeyError, TypeError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    check_arguments(fn, kwargs, option, name, skip=GENERATOR_POSITIONAL)
    return fn


def generate_checked(name: str, n: int, seed: int, kwargs: dict, option: str = "--generator-arg ") -> list[dict]:
    """``n`` rows of generator ``name``; a bad argument, or the generator refusing one (its
    ``ValueError``/``TypeError``), is a ``UsageError`` naming ``option``."""
    fn = generator_checked(name, kwargs, option)
    try:
        return fn(n, seed=seed, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{option.rstrip('. ')}: {name}: {exc}") from None


def takes_argument(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def check_arguments(fn: Callable, kwargs: dict, option: str, owner: str, skip: tuple[str, ...] = ()) -> None:
    """Each of ``kwargs`` is a parameter of ``fn`` and has the annotated type (``int``, ``float``,
    ``bool``, ``str``, ``X | None``; other annotations are not checked)."""
    signature = inspect.signature(fn)
    params = {n: p for n, p in signature.parameters.items()
              if n != "self" and n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for key, value in kwargs.items():
        if key not in params:
            if takes_any:
                continue
            raise UsageError(f"{option}{key}: {owner} takes no such argument (its arguments: {', '.join(params) or 'none'})")
        want = params[key].annotation
        if isinstance(want, str) and want.replace(" ", "").endswith("|None"):  # "int | None": None or an int
            if value is None:
                continue
            want = want.split("|")[0].strip()
        want = {"int": int, "float": float, "bool": bool, "str": str}.get(want, want)
        ok = (want in (inspect.Parameter.empty, Any) or not isinstance(want, type)
              or (isinstance(value, want) and not (want is int and isinstance(value, bool)))
              or (want is float and isinstance(value, int) and not isinstance(value, bool)))
        if not ok:
            raise UsageError(f"{option}{key}: expected {want.__name__}, got {json_type(value)} {value!r}")


def json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)
