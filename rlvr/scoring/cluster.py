"""Scoring on a Ray cluster: ``rlvr score --ray ADDRESS`` (``--ray local`` starts one here), and
``connect``, how every offline command (score, generate, eval) joins or starts Ray.

Each ``ScoringActor`` owns a one-process ``DeadlinePool``, so the per-row wall-clock timeout holds
on every node exactly as it does locally. Rows travel in batches to amortise Ray's per-call cost;
results come back in input order. An actor that dies is replaced and its batch re-sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import ray

from rlvr.rows import UsageError
from rlvr.scoring.pool import DeadlinePool, Outcome

BATCH_ROWS = 32


def connect(address: str, workers: int) -> bool:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or start
    one in this process with ``workers`` CPUs (``local``); a user's mistyped address is a
    ``UsageError`` naming ``--ray``. Returns whether it connected (False: Ray was already up),
    so that the caller who connected is the one who calls ``ray.shutdown``."""
    if ray.is_initialized():
        return False
    if address != "local":
        from rlvr.ray_address import unreachable_ray

        why = unreachable_ray(address)
        if why:
            raise UsageError(f"--ray {address}: {why}")
    ray.init(address=address, num_cpus=workers if address == "local" else None,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


@ray.remote(num_cpus=1)
class ScoringActor:
    def __init__(self, env_name: str, env_kwargs: dict, timeout: float):
        from rlvr.scoring.scorer import make_scorer

        self.pool = DeadlinePool(make_scorer, (env_name, env_kwargs), workers=1, timeout=timeout)

    def score(self, payloads: list, timeout: float | None = None) -> list[Outcome]:
        return list(self.pool.map(payloads, timeout))


class RayScorer:
    """Same interface as ``DeadlinePool``: ``map(payloads)`` yields ``Outcome``s in order."""

    def __init__(self, env_name: str, env_kwargs: dict, *, workers: int, timeout: float, address: str):
        connect(address, workers)
        self.spec, self.timeout = (env_name, env_kwargs, timeout), timeout
        self.actors = [ScoringActor.remote(*self.spec) for _ in range(workers)]

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def map(self, payloads: Iterable, timeout: float | None = None) -> Iterator[Outcome]:
        payloads = list(payloads)
        self._timeout = timeout
        batches = deque((start, payloads[start:start + BATCH_ROWS])
                        for start in range(0, len(payloads), BATCH_ROWS))
        in_flight: dict = {}  # object ref -> (actor index, batch start, batch)
        finished: dict[int, list[Outcome]] = {}
        next_start = 0
        while batches or in_flight:
            self._submit(batches, in_flight)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            slot, start, batch = in_flight.pop(ref)
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayActorError:
                self.actors[slot] = ScoringActor.remote(*self.spec)
                batches.appendleft((start, batch))
                continue
            finished[start] = [Outcome(start + o.index, o.status, o.value, o.error, o.seconds)
                               for o in outcomes]
            while next_start in finished:
                chunk = finished.pop(next_start)
                yield from chunk
                next_start += len(chunk)

    def _submit(self, batches: deque, in_flight: dict) -> None:
        # Two batches per actor keep it busy while the driver collects the other.
        for slot, actor in enumerate(self.actors):
            load = sum(1 for s, _, _ in in_flight.values() if s == slot)
            while batches and load < 2:
                start, batch = batches.popleft()
                in_flight[actor.score.remote(batch, self._timeout)] = (slot, start, batch)
                load += 1
