"""Rollouts ahead of the learner (asynchronous GRPO), with deterministic stand-ins for the slow
phases: a pool whose generate call takes R seconds and whose weight update takes S, a learner
step of L seconds. The loop below is the trainer's: take the step's rollouts (collected now at
max_staleness 0, else by the thread ahead), learn, push the weights, mark the step synced."""

import threading
import time

import pytest
import torch

from rlvr.rollout.engine import Completion
from rlvr.training.ahead import PoolGate, RolloutsAhead, StepRollouts, fresh_groups, staleness, staleness_metrics

SYNC = 0.05


class SlowPool:
    """generate: R seconds, samples stamped with the weights' version; update: SYNC seconds."""

    def __init__(self, rollout_s: float):
        self.rollout_s, self.version = rollout_s, 0
        self.calls = threading.Semaphore(1)  # an engine runs one call at a time: overlap would be a bug

    def generate(self, prompts, sampling):
        assert self.calls.acquire(blocking=False), "a generate call overlapped another call"
        version = self.version
        time.sleep(self.rollout_s)
        self.calls.release()
        return [Completion(i, 0, [1], [2], [-0.1], "", "stop", version) for i in range(len(prompts))]

    def update_weights(self):
        assert self.calls.acquire(blocking=False), "a weight update overlapped a generate call"
        time.sleep(SYNC)
        self.version += 1
        self.calls.release()
        return self.version


def run(max_staleness: int, rollout_s: float, learn_s: float, steps: int = 7):
    """-> (seconds per step after the first, staleness of every sample trained on)."""
    gate = PoolGate(SlowPool(rollout_s))
    drawn = {"prompts": 0}

    def collect(step: int) -> StepRollouts:
        drawn["prompts"] += 4
        samples = gate.generate(["p"] * 4, None)
        return StepRollouts(step, ["p"] * 4, samples, [[1]] * 4, torch.zeros(4), {})

    ahead = RolloutsAhead(collect, lambda: dict(drawn), 0, steps, max_staleness) if max_staleness else None
    ends, lags = [], []
    try:
        for step in range(steps):
            got = ahead.take(step, lambda: None) if ahead else collect(step)
            lags += staleness(got.completions, gate.version).tolist()
            time.sleep(learn_s)  # the learner's update
            gate.update_weights()
            if ahead:
                ahead.synced(step)
            ends.append(time.monotonic())
    finally:
        if ahead:
            ahead.close()
    return (ends[-1] - ends[0]) / (steps - 1), lags


@pytest.mark.parametrize("rollout_s,learn_s", [(0.3, 0.5), (0.5, 0.3)])
def test_a_step_takes_the_longer_phase_plus_the_sync_when_rollouts_run_ahead(rollout_s, learn_s):
    sync_step, sync_lags = run(0, rollout_s, learn_s)
    async_step, async_lags = run(1, rollout_s, learn_s)
    assert sync_step == pytest.approx(rollout_s + learn_s + SYNC, abs=0.08)
    assert async_step == pytest.approx(max(rollout_s, learn_s) + SYNC, abs=0.08)
    assert set(sync_lags) == {0}
    # the first step's samples come from the starting weights, every later one's from one update back
    assert async_lags[:4] == [0] * 4 and set(async_lags[4:]) == {1}


def test_staleness_never_exceeds_the_bound_and_reaches_it_when_learning_is_slow():
    _, lags = run(2, rollout_s=0.05, learn_s=0.3, steps=6)
    assert max(lags) == 2 and all(0 <= lag <= 2 for lag in lags)


def test_a_checkpoint_puts_back_the_prompts_of_every_untrained_step():
    drawn = {"prompts": 0}
    release = threading.Event()

    def collect(step):
        drawn["prompts"] += 4
        if step == 1:
            release.wait(5)  # step 1 is in flight when the checkpoint is taken
        return StepRollouts(step, [], [], [], torch.zeros(0), {})

    ahead = RolloutsAhead(collect, lambda: dict(drawn), 0, 10, max_staleness=1)
    try:
        ahead.take(0, lambda: None)
        # step 0 taken, not trained: a checkpoint now re-draws step 0's prompts
        assert ahead.checkpoint_state() == {"prompts": 0}
        ahead.synced(0)
        # step 0 trained; step 1 in flight: its prompts go back
        assert ahead.checkpoint_state() == {"prompts": 4}
        release.set()
        ahead.take(1, lambda: None)
        ahead.synced(1)
        deadline = time.monotonic() + 5
        while drawn["prompts"] < 12 and time.monotonic() < deadline:  # step 2 collected, not trained
            time.sleep(0.01)
        assert ahead.checkpoint_state() == {"prompts": 8}
    finally:
        release.set()
        ahead.close()


def test_a_failed_collection_is_raised_in_the_training_loop_and_a_stop_does_not_wait():
    def collect(step):
        if step == 1:
            raise RuntimeError("worker died twice")
        return StepRollouts(step, [], [], [], torch.zeros(0), {})

    ahead = RolloutsAhead(collect, dict, 0, 5, max_staleness=1)
    ahead.take(0, lambda: None)
    with pytest.raises(RuntimeError, match="worker died twice"):
        ahead.take(1, lambda: None)
    ahead.close()

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    slow = RolloutsAhead(lambda step: time.sleep(3), dict, 0, 5, max_staleness=1)
    started = time.monotonic()
    with pytest.raises(Stop):
        slow.take(0, stop)
    slow.close(timeout=0.1)
    assert time.monotonic() - started < 1


def test_stale_groups_are_dropped_whole_and_counted():
    lag = torch.tensor([0, 1, 1, 1, 2, 0, 3, 1])  # two groups of 4; the second holds a sample 3 updates old
    keep = fresh_groups(lag, 4, max_staleness=2)
    assert keep.tolist() == [True, False]
    m = staleness_metrics(lag[:4], dropped=4, max_staleness=2)
    assert m["staleness/mean"] == pytest.approx(0.75) and m["staleness/max"] == 1 and m["staleness/dropped"] == 4
    assert (m["staleness/share_0"], m["staleness/share_1"], m["staleness/share_2"]) == (0.25, 0.75, 0.0)
    with pytest.raises(ValueError, match="max_staleness"):
        RolloutsAhead(lambda step: None, dict, 0, 5, max_staleness=0)
