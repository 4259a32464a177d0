import os
import threading
import time

import pytest

import rlvr.scoring.pool as pool_module
from rlvr.scoring.pool import DeadlinePool


class _Sleeper:
    def __call__(self, payload):
        kind, value = payload
        if kind == "sleep":
            time.sleep(value)
        elif kind == "raise":
            raise ValueError(value)
        elif kind == "die":
            import os

            os._exit(1)
        return value


def make_sleeper():
    return _Sleeper()


def test_results_in_order_with_timeout_error_and_death():
    payloads = [("ok", 1), ("sleep", 60), ("ok", 3), ("raise", "boom"), ("die", None), ("ok", 6)]
    start = time.monotonic()
    with DeadlinePool(make_sleeper, workers=2, timeout=1.5) as pool:
        outcomes = list(pool.map(payloads))
        restarts = pool.restarts
    assert time.monotonic() - start < 30  # the 60 s task was cut, not waited for
    assert [o.index for o in outcomes] == list(range(6))
    assert [o.status for o in outcomes] == ["ok", "timeout", "ok", "error", "error", "ok"]
    assert outcomes[0].value == 1 and outcomes[5].value == 6
    assert "ValueError: boom" in outcomes[3].error
    assert restarts == 2  # the killed sleeper and the dead worker were replaced


def test_chunks_keep_the_deadline_per_task_and_blame_the_right_one():
    # Fast tasks go out in chunks; a hang or a crash inside a chunk costs that task alone, and
    # the rest of its chunk is scored by the replacement worker.
    payloads = ([("ok", i) for i in range(200)] + [("sleep", 60)] + [("ok", i) for i in range(201, 300)]
                + [("die", None)] + [("ok", i) for i in range(301, 400)])
    with DeadlinePool(make_sleeper, workers=1, timeout=1.5) as pool:
        list(pool.map([("ok", -1)] * 50))  # measured: the next call sends chunks
        assert pool._chunk() > 8
        outcomes = list(pool.map(payloads))
        assert pool.restarts == 2
    statuses = {i: o.status for i, o in enumerate(outcomes)}
    assert [o.index for o in outcomes] == list(range(400))
    assert statuses[200] == "timeout" and statuses[300] == "error"
    assert [o.value for i, o in enumerate(outcomes) if i not in (200, 300)] == [i for i in range(400) if i not in (200, 300)]


def test_a_chunk_longer_than_the_timeout_is_not_cut(monkeypatch):
    # Four 0.6 s tasks sent together take 2.4 s: each is under the 1 s deadline, so none is killed.
    monkeypatch.setattr(pool_module, "CHUNK_SECONDS", 10.0)
    with DeadlinePool(make_sleeper, workers=1, timeout=1.0) as pool:
        list(pool.map([("sleep", 0.6)]))
        assert pool._chunk() >= 4
        outcomes = list(pool.map([("sleep", 0.6)] * 4))
    assert [o.status for o in outcomes] == ["ok"] * 4 and pool.restarts == 0


def test_large_payloads_and_answers_leave_neither_side_blocked_writing():
    # A busy worker writing a 256 KB answer while the parent writes it the next chunk of such
    # payloads ahead would leave both blocked on a full pipe: such a chunk waits until the worker
    # is idle. (Fast tasks: chunks of 64 after the first, so the third goes ahead.)
    result = {}

    def run():
        with DeadlinePool(make_sleeper, workers=1, timeout=30.0) as pool:
            result["out"] = list(pool.map([("ok", "x" * (1 << 18))] * 200))

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(60)
    assert not caller.is_alive(), "the parent and the worker are both blocked writing to each other"
    assert [o.status for o in result["out"]] == ["ok"] * 200 and all(len(o.value) == 1 << 18 for o in result["out"])


def test_answers_of_any_size_arrive_whole_and_in_order():
    # Answers are read from the pipe in bulk and cut into messages: one larger than a read, or
    # than the pipe's buffer, spans several reads.
    sizes = [10, 3 << 20, 5, 70_000, 1, 2 << 20] * 3
    with DeadlinePool(make_sleeper, workers=2, timeout=30.0) as pool:
        outcomes = list(pool.map([("ok", str(i % 10) * n) for i, n in enumerate(sizes)]))
    assert [o.status for o in outcomes] == ["ok"] * len(sizes)
    assert [o.value for o in outcomes] == [str(i % 10) * n for i, n in enumerate(sizes)]


def test_works_from_a_non_main_thread():
    # SIGALRM-based timeouts fail here with "signal only works in main thread".
    result = {}

    def run():
        with DeadlinePool(make_sleeper, workers=1, timeout=1.0) as pool:
            result["statuses"] = [o.status for o in pool.map([("sleep", 30), ("ok", 2)])]

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert result["statuses"] == ["timeout", "ok"]


def test_a_call_abandoned_midway_does_not_answer_for_the_next():
    with DeadlinePool(make_sleeper, workers=2, timeout=5.0) as pool:
        first = pool.map([("sleep", 0.2)] * 6 + [("ok", "old")] * 20)
        next(first)  # then dropped, with tasks still running
        outcomes = list(pool.map([("ok", i) for i in range(10)]))
    assert [o.value for o in outcomes] == list(range(10))


def make_nothing():
    os._exit(3)  # dies before it is ready, as a spawn that cannot import __main__ does


def test_a_worker_that_dies_starting_is_an_error_not_a_restart_loop():
    with DeadlinePool(make_nothing, workers=1, timeout=1.0) as pool:
        with pytest.raises(RuntimeError, match="exited with code 3 before it was ready"):
            list(pool.map([("ok", 1)]))


def test_bad_arguments():
    with pytest.raises(ValueError):
        DeadlinePool(make_sleeper, workers=0)
    with pytest.raises(ValueError):
        DeadlinePool(make_sleeper, timeout=0)
