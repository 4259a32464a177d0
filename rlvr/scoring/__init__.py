"""Rewards for (task, response) pairs, off the training loop's critical path.

    pool.py     DeadlinePool: worker processes with a hard wall-clock timeout per item
    scorer.py   rows -> tasks (checked), and the handler a worker runs (one environment, many scores)
    cluster.py  the same on Ray actors (``rlvr score --ray``)
    job.py      file -> file scoring with resume (``rlvr score``)

The same ``Environment.score`` that training calls runs in a ``DeadlinePool`` of worker processes
(or on Ray actors, each with its own pool), so a response that hangs the verifier is killed at the
timeout and every other one is still scored. ``open_scorer`` serves the trainer's reward stage and
``rlvr score`` alike.
"""

from __future__ import annotations

from rlvr.scoring.pool import DeadlinePool, Outcome
from rlvr.plugins import make_environment_checked
from rlvr.scoring.scorer import build_task, make_scorer


def open_scorer(env_name: str, *, workers: int = 1, timeout: float = 10.0,
                env_kwargs: dict | None = None, ray_address: str | None = None):
    """A context manager whose ``map(payloads)`` scores (task, response) pairs in worker
    processes (or on Ray actors) and yields an ``Outcome`` per pair, in order, with
    ``Outcome.value == (reward, info)``. Used by ``rlvr score`` and by the trainer."""
    env_kwargs = env_kwargs or {}
    if ray_address is not None:
        from rlvr.scoring.cluster import RayScorer

        return RayScorer(env_name, env_kwargs, workers=workers, timeout=timeout, address=ray_address)
    return DeadlinePool(make_scorer, (env_name, env_kwargs), workers=workers, timeout=timeout)


__all__ = ["DeadlinePool", "Outcome", "build_task", "make_environment_checked", "make_scorer", "open_scorer"]
