"""Asynchronous GRPO: the rollouts of the next steps are generated while the learner trains.

With ``algorithm.max_staleness: k`` >= 1 a thread of the driver (``RolloutsAhead``) draws the
prompts of step t and collects its samples and rewards as soon as the weights of step t - k - 1's
update have reached the engines, so while the learner trains on step s the engines already
generate step s + 1 .. s + k. The engines take each weight update between two of their generate
calls (``PoolGate``): a call finishes on the weights it started with, and every sample carries
the version that produced it. A step's wall time falls from rollout + learn + sync to about
max(rollout, learn) + sync; the price is that a sample may be up to k updates older than the
policy it trains, which the decoupled objective corrects (``rlvr.grpo.importance_weights``
against a recomputed proximal policy, ``AlgorithmConfig.proximal``).

A checkpoint keeps the prompt stream where the oldest step not yet trained drew its prompts
(``checkpoint_state``): the rollouts in flight are abandoned and their prompts drawn again after
a resume. What differs from an uninterrupted run is only the weights that generate them: after
a resume the first k steps' samples come from the checkpoint's weights (staleness 0), where the
uninterrupted run had used older ones.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import torch

from rlvr.rollout.engine import Completion


@dataclasses.dataclass
class StepRollouts:
    """The samples of one step (``prompts_per_step`` groups of ``group_size``, grouped) and what
    collecting them measured (``stats``: seconds, rounds, scoring failures, ...)."""

    step: int
    prompts: list
    completions: list[Completion]
    masks: list[list[int]]
    rewards: torch.Tensor
    stats: dict


class PoolGate:
    """The rollout pool, one caller at a time: a generate call, an episode batch and a weight
    update never interleave (the update waits for the running call; the next call runs on the
    new weights). Counts the seconds the pool spent generating (``busy``)."""

    def __init__(self, pool):
        self.pool = pool
        self.lock = threading.Lock()
        self.busy = 0.0
        self.waited = 0.0

    def _timed(self, call: Callable, *args, **kwargs):
        with self.lock:
            started = time.monotonic()
            try:
                return call(*args, **kwargs)
            finally:
                self.busy += time.monotonic() - started

    def generate(self, prompts: list, sampling) -> list[Completion]:
        return self._timed(self.pool.generate, prompts, sampling)

    def run_episodes(self, tasks: list, env: str, env_args: str, sampling, group: int = 1) -> list:
        return self._timed(self.pool.run_episodes, tasks, env, env_args, sampling, group=group)

    def update_weights(self) -> int:
        """(``waited``: the seconds this update waited for the engines' running call.)"""
        asked = time.monotonic()
        with self.lock:
            self.waited = time.monotonic() - asked
            return self.pool.update_weights()

    def __getattr__(self, name: str):  # tokenizer, max_model_len, node_ids, shutdown, version
        return getattr(self.pool, name)


class RolloutsAhead:
    """A thread that collects the steps ``first_step`` .. ``last_step - 1`` in order, step t once
    ``synced`` has been called for step t - max_staleness - 1 (at most max_staleness steps ahead
    of the weights the engines hold).

    ``collect(step)`` draws the step's prompts and returns its ``StepRollouts``; ``snapshot()``
    returns the driver's state (prompt stream, RNGs), taken before each draw so that a
    checkpoint can put the prompts of untrained steps back."""

    def __init__(self, collect: Callable[[int], StepRollouts], snapshot: Callable[[], dict], first_step: int,
                 last_step: int, max_staleness: int):
        if max_staleness < 1:
            raise ValueError("RolloutsAhead needs max_staleness >= 1 (0 is the synchronous loop)")
        self._collect, self._snapshot = collect, snapshot
        self.max_staleness, self.last_step = max_staleness, last_step
        self._cond = threading.Condition()
        self._next = first_step  # the next step to collect
        self._synced = first_step  # steps before this one have trained and reached the engines
        self._ready: dict[int, StepRollouts] = {}
        self._states: dict[int, dict] = {}  # step -> the driver state before its draw (until it is trained)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rollouts-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._next < self.last_step
                                                              and self._next <= self._synced + self.max_staleness))
                if self._closed:
                    return
                step = self._next
                self._next += 1
                self._states[step] = self._snapshot()
            try:
                got = self._collect(step)
            except BaseException as err:  # (the pool's actors die when the run shuts down)
                with self._cond:
                    if not self._closed:
                        self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[step] = got
                self._cond.notify_all()

    def take(self, step: int, check_stop: Callable[[], None], poll: float = 0.1) -> StepRollouts:
        """Step ``step``'s rollouts once collected; ``check_stop()`` runs while waiting (it raises
        to abandon the wait: a signal must not wait for a rollout). A failure of the collecting
        thread is raised here."""
        while True:
            with self._cond:
                if step in self._ready:
                    return self._ready.pop(step)
                if self._error is not None:
                    raise self._error
                self._cond.wait(poll)
            check_stop()

    def synced(self, step: int) -> None:
        """Step ``step`` has trained and its weights reached the engines: the thread may collect
        step + max_staleness + 1."""
        with self._cond:
            self._states.pop(step, None)
            self._synced = step + 1
            self._cond.notify_all()

    def checkpoint_state(self) -> dict:
        """The driver state a checkpoint keeps: from before the oldest untrained step drew its
        prompts (its rollouts, and any later ones, are collected again after a resume)."""
        with self._cond:
            return self._states[min(self._states)] if self._states else self._snapshot()

    def close(self, timeout: float = 1.0) -> None:
        """Stops collecting; a collection in progress is abandoned (its pool call ends when the
        pool shuts down)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


def staleness(completions: list[Completion], version: int) -> torch.Tensor:
    """Per sample: how many weight updates behind the policy being trained (``version``, the
    engines' latest) the weights that generated it are."""
    return torch.tensor([version - c.weights_version for c in completions])


def fresh_groups(lag: torch.Tensor, group_size: int, max_staleness: int) -> torch.Tensor:
    """(groups,) bool: the groups all of whose samples are at most ``max_staleness`` updates old.
    A group is kept or dropped whole (its advantages compare its samples with each other)."""
    return (lag.view(-1, group_size) <= max_staleness).all(dim=1)


def staleness_metrics(lag: torch.Tensor, dropped: int, max_staleness: int) -> dict[str, float]:
    """Mean and max staleness of the samples trained on, the share at each lag 0..max_staleness
    (the histogram of the versions trained on) and the samples dropped as too stale."""
    out = {"staleness/mean": float(lag.float().mean()) if lag.numel() else 0.0,
           "staleness/max": float(lag.max()) if lag.numel() else 0.0, "staleness/dropped": float(dropped)}
    for k in range(max_staleness + 1):
        out[f"staleness/share_{k}"] = float((lag == k).float().mean()) if lag.numel() else 0.0
    return out
